// Validation of repository names and opening of in-version paths beneath a
// directory: openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), or a component walk.
#include "icbd/replicator/image_path.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace icbd::repl {
namespace {

std::string quoted(std::string_view s) {
    std::string out = "'";
    for (char c : s) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            out += "\\x";
            out += hex[(static_cast<unsigned char>(c) >> 4) & 0xf];
            out += hex[static_cast<unsigned char>(c) & 0xf];
        } else {
            out += c;
        }
    }
    // A hostile name may be long: messages stay readable.
    if (out.size() > 200) out = out.substr(0, 200) + "...";
    return out + "'";
}

std::string prefix(std::string_view what) { return what.empty() ? std::string() : std::string(what) + ": "; }

long sys_openat2(int dirfd, const char* path, open_how* how) {
    return syscall(SYS_openat2, dirfd, path, how, sizeof(*how));
}

// -1 unknown, 0 no, 1 yes. Probed once: the answer does not change while we run.
std::atomic<int> g_openat2 = -1;

Status open_error(int err, std::string_view rel, std::string_view what) {
    if (err == ELOOP || err == EXDEV)
        return Status::error(err, prefix(what) + "path " + quoted(rel) +
                                      " goes through a symlink or leaves its directory; refused");
    return Status::from_errno(err, prefix(what) + "open " + quoted(rel));
}

Result<UniqueFd> open_walk(int dir_fd, std::string_view rel, int flags, mode_t mode, std::string_view what) {
    UniqueFd cur;
    int at = dir_fd;
    size_t pos = 0;
    while (true) {
        size_t slash = rel.find('/', pos);
        std::string comp(rel.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos));
        if (slash == std::string_view::npos) {
            int fd = ::openat(at, comp.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode);
            if (fd < 0) {
                int err = errno;
                // O_NOFOLLOW | O_PATH-less opens of a symlink give ELOOP;
                // O_DIRECTORY on a symlink gives ENOTDIR: say symlink in both.
                if (err == ENOTDIR && (flags & O_DIRECTORY)) {
                    struct stat st;
                    if (::fstatat(at, comp.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
                        err = ELOOP;
                }
                return open_error(err, rel, what);
            }
            return UniqueFd(fd);
        }
        int fd = ::openat(at, comp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == ENOTDIR) {
                struct stat st;
                if (::fstatat(at, comp.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) err = ELOOP;
            }
            return open_error(err, rel, what);
        }
        cur.reset(fd);
        at = cur.get();
        pos = slash + 1;
    }
}

}  // namespace

Status validate_image_name(std::string_view name) {
    if (name.empty()) return Status::error(EINVAL, "image name is empty");
    if (name.size() > kMaxImageNameLength)
        return Status::error(EINVAL, "image name " + quoted(name) + " is longer than 64 characters");
    if (name[0] == '.') return Status::error(EINVAL, "image name " + quoted(name) + " starts with '.'");
    for (char c : name) {
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                  c == '_' || c == '-';
        if (!ok)
            return Status::error(EINVAL, "image name " + quoted(name) + " has a character outside [A-Za-z0-9._-]");
    }
    return Status::ok();
}

Status validate_relative_path(std::string_view path) {
    if (path.empty()) return Status::error(EINVAL, "file path is empty");
    if (path.size() > kMaxRelativePathLength)
        return Status::error(EINVAL, "file path " + quoted(path.substr(0, 64)) + " is longer than 4096 bytes");
    if (path.find('\0') != std::string_view::npos)
        return Status::error(EINVAL, "file path " + quoted(path) + " contains a NUL byte");
    if (path[0] == '/') return Status::error(EINVAL, "file path " + quoted(path) + " is absolute");
    size_t pos = 0;
    while (pos <= path.size()) {
        size_t slash = path.find('/', pos);
        std::string_view comp = path.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
        if (comp.empty()) return Status::error(EINVAL, "file path " + quoted(path) + " has an empty component");
        if (comp == "." || comp == "..")
            return Status::error(EINVAL, "file path " + quoted(path) + " has a '" + std::string(comp) + "' component");
        if (comp.size() > 255)
            return Status::error(EINVAL, "file path " + quoted(path) + " has a component longer than 255 bytes");
        if (slash == std::string_view::npos) break;
        pos = slash + 1;
    }
    return Status::ok();
}

std::optional<uint64_t> parse_version(std::string_view name) {
    if (name.empty() || name.size() > 20 || name[0] == '0') return std::nullopt;
    uint64_t v = 0;
    auto [p, ec] = std::from_chars(name.data(), name.data() + name.size(), v);
    if (ec != std::errc() || p != name.data() + name.size()) return std::nullopt;
    return v;
}

std::string version_name(uint64_t version) { return std::to_string(version); }

bool openat2_available() {
    int known = g_openat2.load(std::memory_order_relaxed);
    if (known >= 0) return known == 1;
    open_how how{};
    how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH;
    long fd = sys_openat2(AT_FDCWD, ".", &how);
    bool ok = fd >= 0 || (errno != ENOSYS && errno != EPERM);
    if (fd >= 0) ::close(static_cast<int>(fd));
    g_openat2.store(ok ? 1 : 0, std::memory_order_relaxed);
    return ok;
}

Result<UniqueFd> open_beneath(int dir_fd, std::string_view rel, int flags, mode_t mode, ResolveMethod method,
                              std::string_view what) {
    if (Status s = validate_relative_path(rel); !s) return Status::error(s.code(), prefix(what) + s.message());
    if (method == ResolveMethod::automatic) method = openat2_available() ? ResolveMethod::openat2 : ResolveMethod::walk;
    if (method == ResolveMethod::walk) return open_walk(dir_fd, rel, flags, mode, what);

    open_how how{};
    how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    std::string path(rel);
    long fd;
    do fd = sys_openat2(dir_fd, path.c_str(), &how);
    while (fd < 0 && errno == EAGAIN);  // RESOLVE_BENEATH retries on concurrent renames
    if (fd < 0) {
        int err = errno;
        if (err == ENOSYS && method == ResolveMethod::openat2)
            return Status::error(ENOSYS, prefix(what) + "openat2 is not available on this kernel");
        return open_error(err, rel, what);
    }
    return UniqueFd(static_cast<int>(fd));
}

Result<ParentAndLeaf> open_parent_beneath(int dir_fd, std::string_view rel, ResolveMethod method,
                                          std::string_view what) {
    if (Status s = validate_relative_path(rel); !s) return Status::error(s.code(), prefix(what) + s.message());
    size_t slash = rel.rfind('/');
    ParentAndLeaf out;
    if (slash == std::string_view::npos) {
        int fd = ::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) return Status::from_errno(errno, prefix(what) + "dup of the version directory");
        out.dir.reset(fd);
        out.leaf = std::string(rel);
        return out;
    }
    auto dir = open_beneath(dir_fd, rel.substr(0, slash), O_RDONLY | O_DIRECTORY, 0, method, what);
    if (!dir) return dir.status();
    out.dir = std::move(dir.value());
    out.leaf = std::string(rel.substr(slash + 1));
    return out;
}

}  // namespace icbd::repl
