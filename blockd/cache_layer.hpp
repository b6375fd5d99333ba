// The write-back cache as a data layer (docs/write-back-cache.md): reads
// from cache slots or below, writes into slots (parked while the cache is
// full), commits, UNMAP; above the overlay or the raw layer. Its background
// writer is the CacheFlusher it owns.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "block_fill.hpp"
#include "cache_flusher.hpp"
#include "data_layer.hpp"
#include "io_queue.hpp"
#include "lun_metrics.hpp"
#include "unmap_pieces.hpp"
#include "write_back_cache.hpp"

namespace icbd {

class CacheLayer final : public DataLayer {
public:
    CacheLayer(IoQueue& io, WriteBackCache& cache, DataLayer& below);
    ~CacheLayer() override;
    void set_metrics(LunMetrics* m);

    void read(uint8_t* buf, uint64_t len, uint64_t offset, Done done) override;
    // Into cache slots (a partial block is filled from its current data
    // first); with dsync, committed before `done`. EIO once the cache failed.
    void write(const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync, Done done) override;
    // A block with data in the cache gets zeros written into the cache (its
    // newest version must read as zeros, whatever older versions the cache or
    // the layer below hold); the others are unmapped below directly.
    void unmap(uint64_t offset, uint64_t len, bool dsync, Done done) override;
    // Commits what was written; syncs below first when UNMAP went there.
    void sync(Done done) override;
    void prefetch(uint64_t offset, uint64_t len, Done done) override { below_.prefetch(offset, len, done); }
    bool write_rewrites_blocks(uint64_t offset, uint64_t len) const override;
    bool unmap_rewrites_blocks() const override { return true; }

    // One commit at a time (fdatasync of the cache, superblock RWF_DSYNC):
    // `done` runs once committed_seq >= barrier (`force`: also starts a
    // commit when one would commit anything, even without a barrier).
    void commit(uint64_t barrier, bool force, Done done);
    // Slots were written, committed or freed: wakes commits and writes that
    // wait, kicks the flusher.
    void changed();

    CacheFlusher& flusher() { return flusher_; }
    WriteBackCache& cache() { return cache_; }
    CacheMap& map() { return cache_.map(); }
    DataLayer& below() { return below_; }
    IoQueue& io() { return io_; }
    LunMetrics* metrics() { return metrics_; }
    bool writers_waiting() const { return !parked_.empty(); }
    void publish_counts();

private:
    struct WriteOp;
    struct Run {  // consecutive slots: one data write and one entry write
        WriteOp* op;
        uint32_t first_slot, count;
        uint64_t first_block;  // index into the write, in blocks
        uint8_t ios_left;
        bool failed;
    };
    struct WriteOp {
        CacheLayer* layer;
        Done done;
        bool dsync;
        const uint8_t* buf;
        uint64_t lba, blocks, next, max_seq;
        uint32_t pending;  // I/O in flight, plus one while issuing
        bool parked;       // waiting for free slots
        int error;
        IoOp error_op;
        std::vector<Run> runs;          // reserved for `blocks`: never moves while in flight
        std::vector<uint8_t> entries;   // entry images, stable while in flight
        BlockFill fill;
        Join edges;
    };
    struct ReadOp {
        CacheLayer* layer;
        Done done;
        std::vector<uint32_t> pins;  // slots read from: not reused meanwhile
        Join join;
    };
    struct SyncOp {
        CacheLayer* layer;
        Done done;
        uint64_t barrier;
    };
    struct CommitWaiter {
        uint64_t barrier;
        bool force;
        Done done;
    };

    static void read_done(void* ctx, int error, IoOp failed);
    static void fill_read(void* ctx, int error, IoOp failed);
    void write_blocks(WriteOp& op, const uint8_t* buf, uint64_t first_block, uint64_t blocks);
    void continue_write(WriteOp& op);
    void issue_run(Run& run);
    static void run_io_done(void* ctx, int error, IoOp failed);
    void settle(WriteOp& op);
    void end_write(WriteOp& op);
    static void unmap_piece(void* self, const UnmapPieces::Piece& piece, bool dsync, Done done);
    static void below_synced(void* ctx, int error, IoOp failed);
    void commit_synced(int error, IoOp failed);
    void commit_written(int error, IoOp failed);
    void commit_failed(int error, IoOp failed);

    IoQueue& io_;
    WriteBackCache& cache_;
    DataLayer& below_;
    LunMetrics* metrics_ = nullptr;
    bool below_dirty_ = false;  // UNMAP went below: the next sync syncs below too
    OpPool<ReadOp> reads_;
    OpPool<WriteOp> writes_;
    OpPool<UnmapPieces> unmaps_;
    OpPool<SyncOp> syncs_;
    struct Segment {
        bool cached;
        uint64_t offset, len, file_offset;  // file_offset: in the cache file, when cached
    };
    std::vector<Segment> segments_;  // read(): scratch
    std::deque<WriteOp*> parked_;              // writes waiting for free slots
    std::vector<CommitWaiter> commit_waiters_;
    CommitTicket ticket_;  // of the commit in progress
    Done commit_done_;
    CacheFlusher flusher_;
};

}  // namespace icbd
