// diff(parent version, child version): walks both trees, pairs entries by path
// and, for regular files in both, compares extents (BTRFS FIEMAP) or block
// hashes; orders the result the way a receiver applies it.
#include "icbd/replicator/snapshot_diff.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/btrfs.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>

#include "fiemap.hpp"
#include "hash_diff.hpp"
#include "icbd/file_io.hpp"
#include "icbd/replicator/image_path.hpp"

namespace icbd::repl {
namespace {

struct Entry {
    EntryAttrs attrs;
};
using Tree = std::map<std::string, Entry>;  // path -> entry, byte order

struct DirCloser {
    void operator()(DIR* d) const { ::closedir(d); }
};

// "'<root>/<rel>'" for messages (built by append: GCC 12 misreads chains of +).
std::string where_of(const std::filesystem::path& root, const std::string& rel) {
    std::string s;
    s.append("'").append(root.string());
    if (!rel.empty()) s.append("/").append(rel);
    s.append("'");
    return s;
}

Result<UniqueFd> open_root(const std::filesystem::path& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::from_errno(errno, "version directory '" + dir.string() + "': open");
    return UniqueFd(fd);
}

// Collects every entry beneath `dir_fd` (which is at `prefix`) into `tree`.
// Never follows a symlink; refuses what a version cannot hold.
Status walk(int dir_fd, const std::string& prefix, dev_t dev, const std::filesystem::path& root, Tree& tree) {
    int dup = ::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return Status::from_errno(errno, where_of(root, prefix) + ": dup");
    std::unique_ptr<DIR, DirCloser> d(::fdopendir(dup));
    if (!d) {
        ::close(dup);
        return Status::from_errno(errno, where_of(root, prefix) + ": opendir");
    }
    std::vector<std::string> subdirs;
    errno = 0;
    while (dirent* de = ::readdir(d.get())) {
        std::string name = de->d_name;
        if (name == "." || name == "..") continue;
        std::string path = prefix.empty() ? name : prefix + "/" + name;
        std::string where = where_of(root, path);
        if (Status s = validate_relative_path(path); !s) return Status::error(s.code(), where + ": " + s.message());
        struct stat st;
        if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) return Status::from_errno(errno, where + ": stat");
        EntryAttrs a;
        a.mode = st.st_mode & 07777;
        a.uid = st.st_uid;
        a.gid = st.st_gid;
        a.mtime_sec = st.st_mtim.tv_sec;
        a.mtime_nsec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
        if (S_ISREG(st.st_mode)) {
            a.type = EntryType::regular;
            a.size = static_cast<uint64_t>(st.st_size);
        } else if (S_ISDIR(st.st_mode)) {
            a.type = EntryType::directory;
            if (st.st_dev != dev)
                return Status::error(ENOTSUP, where + ": a nested subvolume or mount point; a version must be one tree");
            subdirs.push_back(name);
        } else if (S_ISLNK(st.st_mode)) {
            a.type = EntryType::symlink;
            std::string target(static_cast<size_t>(std::max<off_t>(st.st_size, 0)) + 1, '\0');
            while (true) {
                ssize_t n = ::readlinkat(dir_fd, name.c_str(), target.data(), target.size());
                if (n < 0) return Status::from_errno(errno, where + ": readlink");
                if (static_cast<size_t>(n) < target.size()) {
                    target.resize(static_cast<size_t>(n));
                    break;
                }
                target.resize(target.size() * 2);  // grew under us
            }
            a.symlink_target = std::move(target);
        } else {
            return Status::error(ENOTSUP, where + ": a FIFO, socket or device node cannot be part of an image");
        }
        tree.emplace(path, Entry{std::move(a)});
        errno = 0;
    }
    if (errno) return Status::from_errno(errno, where_of(root, prefix) + ": readdir");
    for (const auto& name : subdirs) {
        int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        std::string path = prefix.empty() ? name : prefix + "/" + name;
        if (fd < 0) return Status::from_errno(errno, where_of(root, path) + ": open");
        UniqueFd sub(fd);
        if (Status s = walk(sub.get(), path, dev, root, tree); !s) return s;
    }
    return Status::ok();
}

Result<Tree> read_tree(int root_fd, const std::filesystem::path& root) {
    struct stat st;
    if (::fstat(root_fd, &st) < 0) return Status::from_errno(errno, "version directory '" + root.string() + "': stat");
    Tree tree;
    if (Status s = walk(root_fd, "", st.st_dev, root, tree); !s) return s;
    return tree;
}

// The filesystem UUID when `fd` is on BTRFS (physical addresses are only
// comparable within one filesystem; st_dev differs per subvolume).
std::optional<std::array<uint8_t, 16>> btrfs_fsid(int fd) {
    struct statfs sf;
    if (::fstatfs(fd, &sf) < 0 || sf.f_type != static_cast<decltype(sf.f_type)>(BTRFS_SUPER_MAGIC)) return std::nullopt;
    btrfs_ioctl_fs_info_args info{};
    if (::ioctl(fd, BTRFS_IOC_FS_INFO, &info) < 0) return std::nullopt;
    std::array<uint8_t, 16> id;
    std::memcpy(id.data(), info.fsid, 16);
    return id;
}

// Inline extents (small files kept in metadata) have no physical address to
// compare. In two snapshots of one lineage an unmodified file is the same inode:
// same number, same BTRFS inode generation (FS_IOC_GETVERSION: the transaction
// that created it) and same ctime, which every write, truncate or attribute
// change moves forward and no user can set. A replaced file is a new inode.
bool same_unmodified_inode(int child_fd, int parent_fd) {
    struct stat c, p;
    if (::fstat(child_fd, &c) < 0 || ::fstat(parent_fd, &p) < 0) return false;
    int cg = 0, pg = 0;
    if (::ioctl(child_fd, FS_IOC_GETVERSION, &cg) < 0 || ::ioctl(parent_fd, FS_IOC_GETVERSION, &pg) < 0) return false;
    return c.st_ino == p.st_ino && cg == pg && c.st_ctim.tv_sec == p.st_ctim.tv_sec &&
           c.st_ctim.tv_nsec == p.st_ctim.tv_nsec && c.st_size == p.st_size;
}

uint64_t total(const std::vector<ByteRange>& r) {
    uint64_t n = 0;
    for (const auto& x : r) n += x.length;
    return n;
}

Result<UniqueFd> open_file(int root_fd, const std::string& path, const std::filesystem::path& root) {
    return open_beneath(root_fd, path, O_RDONLY | O_NOFOLLOW, 0, ResolveMethod::automatic,
                        "version '" + root.string() + "'");
}

}  // namespace

