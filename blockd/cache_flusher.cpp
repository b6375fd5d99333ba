// CacheFlusher: one round at a time, started when the cache is above its low
// watermark, when writes wait for slots, when idle or when closing. A round:
// commit what is committable, write a batch of committed dirty blocks below in
// LBA order (coalesced), sync below, then free their slots (FREE entries,
// fdatasync of the cache).
#include "cache_flusher.hpp"

#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "cache_layer.hpp"
#include "icbd/log.hpp"
#include "overlay_map.hpp"

namespace icbd {
namespace {
constexpr uint64_t bs = kCacheBlockSize;
constexpr uint64_t batch_bytes = 4u << 20;
}  // namespace

void CacheFlusher::kick() {
    // A failed cache takes no new data, but what it committed is still
    // written back when the LUN closes.
    WriteBackCache& c = cache_.cache();
    if (running_ || (c.failed && !draining_)) return;
    const CacheMap& m = c.map();
    const bool want = draining_ || idle_ || cache_.writers_waiting() || m.free_entries_pending() ||
                      m.urgency(c.watermarks) != FlushUrgency::none;
    if (!want) return;
    // After a failed round, only a write waiting for room starts another (it
    // is failed with the error if that fails too); never a retry loop.
    if (error_ && !cache_.writers_waiting()) return;
    running_ = true;
    start_round();
}

void CacheFlusher::start_round() {
    CacheMap& m = cache_.map();
    did_io_ = false;
    if (m.needs_commit() && !cache_.cache().failed) {  // so that there are committed blocks to write back
        did_io_ = true;
        phase_ = Phase::committing;
        return cache_.commit(m.committable_seq(), true, done_of<CacheFlusher, &CacheFlusher::committed>(this));
    }
    select_batch();
}

void CacheFlusher::committed(int error, IoOp) {
    if (error) return fail_round(error);
    select_batch();
}

bool CacheFlusher::wants_write_back() const {
    const WriteBackCache& c = cache_.cache();
    return draining_ || idle_ || cache_.writers_waiting() || c.map().urgency(c.watermarks) != FlushUrgency::none;
}

// Below the low watermark only FREE entries are written (a round may start
// just for them): write-back waits for need, idleness or closing.
void CacheFlusher::select_batch() {
    CacheMap& m = cache_.map();
    batch_ = wants_write_back() ? m.select_flush(batch_bytes) : FlushBatch{};
    if (batch_.empty()) return write_free_entries();
    phase_ = Phase::reading_cache;
    uint8_t* b = buf_.reserve(batch_.blocks * bs);
    if (!b) return fail_round(ENOMEM);
    join_.begin(done_of<CacheFlusher, &CacheFlusher::batch_read>(this));
    uint64_t pos = 0;
    for (const FlushRun& r : batch_.runs)
        for (size_t i = 0; i < r.slots.size(); ++pos) {
            size_t k = 1;  // consecutive slots: one read
            while (i + k < r.slots.size() && r.slots[i + k] == r.slots[i] + k) ++k;
            cache_.io().start({IoOp::read, cache_.cache().fd(), b + pos * bs, k * bs, m.block_offset(r.slots[i])},
                              join_.child());
            pos += k - 1;
            i += k;
        }
    join_.seal();
}

void CacheFlusher::batch_read(int error, IoOp) {
    if (error) return fail_round(error);
    phase_ = Phase::writing_below;
    join_.begin(done_of<CacheFlusher, &CacheFlusher::batch_written>(this));
    uint64_t pos = 0;
    for (const FlushRun& r : batch_.runs) {
        cache_.below().write(buf_.get() + pos * bs, r.slots.size() * bs, r.first_lba * bs, false, join_.child());
        pos += r.slots.size();
    }
    join_.seal();
}

void CacheFlusher::batch_written(int error, IoOp) {
    if (error) return fail_round(error);
    phase_ = Phase::syncing_below;
    cache_.below().sync(done_of<CacheFlusher, &CacheFlusher::batch_synced>(this));
}

void CacheFlusher::batch_synced(int error, IoOp) {
    if (error) return fail_round(error);
    cache_.map().flush_done(batch_);
    if (LunMetrics* m = cache_.metrics()) metrics::add(m->counters().cache_flush_bytes, batch_.blocks * bs);
    batch_ = {};
    write_free_entries();
}

// FREE entries of written-back and superseded slots.
void CacheFlusher::write_free_entries() {
    CacheMap& m = cache_.map();
    if (cache_.cache().failed) return end_round();  // nothing more is written to a failed cache
    free_slots_ = m.take_free_entry_writes();
    if (free_slots_.empty()) {
        if (m.free_entries_pending()) return sync_cache();
        return end_round();
    }
    phase_ = Phase::writing_free_entries;
    std::sort(free_slots_.begin(), free_slots_.end());
    free_buf_.resize(free_slots_.size() * kCacheEntrySize);
    for (size_t i = 0; i < free_slots_.size(); ++i) {
        auto image = m.entry_image(free_slots_[i]);
        std::memcpy(free_buf_.data() + i * kCacheEntrySize, image.data(), kCacheEntrySize);
    }
    join_.begin(done_of<CacheFlusher, &CacheFlusher::free_entries_written>(this));
    for (size_t i = 0; i < free_slots_.size();) {
        size_t k = 1;
        while (i + k < free_slots_.size() && free_slots_[i + k] == free_slots_[i] + k) ++k;
        cache_.io().start({IoOp::write, cache_.cache().fd(), free_buf_.data() + i * kCacheEntrySize,
                           k * kCacheEntrySize, m.entry_offset(free_slots_[i])},
                          join_.child());
        i += k;
    }
    join_.seal();
}

void CacheFlusher::free_entries_written(int error, IoOp) {
    if (error) return fail_round(error);
    for (uint32_t slot : free_slots_) cache_.map().free_entry_written(slot);
    sync_cache();
}

void CacheFlusher::sync_cache() {
    phase_ = Phase::syncing_cache;
    sync_token_ = cache_.map().begin_cache_sync();
    cache_.io().start({IoOp::fdatasync, cache_.cache().fd(), nullptr, 0, 0},
                      done_of<CacheFlusher, &CacheFlusher::cache_synced>(this));
}

void CacheFlusher::cache_synced(int error, IoOp) {
    if (error) return fail_round(error);
    did_io_ = true;
    cache_.map().end_cache_sync(sync_token_);
    error_ = 0;
    failed_phase_ = Phase::idle;
    end_round();
}

// Another round, or done. A round without I/O ends the flusher without
// starting another: what it waits for is in flight, and its completion
// kicks again.
void CacheFlusher::end_round() {
    const WriteBackCache& c = cache_.cache();
    const CacheMap& m = c.map();
    const bool more = cache_.writers_waiting() || m.urgency(c.watermarks) != FlushUrgency::none ||
                      (draining_ && m.counts().used() > 0) || (idle_ && m.counts().dirty > 0) ||
                      m.free_entries_pending();
    if (did_io_ && more) return start_round();
    running_ = false;
    phase_ = Phase::idle;
    if (idle_ && !has_work()) idle_ = false;  // clean: nothing until the next command
    if (did_io_) cache_.changed();
}

void CacheFlusher::fail_round(int error) {
    WriteBackCache& c = cache_.cache();
    CacheMap& m = c.map();
    if (phase_ == Phase::writing_free_entries || phase_ == Phase::syncing_cache) {
        c.failed = true;  // FREE entries could not be made durable
        log(LogLevel::error, "cache '" + c.path() + "': writing FREE entries: " + std::strerror(error) +
                                 "; the cache refuses writes from now on");
    }
    if (phase_ == Phase::reading_cache || phase_ == Phase::writing_below || phase_ == Phase::syncing_below)
        m.flush_failed(batch_);
    error_ = error;
    failed_phase_ = phase_;
    log(LogLevel::error, "cache '" + c.path() + "': writing back: " + std::strerror(error) + " (" +
                             std::to_string(m.counts().dirty) + " dirty blocks stay in the cache)");
    running_ = false;
    phase_ = Phase::idle;
    cache_.changed();
}

// ---- idle write-back ----

void CacheFlusher::set_idle_timer(int timer_fd, uint32_t idle_ms) {
    idle_timer_fd_ = idle_ms ? timer_fd : -1;
    idle_ms_ = idle_ms;
}

bool CacheFlusher::has_work() const {
    const CacheMap& m = cache_.cache().map();
    return m.counts().dirty > 0 || m.needs_commit() || m.free_entries_pending();
}

void CacheFlusher::arm_idle_timer() {
    itimerspec its{};
    its.it_value.tv_sec = idle_ms_ / 1000;
    its.it_value.tv_nsec = static_cast<long>(idle_ms_ % 1000) * 1000000;
    if (::timerfd_settime(idle_timer_fd_, 0, &its, nullptr) == 0) idle_timer_armed_ = true;
    else log(LogLevel::warning, "cache '" + cache_.cache().path() + "': idle timer: " + std::strerror(errno));
}

void CacheFlusher::note_host_command() {
    host_active_ = true;
    idle_ = false;  // the host is back: idle write-back stops after its round
    if (idle_timer_fd_ >= 0 && !idle_timer_armed_) arm_idle_timer();
}

void CacheFlusher::on_idle_timer() {
    idle_timer_armed_ = false;
    if (idle_timer_fd_ < 0 || cache_.cache().failed) return;
    if (host_active_) {  // not idle yet: look again one period after the last look
        host_active_ = false;
        if (has_work()) arm_idle_timer();
        return;
    }
    if (!has_work()) return;
    idle_ = true;
    kick();
}

// ---- before closing ----

void CacheFlusher::drain(const std::function<void()>& pump) {
    using Clock = std::chrono::steady_clock;
    WriteBackCache& c = cache_.cache();
    CacheMap& m = c.map();
    const uint64_t total = m.counts().used();
    const auto t0 = Clock::now();
    auto last = t0;
    if (total)
        log(LogLevel::info, "cache '" + c.path() + "': writing back " + std::to_string(total) + " blocks (" +
                                std::to_string(total * OverlayMap::block_size >> 20) + " MiB) before closing");
    draining_ = true;
    // A failed cache is done when nothing committed is left to write back;
    // its slots are not freed (nothing more is written to it).
    auto left = [&] { return c.failed ? m.counts().dirty + m.counts().flushing : m.counts().used(); };
    error_ = 0;
    while (left() > 0 || running_ || cache_.io().in_flight() > 0) {
        // A write-back round that failed (the cache or the device below gives
        // errors) is not retried here: closing must end in bounded time.
        if (!error_) kick();
        if (!running_ && cache_.io().in_flight() == 0 && left() > 0) {
            log(LogLevel::error, "cache '" + c.path() + "': " + std::to_string(left()) +
                                     " blocks could not be written back (" +
                                     (error_ ? std::string(std::strerror(error_)) : std::string("no progress")) +
                                     "); they stay in the cache and are written back when it is opened again");
            break;
        }
        pump();
        if (Clock::now() - last > std::chrono::seconds(1)) {
            last = Clock::now();
            log(LogLevel::info, "cache '" + c.path() + "': " + std::to_string(left()) + " of " +
                                    std::to_string(total) + " blocks left to write back");
        }
    }
    draining_ = false;
    if (total)
        log(LogLevel::info,
            "cache '" + c.path() + "': written back in " +
                std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count()) +
                " ms");
}

}  // namespace icbd
