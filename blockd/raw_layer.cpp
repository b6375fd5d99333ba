// RawLayer: the LUN's backing file, one request per call.
#include "raw_layer.hpp"

#include "icbd/file_io.hpp"

namespace icbd {

RawLayer::RawLayer(IoQueue& io, int fd, int write_fd, bool direct_reads)
    : io_(io),
      fd_(fd),
      write_fd_(write_fd),
      direct_reads_(direct_reads),
      direct_writes_(direct_reads || write_fd >= 0),
      write_align_(write_fd >= 0 ? dio_offset_alignment(write_fd) : 512u),
      direct_align_(direct_reads ? dio_offset_alignment(fd) : 512u) {}

void RawLayer::read(uint8_t* buf, uint64_t len, uint64_t offset, Done done) {
    io_.start({IoOp::read, fd_, buf, len, offset, false, direct_reads_, direct_align_}, done);
}

void RawLayer::write(const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync, Done done) {
    int fd = write_fd_ >= 0 ? write_fd_ : fd_;
    bool direct = direct_writes_;
    if (write_fd_ >= 0 && ((len | offset) & (write_align_ - 1))) {
        // direct=writes: O_DIRECT takes whole blocks only. A data-out that is
        // not (an iSCSI underflow: fewer bytes than the CDB's blocks) goes
        // through the page cache; the kernel writes those pages back before a
        // later direct write of the range and drops them after it.
        fd = fd_;
        direct = false;
    }
    io_.start({IoOp::write, fd, const_cast<uint8_t*>(buf), len, offset, dsync, direct,
               fd == write_fd_ ? write_align_ : direct_align_},
              done);
}

void RawLayer::unmap(uint64_t offset, uint64_t len, bool, Done done) {
    io_.start({IoOp::punch_hole, fd_, nullptr, len, offset}, done);
}

void RawLayer::sync(Done done) { io_.start({IoOp::fdatasync, fd_, nullptr, 0, 0}, done); }

void RawLayer::prefetch(uint64_t offset, uint64_t len, Done done) {
    io_.start({IoOp::prefetch, fd_, nullptr, len, offset}, done);
}

}  // namespace icbd
