// Extent maps of files: FIEMAP physical extents and SEEK_DATA segments, and the
// comparison of a child's extents with its parent's that tells, without reading
// data, which byte ranges can differ.
#include "fiemap.hpp"

#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace icbd::repl::detail {
namespace {

constexpr uint32_t kBatch = 512;

// Extents whose physical address says nothing reliable about their content:
// inline data lives in metadata (physical 0), delalloc and unknown have no
// address yet, not-aligned/tail share a block with something else.
constexpr uint32_t kUnreliable = FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_INLINE |
                                 FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_TAIL |
                                 FIEMAP_EXTENT_DATA_ENCRYPTED;

bool same_data(const PhysExtent& c, const PhysExtent& p) {
    bool enc_c = c.flags & FIEMAP_EXTENT_ENCODED, enc_p = p.flags & FIEMAP_EXTENT_ENCODED;
    // A compressed extent reports the start of the compressed blob for every
    // piece of it, whatever the offset into the decompressed data: only the
    // very same reference (start, length, blob) is proof of equal bytes.
    if (enc_c || enc_p)
        return enc_c && enc_p && c.logical == p.logical && c.length == p.length && c.physical == p.physical;
    // Plain extents map logical x to physical + (x - logical): the same bytes
    // at the same offset exactly when the two offsets agree.
    return c.physical - c.logical == p.physical - p.logical;
}

}  // namespace

void append_merged(std::vector<ByteRange>& out, ByteRange r) {
    if (r.length == 0) return;
    if (!out.empty() && out.back().end() >= r.offset) {
        uint64_t end = std::max(out.back().end(), r.end());
        out.back().length = end - out.back().offset;
        return;
    }
    out.push_back(r);
}

std::vector<ByteRange> clip(const std::vector<ByteRange>& r, uint64_t end) {
    std::vector<ByteRange> out;
    for (const auto& x : r) {
        if (x.offset >= end) break;
        append_merged(out, {x.offset, std::min(x.end(), end) - x.offset});
    }
    return out;
}

std::vector<ByteRange> intersect(const std::vector<ByteRange>& a, const std::vector<ByteRange>& b) {
    std::vector<ByteRange> out;
    size_t i = 0, j = 0;
    while (i < a.size() && j < b.size()) {
        uint64_t lo = std::max(a[i].offset, b[j].offset), hi = std::min(a[i].end(), b[j].end());
        if (lo < hi) append_merged(out, {lo, hi - lo});
        if (a[i].end() < b[j].end())
            ++i;
        else
            ++j;
    }
    return out;
}

std::vector<ByteRange> complement(const std::vector<ByteRange>& r, uint64_t end) {
    std::vector<ByteRange> out;
    uint64_t pos = 0;
    for (const auto& x : r) {
        if (x.offset >= end) break;
        if (x.offset > pos) out.push_back({pos, x.offset - pos});
        pos = std::max(pos, x.end());
    }
    if (pos < end) out.push_back({pos, end - pos});
    return out;
}

Result<std::vector<PhysExtent>> read_fiemap(int fd, const std::string& what) {
    // struct fiemap ends in a flexible array: 8-byte aligned storage for it.
    std::vector<uint64_t> storage((sizeof(fiemap) + kBatch * sizeof(fiemap_extent)) / sizeof(uint64_t) + 1);
    auto* fm = reinterpret_cast<fiemap*>(storage.data());
    std::vector<PhysExtent> out;
    uint64_t start = 0;
    bool sync = true;
    while (true) {
        std::memset(fm, 0, sizeof(fiemap));
        fm->fm_start = start;
        fm->fm_length = FIEMAP_MAX_OFFSET - start;
        // Dirty pages have no physical address yet: write them out once, first.
        fm->fm_flags = sync ? FIEMAP_FLAG_SYNC : 0;
        fm->fm_extent_count = kBatch;
        if (::ioctl(fd, FS_IOC_FIEMAP, fm) < 0) return Status::from_errno(errno, what + ": FIEMAP");
        sync = false;
        if (fm->fm_mapped_extents == 0) break;
        bool last = false;
        for (uint32_t i = 0; i < fm->fm_mapped_extents; ++i) {
            const fiemap_extent& e = fm->fm_extents[i];
            PhysExtent x{e.fe_logical, e.fe_physical, e.fe_length, e.fe_flags};
            if (x.flags & FIEMAP_EXTENT_LAST) last = true;
            if (!out.empty() && x.logical < out.back().logical + out.back().length) {
                // A batch may repeat the extent that straddles its start.
                uint64_t prev_end = out.back().logical + out.back().length;
                if (x.logical + x.length <= prev_end) continue;
                uint64_t cut = prev_end - x.logical;
                x.logical += cut;
                x.length -= cut;
                if (x.flags & FIEMAP_EXTENT_ENCODED)
                    x.flags |= FIEMAP_EXTENT_UNKNOWN;  // no longer the whole reference: never "same"
                else
                    x.physical += cut;
            }
            if (x.length) out.push_back(x);
        }
        if (last) break;
        start = out.empty() ? FIEMAP_MAX_OFFSET : out.back().logical + out.back().length;
        if (start >= FIEMAP_MAX_OFFSET) break;
    }
    return out;
}

