// The metadata summary of a version tree (docs/replication-protocol.md, 8.2):
// what OFFER and END carry, computed by the sender and the receiver alike.
#pragma once

#include <cstdint>
#include <string_view>

#include "icbd/status.hpp"

namespace icbd::repl {

// Only lstat/readlink of each entry; no file data is read.
struct TreeManifest {
    uint64_t entry_count = 0;
    uint64_t hash = 0;        // M
    uint64_t total_size = 0;  // sum of the regular files' sizes
};
// `dir_fd` is the version root; `what` names it in errors. Symlinks are never
// followed; special files are ENOTSUP naming the path.
Result<TreeManifest> manifest_of_tree(int dir_fd, std::string_view what);

}  // namespace icbd::repl
