// The data layers under the SCSI commands of one LUN: the write-back cache when
// there is one, then a client overlay over its golden file, or the raw file.
// Members of CommandRunner (command_runner.hpp); formats in docs/.
#include <algorithm>
#include <cstring>

#include "command_runner.hpp"
#include "scsi.hpp"

namespace icbd {

// Three layers (docs/overlay-format.md, docs/write-back-cache.md): the
// write-back cache when there is one, then the overlay or the raw file.

void CommandRunner::read_lun(Task& t, uint8_t* buf, uint64_t len, uint64_t offset) {
    if (cache_) return cache_read(t, buf, len, offset);
    read_lower(t, buf, len, offset);
}

void CommandRunner::write_lun(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync) {
    if (cache_) return cache_write(t, buf, len, offset, dsync);
    write_lower(t, buf, len, offset, dsync);
}

void CommandRunner::sync_lun(Task& t) {
    if (cache_) {
        // Acknowledged writes are durable once committed in the cache; what
        // went below directly (UNMAP) needs an fdatasync below as well.
        t.commit_barrier = cache_->map().last_seq();
        if (!lower_dirty_) {
            t.phase = 2;
            return cache_commit(t, t.commit_barrier);
        }
        lower_dirty_ = false;
    }
    sync_lower(t);
}

void CommandRunner::read_lower(Task& t, uint8_t* buf, uint64_t len, uint64_t offset) {
    if (!overlay_) return issue(t, IoOp::read, buf, len, offset);
    overlay_->for_each_run(offset, len, [&](bool in_overlay, uint64_t off, uint64_t n) {
        if (in_overlay) issue(t, IoOp::read, buf + (off - offset), n, overlay_->data_offset() + off, false, fd_);
        else issue(t, IoOp::read, buf + (off - offset), n, off, false, overlay_->golden_fd());
    });
}

void CommandRunner::write_lower(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync) {
    if (!overlay_) return issue(t, IoOp::write, const_cast<uint8_t*>(buf), len, offset, dsync);
    if (!overlay_->needs_copy_up(offset, len))
        return issue(t, IoOp::write, const_cast<uint8_t*>(buf), len, overlay_->data_offset() + offset, dsync, fd_,
                     true);
    start_fill(t, buf, len, offset, dsync, false);
}

void CommandRunner::punch_lower(Task& t, uint64_t len, uint64_t offset) {
    if (overlay_) issue(t, IoOp::punch_hole, nullptr, len, overlay_->data_offset() + offset, false, fd_, true);
    else issue(t, IoOp::punch_hole, nullptr, len, offset);
}

void CommandRunner::sync_lower(Task& t) {
    if (overlay_) t.snapshot = overlay_->snapshot_unsynced();
    issue(t, IoOp::fdatasync, nullptr, 0, 0);
}

// Everything written below before the fdatasync started is durable: so are
// the overlay map bits snapshotted then, which may now go to disk.
void CommandRunner::after_lower_sync(Task& t) {
    if (!overlay_) return;
    overlay_->apply_durable(t.snapshot);
    t.map_write_needed = true;
}

// Reads the edge blocks a write covers only partly (from wherever they live
// now), then writes whole blocks: to the overlay (copy-up) or to the cache.
// The task holds these blocks (see submit_inner), so nothing else writes them
// meanwhile.
void CommandRunner::start_fill(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync,
                               bool to_cache) {
    constexpr uint64_t bs = OverlayMap::block_size;
    const uint64_t start = offset - offset % bs, end = (offset + len + bs - 1) / bs * bs;
    const uint64_t size = t.cmd.lun_size;
    uint8_t* b = t.copy_buf.reserve(end - start);
    if (!b) {
        t.error = ENOMEM;
        if (t.pending == 0) fail(t, scsi::key::hardware_error, scsi::asc::internal_target_failure);
        return;
    }
    t.copy_active = true;
    t.copy_to_cache = to_cache;
    t.copy_src = buf;
    t.copy_off = offset;
    t.copy_len = len;
    t.copy_start = start;
    t.copy_span = end - start;
    t.copy_dsync = dsync;
    std::memset(b, 0, bs);
    std::memset(b + (end - start) - bs, 0, bs);
    auto covered = [&](uint64_t block_off) {
        return offset <= block_off && offset + len >= std::min(block_off + bs, size);
    };
    auto read_block = [&](uint64_t block_off) {
        uint64_t n = std::min(bs, size - block_off);  // a final short block
        if (to_cache) read_lun(t, b + (block_off - start), n, block_off);
        else read_lower(t, b + (block_off - start), n, block_off);
    };
    if (!covered(start)) read_block(start);
    if (end - bs != start && !covered(end - bs)) read_block(end - bs);
    if (t.pending == 0) finish_copy_up(t);  // nothing to read (cannot happen; stay safe)
}

void CommandRunner::finish_copy_up(Task& t) {
    t.copy_active = false;
    uint8_t* b = t.copy_buf.get();
    std::memcpy(b + (t.copy_off - t.copy_start), t.copy_src, t.copy_len);
    if (t.copy_to_cache)
        return cache_write_blocks(t, b, t.copy_start / OverlayMap::block_size, t.copy_span / OverlayMap::block_size,
                                  t.copy_dsync);
    issue(t, IoOp::write, b, t.copy_span, overlay_->data_offset() + t.copy_start, t.copy_dsync, fd_, true);
}

// Map pages are written RWF_DSYNC, one batch at a time for the whole LUN: a
// later batch is always a superset of an earlier one (the durable map only
// grows), so whichever lands last on disk is right.
void CommandRunner::write_map(Task& t) {
    if (overlay_->map_writer_busy) {
        map_waiters_.push_back(t.index);
        return;
    }
    t.map_writes = overlay_->take_unwritten_pages(t.map_buf);
    if (t.map_writes.empty()) return advance(t);
    overlay_->map_writer_busy = true;
    t.owns_map_writer = true;
    for (const auto& w : t.map_writes) issue(t, IoOp::write, t.map_buf.data() + w.buf_offset, w.len, w.file_offset, true, fd_);
}

void CommandRunner::release_map_writer(Task& t) {
    t.owns_map_writer = false;
    overlay_->map_writer_busy = false;
    if (t.error) overlay_->requeue_pages(t.map_writes);
    if (!map_waiters_.empty()) {
        uint32_t idx = map_waiters_.front();
        map_waiters_.pop_front();
        write_map(*tasks_[idx]);
    }
}

void CommandRunner::plan_unmap(Task& t, uint64_t offset, uint64_t len) {
    if (cache_) plan_cached_unmap(t, offset, len);
    else plan_overlay_unmap(t, offset, len);
}

// UNMAP on an overlay: whole blocks are punched and marked present (they read
// as zeros, not as golden data); partial blocks get zeros written.
void CommandRunner::plan_overlay_unmap(Task& t, uint64_t offset, uint64_t len) {
    constexpr uint64_t bs = OverlayMap::block_size;
    const uint64_t end = offset + len;
    const uint64_t a = (offset + bs - 1) / bs * bs;
    const uint64_t b = end == overlay_->size() ? (end + bs - 1) / bs * bs : end / bs * bs;
    if (a >= b) {
        for (uint64_t o = offset; o < end;) {  // within one or two blocks, no whole one
            uint64_t n = std::min(end, (o / bs + 1) * bs) - o;
            t.pieces.push_back({false, o, n});
            o += n;
        }
        return;
    }
    if (offset < a) t.pieces.push_back({false, offset, a - offset});
    t.pieces.push_back({true, a, b - a});
    if (b < end) t.pieces.push_back({false, b, end - b});
}

// UNMAP on a cached LUN: a block with data in the cache gets zeros written
// into the cache (the newest version of a block must read as zeros, whatever
// older versions the cache or the device below hold); the others are
// deallocated below directly. Partial blocks get zeros written.
void CommandRunner::plan_cached_unmap(Task& t, uint64_t offset, uint64_t len) {
    constexpr uint64_t bs = OverlayMap::block_size;
    constexpr uint64_t zero_chunk = 256 * bs;  // the zero source buffer's size
    const uint64_t end = offset + len;
    const uint64_t a = std::min(end, (offset + bs - 1) / bs * bs), b = std::max(a, end / bs * bs);
    if (offset < a) t.pieces.push_back({false, offset, a - offset});
    const std::vector<uint64_t> cached = cache_->map().cached_lbas(a / bs, b / bs);
    size_t i = 0;
    for (uint64_t o = a; o < b;) {
        uint64_t e;
        if (i < cached.size() && cached[i] * bs == o) {  // cached: zeros, in chunks the zero buffer covers
            for (e = o + bs, ++i; i < cached.size() && cached[i] * bs == e && e - o < zero_chunk; ++i) e += bs;
            t.pieces.push_back({false, o, e - o});
        } else {  // up to the next cached block: deallocated below
            e = i < cached.size() ? cached[i] * bs : b;
            t.pieces.push_back({true, o, e - o});
        }
        o = e;
    }
    if (b < end && b >= a) t.pieces.push_back({false, b, end - b});
}

void CommandRunner::next_unmap_piece(Task& t) {
    static const uint8_t zeros[256 * OverlayMap::block_size] = {};
    if (t.cursor >= t.pieces.size()) return finish(t);
    const Task::Piece p = t.pieces[t.cursor++];
    if (p.punch) {
        if (cache_) lower_dirty_ = true;
        return punch_lower(t, p.len, p.offset);
    }
    write_lun(t, zeros, p.len, p.offset, !t.cmd.write_cache_enabled);
}

}  // namespace icbd
