// The bottom layer of a LUN without an overlay: its backing file (or block
// device), one file operation per call. With direct=writes, writes go to a
// second, O_DIRECT descriptor.
#pragma once

#include <cstdint>

#include "data_layer.hpp"
#include "io_queue.hpp"

namespace icbd {

class RawLayer final : public DataLayer {
public:
    // `fd` serves everything; writes go to `write_fd` instead when it is open
    // (O_DIRECT writes beside cached reads). direct_reads: `fd` itself is
    // O_DIRECT (so are writes, then).
    RawLayer(IoQueue& io, int fd, int write_fd, bool direct_reads);

    void read(uint8_t* buf, uint64_t len, uint64_t offset, Done done) override;
    void write(const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync, Done done) override;
    void unmap(uint64_t offset, uint64_t len, bool dsync, Done done) override;  // a punched hole
    void sync(Done done) override;
    void prefetch(uint64_t offset, uint64_t len, Done done) override;
    // direct=1 writes what is not whole blocks as a read-modify-write of the
    // blocks around it (IoQueue): no other write may touch them meanwhile.
    bool write_rewrites_blocks(uint64_t offset, uint64_t len) const override {
        return direct_reads_ && ((offset | len) & (direct_align_ - 1)) != 0;
    }
    bool unmap_rewrites_blocks() const override { return false; }

private:
    IoQueue& io_;
    int fd_;
    int write_fd_;
    bool direct_reads_;
    bool direct_writes_;
    uint32_t write_align_;  // O_DIRECT offset/length alignment of write_fd_
    uint32_t direct_align_;  // the same of fd_ when it is O_DIRECT (direct=1)
};

}  // namespace icbd
