// Test seam of the C API (lun_c_api.cpp): the LunSeams every later
// icbd_lun_create passes to Lun::create, so that a test can inject faults and
// exceptions below a LUN it drives through the C functions tgtd's module
// calls. Production never sets it. Internal to libblockd and its tests.
#pragma once

#include "icbd/lun.hpp"

namespace icbd {

void set_c_api_lun_seams(LunSeams seams);

}  // namespace icbd
