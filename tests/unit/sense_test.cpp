// Backing-file errors become the sense data initiators act on: a full disk is
// SPACE ALLOCATION FAILED (retry after freeing space), a read-only backing is
// WRITE PROTECTED, anything else a MEDIUM ERROR of the right direction.
// (ENOSPC and read-only are also caused for real in the integration tests; EIO
// cannot be here: no device-mapper and no fault injection in this kernel.)
#include <cerrno>

#include <gtest/gtest.h>

#include "scsi.hpp"
#include "sense.hpp"

using namespace icbd;

namespace {

void expect(int err, IoOp op, uint8_t key, uint16_t asc) {
    ScsiResult r = sense_for_errno(err, op);
    EXPECT_EQ(r.status, scsi::status_check_condition) << err;
    EXPECT_EQ(r.sense_key, key) << "errno " << err << " op " << static_cast<int>(op);
    EXPECT_EQ(r.asc, asc) << "errno " << err << " op " << static_cast<int>(op);
}

TEST(Sense, FullDiskIsSpaceAllocationFailed) {
    for (int err : {ENOSPC, EDQUOT})
        for (IoOp op : {IoOp::write, IoOp::punch_hole})
            expect(err, op, scsi::key::data_protect, scsi::asc::space_allocation_failed);
}

TEST(Sense, ReadOnlyBackingIsWriteProtected) {
    for (int err : {EROFS, EPERM, EACCES, EBADF})
        expect(err, IoOp::write, scsi::key::data_protect, scsi::asc::write_protected);
}

TEST(Sense, OtherErrorsAreMediumErrorsOfTheirDirection) {
    for (int err : {EIO, EUCLEAN, ENXIO, ENODEV}) {
        expect(err, IoOp::read, scsi::key::medium_error, scsi::asc::unrecovered_read_error);
        expect(err, IoOp::prefetch, scsi::key::medium_error, scsi::asc::unrecovered_read_error);
        expect(err, IoOp::write, scsi::key::medium_error, scsi::asc::write_error);
        expect(err, IoOp::fdatasync, scsi::key::medium_error, scsi::asc::write_error);
    }
}

TEST(Sense, OutOfMemoryIsATargetFailureNotAMediumError) {
    expect(ENOMEM, IoOp::read, scsi::key::hardware_error, scsi::asc::internal_target_failure);
}

}  // namespace
