// The write-back cache in the data path: reads and writes through cache slots,
// commits, and the background flusher (docs/write-back-cache.md, "In bs_icbd's
// data path"). Members of CommandRunner (command_runner.hpp).
#include <sys/timerfd.h>

#include <algorithm>
#include <cstring>

#include "command_runner.hpp"
#include "icbd/log.hpp"

namespace icbd {


void CommandRunner::cache_read(Task& t, uint8_t* buf, uint64_t len, uint64_t offset) {
    constexpr uint64_t bs = OverlayMap::block_size;
    CacheMap& m = cache_->map();
    // Coalesce: consecutive cached blocks in consecutive slots are one read,
    // consecutive uncached blocks one read below.
    uint64_t seg_off = offset, seg_len = 0, seg_file = 0;
    bool seg_cached = false;
    auto flush_segment = [&]() {
        if (!seg_len) return;
        if (seg_cached) issue(t, IoOp::read, buf + (seg_off - offset), seg_len, seg_file, false, cache_->fd());
        else read_lower(t, buf + (seg_off - offset), seg_len, seg_off);
        seg_len = 0;
    };
    for (uint64_t o = offset, end = offset + len; o < end;) {
        const uint64_t block = o / bs, n = std::min(end, (block + 1) * bs) - o;
        auto slot = m.acquire_read(block);
        const uint64_t file = slot ? m.block_offset(*slot) + o % bs : 0;
        if (slot) t.pins.push_back(*slot);
        const bool joins = seg_len && seg_cached == slot.has_value() && (!slot || seg_file + seg_len == file);
        if (!joins) {
            flush_segment();
            seg_off = o;
            seg_cached = slot.has_value();
            seg_file = file;
        }
        seg_len += n;
        o += n;
    }
    flush_segment();
}

void CommandRunner::cache_write(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync) {
    constexpr uint64_t bs = OverlayMap::block_size;
    if (cache_->failed) {
        t.error = EIO;
        t.error_op = IoOp::write;
        if (t.pending == 0) advance(t);
        return;
    }
    if ((offset | len) % bs) return start_fill(t, buf, len, offset, dsync, true);
    cache_write_blocks(t, buf, offset / bs, len / bs, dsync);
}

void CommandRunner::cache_write_blocks(Task& t, const uint8_t* buf, uint64_t first_block, uint64_t blocks, bool dsync) {
    t.cw_buf = buf;
    t.cw_lba = first_block;
    t.cw_blocks = blocks;
    t.cw_next = 0;
    t.cw_dsync = dsync;
    t.cruns.clear();
    t.entry_buf.assign(blocks * kCacheEntrySize, 0);  // never reallocated while its writes fly
    cache_write_continue(t);
}

// Allocates a slot per block and writes data and entries, one write each per
// run of consecutive slots; parks the task when the cache has no free slot
// (the flusher makes room), so a full cache slows writes down instead of
// failing them.
void CommandRunner::cache_write_continue(Task& t) {
    CacheMap& m = cache_->map();
    bool open_run = false;
    while (t.cw_next < t.cw_blocks) {
        auto a = m.allocate(t.cw_lba + t.cw_next);
        if (!a) break;
        t.cw_max_seq = std::max(t.cw_max_seq, a->seq);
        auto image = m.entry_image(a->slot);
        std::memcpy(t.entry_buf.data() + t.cw_next * kCacheEntrySize, image.data(), kCacheEntrySize);
        if (open_run && a->slot == t.cruns.back().first_slot + t.cruns.back().count) {
            ++t.cruns.back().count;
        } else {
            if (open_run) issue_cache_run(t, t.cruns.size() - 1);
            t.cruns.push_back({a->slot, 1, t.cw_next, 2, false});
            open_run = true;
        }
        ++t.cw_next;
    }
    if (open_run) issue_cache_run(t, t.cruns.size() - 1);
    if (t.cw_next < t.cw_blocks) {
        t.cache_parked = true;
        cache_waiters_.push_back(t.index);
        kick_background();
        return;
    }
    if (t.cw_dsync) t.commit_wanted = true;
    if (t.pending == 0) advance(t);  // cannot happen (a run was just issued); stay safe
}

void CommandRunner::issue_cache_run(Task& t, size_t run) {
    constexpr uint64_t bs = OverlayMap::block_size;
    CacheMap& m = cache_->map();
    const Task::CacheRun& r = t.cruns[run];
    const auto idx = static_cast<int32_t>(run);
    issue(t, IoOp::write, const_cast<uint8_t*>(t.cw_buf) + r.first_block * bs, uint64_t(r.count) * bs,
          m.block_offset(r.first_slot), false, cache_->fd(), false, idx);
    // The entries of exactly these slots: no other write in flight covers them.
    issue(t, IoOp::write, t.entry_buf.data() + r.first_block * kCacheEntrySize, uint64_t(r.count) * kCacheEntrySize,
          m.entry_offset(r.first_slot), false, cache_->fd(), false, idx);
}

void CommandRunner::cache_run_done(Task& t, size_t run) {
    CacheMap& m = cache_->map();
    const Task::CacheRun& r = t.cruns[run];
    for (uint32_t k = 0; k < r.count; ++k) {
        if (r.failed) m.write_failed(r.first_slot + k);
        else m.mark_written(r.first_slot + k);
    }
    cache_changed();
}

// One commit at a time (fdatasync, superblock RWF_DSYNC); a task whose writes
// are not committable yet, or that finds a commit running, waits and is
// looked at again whenever the cache changes.
void CommandRunner::cache_commit(Task& t, uint64_t barrier, bool force) {
    CacheMap& m = cache_->map();
    if (cache_->failed) {
        t.error = EIO;
        t.error_op = IoOp::fdatasync;
        return advance(t);
    }
    if (m.committed_seq() >= barrier && !(force && m.needs_commit() && !m.commit_in_progress())) return advance(t);
    if (m.commit_in_progress() || m.committable_seq() < barrier) {
        t.commit_barrier = barrier;
        commit_waiters_.push_back(t.index);
        return;
    }
    t.ticket = m.begin_commit();
    t.commit_stage = 1;
    issue(t, IoOp::fdatasync, nullptr, 0, 0, false, cache_->fd());
}

void CommandRunner::cache_commit_step(Task& t) {
    CacheMap& m = cache_->map();
    if (t.error) {
        m.commit_failed(t.ticket);
        t.commit_stage = 0;
        cache_->failed = true;
        log(LogLevel::error, "cache '" + cache_->path() + "': commit failed: " + std::strerror(t.error) +
                                 "; the cache refuses writes from now on");
        cache_changed();
        return advance(t);
    }
    if (t.commit_stage == 1) {
        t.commit_stage = 2;
        return issue(t, IoOp::write, t.ticket.superblock.data(), t.ticket.superblock.size(), t.ticket.superblock_offset,
                     true, cache_->fd());
    }
    t.commit_stage = 0;
    m.commit_done(t.ticket);
    if (metrics_) metrics::add(metrics_->counters().cache_commits, 1);
    cache_changed();
    advance(t);
}

void CommandRunner::cache_changed() {
    if (metrics_) publish_cache_counts();
    if (!commit_waiters_.empty() && !cache_->map().commit_in_progress()) {
        std::vector<uint32_t> waiting;
        waiting.swap(commit_waiters_);
        for (uint32_t idx : waiting) {
            Task& w = *tasks_[idx];
            cache_commit(w, w.commit_barrier, w.kind == Kind::flush);
        }
    }
    for (size_t n = cache_waiters_.size(); n > 0 && !cache_waiters_.empty(); --n) {
        uint32_t idx = cache_waiters_.front();
        cache_waiters_.pop_front();
        Task& w = *tasks_[idx];
        if (!flush_error_.empty() && !flusher_running_) {  // nothing will make room: fail it clearly
            w.cache_parked = false;
            if (!w.error) w.error = flush_error_.find("No space") != std::string::npos ? ENOSPC : EIO;
            w.error_op = IoOp::write;
            if (w.pending == 0) advance(w);
            continue;
        }
        w.cache_parked = false;
        cache_write_continue(w);  // may park it again
    }
    kick_background();
}

// ---- idle write-back ----
// One timerfd per LUN, armed at most once per idle period (a command while it
// runs only sets a flag), so a busy LUN costs one timerfd_settime a period.

void CommandRunner::set_idle_timer(int timer_fd, uint32_t idle_ms) {
    idle_timer_fd_ = idle_ms && cache_ ? timer_fd : -1;
    idle_ms_ = idle_ms;
}

bool CommandRunner::cache_has_work() const {
    const CacheMap& m = cache_->map();
    return m.counts().dirty > 0 || m.needs_commit() || m.free_entries_pending();
}

void CommandRunner::arm_idle_timer() {
    itimerspec its{};
    its.it_value.tv_sec = idle_ms_ / 1000;
    its.it_value.tv_nsec = static_cast<long>(idle_ms_ % 1000) * 1000000;
    if (::timerfd_settime(idle_timer_fd_, 0, &its, nullptr) == 0) idle_timer_armed_ = true;
    else log(LogLevel::warning, "cache '" + cache_->path() + "': idle timer: " + std::strerror(errno));
}

void CommandRunner::on_idle_timer() {
    idle_timer_armed_ = false;
    if (idle_timer_fd_ < 0 || cache_->failed) return;
    if (host_active_) {  // not idle yet: look again one period after the last look
        host_active_ = false;
        if (cache_has_work()) arm_idle_timer();
        return;
    }
    if (!cache_has_work()) return;
    idle_ = true;
    kick_background();
}

// The flusher: one internal task at a time, started when the cache is above
// its low watermark, when writes wait for slots, or when draining. Each round:
// commit what is committable, write a batch of committed dirty blocks below in
// LBA order (coalesced), fdatasync below, then free their slots (FREE entries,
// fdatasync of the cache).
void CommandRunner::kick_background() {
    // A failed cache takes no new data, but what it committed is still
    // written back when the LUN closes.
    if (!cache_ || flusher_running_ || (cache_->failed && !draining_)) return;
    CacheMap& m = cache_->map();
    const bool want = draining_ || idle_ || !cache_waiters_.empty() || m.free_entries_pending() ||
                      m.urgency(cache_->watermarks) != FlushUrgency::none;
    if (!want) return;
    // After a failed round, only a write waiting for room starts another (it
    // is failed with the error if that fails too); never a retry loop.
    if (!flush_error_.empty() && cache_waiters_.empty()) return;
    Task& t = alloc_task();
    t.internal = true;
    t.running = true;
    t.kind = Kind::flush;
    t.phase = 0;
    flusher_running_ = true;
    ++internal_active_;
    flush_step(t);
}

void CommandRunner::flush_step(Task& t) {
    constexpr uint64_t bs = OverlayMap::block_size;
    constexpr uint64_t batch_bytes = 4u << 20;
    CacheMap& m = cache_->map();
    if (t.error) {
        if (t.phase == 7 || t.phase == 8) {  // FREE entries could not be made durable
            cache_->failed = true;
            log(LogLevel::error, "cache '" + cache_->path() + "': writing FREE entries: " + std::strerror(t.error) +
                                     "; the cache refuses writes from now on");
        }
        if (t.phase >= 2 && t.phase <= 6 && t.phase != 5) m.flush_failed(t.batch);
        flush_error_ = std::strerror(t.error);
        log(LogLevel::error, "cache '" + cache_->path() + "': writing back: " + flush_error_ + " (" +
                                 std::to_string(m.counts().dirty) + " dirty blocks stay in the cache)");
        flusher_running_ = false;
        t.error = 0;
        finish(t);
        cache_changed();
        return;
    }
    switch (t.phase) {
        case 0:  // commit, so that flushing has committed blocks to work on
            t.phase = 1;
            t.cursor = 0;  // I/O done this round
            if (m.needs_commit() && !cache_->failed) {
                t.cursor = 1;
                return cache_commit(t, m.committable_seq(), true);
            }
            [[fallthrough]];
        case 1: {
            // Below the low watermark only FREE entries are written (a round
            // may start just for them): write-back waits for need or close.
            const bool write_back = draining_ || idle_ || !cache_waiters_.empty() ||
                                    m.urgency(cache_->watermarks) != FlushUrgency::none;
            t.batch = write_back ? m.select_flush(batch_bytes) : FlushBatch{};
            if (t.batch.empty()) {
                t.phase = 5;
                return flush_step(t);
            }
            uint8_t* b = t.flush_buf.reserve(t.batch.blocks * bs);
            if (!b) {
                m.flush_failed(t.batch);
                t.error = ENOMEM;
                t.phase = 0;
                return flush_step(t);
            }
            t.phase = 2;
            uint64_t pos = 0;
            for (const FlushRun& r : t.batch.runs)
                for (size_t i = 0; i < r.slots.size(); ++pos) {
                    size_t k = 1;  // consecutive slots: one read
                    while (i + k < r.slots.size() && r.slots[i + k] == r.slots[i] + k) ++k;
                    issue(t, IoOp::read, b + pos * bs, k * bs, m.block_offset(r.slots[i]), false, cache_->fd());
                    pos += k - 1;
                    i += k;
                }
            return;
        }
        case 2: {  // read: write each run below
            t.phase = 3;
            uint64_t pos = 0;
            for (const FlushRun& r : t.batch.runs) {
                write_lower(t, t.flush_buf.get() + pos * bs, r.slots.size() * bs, r.first_lba * bs, false);
                pos += r.slots.size();
            }
            return;
        }
        case 3:  // written: make it durable below
            t.phase = 4;
            return sync_lower(t);
        case 4:
            t.phase = 6;
            after_lower_sync(t);  // an overlay's map goes to disk (advance's map hook) before we go on
            return advance(t);
        case 6:
            m.flush_done(t.batch);
            if (metrics_) metrics::add(metrics_->counters().cache_flush_bytes, t.batch.blocks * bs);
            t.batch = {};
            [[fallthrough]];
        case 5: {  // FREE entries of flushed and superseded slots
            if (cache_->failed) {  // nothing more is written to a failed cache
                t.phase = 9;
                return flush_step(t);
            }
            t.free_slots = m.take_free_entry_writes();
            if (!t.free_slots.empty()) {
                t.phase = 7;
                std::sort(t.free_slots.begin(), t.free_slots.end());
                t.free_buf.resize(t.free_slots.size() * kCacheEntrySize);
                for (size_t i = 0; i < t.free_slots.size(); ++i) {
                    auto image = m.entry_image(t.free_slots[i]);
                    std::memcpy(t.free_buf.data() + i * kCacheEntrySize, image.data(), kCacheEntrySize);
                }
                for (size_t i = 0; i < t.free_slots.size();) {
                    size_t k = 1;
                    while (i + k < t.free_slots.size() && t.free_slots[i + k] == t.free_slots[i] + k) ++k;
                    issue(t, IoOp::write, t.free_buf.data() + i * kCacheEntrySize, k * kCacheEntrySize,
                          m.entry_offset(t.free_slots[i]), false, cache_->fd());
                    i += k;
                }
                return;
            }
            if (m.free_entries_pending()) {
                t.phase = 8;
                t.sync_token = m.begin_cache_sync();
                return issue(t, IoOp::fdatasync, nullptr, 0, 0, false, cache_->fd());
            }
            t.phase = 9;
            return flush_step(t);
        }
        case 7:
            for (uint32_t slot : t.free_slots) m.free_entry_written(slot);
            t.phase = 8;
            t.sync_token = m.begin_cache_sync();
            return issue(t, IoOp::fdatasync, nullptr, 0, 0, false, cache_->fd());
        case 8:
            t.cursor = 1;
            m.end_cache_sync(t.sync_token);
            flush_error_.clear();
            [[fallthrough]];
        default: {  // another round, or done
            // A round without I/O ends the flusher without re-kicking it:
            // what it waits for is in flight, and its completion kicks again.
            const bool did_io = t.phase == 8 || t.cursor;
            const bool more = !cache_waiters_.empty() || m.urgency(cache_->watermarks) != FlushUrgency::none ||
                              (draining_ && m.counts().used() > 0) || (idle_ && m.counts().dirty > 0) ||
                              m.free_entries_pending();
            if (did_io && more) {
                t.phase = 0;
                return flush_step(t);
            }
            flusher_running_ = false;
            if (idle_ && !cache_has_work()) idle_ = false;  // clean: nothing until the next command
            finish(t);
            if (did_io) cache_changed();
        }
    }
}

}  // namespace icbd
