// The write-back cache of one LUN as the data path sees it: the open cache
// file, its map (blockd/cache_map.hpp) and the flags the cache layer keeps
// about it (blockd/cache_layer.hpp). Opening formats a new file or recovers an existing one
// (docs/write-back-cache.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "cache_map.hpp"
#include "cache_recovery.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd {

class WriteBackCache {
public:
    // Opens (creating and formatting when missing or empty) the cache file at
    // `path` of at most `size` bytes for the device below identified by `device`.
    static Result<std::unique_ptr<WriteBackCache>> open(const std::string& path, uint64_t size,
                                                         const CacheIdentity& device);

    int fd() const { return fd_.get(); }
    CacheMap& map() { return *map_; }
    const CacheMap& map() const { return *map_; }
    const std::string& path() const { return path_; }
    const CacheRecoveryStats& recovery() const { return recovery_; }
    CacheWatermarks watermarks;
    bool failed = false;  // a cache fdatasync failed: the cache can no longer promise anything

private:
    WriteBackCache(UniqueFd fd, std::unique_ptr<CacheMap> map, std::string path, CacheRecoveryStats stats)
        : fd_(std::move(fd)), map_(std::move(map)), path_(std::move(path)), recovery_(std::move(stats)) {}
    UniqueFd fd_;
    std::unique_ptr<CacheMap> map_;
    std::string path_;
    CacheRecoveryStats recovery_;
};

}  // namespace icbd
