// How an I/O error of the backing file becomes sense data (table in
// docs/scsi-commands.md); ScsiResult itself is part of the LUN API (icbd/lun.hpp).
// Private to libblockd.
#pragma once

#include <cstdint>

#include "icbd/io_engine.hpp"
#include "icbd/lun.hpp"

namespace icbd {

ScsiResult check_condition(uint8_t key, uint16_t asc);
// `err` is a positive errno from operation `op` on the backing file.
ScsiResult sense_for_errno(int err, IoOp op);

}  // namespace icbd
