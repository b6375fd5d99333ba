// Executes the SCSI data-path commands of one LUN: what each opcode means
// (byte ranges and conflicts between writes, compare, verify, the chunks of
// WRITE SAME and the descriptors of UNMAP) as calls into the LUN's stack of
// data layers, which it builds and owns:
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
#include "cache_layer.hpp"
#include "data_layer.hpp"
#include "icbd/io_engine.hpp"
#include "icbd/lun.hpp"
#include "io_queue.hpp"
#include "lun_metrics.hpp"
#include "overlay_layer.hpp"
#include "overlay_map.hpp"
#include "raw_layer.hpp"
#include "write_back_cache.hpp"

namespace icbd {

class BootRecorder;

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
    // Idle write-back of the cache (CacheFlusher::set_idle_timer).
    void set_idle_timer(int timer_fd, uint32_t idle_ms);
    void on_idle_timer();
    // Counters of host commands, the cache and the overlay go here (nullptr: none).
    void set_metrics(LunMetrics* m);
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

    void submit_inner(const LunCommand& cmd);
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

    LunHost host_;
    IoQueue io_;
    std::unique_ptr<RawLayer> raw_;
    std::unique_ptr<OverlayLayer> overlay_;
    std::unique_ptr<CacheLayer> cache_;  // above raw_ or overlay_: destroyed first
    DataLayer* top_ = nullptr;
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
