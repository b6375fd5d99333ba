// Executes the SCSI data-path commands of one LUN: what each opcode means
// (byte ranges and conflicts between writes, compare, verify, the chunks of
// WRITE SAME and the descriptors of UNMAP) as calls into the top of the LUN's
// stack of data layers, which the Lun builds and owns (lun.cpp):
//   CacheLayer (cache_layer.hpp) with its CacheFlusher, when there is a cache
//   OverlayLayer (overlay_layer.hpp) or RawLayer (raw_layer.hpp)
//   IoQueue (io_queue.hpp): the I/O engine, one submission per loop pass
// Contract of the layers' calls: data_layer.hpp. Internal to libblockd.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "aligned_buffer.hpp"
#include "data_layer.hpp"
#include "icbd/lun.hpp"
#include "io_queue.hpp"
#include "lun_metrics.hpp"

namespace icbd {

class BootRecorder;

class CommandRunner {
public:
    // `top` is the top layer of the stack over `io`; both outlive the runner.
    CommandRunner(IoQueue& io, DataLayer& top, const LunHost& host);
    ~CommandRunner();

    // An exception out of submit() (memory for the command's state or its
    // I/O) means the command was not taken: its completion never runs, and
    // nothing started for it touches its buffers once submit() has left
    // (abandon()). Commands taken before are unaffected.
    void submit(const LunCommand& cmd);
    void submit_batch();
    void process_completions();
    size_t commands_in_flight() const { return active_; }
    // Completes every command in flight (blocking); used before closing.
    void drain();
    // Counters of host commands go here (nullptr: none).
    void set_metrics(LunMetrics* m) { metrics_ = m; }
    // Every READ's range goes to it (docs/boot-set.md); null: no recording.
    void set_boot_recorder(BootRecorder* r) { recorder_ = r; }

private:
    enum class Kind : uint8_t { read, write, write_verify, orwrite, compare_and_write, sync, write_same, unmap,
                                prefetch, verify, invalid };
    static bool writes(Kind k) {
        return k == Kind::write || k == Kind::write_verify || k == Kind::orwrite || k == Kind::compare_and_write ||
               k == Kind::write_same || k == Kind::unmap;
    }
    // What to do when the layer call under way completes.
    enum class Next : uint8_t {
        finish,             // it was the command's last
        read_back,          // WRITE AND VERIFY: written; read it back
        compare_read_back,  // WRITE AND VERIFY: compare with the data-out
        or_and_write,       // ORWRITE: OR the data-out into what was read, write it
        compare_and_write,  // COMPARE AND WRITE: compare the first half, write the second
        write_same_chunk,   // WRITE SAME: the next chunk
        verify_chunk,       // VERIFY: compare the chunk read, read the next
        unmap_extent,       // UNMAP: the next descriptor
    };
    struct Task {
        CommandRunner* runner = nullptr;
        uint32_t index = 0;
        bool busy = false;
        bool running = false;  // started (not parked)
        bool abandoned = false;  // an exception left submit() while it started: never completes, never reused
        LunCommand cmd;
        Kind kind = Kind::read;
        Next next = Next::finish;
        bool holds_range = false;
        bool rewrites_blocks = false;  // may copy up / fill: holds its block-aligned range
        uint64_t range_start = 0, range_end = 0;
        uint64_t cursor = 0;  // WRITE SAME, VERIFY: bytes done; UNMAP: descriptors done
        uint64_t chunk = 0;   // WRITE SAME, VERIFY: size of the chunk in flight
        ScsiResult result;
        AlignedBuffer scratch;
        std::vector<std::pair<uint64_t, uint64_t>> extents;  // UNMAP: (offset, length) in bytes
        Join extents_done;  // UNMAP on a raw LUN: all descriptors in parallel
        uint64_t start_ns = 0;  // metrics: when the host submitted it
    };

    void submit_inner(Task& t);
    void abandon(Task& t);
    Task& alloc_task();
    void start(Task& t);
    bool conflicts(const Task& t) const;
    Done done_for(Task& t, Next next) {
        t.next = next;
        return {&CommandRunner::layer_done, &t};
    }
    static void layer_done(void* ctx, int error, IoOp failed);
    void proceed(Task& t);
    void start_write_same(Task& t);
    void next_write_same_chunk(Task& t);
    void start_unmap(Task& t);
    void next_unmap_extent(Task& t);
    void next_verify_chunk(Task& t);
    bool compare_verify_chunk(Task& t);
    void fail(Task& t, uint8_t key, uint16_t asc);
    void finish(Task& t);
    void wake_parked();
    void record_completion(const Task& t);

    IoQueue& io_;
    DataLayer* top_;
    LunHost host_;
    bool in_submit_ = false;  // completions found inside submit() are deferred
    size_t active_ = 0;
    size_t range_holders_ = 0;  // running read-modify-write commands
    std::vector<std::unique_ptr<Task>> tasks_;
    std::vector<uint32_t> free_;
    std::vector<uint32_t> ready_;    // deferred_ being finished (kept: no allocation per pass)
    std::deque<uint32_t> parked_;    // waiting for an overlapping read-modify-write
    std::vector<uint32_t> deferred_;  // finished at submit time, delivered in submit_batch
    LunMetrics* metrics_ = nullptr;
    BootRecorder* recorder_ = nullptr;
};

}  // namespace icbd
