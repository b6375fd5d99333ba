// Executes SCSI data-path commands of one LUN as chains of asynchronous I/O
// (read-modify-write, compare, chunked WRITE SAME...). Internal to libblockd.
// One class, three files: command_runner.cpp (commands, tasks, completions),
// data_layers.cpp (raw file / overlay below, copy-up, UNMAP planning) and
// write_back.cpp (the write-back cache and its flusher).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "aligned_buffer.hpp"
#include "icbd/io_engine.hpp"
#include "icbd/lun.hpp"
#include "lun_metrics.hpp"
#include "overlay_map.hpp"
#include "write_back_cache.hpp"

namespace icbd {

class CommandRunner {
public:
    // `fd` serves everything; writes go to `write_fd` instead when it is open
    // (O_DIRECT writes beside cached reads). direct_reads: `fd` itself is
    // O_DIRECT (so are writes, then); direct I/O needs aligned buffers.
    // With `overlay`, `fd` is the overlay file; reads of blocks the client
    // never wrote go to the overlay's golden file (docs/overlay-format.md).
    // With `cache`, writes land in the write-back cache and a background
    // flusher writes them down (docs/write-back-cache.md).
    CommandRunner(IoEngine& engine, const LunHost& host, int fd, int write_fd, bool direct_reads, std::string name,
                  OverlayMap* overlay = nullptr, WriteBackCache* cache = nullptr);
    ~CommandRunner();

    void submit(const LunCommand& cmd);
    void submit_batch();
    void process_completions();
    size_t commands_in_flight() const { return active_; }
    // Completes everything in flight and writes the write-back cache down
    // (blocking, with progress in the log); used before closing the file.
    void drain();
    // Idle write-back: `timer_fd` (a timerfd the host watches) is armed for
    // `idle_ms` when commands arrive; when it expires after a period without
    // any, the cache is committed and written back completely, so that a LUN
    // that went quiet (a desktop shut down) holds no dirty data and closes
    // fast. Host commands stop it after the round under way.
    void set_idle_timer(int timer_fd, uint32_t idle_ms);
    void on_idle_timer();
    // Counters of host commands, the cache and the overlay go here (nullptr: none).
    void set_metrics(LunMetrics* m);

private:
    void submit_inner(const LunCommand& cmd);
    void reap_completions();
    enum class Kind : uint8_t { read, write, write_verify, orwrite, compare_and_write, sync, write_same, unmap,
                                prefetch, verify, invalid, flush /* the cache's background writer */ };
    static bool writes(Kind k) {
        return k == Kind::write || k == Kind::write_verify || k == Kind::orwrite || k == Kind::compare_and_write ||
               k == Kind::write_same || k == Kind::unmap;
    }
    struct SubOp {
        IoOp op;
        bool dsync;
        bool overlay_data;  // a write/punch of the overlay's data area: marks blocks present when done
        int32_t cache_run;  // a cache data/entry write: index into Task::cruns, else -1
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
        std::vector<Piece> pieces;  // UNMAP on an overlay or a cached LUN, one at a time
        bool copy_to_cache = false;   // the filled blocks go to the cache, not below
        // Write-back cache mode.
        bool internal = false;        // the flusher: no host command behind it
        bool cache_parked = false;    // waiting for free cache slots
        std::vector<uint32_t> pins;   // cache slots pinned by reads in flight
        const uint8_t* cw_buf = nullptr;  // the aligned write being put into the cache
        uint64_t cw_lba = 0, cw_blocks = 0, cw_next = 0, cw_max_seq = 0;
        bool cw_dsync = false;
        struct CacheRun {
            uint32_t first_slot, count;
            uint64_t first_block;  // index into the write, in blocks
            uint8_t ops_left;
            bool failed;
        };
        std::vector<CacheRun> cruns;
        std::vector<uint8_t> entry_buf;  // entry images of this write, stable while in flight
        bool commit_wanted = false;      // a durable write: commit before going on
        uint8_t commit_stage = 0;        // 1: fdatasync, 2: superblock write
        uint64_t commit_barrier = 0;
        CommitTicket ticket;
        FlushBatch batch;                // the flusher's
        AlignedBuffer flush_buf;
        std::vector<uint32_t> free_slots;
        std::vector<uint8_t> free_buf;
        uint64_t sync_token = 0;
        uint64_t start_ns = 0;  // metrics: when the host submitted it
    };

