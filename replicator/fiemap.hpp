// Internal to libreplicator: where a file's bytes are (FIEMAP physical extents,
// SEEK_DATA/SEEK_HOLE data segments) and the comparison of two extent maps that
// the metadata diff is built on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "icbd/replicator/snapshot_diff.hpp"
#include "icbd/status.hpp"

namespace icbd::repl::detail {

struct PhysExtent {
    uint64_t logical = 0;
    uint64_t physical = 0;
    uint64_t length = 0;
    uint32_t flags = 0;  // FIEMAP_EXTENT_*
};

// Every extent of the open file `fd` (FIEMAP_FLAG_SYNC), in logical order.
// `what` names the file in errors.
Result<std::vector<PhysExtent>> read_fiemap(int fd, const std::string& what);

// The data segments of `fd` inside [0, size) by SEEK_DATA/SEEK_HOLE (no data read).
Result<std::vector<ByteRange>> data_segments(int fd, uint64_t size, const std::string& what);

// data: child bytes that are data and not proven equal to the parent's;
// holes: child holes inside [0, min(sizes)) where the parent has data.
// Without a parent (`parent` null): data = all child data, holes = none.
// Extents without a meaningful physical address (inline data...) count as
// changed unless `same_inode`: the caller proved both files are one inode
// never modified since the parent snapshot (see snapshot_diff.cpp); then such
// an extent identical in both maps is unchanged too.
struct RangeDiff {
    std::vector<ByteRange> data;
    std::vector<ByteRange> holes;
};
RangeDiff compare_extents(const std::vector<PhysExtent>& child, uint64_t child_size,
                          const std::vector<PhysExtent>* parent, uint64_t parent_size, bool same_inode = false);

// Range set helpers (inputs sorted and disjoint; outputs merged).
std::vector<ByteRange> clip(const std::vector<ByteRange>& r, uint64_t end);
std::vector<ByteRange> intersect(const std::vector<ByteRange>& a, const std::vector<ByteRange>& b);
std::vector<ByteRange> complement(const std::vector<ByteRange>& r, uint64_t end);  // within [0, end)
void append_merged(std::vector<ByteRange>& out, ByteRange r);

}  // namespace icbd::repl::detail
