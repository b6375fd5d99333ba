// The contract between the data layers of one LUN (raw_layer, overlay_layer,
// cache_layer) and the command runner above them, with the two helpers every
// layer uses for its per-operation state: a fan-in (Join) and a pool (OpPool).
//
// Contract of every asynchronous call here (DataLayer, IoQueue, CacheLayer::commit):
//  - `done` runs exactly once, on success and on error alike: error 0, or a
//    positive errno with the kind of I/O that failed (what the sense data names).
//  - It may run before the call returns (nothing to wait for, or an immediate
//    error such as a failed cache), so a caller makes the call its last action
//    and touches nothing the completion may have reused.
//  - Otherwise it runs from IoQueue::reap(), on the LUN's one thread.
//  - Buffers passed in stay valid and unchanged until `done` ran.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "icbd/io_engine.hpp"

namespace icbd {

struct Done {
    void (*fn)(void* ctx, int error, IoOp op) = nullptr;
    void* ctx = nullptr;
    void operator()(int error, IoOp op) const { fn(ctx, error, op); }
};

// A Done that calls (obj->*Method)(error, op).
template <class T, void (T::*Method)(int, IoOp)>
Done done_of(T* obj) {
    return {[](void* c, int error, IoOp op) { (static_cast<T*>(c)->*Method)(error, op); }, obj};
}

// A layer of the LUN's data path: what the layer above (or the command
// runner) asks of it. Offsets and lengths are bytes of the LUN.
class DataLayer {
public:
    virtual ~DataLayer() = default;
    virtual void read(uint8_t* buf, uint64_t len, uint64_t offset, Done done) = 0;
    // dsync: the data is durable when `done` runs (FUA, or WCE=0).
    virtual void write(const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync, Done done) = 0;
    // Deallocates: the range reads as zeros afterwards. A layer may write
    // zeros instead (partial blocks), then with `dsync` as a write.
    virtual void unmap(uint64_t offset, uint64_t len, bool dsync, Done done) = 0;
    // Every write that completed before the call is durable when `done` runs.
    virtual void sync(Done done) = 0;
    // Starts readahead of the range where the data really lives.
    virtual void prefetch(uint64_t offset, uint64_t len, Done done) = 0;
    // True when a write of the range reads and rewrites the whole blocks
    // around it (copy-up, cache fill): the caller keeps every other write off
    // those blocks until it completed.
    virtual bool write_rewrites_blocks(uint64_t offset, uint64_t len) const = 0;
    // The same for unmap, anywhere on the LUN.
    virtual bool unmap_rewrites_blocks() const = 0;
};

// Fan-in of several calls into one completion; the first error wins. It
// holds one count of its own until seal(), so that a child completing
// before the next one is issued cannot end it early:
//   join.begin(then); call(..., join.child()); ...; join.seal();
class Join {
public:
    void begin(Done then) {
        then_ = then;
        pending_ = 1;
        error_ = 0;
        error_op_ = IoOp::read;
    }
    Done child() {
        ++pending_;
        return {&Join::one_done, this};
    }
    void seal() { one_done(this, 0, IoOp::read); }

private:
    static void one_done(void* ctx, int error, IoOp op) {
        auto* j = static_cast<Join*>(ctx);
        if (error && !j->error_) {
            j->error_ = error;
            j->error_op_ = op;
        }
        if (--j->pending_ == 0) j->then_(j->error_, j->error_op_);  // may reuse the join
    }
    Done then_;
    uint32_t pending_ = 0;
    int error_ = 0;
    IoOp error_op_ = IoOp::read;
};

// Per-operation state objects of a layer, reused (no allocation per
// operation once warm); addresses stay stable, so they serve as Done contexts.
template <class T>
class OpPool {
public:
    T& get() {
        if (free_.empty()) {
            all_.push_back(std::make_unique<T>());
            return *all_.back();
        }
        T* op = free_.back();
        free_.pop_back();
        return *op;
    }
    void put(T& op) { free_.push_back(&op); }

private:
    std::vector<std::unique_ptr<T>> all_;
    std::vector<T*> free_;
};

// A pooled Join that returns itself to its pool, then calls `done`: the
// whole state of an operation that only fans out (reads split in runs).
class FanIn {
public:
    static FanIn& begin(OpPool<FanIn>& pool, Done done) {
        FanIn& f = pool.get();
        f.pool_ = &pool;
        f.done_ = done;
        f.join_.begin({&FanIn::all_done, &f});
        return f;
    }
    Done child() { return join_.child(); }
    void seal() { join_.seal(); }

private:
    static void all_done(void* ctx, int error, IoOp op) {
        auto* f = static_cast<FanIn*>(ctx);
        Done done = f->done_;
        f->pool_->put(*f);
        done(error, op);
    }
    OpPool<FanIn>* pool_ = nullptr;
    Done done_;
    Join join_;
};

}  // namespace icbd
