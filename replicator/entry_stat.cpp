// The attributes of an entry of a version, from lstat() and readlink().
#include "entry_stat.hpp"

#include <cerrno>
#include <cstdio>

#include "name_rules.hpp"

namespace icbd::repl {

Result<EntryAttrs> entry_attrs_from_stat(std::string_view path, const struct ::stat& st, std::string symlink_target) {
    EntryAttrs a;
    if (S_ISREG(st.st_mode)) {
        a.type = EntryType::regular;
        a.size = static_cast<uint64_t>(st.st_size);
    } else if (S_ISDIR(st.st_mode)) {
        a.type = EntryType::directory;
    } else if (S_ISLNK(st.st_mode)) {
        a.type = EntryType::symlink;
        a.symlink_target = std::move(symlink_target);
    } else {
        char mode[16];
        snprintf(mode, sizeof mode, "0%o", static_cast<unsigned>(st.st_mode));
        return Status::error(ENOTSUP, "path " + quote_name(path) + ": not a regular file, directory or symlink (mode " +
                                          mode + "); cannot be replicated");
    }
    a.mode = st.st_mode & 07777;
    a.uid = st.st_uid;
    a.gid = st.st_gid;
    a.mtime_sec = st.st_mtim.tv_sec;
    a.mtime_nsec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
    return a;
}

}  // namespace icbd::repl
