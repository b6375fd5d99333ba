// Read-merge-write of a write that covers its first or last block only
// partly (the overlay's copy-up, the cache's partial-block fill): the edge
// blocks are read into one buffer, the write's bytes copied over them, and
// whole blocks written. Also the zeros UNMAP writes into partial blocks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "aligned_buffer.hpp"

namespace icbd {

class BlockFill {
public:
    static constexpr uint64_t block = 4096;

    // Prepares the fill of a write of `len` bytes from `src` at `offset` on a
    // device of `size` bytes, calling read_edge(dst, n, offset) for each edge
    // block the write does not cover entirely. False: no memory.
    template <class ReadEdge>
    bool begin(const uint8_t* src, uint64_t len, uint64_t offset, uint64_t size, ReadEdge&& read_edge) {
        start_ = offset - offset % block;
        const uint64_t end = (offset + len + block - 1) / block * block;
        span_ = end - start_;
        uint8_t* b = buf_.reserve(span_);
        if (!b) return false;
        src_ = src;
        offset_ = offset;
        len_ = len;
        std::memset(b, 0, block);  // a final short block reads less than a block
        std::memset(b + span_ - block, 0, block);
        auto covered = [&](uint64_t at) { return offset <= at && offset + len >= std::min(at + block, size); };
        auto read = [&](uint64_t at) { read_edge(b + (at - start_), std::min(block, size - at), at); };
        if (!covered(start_)) read(start_);
        if (end - block != start_ && !covered(end - block)) read(end - block);
        return true;
    }
    // After the edge reads: the whole blocks to write, span() bytes at start().
    const uint8_t* merge() {
        std::memcpy(buf_.get() + (offset_ - start_), src_, len_);
        return buf_.get();
    }
    uint64_t start() const { return start_; }
    uint64_t span() const { return span_; }

private:
    AlignedBuffer buf_;
    const uint8_t* src_ = nullptr;
    uint64_t offset_ = 0, len_ = 0, start_ = 0, span_ = 0;
};

// Zeros to write from (UNMAP of partial or cached blocks), zero_source_bytes long.
inline constexpr uint64_t zero_source_bytes = 256 * BlockFill::block;
const uint8_t* zero_source();

}  // namespace icbd
