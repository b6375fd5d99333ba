// OverlayLayer: reads below (overlay or golden file, per block), copy-up of
// partly written blocks, UNMAP as holes, and the allocation map's writes.
#include "overlay_layer.hpp"

#include <cerrno>

namespace icbd {

OverlayLayer::OverlayLayer(IoQueue& io, OverlayMap& map) : io_(io), map_(map) {}

OverlayLayer::~OverlayLayer() = default;

void OverlayLayer::read(uint8_t* buf, uint64_t len, uint64_t offset, Done done) {
    FanIn* fan = nullptr;
    map_.for_each_run(offset, len, [&](bool in_overlay, uint64_t off, uint64_t n) {
        Done d = done;  // one run: no fan-in
        if (n != len) {
            if (!fan) fan = &FanIn::begin(reads_, done);
            d = fan->child();
        }
        if (in_overlay) io_.start({IoOp::read, map_.fd(), buf + (off - offset), n, map_.data_offset() + off}, d);
        else io_.start({IoOp::read, map_.golden_fd(), buf + (off - offset), n, off}, d);
    });
    if (fan) fan->seal();
}

// A write that covers a block only partly, where that block still comes from
// the golden file, first reads the edge blocks (from wherever they live now),
// then writes whole blocks: the copy-up. The command runner keeps other
// writes off these blocks meanwhile (write_rewrites_blocks).
void OverlayLayer::write(const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync, Done done) {
    WriteOp& op = writes_.get();
    op.layer = this;
    op.done = done;
    op.dsync = dsync;
    if (!map_.needs_copy_up(offset, len)) {
        op.offset = offset;
        op.len = len;
        return write_data(op, buf);
    }
    op.edges.begin({&OverlayLayer::copy_up_read, &op});
    const bool ok = op.fill.begin(buf, len, offset, map_.size(), [&](uint8_t* dst, uint64_t n, uint64_t at) {
        read(dst, n, at, op.edges.child());
    });
    if (!ok) return end_write(&op, ENOMEM, IoOp::write);
    op.offset = op.fill.start();
    op.len = op.fill.span();
    op.edges.seal();
}

void OverlayLayer::copy_up_read(void* ctx, int error, IoOp failed) {
    auto& op = *static_cast<WriteOp*>(ctx);
    if (error) return end_write(&op, error, failed);
    op.layer->write_data(op, op.fill.merge());
}

void OverlayLayer::write_data(WriteOp& op, const uint8_t* buf) {
    io_.start({IoOp::write, map_.fd(), const_cast<uint8_t*>(buf), op.len, map_.data_offset() + op.offset, op.dsync},
              {&OverlayLayer::data_written, &op});
}

void OverlayLayer::data_written(void* ctx, int error, IoOp failed) {
    auto& op = *static_cast<WriteOp*>(ctx);
    OverlayLayer& self = *op.layer;
    if (!error) {
        // Blocks that become present (copy-ups and first writes) come from the
        // map's own bit setting, not a second walk over the range.
        const uint64_t fresh = self.map_.mark_present(op.offset, op.len);
        if (self.metrics_ && fresh) metrics::add(self.metrics_->counters().overlay_blocks_written, fresh);
        if (op.dsync) {  // durable data: its bits may go to disk now, and must before the write completes
            self.map_.mark_durable(op.offset, op.len);
            if (self.map_.has_unwritten_pages()) return self.write_map({&OverlayLayer::end_write, &op});
        }
    }
    end_write(&op, error, failed);
}

void OverlayLayer::end_write(void* ctx, int error, IoOp failed) {
    auto& op = *static_cast<WriteOp*>(ctx);
    Done done = op.done;
    op.layer->writes_.put(op);
    done(error, failed);
}

void OverlayLayer::punch(uint64_t offset, uint64_t len, Done done) {
    PunchOp& op = punches_.get();
    op = {this, done, offset, len};
    io_.start({IoOp::punch_hole, map_.fd(), nullptr, len, map_.data_offset() + offset}, {&OverlayLayer::punched, &op});
}

void OverlayLayer::punched(void* ctx, int error, IoOp failed) {
    auto& op = *static_cast<PunchOp*>(ctx);
    if (!error) op.layer->map_.mark_present(op.offset, op.len);  // a hole in the overlay reads as zeros
    Done done = op.done;
    op.layer->punches_.put(op);
    done(error, failed);
}

void OverlayLayer::unmap(uint64_t offset, uint64_t len, bool dsync, Done done) {
    constexpr uint64_t bs = OverlayMap::block_size;
    UnmapPieces& u = UnmapPieces::begin(unmaps_, &OverlayLayer::unmap_piece, this, dsync, done);
    const uint64_t end = offset + len;
    const uint64_t a = (offset + bs - 1) / bs * bs;
    const uint64_t b = end == map_.size() ? (end + bs - 1) / bs * bs : end / bs * bs;
    if (a >= b) {
        for (uint64_t o = offset; o < end;) {  // within one or two blocks, no whole one
            uint64_t n = std::min(end, (o / bs + 1) * bs) - o;
            u.add(false, o, n);
            o += n;
        }
    } else {
        if (offset < a) u.add(false, offset, a - offset);
        u.add(true, a, b - a);
        if (b < end) u.add(false, b, end - b);
    }
    u.run();
}

void OverlayLayer::unmap_piece(void* self, const UnmapPieces::Piece& p, bool dsync, Done done) {
    auto& overlay = *static_cast<OverlayLayer*>(self);
    if (p.hole) return overlay.punch(p.offset, p.len, done);
    overlay.write(zero_source(), p.len, p.offset, dsync, done);
}

// Every map bit set before the fdatasync started has its data covered by
// it: the snapshot taken then may go to disk once it completed.
void OverlayLayer::sync(Done done) {
    SyncOp& op = syncs_.get();
    op.layer = this;
    op.done = done;
    op.snapshot = map_.snapshot_unsynced();
    io_.start({IoOp::fdatasync, map_.fd(), nullptr, 0, 0}, {&OverlayLayer::synced, &op});
}

void OverlayLayer::synced(void* ctx, int error, IoOp failed) {
    auto& op = *static_cast<SyncOp*>(ctx);
    OverlayLayer& self = *op.layer;
    // A failed fdatasync proves nothing about the data: those bits wait for
    // the next one (regression: they were dropped, and blocks acknowledged
    // before a failed SYNC read golden data after the next SYNC succeeded).
    if (!error) self.map_.apply_durable(op.snapshot);
    else self.map_.requeue_unsynced(op.snapshot);
    Done done = op.done;
    self.syncs_.put(op);
    if (error) return done(error, failed);
    self.write_map(done);
}

void OverlayLayer::prefetch(uint64_t offset, uint64_t len, Done done) {
    io_.start({IoOp::prefetch, map_.golden_fd(), nullptr, len, offset}, done);
}

// Map pages are written RWF_DSYNC.
void OverlayLayer::write_map(Done done) {
    if (!map_.has_unwritten_pages()) return done(0, IoOp::write);
    if (map_busy_) {
        map_waiters_.push_back(done);
        return;
    }
    map_writes_ = map_.take_unwritten_pages(map_buf_);
    if (map_writes_.empty()) return done(0, IoOp::write);
    map_busy_ = true;
    map_done_ = done;
    map_join_.begin(done_of<OverlayLayer, &OverlayLayer::map_written>(this));
    for (const auto& w : map_writes_)
        io_.start({IoOp::write, map_.fd(), map_buf_.data() + w.buf_offset, w.len, w.file_offset, true},
                  map_join_.child());
    map_join_.seal();
}

void OverlayLayer::map_written(int error, IoOp failed) {
    map_busy_ = false;
    if (error) map_.requeue_pages(map_writes_);
    Done done = map_done_;
    if (!map_waiters_.empty()) {
        Done next = map_waiters_.front();
        map_waiters_.pop_front();
        write_map(next);
    }
    done(error, failed);
}

}  // namespace icbd