const char* diff_method_name(DiffMethod m) {
    switch (m) {
        case DiffMethod::full: return "full";
        case DiffMethod::fiemap: return "fiemap";
        case DiffMethod::hash: return "hash";
    }
    return "?";
}

Result<SnapshotDiff> diff_versions(const std::optional<std::filesystem::path>& parent,
                                   const std::filesystem::path& child, const DiffOptions& options) {
    SnapshotDiff out;
    auto child_fd = open_root(child);
    if (!child_fd) return child_fd.status();
    UniqueFd parent_fd;
    if (parent) {
        auto p = open_root(*parent);
        if (!p) return p.status();
        parent_fd = std::move(p.value());
    }

    uint32_t block = options.hash_block_size;
    if (block < 4096 || (block & (block - 1)))
        return Status::error(EINVAL, "diff: hash block size " + std::to_string(block) + " is not a power of two >= 4096");

    if (!parent) {
        out.method = DiffMethod::full;
    } else {
        auto cid = btrfs_fsid(child_fd->get()), pid = btrfs_fsid(parent_fd.get());
        bool same_btrfs = cid && pid && *cid == *pid;
        out.method = options.method.value_or(same_btrfs ? DiffMethod::fiemap : DiffMethod::hash);
        if (out.method == DiffMethod::full) out.method = same_btrfs ? DiffMethod::fiemap : DiffMethod::hash;
        if (out.method == DiffMethod::fiemap && !same_btrfs)
            return Status::error(EINVAL, "diff '" + parent->string() + "' -> '" + child.string() +
                                             "': the fiemap method needs both versions on one BTRFS filesystem");
    }

    auto child_tree = read_tree(child_fd->get(), child);
    if (!child_tree) return child_tree.status();
    Tree parent_tree;
    if (parent) {
        auto t = read_tree(parent_fd.get(), *parent);
        if (!t) return t.status();
        parent_tree = std::move(t.value());
    }
    out.stats.entries_child = child_tree->size();

    std::vector<FileChange> deletions;
    for (const auto& [path, e] : parent_tree) {
        auto it = child_tree->find(path);
        if (it == child_tree->end() || it->second.attrs.type != e.attrs.type)
            deletions.push_back(FileChange{path, ChangeKind::deleted, e.attrs, 0, {}, {}});
    }
    std::sort(deletions.begin(), deletions.end(),
              [](const FileChange& a, const FileChange& b) { return a.path > b.path; });
    out.changes = std::move(deletions);

    for (const auto& [path, e] : *child_tree) {
        auto pit = parent_tree.find(path);
        bool in_parent = pit != parent_tree.end() && pit->second.attrs.type == e.attrs.type;
        FileChange fc{path, in_parent ? ChangeKind::modified : ChangeKind::added, e.attrs, 0, {}, {}};
        std::string what = where_of(child, path);

        if (e.attrs.type == EntryType::regular) {
            auto cf = open_file(child_fd->get(), path, child);
            if (!cf) return cf.status();
            if (!in_parent) {
                auto segs = detail::data_segments(cf->get(), e.attrs.size, what);
                if (!segs) return segs.status();
                fc.data = std::move(segs.value());
            } else {
                const EntryAttrs& pa = pit->second.attrs;
                auto pf = open_file(parent_fd.get(), path, *parent);
                if (!pf) return pf.status();
                ++out.stats.files_compared;
                detail::RangeDiff rd;
                if (out.method == DiffMethod::fiemap) {
                    auto ce = detail::read_fiemap(cf->get(), what);
                    if (!ce) return ce.status();
                    auto pe = detail::read_fiemap(pf->get(), where_of(*parent, path));
                    if (!pe) return pe.status();
                    out.stats.extents_examined += ce->size() + pe->size();
                    rd = detail::compare_extents(*ce, e.attrs.size, &pe.value(), pa.size,
                                                 same_unmodified_inode(cf->get(), pf->get()));
                } else {
                    auto r = detail::hash_compare(cf->get(), e.attrs.size, pf->get(), pa.size, block, what,
                                                  out.stats.bytes_hashed);
                    if (!r) return r.status();
                    rd = std::move(r.value());
                }
                fc.data = std::move(rd.data);
                fc.holes = std::move(rd.holes);
                if (pa.size != e.attrs.size) fc.changed |= kChangedSize;
            }
            if (!fc.data.empty() || !fc.holes.empty()) {
                if (in_parent) fc.changed |= kChangedData;
                ++out.stats.files_changed;
            }
        }
        if (in_parent) {
            const EntryAttrs& pa = pit->second.attrs;
            if (pa.mode != e.attrs.mode) fc.changed |= kChangedMode;
            if (pa.uid != e.attrs.uid || pa.gid != e.attrs.gid) fc.changed |= kChangedOwner;
            if (pa.mtime_sec != e.attrs.mtime_sec || pa.mtime_nsec != e.attrs.mtime_nsec) fc.changed |= kChangedMtime;
            if (pa.symlink_target != e.attrs.symlink_target) fc.changed |= kChangedTarget;
            if (!fc.changed) continue;
        }
        out.stats.data_bytes += total(fc.data);
        out.stats.hole_bytes += total(fc.holes);
        out.changes.push_back(std::move(fc));
    }
    return out;
}

