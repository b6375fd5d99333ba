// Internal to libreplicator: the block-hash comparison of one file pair, the
// diff method for sources that are not BTRFS (or not one filesystem).
#pragma once

#include <cstdint>
#include <string>

#include "fiemap.hpp"

namespace icbd::repl::detail {

// Reads both files in `block`-sized blocks where the child has data and
// compares their xxh3_64; `bytes_hashed` grows by the bytes read.
Result<RangeDiff> hash_compare(int child_fd, uint64_t child_size, int parent_fd, uint64_t parent_size,
                               uint32_t block, const std::string& what, uint64_t& bytes_hashed);

}  // namespace icbd::repl::detail
