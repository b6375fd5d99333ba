// Golden files: identity (BTRFS subvolume UUID, version and image from the
// path) and the per-process registry that shares one open file per inode.
#include "golden_file.hpp"

#include <fcntl.h>
#include <linux/btrfs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <map>
#include <utility>

namespace icbd {
namespace {

struct InodeKey {
    dev_t dev;
    ino_t ino;
    auto operator<=>(const InodeKey&) const = default;
};

std::map<InodeKey, std::weak_ptr<GoldenFile>>& registry() {
    static std::map<InodeKey, std::weak_ptr<GoldenFile>> r;
    return r;
}

bool parse_version(const std::string& s, uint64_t* v) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
    return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

Result<GoldenIdentity> golden_identity(int fd, const std::string& path) {
    struct stat st {};
    if (fstat(fd, &st) < 0) return Status::from_errno(errno, "golden file '" + path + "': fstat");
    if (!S_ISREG(st.st_mode)) return Status::error(EINVAL, "golden file '" + path + "': not a regular file");
    GoldenIdentity id;
    id.size = static_cast<uint64_t>(st.st_size);
    id.mtime_ns = static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000ull + static_cast<uint64_t>(st.st_mtim.tv_nsec);
    std::filesystem::path p = std::filesystem::absolute(path).lexically_normal();
    id.file = p.filename().string();
    // .../images/<image>/<version>/<file>
    std::filesystem::path version_dir = p.parent_path(), image_dir = version_dir.parent_path();
    uint64_t v = 0;
    if (image_dir.parent_path().filename() == "images" && parse_version(version_dir.filename().string(), &v)) {
        id.version = v;
        id.image = image_dir.filename().string();
    }
    struct statfs fs {};
    if (fstatfs(fd, &fs) == 0 && fs.f_type == BTRFS_SUPER_MAGIC) {
        btrfs_ioctl_get_subvol_info_args info {};
        if (ioctl(fd, BTRFS_IOC_GET_SUBVOL_INFO, &info) < 0)
            return Status::from_errno(errno, "golden file '" + path + "': BTRFS_IOC_GET_SUBVOL_INFO");
        std::memcpy(id.subvol_uuid.data(), info.uuid, 16);
    }
    return id;
}

GoldenFile::GoldenFile(UniqueFd fd, GoldenIdentity id, std::string path, dev_t dev, ino_t ino)
    : fd_(std::move(fd)), identity_(std::move(id)), path_(std::move(path)), dev_(dev), ino_(ino) {}

GoldenFile::~GoldenFile() { registry().erase(InodeKey{dev_, ino_}); }

size_t GoldenFile::open_count() { return registry().size(); }

Result<std::shared_ptr<GoldenFile>> GoldenFile::open(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_LARGEFILE));
    if (!fd.valid()) return Status::from_errno(errno, "golden file '" + path + "': open");
    struct stat st {};
    if (fstat(fd.get(), &st) < 0) return Status::from_errno(errno, "golden file '" + path + "': fstat");
    InodeKey key{st.st_dev, st.st_ino};
    if (auto it = registry().find(key); it != registry().end())
        if (auto shared = it->second.lock()) return shared;  // our fd closes; the shared one serves
    auto id = golden_identity(fd.get(), path);
    if (!id) return id.status();
    if (id->size == 0) return Status::error(EINVAL, "golden file '" + path + "': is empty (size 0)");
    auto g = std::make_shared<GoldenFile>(std::move(fd), std::move(*id), path, st.st_dev, st.st_ino);
    registry()[key] = g;
    return g;
}

}  // namespace icbd
