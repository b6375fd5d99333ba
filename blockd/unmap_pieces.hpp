// An UNMAP as a layer carries it out: pieces that become holes or get zeros
// written (partial blocks, blocks the cache holds), one after another, since
// a partial block's zeros may read and rewrite the block next to a hole.
#pragma once

#include <cstdint>
#include <vector>

#include "data_layer.hpp"

namespace icbd {

class UnmapPieces {
public:
    struct Piece {
        bool hole;  // else: zeros written
        uint64_t offset, len;
    };
    // Does one piece for `layer`; `done` as for any layer call.
    using Issue = void (*)(void* layer, const Piece& piece, bool dsync, Done done);

    static UnmapPieces& begin(OpPool<UnmapPieces>& pool, Issue issue, void* layer, bool dsync, Done done) {
        UnmapPieces& u = pool.get();
        u.pool_ = &pool;
        u.issue_ = issue;
        u.layer_ = layer;
        u.dsync_ = dsync;
        u.done_ = done;
        u.pieces_.clear();
        u.next_ = 0;
        return u;
    }
    void add(bool hole, uint64_t offset, uint64_t len) { pieces_.push_back({hole, offset, len}); }
    // Runs the pieces added; `done` after the last one or the first failure.
    void run() {
        if (next_ >= pieces_.size()) return end(0, IoOp::punch_hole);
        const Piece p = pieces_[next_++];
        issue_(layer_, p, dsync_, {&UnmapPieces::piece_done, this});
    }

private:
    static void piece_done(void* ctx, int error, IoOp failed) {
        auto& u = *static_cast<UnmapPieces*>(ctx);
        if (error) return u.end(error, failed);
        u.run();
    }
    void end(int error, IoOp failed) {
        Done done = done_;
        pool_->put(*this);
        done(error, failed);
    }
    OpPool<UnmapPieces>* pool_ = nullptr;
    Issue issue_ = nullptr;
    void* layer_ = nullptr;
    bool dsync_ = false;
    Done done_;
    std::vector<Piece> pieces_;
    size_t next_ = 0;
};

}  // namespace icbd