    Task& alloc_task();
    void start(Task& t);
    void issue(Task& t, IoOp op, uint8_t* buf, uint64_t len, uint64_t offset, bool dsync = false, int fd = -1,
               bool overlay_data = false, int32_t cache_run = -1);
    // LUN-level operations: on a raw LUN one I/O each, on an overlay LUN routed
    // by the allocation map (reads split per run, copy-up, map persistence).
    void read_lun(Task& t, uint8_t* buf, uint64_t len, uint64_t offset);
    void write_lun(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync);
    void sync_lun(Task& t);
    // Below the cache (or without one): the overlay or the raw file.
    void read_lower(Task& t, uint8_t* buf, uint64_t len, uint64_t offset);
    void write_lower(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync);
    void punch_lower(Task& t, uint64_t len, uint64_t offset);
    void sync_lower(Task& t);
    void after_lower_sync(Task& t);
    // Reads the partly written edge blocks, merges, then writes whole blocks.
    void start_fill(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync, bool to_cache);
    void finish_copy_up(Task& t);
    // Write-back cache.
    void cache_read(Task& t, uint8_t* buf, uint64_t len, uint64_t offset);
    void cache_write(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync);
    void cache_write_blocks(Task& t, const uint8_t* buf, uint64_t first_block, uint64_t blocks, bool dsync);
    void cache_write_continue(Task& t);
    void issue_cache_run(Task& t, size_t run);
    void cache_run_done(Task& t, size_t run);
    void cache_commit(Task& t, uint64_t barrier, bool force = false);
    void cache_commit_step(Task& t);
    void cache_changed();  // slots written, committed or freed: wake whoever waits
    void kick_background();
    void flush_step(Task& t);
    void plan_cached_unmap(Task& t, uint64_t offset, uint64_t len);
    void write_map(Task& t);
    void release_map_writer(Task& t);
    void plan_overlay_unmap(Task& t, uint64_t offset, uint64_t len);
    void plan_unmap(Task& t, uint64_t offset, uint64_t len);
    void next_unmap_piece(Task& t);
    void on_io(Task& t, uint32_t op_index, int32_t res);
    void advance(Task& t);
    void finish(Task& t);
    void fail(Task& t, uint8_t key, uint16_t asc);
    bool conflicts(const Task& t) const;
    void wake_parked();
    void kick();
    void record_completion(const Task& t);
    void publish_cache_counts();

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
    uint32_t write_align_;  // O_DIRECT offset/length alignment of write_fd_
    int fd_for(IoOp op) const { return op == IoOp::write && write_fd_ >= 0 ? write_fd_ : fd_; }
    bool needs_alignment(IoOp op) const {
        return (op == IoOp::read && direct_reads_) || (op == IoOp::write && direct_writes_);
    }
    std::string name_;  // for messages: the backing file
    OverlayMap* overlay_;
    std::deque<uint32_t> map_waiters_;  // tasks waiting to write the overlay map
    WriteBackCache* cache_;
    std::vector<uint32_t> commit_waiters_;  // tasks waiting to commit the cache
    std::deque<uint32_t> cache_waiters_;    // writes waiting for free cache slots
    bool flusher_running_ = false;
    bool draining_ = false;
    void arm_idle_timer();
    bool cache_has_work() const;
    int idle_timer_fd_ = -1;
    uint32_t idle_ms_ = 0;
    bool idle_timer_armed_ = false;
    bool host_active_ = false;  // a command arrived since the timer was armed
    bool idle_ = false;         // no command for idle_ms_: write everything back
    bool lower_dirty_ = false;  // UNMAP went below the cache: SYNCHRONIZE CACHE syncs below too
    size_t internal_active_ = 0;
    std::string flush_error_;   // the last write-back failure, for parked writers and drain
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
    LunMetrics* metrics_ = nullptr;
};

}  // namespace icbd
