// BTRFS subvolume operations through libbtrfsutil: snapshot, create, set
// read-only, delete; errno is kept so callers can tell ENOSPC from the rest.
#include "btrfs_subvolume.hpp"

#include <btrfsutil.h>
#include <linux/magic.h>
#include <sys/statfs.h>

#include <cerrno>
#include <cstring>

namespace icbd::repl::detail {
namespace {

Status util_error(btrfs_util_error err, const std::string& what, const char* op) {
    int e = errno ? errno : EIO;
    std::string msg = what + ": " + op + ": " + btrfs_util_strerror(err);
    if (e == ENOSPC) msg += " (no space left on device)";
    else msg += std::string(" (") + strerror(e) + ")";
    return Status::error(e, msg);
}

}  // namespace

bool on_btrfs(int fd) {
    struct statfs sf;
    return ::fstatfs(fd, &sf) == 0 && sf.f_type == static_cast<decltype(sf.f_type)>(BTRFS_SUPER_MAGIC);
}

bool is_subvolume(const std::filesystem::path& path) { return btrfs_util_is_subvolume(path.c_str()) == BTRFS_UTIL_OK; }

Status create_subvolume(const std::filesystem::path& path, const std::string& what) {
    errno = 0;
    auto err = btrfs_util_create_subvolume(path.c_str(), 0, nullptr, nullptr);
    if (err != BTRFS_UTIL_OK) return util_error(err, what, ("create subvolume '" + path.string() + "'").c_str());
    return Status::ok();
}

Status snapshot_subvolume(const std::filesystem::path& source, const std::filesystem::path& dest, bool read_only,
                          const std::string& what) {
    errno = 0;
    auto err = btrfs_util_create_snapshot(source.c_str(), dest.c_str(),
                                          read_only ? BTRFS_UTIL_CREATE_SNAPSHOT_READ_ONLY : 0, nullptr, nullptr);
    if (err != BTRFS_UTIL_OK)
        return util_error(err, what, ("snapshot '" + source.string() + "' -> '" + dest.string() + "'").c_str());
    return Status::ok();
}

Status set_read_only(const std::filesystem::path& path, bool read_only, const std::string& what) {
    errno = 0;
    auto err = btrfs_util_set_subvolume_read_only(path.c_str(), read_only);
    if (err != BTRFS_UTIL_OK)
        return util_error(err, what, ("set subvolume '" + path.string() + "' read-only").c_str());
    return Status::ok();
}

Result<SubvolumeIds> subvolume_ids(const std::filesystem::path& path, const std::string& what) {
    errno = 0;
    struct btrfs_util_subvolume_info info {};
    auto err = btrfs_util_subvolume_info(path.c_str(), 0, &info);
    if (err != BTRFS_UTIL_OK) return util_error(err, what, ("subvolume info of '" + path.string() + "'").c_str());
    SubvolumeIds ids;
    std::memcpy(ids.uuid.data(), info.uuid, ids.uuid.size());
    std::memcpy(ids.parent_uuid.data(), info.parent_uuid, ids.parent_uuid.size());
    constexpr uint64_t kRootSubvolReadOnly = 1;  // BTRFS_ROOT_SUBVOL_RDONLY in the root item's flags
    ids.read_only = (info.flags & kRootSubvolReadOnly) != 0;
    return ids;
}

Status delete_subvolume(const std::filesystem::path& path, const std::string& what) {
    errno = 0;
    auto err = btrfs_util_delete_subvolume(path.c_str(), 0);
    if (err != BTRFS_UTIL_OK) return util_error(err, what, ("delete subvolume '" + path.string() + "'").c_str());
    return Status::ok();
}

}  // namespace icbd::repl::detail
