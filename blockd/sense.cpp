// SCSI status and sense data for the outcomes of backing-file I/O.
#include "sense.hpp"

#include <cerrno>

#include "scsi.hpp"

namespace icbd {

ScsiResult check_condition(uint8_t key, uint16_t asc) {
    ScsiResult r;
    r.status = scsi::status_check_condition;
    r.sense_key = key;
    r.asc = asc;
    return r;
}

ScsiResult sense_for_errno(int err, IoOp op) {
    switch (err) {
        case ENOSPC:
        case EDQUOT: return check_condition(scsi::key::data_protect, scsi::asc::space_allocation_failed);
        case EROFS:
        case EPERM:
        case EACCES:
        case EBADF: return check_condition(scsi::key::data_protect, scsi::asc::write_protected);
        case ENOMEM:
        case EOPNOTSUPP: return check_condition(scsi::key::hardware_error, scsi::asc::internal_target_failure);
        default: break;
    }
    if (op == IoOp::read || op == IoOp::prefetch)
        return check_condition(scsi::key::medium_error, scsi::asc::unrecovered_read_error);
    return check_condition(scsi::key::medium_error, scsi::asc::write_error);
}

}  // namespace icbd
