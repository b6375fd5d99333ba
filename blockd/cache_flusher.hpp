// The write-back cache's background writer (docs/write-back-cache.md,
// "In bs_icbd's data path"): rounds of commit, write-back of committed dirty
// blocks below, FREE entries; idle write-back; the write-back before closing.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "aligned_buffer.hpp"
#include "cache_map.hpp"
#include "data_layer.hpp"

namespace icbd {

class CacheLayer;

class CacheFlusher {
public:
    // Where a round is; what a failure there has to undo (fail_round()).
    enum class Phase : uint8_t {
        idle,
        committing,            // a forced commit, so that there are committed blocks to write back
        reading_cache,         // the batch's blocks from the cache file
        writing_below,         // ... to the layer below
        syncing_below,         // ... made durable there
        writing_free_entries,  // FREE entries of written-back and superseded slots
        syncing_cache,         // ... made durable: their slots become reusable
    };

    explicit CacheFlusher(CacheLayer& cache) : cache_(cache) {}

    // Starts a round when there is work for one and none is running: the
    // cache above its low watermark, writes waiting for slots, FREE entries
    // to write, idle or closing.
    void kick();
    bool running() const { return running_; }
    // errno of the last failed round (0: none since the last good one).
    // After a failure only a write waiting for room starts another round.
    int error() const { return error_; }
    Phase phase() const { return phase_; }
    // Where the last failed round failed (idle: none since the last good one).
    Phase failed_phase() const { return failed_phase_; }

    // Idle write-back: `timer_fd` (a timerfd the host watches) is armed for
    // `idle_ms` when commands arrive; when it expires after a period without
    // any, the cache is committed and written back completely, so that a LUN
    // that went quiet (a desktop shut down) holds no dirty data and closes
    // fast. Host commands stop it after the round under way.
    void set_idle_timer(int timer_fd, uint32_t idle_ms);
    void on_idle_timer();
    void note_host_command();

    // Writes everything in the cache down (blocking, with progress in the
    // log); `pump` submits, waits for and delivers I/O. Used before closing.
    void drain(const std::function<void()>& pump);

private:
    void start_round();
    void committed(int error, IoOp failed);
    void select_batch();
    void batch_read(int error, IoOp failed);
    void batch_written(int error, IoOp failed);
    void batch_synced(int error, IoOp failed);
    void write_free_entries();
    void free_entries_written(int error, IoOp failed);
    void sync_cache();
    void cache_synced(int error, IoOp failed);
    void end_round();
    void fail_round(int error);
    bool wants_write_back() const;
    bool has_work() const;
    void arm_idle_timer();

    CacheLayer& cache_;
    bool running_ = false;
    Phase phase_ = Phase::idle;
    Phase failed_phase_ = Phase::idle;
    bool did_io_ = false;  // this round: a round without I/O does not start another
    int error_ = 0;
    bool draining_ = false;
    Join join_;
    FlushBatch batch_;
    AlignedBuffer buf_;
    std::vector<uint32_t> free_slots_;
    std::vector<uint8_t> free_buf_;
    uint64_t sync_token_ = 0;
    // Idle write-back: one timerfd, armed at most once per idle period (a
    // command while it runs only sets a flag), so a busy LUN costs one
    // timerfd_settime a period.
    int idle_timer_fd_ = -1;
    uint32_t idle_ms_ = 0;
    bool idle_timer_armed_ = false;
    bool host_active_ = false;  // a command arrived since the timer was armed
    bool idle_ = false;         // no command for idle_ms_: write everything back
};

}  // namespace icbd