Result<ChildFileReader> ChildFileReader::open(const std::filesystem::path& version_dir, std::string_view rel_path) {
    auto root = open_root(version_dir);
    if (!root) return root.status();
    auto fd = open_beneath(root->get(), rel_path, O_RDONLY | O_NOFOLLOW, 0, ResolveMethod::automatic,
                           "version '" + version_dir.string() + "'");
    if (!fd) return fd.status();
    ::posix_fadvise(fd->get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    return ChildFileReader(std::move(fd.value()), version_dir.string() + "/" + std::string(rel_path));
}

Status ChildFileReader::read_at(uint64_t offset, std::span<uint8_t> buf) const {
    Status s = full_pread(fd_.get(), buf.data(), buf.size(), offset, quoted_path_);
    if (s) {
        bytes_read_ += buf.size();
        return s;
    }
    if (s.code() == ENODATA) return Status::error(EIO, s.message() + " (was the version modified?)");
    return Status::error(s.code(), s.message() + " (reading at offset " + std::to_string(offset) + ")");
}

Status ChildFileReader::for_each_chunk(std::span<const ByteRange> ranges, size_t chunk, const Sink& sink) {
    if (chunk == 0) return Status::error(EINVAL, "'" + path_ + "': chunk size 0");
    std::vector<uint8_t> buf;
    for (const auto& r : ranges) {
        uint64_t off = r.offset;
        while (off < r.end()) {
            size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, r.end() - off));
            buf.resize(n);
            if (Status s = read_at(off, buf); !s) return s;
            if (Status s = sink(off, std::span<const uint8_t>(buf.data(), n)); !s) return s;
            off += n;
        }
    }
    return Status::ok();
}

}  // namespace icbd::repl
