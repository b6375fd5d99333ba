// Tree and file copies where there are no snapshots (tree_copy.hpp).
#include "icbd/replicator/tree_copy.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

#include "icbd/unique_fd.hpp"

namespace icbd::repl {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kCopyChunk = 64ull << 20;

// (append, not operator+: GCC 12 warns falsely about overlapping memcpy there)
std::string q(const fs::path& p) {
    std::string s;
    s.append("'").append(p.string()).append("'");
    return s;
}

// As the repository words them: a full disk says so plainly.
Status sys_error(int err, const std::string& what, const std::string& op) {
    if (err == ENOSPC) return Status::error(ENOSPC, what + ": " + op + ": no space left on device");
    if (err == EDQUOT) return Status::error(EDQUOT, what + ": " + op + ": disk quota exceeded");
    return Status::from_errno(err, what + ": " + op);
}

struct DirCloser {
    void operator()(DIR* d) const { ::closedir(d); }
};

}  // namespace

Status copy_attrs(int fd, const struct stat& st, const std::string& where) {
    if (::fchown(fd, st.st_uid, st.st_gid) < 0) return sys_error(errno, where, "chown");
    if (::fchmod(fd, st.st_mode & 07777) < 0) return sys_error(errno, where, "chmod");
    timespec ts[2] = {st.st_atim, st.st_mtim};
    if (::futimens(fd, ts) < 0) return sys_error(errno, where, "set mtime");
    return Status::ok();
}

// Copies [off, off+len) at the same offset: in the kernel where it can
// (copy_file_range), through a buffer where it cannot (across filesystems).
static Status copy_range(int src, int dst, uint64_t off, uint64_t len, uint64_t total, const CopyProgress& progress,
                  const std::string& where) {
    bool in_kernel = true;
    std::vector<char> buf;
    while (len) {
        size_t n = static_cast<size_t>(std::min(len, kCopyChunk));
        ssize_t got;
        if (in_kernel) {
            loff_t in = static_cast<loff_t>(off), out = static_cast<loff_t>(off);
            got = ::copy_file_range(src, &in, dst, &out, n, 0);
            if (got < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                in_kernel = false;
                continue;
            }
        } else {
            if (buf.empty()) buf.resize(1 << 20);
            n = std::min(n, buf.size());
            got = ::pread(src, buf.data(), n, static_cast<off_t>(off));
            if (got > 0 && ::pwrite(dst, buf.data(), static_cast<size_t>(got), static_cast<off_t>(off)) != got)
                return sys_error(errno ? errno : EIO, where, "write at offset " + std::to_string(off));
        }
        if (got < 0) {
            if (errno == EINTR) continue;
            return sys_error(errno, where, "copy at offset " + std::to_string(off));
        }
        if (got == 0) return Status::error(EIO, where + ": the source shrank during the copy");
        off += static_cast<uint64_t>(got);
        len -= static_cast<uint64_t>(got);
        if (progress) progress(off, total);
    }
    return Status::ok();
}

// A reflink where the filesystem has one; else only the data segments
// (SEEK_DATA/SEEK_HOLE), so a sparse disk stays sparse.
Status copy_file_data(int src, int dst, uint64_t size, const CopyProgress& progress, const std::string& where) {
    if (::ioctl(dst, FICLONE, src) == 0) {
        if (progress) progress(size, size);
        return Status::ok();
    }
    if (::ftruncate(dst, static_cast<off_t>(size)) < 0) return sys_error(errno, where, "truncate");
    uint64_t pos = 0;
    while (pos < size) {
        off_t data = ::lseek(src, static_cast<off_t>(pos), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) break;  // only a hole is left
            return sys_error(errno, where, "seek data");
        }
        off_t hole = ::lseek(src, data, SEEK_HOLE);
        if (hole < 0) return sys_error(errno, where, "seek hole");
        uint64_t end = std::min<uint64_t>(static_cast<uint64_t>(hole), size);
        if (static_cast<uint64_t>(data) >= end) break;
        if (Status s = copy_range(src, dst, static_cast<uint64_t>(data), end - static_cast<uint64_t>(data), size,
                                  progress, where);
            !s)
            return s;
        pos = end;
    }
    if (progress) progress(size, size);
    return Status::ok();
}

Status copy_tree(int src_dir, int dst_dir, const fs::path& src_path, const std::string& what) {
    int dup = ::fcntl(src_dir, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return sys_error(errno, what, "dup");
    std::unique_ptr<DIR, DirCloser> d(::fdopendir(dup));
    if (!d) {
        ::close(dup);
        return sys_error(errno, what, "opendir " + q(src_path));
    }
    errno = 0;
    while (dirent* de = ::readdir(d.get())) {
        std::string name = de->d_name;
        if (name == "." || name == "..") continue;
        std::string where = what + ": copy " + q(src_path / name);
        struct stat st;
        if (::fstatat(src_dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) return sys_error(errno, where, "stat");
        if (S_ISDIR(st.st_mode)) {
            if (::mkdirat(dst_dir, name.c_str(), 0700) < 0) return sys_error(errno, where, "mkdir");
            UniqueFd s(::openat(src_dir, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            UniqueFd t(::openat(dst_dir, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            if (!s.valid() || !t.valid()) return sys_error(errno, where, "open");
            if (Status r = copy_tree(s.get(), t.get(), src_path / name, what); !r) return r;
            if (Status r = copy_attrs(t.get(), st, where); !r) return r;  // after the children changed mtime
        } else if (S_ISREG(st.st_mode)) {
            UniqueFd s(::openat(src_dir, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
            if (!s.valid()) return sys_error(errno, where, "open");
            UniqueFd t(::openat(dst_dir, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
            if (!t.valid()) return sys_error(errno, where, "create");
            if (Status r = copy_file_data(s.get(), t.get(), static_cast<uint64_t>(st.st_size), {}, where); !r) return r;
            if (Status r = copy_attrs(t.get(), st, where); !r) return r;
        } else if (S_ISLNK(st.st_mode)) {
            std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
            ssize_t n = ::readlinkat(src_dir, name.c_str(), target.data(), target.size());
            if (n < 0) return sys_error(errno, where, "readlink");
            target.resize(static_cast<size_t>(n));
            if (::symlinkat(target.c_str(), dst_dir, name.c_str()) < 0) return sys_error(errno, where, "symlink");
            if (::fchownat(dst_dir, name.c_str(), st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW) < 0)
                return sys_error(errno, where, "chown");
            timespec ts[2] = {st.st_atim, st.st_mtim};
            if (::utimensat(dst_dir, name.c_str(), ts, AT_SYMLINK_NOFOLLOW) < 0)
                return sys_error(errno, where, "set mtime");
        } else {
            return Status::error(ENOTSUP, where + ": a FIFO, socket or device node cannot be part of an image");
        }
        errno = 0;
    }
    if (errno) return sys_error(errno, what, "readdir " + q(src_path));
    return Status::ok();
}

// A writable tree at `dest` with the contents of the read-only version `src`:
// a snapshot on BTRFS, a copy elsewhere.

}  // namespace icbd::repl
