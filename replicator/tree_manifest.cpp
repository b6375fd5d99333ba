// manifest_of_tree: walks a version tree (lstat and readlink only, never a
// symlink followed) and hashes its entries in bytewise path order (section 8.2).
#include "tree_manifest.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "digests.hpp"
#include "entry_stat.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd::repl {

namespace {

struct DirCloser {
    void operator()(DIR* d) const { ::closedir(d); }
};

struct WalkEntry {
    std::string path;
    EntryAttrs attrs;
};

Status walk_tree(int dir_fd, const std::string& prefix, std::string_view what, std::vector<WalkEntry>& out) {
    // A fresh descriptor: fdopendir owns it and reads from its own offset.
    int fd = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::from_errno(errno, std::string(what) + ": open '" + (prefix.empty() ? "." : prefix) + "'");
    std::unique_ptr<DIR, DirCloser> dir(::fdopendir(fd));
    if (!dir) {
        int e = errno;
        ::close(fd);
        return Status::from_errno(e, std::string(what) + ": fdopendir '" + prefix + "'");
    }
    std::vector<std::string> names;
    errno = 0;
    while (dirent* d = ::readdir(dir.get())) {
        std::string_view n = d->d_name;
        if (n != "." && n != "..") names.emplace_back(n);
        errno = 0;
    }
    if (errno) return Status::from_errno(errno, std::string(what) + ": readdir '" + prefix + "'");
    std::sort(names.begin(), names.end());
    const int dfd = ::dirfd(dir.get());
    for (const auto& name : names) {
        std::string rel = prefix.empty() ? name : prefix + "/" + name;
        struct ::stat st;
        if (::fstatat(dfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
            return Status::from_errno(errno, std::string(what) + ": lstat '" + rel + "'");
        std::string target;
        if (S_ISLNK(st.st_mode)) {
            std::string buf(4096, '\0');
            ssize_t n = ::readlinkat(dfd, name.c_str(), buf.data(), buf.size());
            if (n < 0) return Status::from_errno(errno, std::string(what) + ": readlink '" + rel + "'");
            buf.resize(static_cast<size_t>(n));
            target = std::move(buf);
        }
        auto attrs = entry_attrs_from_stat(rel, st, std::move(target));
        if (!attrs) return Status::error(attrs.status().code(), std::string(what) + ": " + attrs.status().message());
        out.push_back(WalkEntry{rel, std::move(attrs.value())});
        if (S_ISDIR(st.st_mode)) {
            UniqueFd sub(::openat(dfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            if (!sub.valid()) return Status::from_errno(errno, std::string(what) + ": open '" + rel + "'");
            if (Status s = walk_tree(sub.get(), rel, what, out); !s) return s;
        }
    }
    return Status::ok();
}

}  // namespace

Result<TreeManifest> manifest_of_tree(int dir_fd, std::string_view what) {
    std::vector<WalkEntry> entries;
    if (Status s = walk_tree(dir_fd, "", what, entries); !s) return s;
    std::sort(entries.begin(), entries.end(), [](const WalkEntry& a, const WalkEntry& b) { return a.path < b.path; });
    ManifestHasher h;
    TreeManifest m;
    for (const auto& e : entries) {
        if (Status s = h.add(e.path, e.attrs); !s) return Status::error(s.code(), std::string(what) + ": " + s.message());
        if (e.attrs.type == EntryType::regular) m.total_size += e.attrs.size;
    }
    m.entry_count = h.count();
    m.hash = h.value();
    return m;
}

}  // namespace icbd::repl
