// The I/O engine: the one place that talks to the kernel's asynchronous I/O
// interface (io_uring, or libaio where io_uring is switched off).
//
// Contract (single-threaded; the owner calls everything from one thread):
//  - prepare() queues an operation without a system call. It never fails: an
//    operation the engine cannot queue right now is kept in order and queued later.
//  - submit() hands everything prepared to the kernel in one system call.
//  - For every prepared operation, reap() delivers exactly one completion, with
//    the caller's tag, after the kernel finished it. Nothing is ever completed
//    from inside prepare() or submit(): completions only come out of reap().
//  - Reads marked `inline_ok` may be served by submit() itself with
//    preadv2(RWF_NOWAIT), which copies cached data and never blocks (it fails
//    with EAGAIN instead, and the read goes to the kernel's async path). Such
//    completions wait in reap() and do not signal event_fd(): the owner calls
//    reap() after every submit(). This makes a cached read one system call, with
//    no wake-up of the owner's event loop. An engine may instead serve a large
//    batch of such reads with one system call of its own (io_uring: inline in
//    io_uring_enter); those completions are in reap() after submit() too, but
//    may also signal event_fd() once.
//  - event_fd() becomes readable when completions may be waiting.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "icbd/status.hpp"

namespace icbd {

enum class IoOp : uint8_t {
    read,        // pread into buf
    write,       // pwrite from buf
    fdatasync,   // flush file data and the metadata needed to read it
    punch_hole,  // deallocate [offset, offset+len): reads return zeros after
    prefetch,    // start readahead of [offset, offset+len)
};

struct IoRequest {
    IoOp op = IoOp::read;
    bool dsync = false;  // write: durable on completion (RWF_DSYNC), used for FUA
    int fd = -1;
    void* buf = nullptr;
    uint64_t len = 0;  // read/write: at most 2 GiB
    uint64_t offset = 0;
    uint64_t tag = 0;  // returned unchanged in the completion
    bool inline_ok = false;  // read on a buffered fd: may be served by submit() (see above)
};

struct IoCompletion {
    uint64_t tag;
    int32_t res;  // bytes transferred, 0, or -errno
};

enum class EngineKind { automatic, io_uring, aio };

struct EngineOptions {
    EngineKind kind = EngineKind::automatic;
    unsigned queue_depth = 128;
};

class IoEngine {
public:
    virtual ~IoEngine() = default;
    virtual void prepare(const IoRequest& req) = 0;
    // Returns how many operations are still waiting to reach the kernel (0 when
    // all were submitted); a negative value is -errno of a failed submission,
    // in which case the operations stay queued for the next call.
    virtual int submit() = 0;
    // Copies up to out.size() completions; returns the number copied.
    virtual size_t reap(std::span<IoCompletion> out) = 0;
    // Blocks until at least one completion is available (teardown only).
    virtual void wait() = 0;
    // Becomes readable when completions may be waiting. Hosts poll it
    // level-triggered and call acknowledge_event() before draining with
    // reap(): a completion that arrives after that signals again. (tgtd drops
    // the rest of an epoll batch when a handler deletes an fd, so an
    // edge-triggered wake-up can be lost; level-triggered ones cannot.)
    virtual int event_fd() const = 0;
    void acknowledge_event();
    virtual const char* name() const = 0;
    // Operations prepared and not yet reaped.
    virtual size_t in_flight() const = 0;
};

// Serves a read from the page cache on the calling thread, without ever
// blocking (preadv2 with RWF_NOWAIT), for engines honouring `inline_ok`.
class InlineReader {
public:
    // True when `req` was served: *res is the byte count (possibly short: the
    // caller continues the rest). False: submit it to the kernel as usual.
    bool try_read(const IoRequest& req, int32_t* res);

private:
    bool supported_ = true;  // cleared on EOPNOTSUPP (a filesystem without NOWAIT reads)
};

// Creates the engine `opts` asks for. With EngineKind::automatic it tries
// io_uring first and falls back to libaio; `why_fallback` then says why.
Result<std::unique_ptr<IoEngine>> make_io_engine(const EngineOptions& opts, std::string* why_fallback);

Result<std::unique_ptr<IoEngine>> make_uring_engine(unsigned queue_depth);
Result<std::unique_ptr<IoEngine>> make_aio_engine(unsigned queue_depth);

}  // namespace icbd
