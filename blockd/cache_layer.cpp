// CacheLayer: where a cached LUN's reads and writes go (cache slots or
// below), the cache's commits, and UNMAP on a cached LUN.
#include "cache_layer.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "icbd/log.hpp"

namespace icbd {
namespace {
constexpr uint64_t bs = kCacheBlockSize;
}  // namespace

CacheLayer::CacheLayer(IoQueue& io, WriteBackCache& cache, DataLayer& below)
    : io_(io), cache_(cache), below_(below), flusher_(*this) {}

CacheLayer::~CacheLayer() = default;

void CacheLayer::set_metrics(LunMetrics* m) {
    metrics_ = m;
    if (metrics_) publish_counts();
}

void CacheLayer::publish_counts() {
    CacheCounts n = map().counts();
    metrics::LunCounters& c = metrics_->counters();
    metrics::set(c.cache_blocks_total, n.total);
    metrics::set(c.cache_blocks_used, n.used());
    metrics::set(c.cache_blocks_dirty, n.writing + n.dirty_uncommitted + n.dirty + n.flushing);
}

bool CacheLayer::write_rewrites_blocks(uint64_t offset, uint64_t len) const {
    return (offset | len) % bs != 0 || below_.write_rewrites_blocks(offset, len);
}

// ---- reads ----

void CacheLayer::read(uint8_t* buf, uint64_t len, uint64_t offset, Done done) {
    CacheMap& m = map();
    ReadOp& op = reads_.get();
    op.layer = this;
    op.done = done;
    op.pins.clear();
    // Coalesce: consecutive cached blocks in consecutive slots are one read,
    // consecutive uncached blocks one read below.
    segments_.clear();
    for (uint64_t o = offset, end = offset + len; o < end;) {
        const uint64_t block = o / bs, n = std::min(end, (block + 1) * bs) - o;
        auto slot = m.acquire_read(block);
        const uint64_t file = slot ? m.block_offset(*slot) + o % bs : 0;
        if (slot) op.pins.push_back(*slot);
        Segment* last = segments_.empty() ? nullptr : &segments_.back();
        if (last && last->cached == slot.has_value() && (!slot || last->file_offset + last->len == file)) last->len += n;
        else segments_.push_back({slot.has_value(), o, n, file});
        o += n;
    }
    if (op.pins.empty()) {  // nothing cached: one read below, nothing to release after it
        reads_.put(op);
        return below_.read(buf, len, offset, done);
    }
    op.join.begin({&CacheLayer::read_done, &op});
    for (const Segment& s : segments_) {
        if (s.cached) io_.start({IoOp::read, cache_.fd(), buf + (s.offset - offset), s.len, s.file_offset}, op.join.child());
        else below_.read(buf + (s.offset - offset), s.len, s.offset, op.join.child());
    }
    op.join.seal();
}

void CacheLayer::read_done(void* ctx, int error, IoOp failed) {
    auto& op = *static_cast<ReadOp*>(ctx);
    CacheLayer& self = *op.layer;
    for (uint32_t slot : op.pins) self.map().release_read(slot);
    Done done = op.done;
    self.reads_.put(op);
    self.changed();
    done(error, failed);
}

// ---- writes ----

void CacheLayer::write(const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync, Done done) {
    if (cache_.failed) return done(EIO, IoOp::write);
    WriteOp& op = writes_.get();
    op.layer = this;
    op.done = done;
    op.dsync = dsync;
    op.max_seq = 0;
    op.pending = 0;
    op.parked = false;
    op.error = 0;
    op.error_op = IoOp::write;
    if ((offset | len) % bs == 0) return write_blocks(op, buf, offset / bs, len / bs);
    // A partial block: read the edge blocks (from the cache or below), merge,
    // write whole blocks. The command runner keeps other writes off them.
    op.edges.begin({&CacheLayer::fill_read, &op});
    const bool ok = op.fill.begin(buf, len, offset, map().device_blocks() * bs, [&](uint8_t* dst, uint64_t n, uint64_t at) {
        read(dst, n, at, op.edges.child());
    });
    if (!ok) {
        op.error = ENOMEM;
        return end_write(op);
    }
    op.edges.seal();
}

void CacheLayer::fill_read(void* ctx, int error, IoOp failed) {
    auto& op = *static_cast<WriteOp*>(ctx);
    if (error) {
        op.error = error;
        op.error_op = failed;
        return op.layer->end_write(op);
    }
    op.layer->write_blocks(op, op.fill.merge(), op.fill.start() / bs, op.fill.span() / bs);
}

void CacheLayer::write_blocks(WriteOp& op, const uint8_t* buf, uint64_t first_block, uint64_t blocks) {
    op.buf = buf;
    op.lba = first_block;
    op.blocks = blocks;
    op.next = 0;
    op.runs.clear();
    op.runs.reserve(blocks);
    op.entries.assign(blocks * kCacheEntrySize, 0);
    continue_write(op);
}

// Allocates a slot per block and writes data and entries, one write each per
// run of consecutive slots; parks the write when the cache has no free slot
// (the flusher makes room), so a full cache slows writes down instead of
// failing them.
void CacheLayer::continue_write(WriteOp& op) {
    CacheMap& m = map();
    ++op.pending;  // held while issuing: nothing ends the write before settle() below
    bool open_run = false;
    while (op.next < op.blocks) {
        auto a = m.allocate(op.lba + op.next);
        if (!a) break;
        op.max_seq = std::max(op.max_seq, a->seq);
        auto image = m.entry_image(a->slot);
        std::memcpy(op.entries.data() + op.next * kCacheEntrySize, image.data(), kCacheEntrySize);
        if (open_run && a->slot == op.runs.back().first_slot + op.runs.back().count) {
            ++op.runs.back().count;
        } else {
            if (open_run) issue_run(op.runs.back());
            op.runs.push_back({&op, a->slot, 1, op.next, 2, false});
            open_run = true;
        }
        ++op.next;
    }
    if (open_run) issue_run(op.runs.back());
    if (op.next < op.blocks) {
        op.parked = true;
        parked_.push_back(&op);
        flusher_.kick();
    }
    settle(op);
}

void CacheLayer::issue_run(Run& r) {
    CacheMap& m = map();
    WriteOp& op = *r.op;
    op.pending += 2;
    io_.start({IoOp::write, cache_.fd(), const_cast<uint8_t*>(op.buf) + r.first_block * bs, uint64_t(r.count) * bs,
               m.block_offset(r.first_slot)},
              {&CacheLayer::run_io_done, &r});
    // The entries of exactly these slots: no other write in flight covers them.
    io_.start({IoOp::write, cache_.fd(), op.entries.data() + r.first_block * kCacheEntrySize,
               uint64_t(r.count) * kCacheEntrySize, m.entry_offset(r.first_slot)},
              {&CacheLayer::run_io_done, &r});
}

void CacheLayer::run_io_done(void* ctx, int error, IoOp failed) {
    Run& r = *static_cast<Run*>(ctx);
    WriteOp& op = *r.op;
    CacheLayer& self = *op.layer;
    if (error) {
        r.failed = true;
        if (!op.error) {
            op.error = error;
            op.error_op = failed;
        }
    }
    if (--r.ios_left == 0) {
        CacheMap& m = self.map();
        for (uint32_t k = 0; k < r.count; ++k) {
            if (r.failed) m.write_failed(r.first_slot + k);
            else m.mark_written(r.first_slot + k);
        }
        self.changed();
    }
    self.settle(op);
}

void CacheLayer::settle(WriteOp& op) {
    if (--op.pending == 0 && !op.parked) end_write(op);
}

// A durable write (FUA, WCE=0) is committed before it completes.
void CacheLayer::end_write(WriteOp& op) {
    Done done = op.done;
    const int error = op.error;
    const IoOp failed = op.error_op;
    const bool commit_now = op.dsync && !error;
    const uint64_t barrier = op.max_seq;
    writes_.put(op);
    if (commit_now) return commit(barrier, false, done);
    done(error, failed);
}

// ---- commits ----

void CacheLayer::commit(uint64_t barrier, bool force, Done done) {
    CacheMap& m = map();
    if (cache_.failed) return done(EIO, IoOp::fdatasync);
    if (m.committed_seq() >= barrier && !(force && m.needs_commit() && !m.commit_in_progress()))
        return done(0, IoOp::fdatasync);
    // A write that is not committable yet, or a commit already running:
    // looked at again whenever the cache changes.
    if (m.commit_in_progress() || m.committable_seq() < barrier) {
        commit_waiters_.push_back({barrier, force, done});
        return;
    }
    ticket_ = m.begin_commit();
    commit_done_ = done;
    io_.start({IoOp::fdatasync, cache_.fd(), nullptr, 0, 0}, done_of<CacheLayer, &CacheLayer::commit_synced>(this));
}

void CacheLayer::commit_synced(int error, IoOp failed) {
    if (error) return commit_failed(error, failed);
    io_.start({IoOp::write, cache_.fd(), ticket_.superblock.data(), ticket_.superblock.size(),
               ticket_.superblock_offset, true},
              done_of<CacheLayer, &CacheLayer::commit_written>(this));
}

void CacheLayer::commit_written(int error, IoOp failed) {
    if (error) return commit_failed(error, failed);
    map().commit_done(ticket_);
    if (metrics_) metrics::add(metrics_->counters().cache_commits, 1);
    Done done = commit_done_;  // changed() may start the next commit
    changed();
    done(0, IoOp::write);
}

void CacheLayer::commit_failed(int error, IoOp failed) {
    map().commit_failed(ticket_);
    cache_.failed = true;
    log(LogLevel::error, "cache '" + cache_.path() + "': commit failed: " + std::strerror(error) +
                             "; the cache refuses writes from now on");
    Done done = commit_done_;
    changed();
    done(error, failed);
}

void CacheLayer::changed() {
    if (metrics_) publish_counts();
    if (!commit_waiters_.empty() && !map().commit_in_progress()) {
        std::vector<CommitWaiter> waiting;
        waiting.swap(commit_waiters_);
        for (const CommitWaiter& w : waiting) commit(w.barrier, w.force, w.done);
    }
    for (size_t n = parked_.size(); n > 0 && !parked_.empty(); --n) {
        WriteOp& w = *parked_.front();
        parked_.pop_front();
        w.parked = false;
        if (flusher_.error() && !flusher_.running()) {  // nothing will make room: fail it clearly
            if (!w.error) w.error = flusher_.error() == ENOSPC ? ENOSPC : EIO;
            w.error_op = IoOp::write;
            if (w.pending == 0) end_write(w);
            continue;
        }
        continue_write(w);  // may park it again
    }
    flusher_.kick();
}

// ---- UNMAP, SYNCHRONIZE CACHE ----

void CacheLayer::unmap(uint64_t offset, uint64_t len, bool dsync, Done done) {
    constexpr uint64_t zero_chunk = zero_source_bytes;
    UnmapPieces& u = UnmapPieces::begin(unmaps_, &CacheLayer::unmap_piece, this, dsync, done);
    const uint64_t end = offset + len;
    const uint64_t a = std::min(end, (offset + bs - 1) / bs * bs), b = std::max(a, end / bs * bs);
    if (offset < a) u.add(false, offset, a - offset);  // partial blocks: zeros
    const std::vector<uint64_t> cached = map().cached_lbas(a / bs, b / bs);
    size_t i = 0;
    for (uint64_t o = a; o < b;) {
        uint64_t e;
        if (i < cached.size() && cached[i] * bs == o) {  // cached: zeros, in chunks the zero source covers
            for (e = o + bs, ++i; i < cached.size() && cached[i] * bs == e && e - o < zero_chunk; ++i) e += bs;
            u.add(false, o, e - o);
        } else {  // up to the next cached block: unmapped below
            e = i < cached.size() ? cached[i] * bs : b;
            u.add(true, o, e - o);
        }
        o = e;
    }
    if (b < end && b >= a) u.add(false, b, end - b);
    u.run();
}

void CacheLayer::unmap_piece(void* self, const UnmapPieces::Piece& p, bool dsync, Done done) {
    auto& cache = *static_cast<CacheLayer*>(self);
    if (p.hole) {
        cache.below_dirty_ = true;
        return cache.below_.unmap(p.offset, p.len, dsync, done);
    }
    cache.write(zero_source(), p.len, p.offset, dsync, done);
}

// Acknowledged writes are durable once committed in the cache; what went
// below directly (UNMAP) needs a sync below as well.
void CacheLayer::sync(Done done) {
    const uint64_t barrier = map().last_seq();
    if (!below_dirty_) return commit(barrier, false, done);
    below_dirty_ = false;
    SyncOp& op = syncs_.get();
    op = {this, done, barrier};
    below_.sync({&CacheLayer::below_synced, &op});
}

void CacheLayer::below_synced(void* ctx, int error, IoOp failed) {
    auto& op = *static_cast<SyncOp*>(ctx);
    CacheLayer& self = *op.layer;
    Done done = op.done;
    const uint64_t barrier = op.barrier;
    self.syncs_.put(op);
    if (error) return done(error, failed);
    self.commit(barrier, false, done);
}

}  // namespace icbd
