// DataWriter: the receiver's DATA writes, batched — several writes go to the
// kernel in one io_uring submit (pwrite when io_uring is unavailable).
// Its own small ring, not libblockd's IoEngine: that engine is LUN-specific (one
// backing file, tgtd's event loop, SCSI completions) and would pull in libaio.
#pragma once

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "frame_codec.hpp"
#include "icbd/status.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd::repl {

class DataWriter {
public:
    explicit DataWriter(bool use_uring);
    ~DataWriter();
    DataWriter(const DataWriter&) = delete;
    DataWriter& operator=(const DataWriter&) = delete;

    bool uses_io_uring() const { return ring_ok_; }
    // Queues a write of `bytes` at `offset` (`what` names the file in errors);
    // a full batch is written at once.
    Status write(std::shared_ptr<UniqueFd> fd, uint64_t offset, Bytes bytes, std::string what);
    // Writes every queued write; the first error, after all were tried.
    Status flush();
    // Forgets the queued writes (before an abort).
    void discard() {
        pending_.clear();
        pending_bytes_ = 0;
    }

private:
    static constexpr unsigned kDepth = 16;
    static constexpr size_t kMaxBatchBytes = 8u << 20;
    struct Pending {
        std::shared_ptr<UniqueFd> fd;
        uint64_t offset;
        Bytes buf;
        std::string what;
    };
    static Status pwrite_all(const Pending& p, size_t done);

    io_uring ring_{};
    bool ring_ok_ = false;
    std::vector<Pending> pending_;
    size_t pending_bytes_ = 0;
};

}  // namespace icbd::repl
