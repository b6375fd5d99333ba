// The shared zero source of block_fill.hpp.
#include "block_fill.hpp"

namespace icbd {

const uint8_t* zero_source() {
    static const uint8_t zeros[zero_source_bytes] = {};
    return zeros;
}

}  // namespace icbd
