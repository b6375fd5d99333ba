// The Applier: change frames applied beneath a staging tree, never following a
// symlink and never leaving the tree; DATA through the DataWriter.
#include "applier.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "icbd/checksum.hpp"
#include "failure_code.hpp"
#include "icbd/replicator/image_path.hpp"

namespace icbd::repl {

namespace {

std::string parent_of(std::string_view path) {
    auto slash = path.rfind('/');
    return slash == std::string_view::npos ? std::string() : std::string(path.substr(0, slash));
}
std::string leaf_of(std::string_view path) {
    auto slash = path.rfind('/');
    return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

// Removes `leaf` (a directory with everything in it) beneath `dir_fd`, never following symlinks.
Status remove_tree_at(int dir_fd, const std::string& leaf, const std::string& what) {
    UniqueFd d(::openat(dir_fd, leaf.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!d.valid()) return Status::from_errno(errno, "'" + what + "': open to delete");
    int fd2 = ::dup(d.get());
    if (fd2 < 0) return Status::from_errno(errno, "dup");
    DIR* dir = ::fdopendir(fd2);
    if (!dir) {
        ::close(fd2);
        return Status::from_errno(errno, "'" + what + "': fdopendir");
    }
    std::vector<std::pair<std::string, bool>> names;
    while (dirent* e = ::readdir(dir)) {
        std::string n = e->d_name;
        if (n == "." || n == "..") continue;
        struct ::stat st;
        if (::fstatat(d.get(), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        names.emplace_back(n, S_ISDIR(st.st_mode));
    }
    ::closedir(dir);
    for (auto& [n, is_dir] : names) {
        if (is_dir) {
            if (Status s = remove_tree_at(d.get(), n, what + "/" + n); !s) return s;
        } else if (::unlinkat(d.get(), n.c_str(), 0) < 0 && errno != ENOENT) {
            return Status::from_errno(errno, "'" + what + "/" + n + "': unlink");
        }
    }
    if (::unlinkat(dir_fd, leaf.c_str(), AT_REMOVEDIR) < 0 && errno != ENOENT)
        return Status::from_errno(errno, "'" + what + "': rmdir");
    return Status::ok();
}

Status set_attrs(int fd, const EntryAttrs& a, const std::string& path, bool set_mode) {
    if (::fchown(fd, a.uid, a.gid) < 0) return Status::from_errno(errno, "'" + path + "': chown");
    if (set_mode && ::fchmod(fd, a.mode) < 0) return Status::from_errno(errno, "'" + path + "': chmod");
    struct timespec ts[2];
    ts[0].tv_sec = 0;
    ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_sec = a.mtime_sec;
    ts[1].tv_nsec = a.mtime_nsec;
    if (::futimens(fd, ts) < 0) return Status::from_errno(errno, "'" + path + "': set mtime");
    return Status::ok();
}

}  // namespace

Result<UniqueFd> Applier::open_dir_creating(const std::string& rel) {
    UniqueFd cur(::openat(tree_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!cur.valid()) return Status::from_errno(errno, "open staging root");
    size_t pos = 0;
    while (pos < rel.size()) {
        size_t slash = rel.find('/', pos);
        std::string comp = rel.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
        std::string sofar = rel.substr(0, slash == std::string::npos ? rel.size() : slash);
        if (::mkdirat(cur.get(), comp.c_str(), 0700) < 0 && errno != EEXIST)
            return Status::from_errno(errno, "'" + sofar + "': mkdir");
        UniqueFd next(::openat(cur.get(), comp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!next.valid()) {
            int e = errno;
            if (e == ELOOP || e == ENOTDIR) return violation("'" + sofar + "' is not a directory");
            return Status::from_errno(e, "'" + sofar + "': open");
        }
        cur = std::move(next);
        if (slash == std::string::npos) break;
        pos = slash + 1;
    }
    return cur;
}

Status Applier::violation(int err, std::string msg) {
    violated_ = true;
    return Status::error(err, std::move(msg));
}

ErrorCode Applier::failure_code(const Status& failure) const {
    return violated_ ? ErrorCode::protocol : code_for_local_failure(failure.code());
}

Status Applier::apply(const Message& m) {
    violated_ = false;
    if (auto* d = std::get_if<Data>(&m)) return data(*d);
    // Everything but DATA sees the data written before it.
    if (Status s = writer_.flush(); !s) return s;
    if (auto* t = std::get_if<Truncate>(&m)) return truncate(*t);
    if (auto* h = std::get_if<Hole>(&m)) return hole(*h);
    if (auto* f = std::get_if<FileEntry>(&m)) return file(*f);
    if (auto* x = std::get_if<Delete>(&m)) return del(*x);
    return violation("not a change frame");
}

Result<Applier::Current*> Applier::regular(const std::string& path, const char* frame) {
    if (cur_.fd && cur_.path == path) return &cur_;
    auto fd = open_beneath(tree_, path, O_WRONLY | O_NOFOLLOW);
    if (!fd) {
        int e = fd.status().code();
        if (e == ENOENT || e == ELOOP || e == EISDIR)
            return violation(std::string(frame) + " frame for '" + path + "', which is not an existing regular file");
        return fd.status();
    }
    struct ::stat st;
    if (::fstat(fd->get(), &st) < 0) return Status::from_errno(errno, "'" + path + "': stat");
    if (!S_ISREG(st.st_mode)) return violation(std::string(frame) + " frame for '" + path + "', which is not a regular file");
    cur_ = Current{path, std::make_shared<UniqueFd>(std::move(fd.value())), static_cast<uint64_t>(st.st_size)};
    return &cur_;
}

Status Applier::data(const Data& d) {
    auto c = regular(d.path, "DATA");
    if (!c) return c.status();
    if (d.offset + d.length > (*c)->size)
        return violation("DATA frame for '" + d.path + "': offset " + std::to_string(d.offset) + " + length " +
                     std::to_string(d.length) + " is beyond the file's size " + std::to_string((*c)->size));
    Bytes buf(d.length);
    if (d.compression == Compression::none) {
        std::memcpy(buf.data(), d.bytes.data(), d.length);
    } else {
        if ((caps_ & capability_bit(d.compression)) == 0)
            return violation(std::string("DATA frame compressed with ") + compression_name(d.compression) +
                         ", which this replica did not offer");
        if (Status s = decomp_.decompress(d.compression, d.bytes, buf); !s)
            return violation(EBADMSG, "DATA frame for '" + d.path + "' at offset " + std::to_string(d.offset) +
                                              ": " + s.message());
    }
    last_data_xxh3_ = xxh3_64(buf.data(), buf.size());
    data_bytes_ += d.length;
    return writer_.write((*c)->fd, d.offset, std::move(buf), "'" + d.path + "'");
}

Status Applier::truncate(const Truncate& t) {
    cur_ = {};
    auto dir = open_dir_creating(parent_of(t.path));
    if (!dir) return dir.status();
    std::string leaf = leaf_of(t.path);
    UniqueFd fd(::openat(dir->get(), leaf.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.valid()) {
        int e = errno;
        if (e == ELOOP || e == EISDIR) return violation("TRUNCATE frame for '" + t.path + "', which is not a regular file");
        return Status::from_errno(e, "'" + t.path + "': create");
    }
    struct ::stat st;
    if (::fstat(fd.get(), &st) < 0) return Status::from_errno(errno, "'" + t.path + "': stat");
    if (!S_ISREG(st.st_mode)) return violation("TRUNCATE frame for '" + t.path + "', which is not a regular file");
    if (::ftruncate(fd.get(), static_cast<off_t>(t.size)) < 0)
        return Status::from_errno(errno, "'" + t.path + "': truncate to " + std::to_string(t.size));
    cur_ = Current{t.path, std::make_shared<UniqueFd>(std::move(fd)), t.size};
    return Status::ok();
}

Status Applier::hole(const Hole& h) {
    auto c = regular(h.path, "HOLE");
    if (!c) return c.status();
    if (h.offset + h.length > (*c)->size)
        return violation("HOLE frame for '" + h.path + "': range beyond the file's size " + std::to_string((*c)->size));
    if (::fallocate((*c)->fd->get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(h.offset),
                    static_cast<off_t>(h.length)) < 0)
        return Status::from_errno(errno, "'" + h.path + "': punch hole at " + std::to_string(h.offset));
    return Status::ok();
}

Status Applier::file(const FileEntry& f) {
    const EntryAttrs& a = f.attrs;
    if (a.type == EntryType::regular) {
        auto fd = open_beneath(tree_, f.path, O_RDONLY | O_NOFOLLOW);
        if (!fd) {
            int e = fd.status().code();
            if (e == ENOENT || e == ELOOP) return violation("FILE frame for '" + f.path + "', which does not exist as a regular file");
            return fd.status();
        }
        struct ::stat st;
        if (::fstat(fd->get(), &st) < 0) return Status::from_errno(errno, "'" + f.path + "': stat");
        if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != a.size)
            return violation("FILE frame for '" + f.path + "': not a regular file of " + std::to_string(a.size) + " bytes");
        return set_attrs(fd->get(), a, f.path, true);
    }
    cur_ = {};
    auto dir = open_dir_creating(parent_of(f.path));
    if (!dir) return dir.status();
    std::string leaf = leaf_of(f.path);
    struct ::stat st;
    bool exists = ::fstatat(dir->get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
    if (a.type == EntryType::symlink) {
        if (exists && !S_ISLNK(st.st_mode)) return violation("FILE frame: symlink '" + f.path + "' over an entry of another type");
        if (exists && ::unlinkat(dir->get(), leaf.c_str(), 0) < 0) return Status::from_errno(errno, "'" + f.path + "': unlink");
        if (::symlinkat(a.symlink_target.c_str(), dir->get(), leaf.c_str()) < 0)
            return Status::from_errno(errno, "'" + f.path + "': symlink");
        if (::fchownat(dir->get(), leaf.c_str(), a.uid, a.gid, AT_SYMLINK_NOFOLLOW) < 0)
            return Status::from_errno(errno, "'" + f.path + "': chown");
        struct timespec ts[2] = {{0, UTIME_OMIT}, {a.mtime_sec, static_cast<long>(a.mtime_nsec)}};
        if (::utimensat(dir->get(), leaf.c_str(), ts, AT_SYMLINK_NOFOLLOW) < 0)
            return Status::from_errno(errno, "'" + f.path + "': set mtime");
        return Status::ok();
    }
    if (exists && !S_ISDIR(st.st_mode)) return violation("FILE frame: directory '" + f.path + "' over an entry of another type");
    if (!exists && ::mkdirat(dir->get(), leaf.c_str(), 0700) < 0 && errno != EEXIST)
        return Status::from_errno(errno, "'" + f.path + "': mkdir");
    UniqueFd d(::openat(dir->get(), leaf.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!d.valid()) return Status::from_errno(errno, "'" + f.path + "': open");
    return set_attrs(d.get(), a, f.path, true);
}

Status Applier::del(const Delete& x) {
    cur_ = {};
    auto pl = open_parent_beneath(tree_, x.path);
    if (!pl) {
        int e = pl.status().code();
        if (e == ENOENT || e == ENOTDIR) return Status::ok();  // already gone with its directory
        return pl.status();
    }
    struct ::stat st;
    if (::fstatat(pl->dir.get(), pl->leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) return Status::ok();
        return Status::from_errno(errno, "'" + x.path + "': stat");
    }
    if (S_ISDIR(st.st_mode)) return remove_tree_at(pl->dir.get(), pl->leaf, x.path);
    if (::unlinkat(pl->dir.get(), pl->leaf.c_str(), 0) < 0 && errno != ENOENT)
        return Status::from_errno(errno, "'" + x.path + "': unlink");
    return Status::ok();
}

}  // namespace icbd::repl
