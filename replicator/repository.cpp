// The image repository on disk: listing versions, staging a version (snapshot
// or copy of its base, or the spare tree the last publish left), durable
// checkpoints, atomic publish, abort and prune. On filesystems without
// snapshots a tree copy (reflink, else sparse) stands in.
#include "icbd/log.hpp"
#include "icbd/replicator/repository.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>

#include "btrfs_subvolume.hpp"
#include "fiemap.hpp"
#include "icbd/checksum.hpp"
#include "icbd/endian.hpp"
#include "icbd/file_io.hpp"
#include "icbd/replicator/image_path.hpp"
#include "icbd/replicator/tree_copy.hpp"

namespace icbd::repl {
namespace fs = std::filesystem;
namespace {

// A cleanup that failed after (or besides) the error the caller returns: logged,
// since the caller's own error is the one to report.
void log_cleanup(const Status& cleanup, const std::string& during) {
    if (!cleanup) log(LogLevel::warning, cleanup.message() + " (while " + during + ")");
}

constexpr char kStagingDir[] = ".staging";
constexpr char kTreePrefix[] = ".tree-";  // + area name: the staged tree, a sibling of the versions
// + version: the writable tree a version was published from, with exactly its
// content, kept (BTRFS only) as the next staging tree from that version.
constexpr char kSparePrefix[] = ".spare-";
constexpr char kCheckpoint[] = "checkpoint";
constexpr char kCheckpointTmp[] = "checkpoint.tmp";
constexpr char kCheckpointMagic[8] = {'I', 'C', 'B', 'D', 'C', 'K', 'P', 'T'};
constexpr uint16_t kCheckpointFormat = 1;
constexpr size_t kCheckpointHeader = 16;

struct DirCloser {
    void operator()(DIR* d) const { ::closedir(d); }
};

std::string q(const fs::path& p) {
    std::string s;
    s.append("'").append(p.string()).append("'");
    return s;
}

std::string image_what(std::string_view image, uint64_t version) {
    std::string s;
    s.append("image '").append(image).append("' version ").append(std::to_string(version));
    return s;
}

// ENOSPC gets a message an operator acts on; other errors keep strerror.
Status sys_error(int err, const std::string& what, const std::string& op) {
    if (err == ENOSPC) return Status::error(ENOSPC, what + ": " + op + ": no space left on device");
    if (err == EDQUOT) return Status::error(EDQUOT, what + ": " + op + ": disk quota exceeded");
    return Status::from_errno(err, what + ": " + op);
}

Result<UniqueFd> open_dir(const fs::path& p, const std::string& what) {
    int fd = ::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return sys_error(errno, what, "open " + q(p));
    return UniqueFd(fd);
}

Status fsync_dir(const fs::path& p, const std::string& what) {
    auto fd = open_dir(p, what);
    if (!fd) return fd.status();
    if (::fsync(fd->get()) < 0) return sys_error(errno, what, "fsync " + q(p));
    return Status::ok();
}

// mkdir that accepts an existing directory (not a symlink to one).
Status ensure_dir(const fs::path& p, const std::string& what) {
    if (::mkdir(p.c_str(), 0755) == 0) return Status::ok();
    if (errno != EEXIST) return sys_error(errno, what, "mkdir " + q(p));
    struct stat st;
    if (::lstat(p.c_str(), &st) < 0) return sys_error(errno, what, "stat " + q(p));
    if (!S_ISDIR(st.st_mode)) return Status::error(ENOTDIR, what + ": " + q(p) + " is not a directory");
    return Status::ok();
}

bool is_plain_dir(const fs::path& p) {
    struct stat st;
    return ::lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Names in `dir` that are directories (not symlinks), unsorted.
Result<std::vector<std::string>> subdirs(const fs::path& dir, const std::string& what) {
    std::vector<std::string> out;
    std::unique_ptr<DIR, DirCloser> d(::opendir(dir.c_str()));
    if (!d) {
        if (errno == ENOENT) return out;
        return sys_error(errno, what, "opendir " + q(dir));
    }
    errno = 0;
    while (dirent* de = ::readdir(d.get())) {
        std::string name = de->d_name;
        if (name != "." && name != ".." && is_plain_dir(dir / name)) out.push_back(name);
        errno = 0;
    }
    if (errno) return sys_error(errno, what, "readdir " + q(dir));
    return out;
}

Result<std::vector<uint64_t>> scan_versions(const fs::path& image_dir, const std::string& what) {
    auto names = subdirs(image_dir, what);
    if (!names) return names.status();
    std::vector<uint64_t> out;
    for (const auto& n : *names)
        if (auto v = parse_version(n)) out.push_back(*v);
    std::sort(out.begin(), out.end());
    return out;
}

std::string area_name(uint64_t version, uint64_t base) {
    return base ? std::to_string(version) + "-from-" + std::to_string(base) : std::to_string(version) + "-full";
}

// The staged tree lives directly in the image directory (hidden by its dot):
// BTRFS renames a read-only subvolume within its directory but not into
// another one (EROFS), and publish must rename a tree that is read-only already.
fs::path tree_path_of(const fs::path& image_dir, uint64_t version, uint64_t base) {
    return image_dir / (std::string(kTreePrefix) + area_name(version, base));
}
fs::path tmp_of(const fs::path& tree) { return fs::path(tree.string() + ".tmp"); }
fs::path spare_path_of(const fs::path& image_dir, uint64_t version) {
    return image_dir / (std::string(kSparePrefix) + std::to_string(version));
}

// ---- tree copy, for filesystems without snapshots ----------------------------

// Removes a tree: a subvolume by deletion (cheap, space back via the cleaner),
// else recursively. Missing is fine.
Status remove_tree(const fs::path& p, bool btrfs, const std::string& what) {
    struct stat st;
    if (::lstat(p.c_str(), &st) < 0) return errno == ENOENT ? Status::ok() : sys_error(errno, what, "stat " + q(p));
    if (btrfs && S_ISDIR(st.st_mode) && detail::is_subvolume(p)) return detail::delete_subvolume(p, what);
    std::error_code ec;
    fs::remove_all(p, ec);
    if (ec) return Status::error(ec.value(), what + ": remove " + q(p) + ": " + ec.message());
    return Status::ok();
}

// Moves the spare tree of `base` (left by its publish) to `dest` as a new
// staging tree: no snapshot, no transaction commit before NEED. Only a spare
// that `base` was snapshotted from (base's parent UUID is the spare's UUID)
// and that is still writable is taken; any other is deleted. false: no spare
// taken (the caller snapshots the base).
bool take_spare(const fs::path& image_dir, uint64_t base, const fs::path& base_path, const fs::path& dest,
                const std::string& what) {
    const fs::path spare = spare_path_of(image_dir, base);
    struct stat st;
    if (::lstat(spare.c_str(), &st) < 0) return false;
    auto ids = S_ISDIR(st.st_mode) ? detail::subvolume_ids(spare, what) : Result<detail::SubvolumeIds>(Status::error(ENOTDIR, what));
    auto base_ids = detail::subvolume_ids(base_path, what);
    if (!ids || !base_ids || ids->read_only || base_ids->parent_uuid != ids->uuid) {
        log(LogLevel::info, what + ": " + q(spare) + " is not the tree version " + std::to_string(base) +
                                " was published from; deleting it");
        log_cleanup(remove_tree(spare, true, what), "deleting a spare tree");
        return false;
    }
    // Not made durable here: if a crash loses the rename, the spare is still
    // the spare and the staging area has no tree (resume says ENOENT, the area
    // is discarded and begun again); the first checkpoint's syncfs commits it.
    if (::rename(spare.c_str(), dest.c_str()) < 0) {
        log(LogLevel::warning, what + ": rename " + q(spare) + " to " + q(dest) + ": " + std::strerror(errno) +
                                   "; snapshotting the base instead");
        return false;
    }
    return true;
}

// What a crash or an older build can leave beside the versions and that no
// staging area owns any more: a tree of a version not newer than `newest`
// whose area is gone, and spares of other versions than `newest`.
void sweep_leftovers(const fs::path& image_dir, uint64_t newest, bool btrfs, const std::string& what) {
    auto names = subdirs(image_dir, what);
    if (!names) return;
    for (const auto& n : *names) {
        std::string_view s = n;
        bool stale = false;
        if (s.substr(0, sizeof kSparePrefix - 1) == kSparePrefix) {
            auto v = parse_version(s.substr(sizeof kSparePrefix - 1));
            stale = !v || *v != newest;
        } else if (s.substr(0, sizeof kTreePrefix - 1) == kTreePrefix) {
            std::string area(s.substr(sizeof kTreePrefix - 1));
            if (area.size() > 4 && area.compare(area.size() - 4, 4, ".tmp") == 0) area.resize(area.size() - 4);
            auto v = parse_version(std::string_view(area).substr(0, area.find('-')));
            struct stat st;
            stale = v && *v <= newest && ::lstat((image_dir / kStagingDir / area).c_str(), &st) < 0 && errno == ENOENT;
        }
        if (stale) log_cleanup(remove_tree(image_dir / n, btrfs, what), "removing a leftover tree " + q(image_dir / n));
    }
}

Result<std::vector<uint8_t>> read_checkpoint(int area_fd, const std::string& what) {
    std::vector<uint8_t> payload;
    UniqueFd fd(::openat(area_fd, kCheckpoint, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) {
        if (errno == ENOENT) return payload;
        return sys_error(errno, what, "open checkpoint");
    }
    struct stat st;
    if (::fstat(fd.get(), &st) < 0) return sys_error(errno, what, "stat checkpoint");
    uint64_t size = static_cast<uint64_t>(st.st_size);
    auto corrupt = [&](const std::string& why) {
        return Status::error(EBADMSG, what + ": checkpoint is corrupt (" + why + "); discard the staging area");
    };
    if (size < kCheckpointHeader + 4 || size > kCheckpointHeader + 4 + Staging::kMaxCheckpointBytes)
        return corrupt("size " + std::to_string(size));
    std::vector<uint8_t> buf(size);
    if (Status s = full_pread(fd.get(), buf.data(), size, 0, what); !s)
        return s.code() == ENODATA ? corrupt("short read") : sys_error(s.code(), what, "read checkpoint");
    if (std::memcmp(buf.data(), kCheckpointMagic, 8) != 0) return corrupt("bad magic");
    uint16_t format = load_le16(buf.data() + 8);
    if (format != kCheckpointFormat) return corrupt("format " + std::to_string(format));
    uint32_t len = load_le32(buf.data() + 12);
    if (kCheckpointHeader + uint64_t(len) + 4 != size) return corrupt("length field does not match the file size");
    size_t crc_at = kCheckpointHeader + len;
    uint32_t want = load_le32(buf.data() + crc_at);
    if (crc32c(buf.data(), crc_at) != want) return corrupt("CRC mismatch");
    payload.assign(buf.begin() + kCheckpointHeader, buf.begin() + static_cast<ptrdiff_t>(crc_at));
    return payload;
}

}  // namespace

// ---- Staging -------------------------------------------------------------------

Status Staging::fail(int err, const std::string& what) const { return sys_error(err, what_, what); }

Status Staging::write_checkpoint(std::span<const uint8_t> bytes) {
    if (spent_) return Status::error(EINVAL, what_ + ": staging area already published or aborted");
    if (bytes.size() > kMaxCheckpointBytes)
        return Status::error(EINVAL, what_ + ": checkpoint of " + std::to_string(bytes.size()) + " bytes is too large");
    std::vector<uint8_t> buf(kCheckpointHeader);
    std::memcpy(buf.data(), kCheckpointMagic, 8);
    store_le16(buf.data() + 8, kCheckpointFormat);
    store_le32(buf.data() + 12, static_cast<uint32_t>(bytes.size()));
    buf.insert(buf.end(), bytes.begin(), bytes.end());
    const uint32_t crc = crc32c(buf.data(), buf.size());
    buf.resize(buf.size() + 4);
    store_le32(buf.data() + buf.size() - 4, crc);

    UniqueFd fd(::openat(area_fd_.get(), kCheckpointTmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.valid()) return fail(errno, "create checkpoint");
    if (Status s = full_pwrite(fd.get(), buf.data(), buf.size(), 0, what_); !s) return fail(s.code(), "write checkpoint");
    if (::fsync(fd.get()) < 0) return fail(errno, "fsync checkpoint");
    if (::renameat(area_fd_.get(), kCheckpointTmp, area_fd_.get(), kCheckpoint) < 0)
        return fail(errno, "rename checkpoint");
    if (::fsync(area_fd_.get()) < 0) return fail(errno, "fsync staging directory");
    checkpoint_.assign(bytes.begin(), bytes.end());
    return Status::ok();
}

Status Staging::sync() {
    if (spent_) return Status::error(EINVAL, what_ + ": staging area already published or aborted");
    if (::syncfs(tree_fd_.get()) < 0) return fail(errno, "sync staging tree");
    return Status::ok();
}

Status Staging::publish() {
    if (spent_) return Status::error(EINVAL, what_ + ": staging area already published or aborted");
    if (!btrfs_) {
        if (Status s = sync(); !s) return s;
    }
    auto versions = scan_versions(image_dir_, what_);
    if (!versions) return versions.status();
    if (!versions->empty() && versions->back() >= version_) {
        bool same = std::binary_search(versions->begin(), versions->end(), version_);
        return Status::error(same ? EEXIST : ESTALE,
                             what_ + ": not published: " +
                                 (same ? std::string("that version is published already")
                                       : "version " + std::to_string(versions->back()) + " is newer"));
    }
    auto image_fd = open_dir(image_dir_, what_);
    if (!image_fd) return image_fd.status();
    std::string name = version_name(version_);
    if (btrfs_) return publish_snapshot(image_fd->get(), name);
    std::string leaf = tree_path_.filename().string();
    if (::renameat2(image_fd->get(), leaf.c_str(), image_fd->get(), name.c_str(), RENAME_NOREPLACE) < 0) {
        int err = errno;
        if (err == EEXIST) return Status::error(EEXIST, what_ + ": not published: that version appeared meanwhile");
        return fail(err, "rename into " + q(image_dir_ / name));
    }
    if (::fsync(image_fd->get()) < 0) return fail(errno, "fsync " + q(image_dir_));
    spent_ = true;
    tree_fd_.reset();
    // The version is published; what is left is housekeeping of the area.
    ::unlinkat(area_fd_.get(), kCheckpoint, 0);
    ::unlinkat(area_fd_.get(), kCheckpointTmp, 0);
    area_fd_.reset();
    if (::rmdir(area_path_.c_str()) < 0) return fail(errno, "remove staging area " + q(area_path_));
    return fsync_dir(area_path_.parent_path(), what_);
}

Status Staging::publish_snapshot(int image_fd, const std::string& name) {
    // The commit point is one BTRFS_IOC_SNAP_CREATE_V2: the kernel first
    // writes back the tree's dirty data and waits for it (btrfs_mksnapshot:
    // start_delalloc_snapshot, wait_ordered_extents), then creates the
    // read-only snapshot under the version's name in a transaction commit with
    // everything done to the tree before it, and returns once that commit
    // (superblock included) is on disk. So the version appears complete,
    // read-only and durable at once, or not at all; no syncfs, read-only flag
    // or rename is needed before it. The name must be free (EEXIST otherwise),
    // as with RENAME_NOREPLACE.
    const fs::path dest = image_dir_ / name;
    if (Status s = detail::snapshot_subvolume(tree_path_, dest, true, what_); !s) {
        if (s.code() == EEXIST) return Status::error(EEXIST, what_ + ": not published: that version appeared meanwhile");
        return s;
    }
    // Already committed by the snapshot: this fsync finds nothing to log (no
    // device flush); it keeps the same rule as the rename path.
    if (::fsync(image_fd) < 0) return fail(errno, "fsync " + q(image_dir_));
    spent_ = true;
    tree_fd_.reset();
    // The version is published. What follows is housekeeping that no crash
    // can turn into a half-visible version, so none of it is synced: a lost
    // step is redone by sweep_leftovers / discard_superseded on the next staging.
    // The tree we published from holds exactly the version: kept as the spare
    // for the next version's staging (no snapshot then), or deleted.
    const fs::path spare = spare_path_of(image_dir_, version_);
    if (!keep_spare_ || ::rename(tree_path_.c_str(), spare.c_str()) < 0)
        log_cleanup(remove_tree(tree_path_, true, what_), "removing the published staging tree");
    if (auto names = subdirs(image_dir_, what_)) {
        for (const auto& n : *names) {
            if (n.rfind(kSparePrefix, 0) != 0 || n == spare.filename().string()) continue;
            log_cleanup(remove_tree(image_dir_ / n, true, what_), "removing an older spare tree");
        }
    }
    ::unlinkat(area_fd_.get(), kCheckpoint, 0);
    ::unlinkat(area_fd_.get(), kCheckpointTmp, 0);
    area_fd_.reset();
    if (::rmdir(area_path_.c_str()) < 0)
        log(LogLevel::warning, what_ + ": published, but removing the staging area " + q(area_path_) + ": " +
                                   std::strerror(errno));
    return Status::ok();
}

Status Staging::abort() {
    if (spent_) return Status::ok();
    tree_fd_.reset();
    if (Status s = remove_tree(tree_path_, btrfs_, what_); !s) return s;
    if (Status s = remove_tree(tmp_of(tree_path_), btrfs_, what_); !s) return s;
    if (Status s = fsync_dir(image_dir_, what_); !s) return s;
    ::unlinkat(area_fd_.get(), kCheckpoint, 0);
    ::unlinkat(area_fd_.get(), kCheckpointTmp, 0);
    spent_ = true;
    area_fd_.reset();
    if (::rmdir(area_path_.c_str()) < 0) return fail(errno, "remove staging area " + q(area_path_));
    return fsync_dir(area_path_.parent_path(), what_);
}

// ---- Repository ----------------------------------------------------------------

Result<Repository> Repository::open(const fs::path& root) {
    std::string what = "repository " + q(root);
    auto fd = open_dir(root, what);
    if (!fd) return fd.status();
    Repository r;
    r.root_ = root;
    if (Status s = ensure_dir(r.images_dir(), what); !s) return s;
    auto images = open_dir(r.images_dir(), what);
    if (!images) return images.status();
    r.btrfs_ = detail::on_btrfs(images->get());
    return r;
}

Result<fs::path> Repository::image_dir(std::string_view image, bool create) const {
    if (Status s = validate_image_name(image); !s) return s;
    fs::path p = images_dir() / std::string(image);
    if (create) {
        if (Status s = ensure_dir(p, "image '" + std::string(image) + "'"); !s) return s;
    }
    return p;
}

Result<std::vector<std::string>> Repository::list_images() const {
    auto names = subdirs(images_dir(), "repository " + q(root_));
    if (!names) return names.status();
    std::vector<std::string> out;
    for (auto& n : *names)
        if (validate_image_name(n)) out.push_back(std::move(n));
    std::sort(out.begin(), out.end());
    return out;
}

Result<std::vector<uint64_t>> Repository::list_versions(std::string_view image) const {
    auto dir = image_dir(image, false);
    if (!dir) return dir.status();
    return scan_versions(*dir, "image '" + std::string(image) + "'");
}

Result<std::optional<uint64_t>> Repository::newest_version(std::string_view image) const {
    auto v = list_versions(image);
    if (!v) return v.status();
    return v->empty() ? std::optional<uint64_t>() : std::optional<uint64_t>(v->back());
}

Result<bool> Repository::has_version(std::string_view image, uint64_t version) const {
    auto v = list_versions(image);
    if (!v) return v.status();
    return std::binary_search(v->begin(), v->end(), version);
}

Result<fs::path> Repository::version_path(std::string_view image, uint64_t version) const {
    auto dir = image_dir(image, false);
    if (!dir) return dir.status();
    fs::path p = *dir / version_name(version);
    if (version == 0 || !is_plain_dir(p))
        return Status::error(ENOENT, image_what(image, version) + ": no such published version");
    return p;
}

Result<Staging> Repository::open_staging(std::string_view image, uint64_t version, uint64_t base, bool resume,
                                         const fs::path* snapshot_of) {
    std::string what = image_what(image, version) + (base ? " (from " + std::to_string(base) + ")" : " (full)");
    if (version == 0) return Status::error(EINVAL, what + ": version 0 is not a version");
    if (base >= version) return Status::error(EINVAL, what + ": the base must be older than the version");
    auto dir = image_dir(image, !resume);
    if (!dir) return dir.status();
    auto versions = scan_versions(*dir, what);
    if (!versions) return versions.status();
    if (!versions->empty() && versions->back() >= version) {
        if (std::binary_search(versions->begin(), versions->end(), version))
            return Status::error(EEXIST, what + ": already published");
        return Status::error(ESTALE, what + ": not newer than the newest published version " +
                                         std::to_string(versions->back()));
    }
    fs::path base_path = *dir / version_name(base);
    if (base && !std::binary_search(versions->begin(), versions->end(), base))
        return Status::error(ENOENT, what + ": base version " + std::to_string(base) + " is not published here");

    fs::path staging_dir = *dir / kStagingDir;
    if (!resume && !versions->empty()) {
        discard_superseded(image, versions->back());
        sweep_leftovers(*dir, versions->back(), btrfs_, what);
    }
    Staging st;
    st.what_ = what;
    st.image_dir_ = *dir;
    st.area_path_ = staging_dir / area_name(version, base);
    st.tree_path_ = tree_path_of(*dir, version, base);
    st.image_ = std::string(image);
    st.version_ = version;
    st.base_ = base;
    st.resumed_ = resume;
    st.btrfs_ = btrfs_;
    st.keep_spare_ = btrfs_ && !snapshot_of;  // a receiver's next push will likely start from this version

    if (!resume) {
        if (Status s = ensure_dir(staging_dir, what); !s) return s;
        if (::mkdir(st.area_path_.c_str(), 0700) < 0) {
            if (errno == EEXIST)
                return Status::error(EEXIST, what + ": a staging area exists already (" + q(st.area_path_) +
                                                 "): resume or discard it");
            return sys_error(errno, what, "mkdir " + q(st.area_path_));
        }
    }
    auto area = open_dir(st.area_path_, what);
    if (!area) {
        if (area.status().code() == ENOENT) return Status::error(ENOENT, what + ": no staging area to resume");
        return area.status();
    }
    st.area_fd_ = std::move(area.value());
    if (::flock(st.area_fd_.get(), LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK) return Status::error(EBUSY, what + ": another receiver holds the staging area");
        return sys_error(errno, what, "lock staging area");
    }

    if (!resume) {
        fs::path tmp = tmp_of(st.tree_path_);
        if (Status s = remove_tree(tmp, btrfs_, what); !s) return s;  // a crash's leftover
        // We made the area just now: a tree under its name lost its area in a crash.
        if (Status s = remove_tree(st.tree_path_, btrfs_, what); !s) return s;
        Status made;
        if (btrfs_ && (base || snapshot_of)) {
            // A snapshot appears complete or not at all (in one transaction
            // commit, with the area's mkdir): made under its final name. The
            // spare the base was published from serves without a commit.
            if (snapshot_of || !take_spare(*dir, base, base_path, st.tree_path_, what))
                made = detail::snapshot_subvolume(snapshot_of ? *snapshot_of : base_path, st.tree_path_, false, what);
        } else {
            // Built under a temporary name, renamed when complete and synced:
            // a crash half-way through a copy never leaves a tree that looks resumable.
            made = btrfs_ ? detail::create_subvolume(tmp, what)
                          : (::mkdir(tmp.c_str(), 0755) == 0 ? Status::ok() : sys_error(errno, what, "mkdir " + q(tmp)));
            if (made && base) {
                auto s = open_dir(base_path, what);
                auto t = open_dir(tmp, what);
                if (!s) made = s.status();
                else if (!t) made = t.status();
                else made = copy_tree(s->get(), t->get(), base_path, what);
                if (made) {
                    struct stat bst;
                    if (::stat(base_path.c_str(), &bst) == 0) made = copy_attrs(t->get(), bst, what);
                }
            }
            if (made && ::rename(tmp.c_str(), st.tree_path_.c_str()) < 0)
                made = sys_error(errno, what, "rename staging tree");
            if (made) made = fsync_dir(*dir, what);
        }
        if (!made) {
            log_cleanup(st.abort(), "cleaning up after: " + made.message());  // reclaim what the failed copy took (ENOSPC)
            return made;
        }
    }
    int tfd = ::open(st.tree_path_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (tfd < 0) {
        if (errno == ENOENT)
            return Status::error(ENOENT, what + ": the staging area has no complete tree; discard it");
        return sys_error(errno, what, "open staging tree");
    }
    st.tree_fd_.reset(tfd);
    if (resume) {
        auto cp = read_checkpoint(st.area_fd_.get(), what);
        if (!cp) return cp.status();
        st.checkpoint_ = std::move(cp.value());
    }
    return st;
}

Result<Staging> Repository::begin_staging(std::string_view image, uint64_t version, uint64_t base) {
    return open_staging(image, version, base, false, nullptr);
}

Result<Staging> Repository::resume_staging(std::string_view image, uint64_t version, uint64_t base) {
    return open_staging(image, version, base, true, nullptr);
}

Result<std::vector<StagingInfo>> Repository::list_staging(std::string_view image) const {
    std::vector<std::string> images;
    if (image.empty()) {
        auto all = list_images();
        if (!all) return all.status();
        images = std::move(all.value());
    } else {
        if (Status s = validate_image_name(image); !s) return s;
        images.emplace_back(image);
    }
    std::vector<StagingInfo> out;
    for (const auto& img : images) {
        fs::path dir = images_dir() / img / kStagingDir;
        auto names = subdirs(dir, "image '" + img + "'");
        if (!names) return names.status();
        std::sort(names->begin(), names->end());
        for (const auto& n : *names) {
            std::string_view s = n;
            size_t dash = s.find('-');
            if (dash == std::string_view::npos) continue;
            auto v = parse_version(s.substr(0, dash));
            std::string_view rest = s.substr(dash + 1);
            std::optional<uint64_t> b;
            if (rest == "full") b = 0;
            else if (rest.substr(0, 5) == "from-") b = parse_version(rest.substr(5));
            if (v && b) out.push_back({img, *v, *b, dir / n});
        }
    }
    return out;
}

Status Repository::discard_staging(std::string_view image, uint64_t version, uint64_t base) {
    std::string what = image_what(image, version) + " (staging)";
    auto dir = image_dir(image, false);
    if (!dir) return dir.status();
    Staging st;
    st.what_ = what;
    st.image_dir_ = *dir;
    st.area_path_ = *dir / kStagingDir / area_name(version, base);
    st.tree_path_ = tree_path_of(*dir, version, base);
    st.btrfs_ = btrfs_;
    auto area = open_dir(st.area_path_, what);
    if (!area) return area.status();
    st.area_fd_ = std::move(area.value());
    if (::flock(st.area_fd_.get(), LOCK_EX | LOCK_NB) < 0)
        return Status::error(EBUSY, what + ": another receiver holds the staging area");
    return st.abort();
}

void Repository::discard_superseded(std::string_view image, uint64_t newest) {
    // Areas of versions that can no longer be published (a crash after the
    // rename, or a newer version came first): reclaim them unless held.
    auto areas = list_staging(image);
    if (!areas) return;
    for (const auto& a : *areas)
        if (a.version <= newest) log_cleanup(discard_staging(image, a.version, a.base), "reclaiming stale staging areas");
}

Status Repository::commit(std::string_view image, uint64_t version, const fs::path& source) {
    std::string what = image_what(image, version) + " (commit of " + q(source) + ")";
    auto src = open_dir(source, what);
    if (!src) return src.status();
    // A commit is a full staging whose tree comes from `source`, published at
    // once: a snapshot of it when it is a subvolume of this filesystem, else a copy.
    Result<Staging> st = Status::error(EXDEV, what);
    bool copied = false;
    if (btrfs_ && detail::is_subvolume(source)) st = open_staging(image, version, 0, false, &source);
    if (!st && st.status().code() == EXDEV) {
        st = begin_staging(image, version, 0);
        copied = true;
    }
    if (!st) return st.status();
    Staging& s = st.value();
    s.keep_spare_ = false;  // a commit is not followed by a received version from it
    s.tree_fd_.reset();
    Status made;
    if (copied) {
        auto t = open_dir(s.tree_path_, what);
        made = t ? copy_tree(src->get(), t->get(), source, what) : t.status();
    }
    if (made) {
        struct stat sst;
        auto t = open_dir(s.tree_path_, what);
        if (!t) made = t.status();
        else if (::fstat(src->get(), &sst) < 0) made = sys_error(errno, what, "stat source");
        else {
            made = copy_attrs(t->get(), sst, what);
            s.tree_fd_ = std::move(t.value());
        }
    }
    if (made) made = s.publish();
    if (!made) log_cleanup(s.abort(), "cleaning up after: " + made.message());
    return made;
}

Status Repository::remove_version(std::string_view image, uint64_t version) {
    auto p = version_path(image, version);
    if (!p) return p.status();
    std::string what = image_what(image, version);
    if (Status s = remove_tree(*p, btrfs_, what); !s) return s;
    // The spare it was published from would keep its extents.
    if (Status s = remove_tree(spare_path_of(p->parent_path(), version), btrfs_, what); !s) return s;
    // Its boot sets go with it (docs/boot-set.md): plain files beside it.
    std::error_code ec;
    std::filesystem::remove_all(p->parent_path() / ".bootsets" / std::to_string(version), ec);
    if (ec) return Status::error(ec.value(), what + ": removing its boot sets: " + ec.message());
    return fsync_dir(p->parent_path(), what);
}

}  // namespace icbd::repl