Result<std::vector<ByteRange>> data_segments(int fd, uint64_t size, const std::string& what) {
    std::vector<ByteRange> out;
    uint64_t off = 0;
    while (off < size) {
        off_t d = ::lseek(fd, static_cast<off_t>(off), SEEK_DATA);
        if (d < 0) {
            if (errno == ENXIO) break;  // only a hole up to EOF
            return Status::from_errno(errno, what + ": lseek SEEK_DATA");
        }
        if (static_cast<uint64_t>(d) >= size) break;
        off_t h = ::lseek(fd, d, SEEK_HOLE);
        if (h < 0) return Status::from_errno(errno, what + ": lseek SEEK_HOLE");
        uint64_t end = std::min<uint64_t>(static_cast<uint64_t>(h), size);
        if (end <= static_cast<uint64_t>(d)) break;
        append_merged(out, {static_cast<uint64_t>(d), end - static_cast<uint64_t>(d)});
        off = end;
    }
    return out;
}

RangeDiff compare_extents(const std::vector<PhysExtent>& child, uint64_t child_size,
                          const std::vector<PhysExtent>* parent, uint64_t parent_size, bool same_inode) {
    RangeDiff out;
    std::vector<ByteRange> child_data;
    for (const auto& c : child) {
        if (c.flags & FIEMAP_EXTENT_UNWRITTEN) continue;  // preallocated: reads as zeros, a hole for us
        if (c.logical >= child_size) continue;
        append_merged(child_data, {c.logical, std::min(c.logical + c.length, child_size) - c.logical});
    }
    if (!parent) {
        out.data = std::move(child_data);
        return out;
    }

    std::vector<ByteRange> parent_data;
    for (const auto& p : *parent) {
        if (p.flags & FIEMAP_EXTENT_UNWRITTEN || p.logical >= parent_size) continue;
        append_merged(parent_data, {p.logical, std::min(p.logical + p.length, parent_size) - p.logical});
    }

    for (const auto& c : child) {
        if (c.flags & FIEMAP_EXTENT_UNWRITTEN || c.logical >= child_size) continue;
        uint64_t a = c.logical, b = std::min(c.logical + c.length, child_size);
        std::vector<ByteRange> unchanged;
        uint64_t limit = std::min(b, parent_size);  // past the parent's EOF nothing is "unchanged"
        if (c.flags & kUnreliable) {
            if (same_inode && a < limit) {
                auto it = std::find_if(parent->begin(), parent->end(), [&](const PhysExtent& p) {
                    return p.logical == c.logical && p.length == c.length && p.physical == c.physical &&
                           p.flags == c.flags;
                });
                if (it != parent->end()) append_merged(unchanged, {a, limit - a});
            }
        } else if (a < limit) {
            auto it = std::partition_point(parent->begin(), parent->end(),
                                           [a](const PhysExtent& p) { return p.logical + p.length <= a; });
            for (; it != parent->end() && it->logical < limit; ++it) {
                const PhysExtent& p = *it;
                if (p.flags & (kUnreliable | FIEMAP_EXTENT_UNWRITTEN)) continue;
                uint64_t lo = std::max(a, p.logical), hi = std::min(limit, p.logical + p.length);
                if (lo < hi && same_data(c, p)) append_merged(unchanged, {lo, hi - lo});
            }
        }
        for (const auto& r : complement(unchanged, b))
            if (r.end() > a) append_merged(out.data, {std::max(r.offset, a), r.end() - std::max(r.offset, a)});
    }

    uint64_t common = std::min(child_size, parent_size);
    out.holes = intersect(complement(child_data, common), clip(parent_data, common));
    return out;
}

}  // namespace icbd::repl::detail
