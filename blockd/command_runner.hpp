// Executes SCSI data-path commands of one LUN as chains of asynchronous I/O
// (read-modify-write, compare, chunked WRITE SAME...). Internal to libblockd.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "aligned_buffer.hpp"
#include "icbd/io_engine.hpp"
#include "icbd/lun.hpp"
#include "overlay_map.hpp"

namespace icbd {

class CommandRunner {
public:
    // `fd` serves everything; writes go to `write_fd` instead when it is open
    // (O_DIRECT writes beside cached reads). direct_reads/direct_writes: which
    // of them bypass the page cache, so need aligned buffers.
    // With `overlay`, `fd` is the overlay file; reads of blocks the client
    // never wrote go to the overlay's golden file (docs/overlay-format.md).
    CommandRunner(IoEngine& engine, const LunHost& host, int fd, int write_fd, bool direct_reads, bool direct_writes,
                  std::string name, OverlayMap* overlay = nullptr);
    ~CommandRunner();

    void submit(const LunCommand& cmd);
    void submit_batch();
    void process_completions();
    size_t commands_in_flight() const { return active_; }
    // Completes everything in flight (blocking); used before closing the file.
    void drain();

private:
    void submit_inner(const LunCommand& cmd);
    void reap_completions();
    enum class Kind : uint8_t { read, write, write_verify, orwrite, compare_and_write, sync, write_same, unmap,
                                prefetch, verify, invalid };
    static bool writes(Kind k) {
        return k == Kind::write || k == Kind::write_verify || k == Kind::orwrite || k == Kind::compare_and_write ||
               k == Kind::write_same || k == Kind::unmap;
    }
    struct SubOp {
        IoOp op;
        bool dsync;
        bool overlay_data;  // a write/punch of the overlay's data area: marks blocks present when done
        int fd;
        uint64_t start;     // first file offset (offset moves on with short transfers)
        uint8_t* buf;
        uint64_t len;
        uint64_t offset;
        uint8_t* base;     // buf as first issued (before short-transfer retries)
        uint8_t* copy_to;  // bounced O_DIRECT read: copy base[0..copy_len) here when done
        uint64_t copy_len;
    };
    struct Task {
        uint32_t index = 0;
        bool busy = false;
        bool running = false;  // started (not parked)
        LunCommand cmd;
        Kind kind = Kind::read;
        uint8_t phase = 0;
        uint32_t pending = 0;
        int error = 0;        // first -errno seen
        IoOp error_op = IoOp::read;
        bool holds_range = false;
        uint64_t range_start = 0, range_end = 0;
        uint64_t cursor = 0;  // chunked commands: bytes done
        uint64_t chunk = 0;   // chunked commands: size of the chunk in flight
        ScsiResult result;
        std::vector<SubOp> ops;
        AlignedBuffer scratch;
        AlignedBuffer bounce;
        // Overlay mode.
        bool copy_up_hold = false;     // may copy up: holds its block-aligned range
        bool map_write_needed = false;  // a durable write set bits: write the map before going on
        bool owns_map_writer = false;
        bool copy_active = false;       // edge blocks being read for a copy-up
        const uint8_t* copy_src = nullptr;
        uint64_t copy_off = 0, copy_len = 0, copy_start = 0, copy_span = 0;
        bool copy_dsync = false;
        AlignedBuffer copy_buf;
        OverlayMap::Snapshot snapshot;
        std::vector<uint8_t> map_buf;
        std::vector<OverlayMap::PageWrite> map_writes;
        struct Piece {
            bool punch;  // else: write zeros (a partial block)
            uint64_t offset, len;
        };
        std::vector<Piece> pieces;  // UNMAP on an overlay, one at a time
    };

    Task& alloc_task();
    void start(Task& t);
    void issue(Task& t, IoOp op, uint8_t* buf, uint64_t len, uint64_t offset, bool dsync = false, int fd = -1,
               bool overlay_data = false);
    // LUN-level operations: on a raw LUN one I/O each, on an overlay LUN routed
    // by the allocation map (reads split per run, copy-up, map persistence).
    void read_lun(Task& t, uint8_t* buf, uint64_t len, uint64_t offset);
    void write_lun(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync);
    void sync_lun(Task& t);
    void finish_copy_up(Task& t);
    void write_map(Task& t);
    void release_map_writer(Task& t);
    void plan_overlay_unmap(Task& t, uint64_t offset, uint64_t len);
    void next_unmap_piece(Task& t);
    void on_io(Task& t, uint32_t op_index, int32_t res);
    void advance(Task& t);
    void finish(Task& t);
    void fail(Task& t, uint8_t key, uint16_t asc);
    bool conflicts(const Task& t) const;
    void wake_parked();
    void kick();

    // Per-kind steps.
    void start_write_same(Task& t);
    void next_write_same_chunk(Task& t);
    void start_unmap(Task& t);
    void next_verify_chunk(Task& t);
    bool compare_verify_chunk(Task& t);

    IoEngine& engine_;
    LunHost host_;
    int fd_;
    int write_fd_;
    bool direct_reads_;
    bool direct_writes_;
    int fd_for(IoOp op) const { return op == IoOp::write && write_fd_ >= 0 ? write_fd_ : fd_; }
    bool needs_alignment(IoOp op) const {
        return (op == IoOp::read && direct_reads_) || (op == IoOp::write && direct_writes_);
    }
    std::string name_;  // for messages: the backing file
    OverlayMap* overlay_;
    std::deque<uint32_t> map_waiters_;  // tasks waiting to write the overlay map
    bool engine_backlog_ = false;
    bool kicked_ = false;
    bool in_submit_ = false;  // completions found inside submit() are deferred
    size_t active_ = 0;
    size_t range_holders_ = 0;  // running read-modify-write commands
    std::vector<std::unique_ptr<Task>> tasks_;
    std::vector<uint32_t> free_;
    std::vector<uint32_t> ready_;    // deferred_ being finished (kept: no allocation per pass)
    std::deque<uint32_t> parked_;    // waiting for an overlapping read-modify-write
    std::vector<uint32_t> deferred_;  // finished at submit time, delivered in submit_batch
};

}  // namespace icbd
