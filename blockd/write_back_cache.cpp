// WriteBackCache::open: format a new cache file or recover an existing one.
#include "write_back_cache.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>

#include "icbd/log.hpp"

namespace icbd {

Result<std::unique_ptr<WriteBackCache>> WriteBackCache::open(const std::string& path, uint64_t size,
                                                             const CacheIdentity& device) {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_LARGEFILE, 0600));
    if (!fd.valid()) return Status::from_errno(errno, "cache '" + path + "': open");
    struct stat st {};
    if (fstat(fd.get(), &st) < 0) return Status::from_errno(errno, "cache '" + path + "': fstat");
    if (S_ISREG(st.st_mode) && st.st_size == 0) {
        CacheFormatParams p;
        p.cache_bytes = size;
        p.device = device;
        p.name = path;
        auto sb = format_cache(fd.get(), p);
        if (!sb) return sb.status();
        log(LogLevel::info, "cache '" + path + "': new, " + std::to_string(sb->geometry.nr_blocks) +
                                " blocks of 4 KiB for '" + device.id + "'");
    }
    auto rec = recover_cache(fd.get(), path, device);
    if (!rec) return rec.status();
    return std::unique_ptr<WriteBackCache>(
        new WriteBackCache(std::move(fd), std::move(rec->map), path, std::move(rec->stats)));
}

}  // namespace icbd
