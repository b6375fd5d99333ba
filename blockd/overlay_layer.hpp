// The bottom layer of an overlay LUN: a client's overlay over the shared
// golden file (docs/overlay-format.md). Reads go to the overlay or the golden
// file per block; a write that covers a block only partly copies it up first;
// the allocation map goes to disk after the data it describes is durable.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "block_fill.hpp"
#include "data_layer.hpp"
#include "io_queue.hpp"
#include "lun_metrics.hpp"
#include "overlay_map.hpp"
#include "unmap_pieces.hpp"

namespace icbd {

class OverlayLayer final : public DataLayer {
public:
    OverlayLayer(IoQueue& io, OverlayMap& map);
    ~OverlayLayer() override;
    void set_metrics(LunMetrics* m) { metrics_ = m; }

    void read(uint8_t* buf, uint64_t len, uint64_t offset, Done done) override;
    void write(const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync, Done done) override;
    // Whole blocks are punched and marked present (they read as zeros, not as
    // golden data); partial blocks get zeros written.
    void unmap(uint64_t offset, uint64_t len, bool dsync, Done done) override;
    // fdatasync of the overlay, then the map bits it made durable.
    void sync(Done done) override;
    // Warms the shared golden file: that is where unwritten blocks come from.
    void prefetch(uint64_t offset, uint64_t len, Done done) override;
    bool write_rewrites_blocks(uint64_t offset, uint64_t len) const override {
        return map_.needs_copy_up(offset, len);
    }
    bool unmap_rewrites_blocks() const override { return true; }

private:
    struct WriteOp {
        OverlayLayer* layer;
        Done done;
        bool dsync;
        uint64_t offset, len;  // what the data write covers (whole blocks after a copy-up)
        BlockFill fill;
        Join edges;
    };
    struct PunchOp {
        OverlayLayer* layer;
        Done done;
        uint64_t offset, len;
    };
    struct SyncOp {
        OverlayLayer* layer;
        Done done;
        OverlayMap::Snapshot snapshot;
    };

    void write_data(WriteOp& op, const uint8_t* buf);
    static void copy_up_read(void* ctx, int error, IoOp failed);
    static void data_written(void* ctx, int error, IoOp failed);
    static void end_write(void* ctx, int error, IoOp failed);
    void punch(uint64_t offset, uint64_t len, Done done);
    static void punched(void* ctx, int error, IoOp failed);
    static void unmap_piece(void* self, const UnmapPieces::Piece& piece, bool dsync, Done done);
    static void synced(void* ctx, int error, IoOp failed);
    // Writes the map pages whose bits are durable: one batch at a time for
    // the whole LUN (a later batch is always a superset of an earlier one:
    // the durable map only grows, so whichever lands last on disk is right).
    void write_map(Done done);
    void map_written(int error, IoOp failed);

    IoQueue& io_;
    OverlayMap& map_;
    LunMetrics* metrics_ = nullptr;
    OpPool<FanIn> reads_;
    OpPool<WriteOp> writes_;
    OpPool<UnmapPieces> unmaps_;
    OpPool<SyncOp> syncs_;
    OpPool<PunchOp> punches_;
    // The map writer: one batch in flight, the others wait in order.
    bool map_busy_ = false;
    Done map_done_;
    std::vector<uint8_t> map_buf_;
    std::vector<OverlayMap::PageWrite> map_writes_;
    Join map_join_;
    std::deque<Done> map_waiters_;
};

}  // namespace icbd
