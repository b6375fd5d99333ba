// The result of a SCSI command as the block engine reports it, and how an I/O
// error of the backing file becomes sense data (table in docs/scsi-commands.md).
#pragma once

#include <cstdint>

#include "icbd/io_engine.hpp"

namespace icbd {

struct ScsiResult {
    uint8_t status = 0;  // scsi::status_good or scsi::status_check_condition
    uint8_t sense_key = 0;
    uint16_t asc = 0;  // ASC << 8 | ASCQ
    bool has_info = false;
    uint64_t info = 0;  // sense INFORMATION field (miscompare offset)
};

ScsiResult check_condition(uint8_t key, uint16_t asc);
// `err` is a positive errno from operation `op` on the backing file.
ScsiResult sense_for_errno(int err, IoOp op);

}  // namespace icbd
