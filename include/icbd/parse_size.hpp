// The one size grammar of the project: --bsopts cache_size= (docs/bsopts.md),
// icbd-replicate's --bwlimit and --checkpoint-interval, and the sizes of the
// blockd configuration.
//
//   size   = digits [unit]
//   digits = one or more of 0-9 (no sign, no spaces, no decimal point)
//   unit   = "B"                          (bytes, same as none)
//          | letter ["B" | "iB"]          (letter in either case)
//   letter = "K" (x 1024) | "M" (x 1024^2) | "G" (x 1024^3) | "T" (x 1024^4)
//
// Examples: 4096, 4096B, 64k, 512M, 512MiB, 512MB, 4G, 1GiB, 2T. Units are
// powers of 1024 only: "MB" is the same as "MiB" (the project's sizes are
// buffers, caches and files, never disks sold in decimal). Zero is a valid
// size here; callers check their own range (cache_size wants at least 1M,
// --bwlimit 0 means unlimited).
#pragma once

#include <cstdint>
#include <string_view>

#include "icbd/status.hpp"

namespace icbd {

// The size in bytes. EINVAL: not of the grammar above (the message says what
// is wrong with `text`, without naming an option: callers prefix their own);
// ERANGE: more than 2^64 - 1 bytes.
Result<uint64_t> parse_size(std::string_view text);

}  // namespace icbd
