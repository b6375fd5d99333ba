// Opening a write-back cache file: picks the valid superblock, checks identity
// and size, rebuilds the map from the metadata area and scrubs every entry it did
// not keep (docs/write-back-cache.md, "Recovery"). Runs before the LUN serves.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "cache_format.hpp"
#include "cache_map.hpp"
#include "icbd/status.hpp"

namespace icbd {

struct CacheRecoveryStats {
    unsigned superblock_slot = 0;   // 0 = A, 1 = B
    uint64_t generation = 0;
    uint64_t committed_seq = 0;
    std::string other_superblock;   // why the other copy was not used, if it was invalid
    uint64_t entries_scanned = 0;
    uint64_t dirty_kept = 0;
    uint64_t uncommitted_discarded = 0;
    uint64_t superseded = 0;        // committed but an entry of the same LBA with a higher seq exists
    uint64_t corrupted = 0;         // bad crc / slot / tag, or an LBA beyond the device
    uint64_t scrubbed = 0;          // entries zeroed on disk
    uint64_t elapsed_ns = 0;

    std::string summary() const;    // one line for the log
};

struct RecoveredCache {
    std::unique_ptr<CacheMap> map;
    CacheRecoveryStats stats;
};

// `fd` open read-write on the cache file called `name`; `expected` is the device
// below this LUN has now. Logs the summary line.
Result<RecoveredCache> recover_cache(int fd, const std::string& name, const CacheIdentity& expected);

}  // namespace icbd
