// The attributes of an entry from lstat() (and readlink() for a symlink), as
// the manifest and FILE frames carry them.
#pragma once

#include <sys/stat.h>

#include <string>
#include <string_view>

#include "icbd/replicator/entry_attrs.hpp"
#include "icbd/status.hpp"

namespace icbd::repl {

// ENOTSUP naming `path` for other file types (devices, FIFOs, sockets).
Result<EntryAttrs> entry_attrs_from_stat(std::string_view path, const struct ::stat& st, std::string symlink_target = {});

}  // namespace icbd::repl
