// Copies of image trees where there are no snapshots (a repository off BTRFS,
// an import from another filesystem): files reflinked where the filesystem
// can, else only their data segments (holes stay holes), with owner, mode and
// mtime kept. Used by the repository and by blockd's image service.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "icbd/status.hpp"

namespace icbd::repl {

using CopyProgress = std::function<void(uint64_t done, uint64_t total)>;

// Owner, permission bits and times of `st` onto the open file `fd`.
Status copy_attrs(int fd, const struct stat& st, const std::string& where);

// `size` bytes of `src` into the empty `dst`: FICLONE, else the data segments
// (SEEK_DATA/SEEK_HOLE) by copy_file_range, else (across filesystems, where
// the kernel refuses) through a buffer. `progress` may be empty.
Status copy_file_data(int src, int dst, uint64_t size, const CopyProgress& progress, const std::string& where);

// Everything beneath the directory `src_dir` into the empty directory
// `dst_dir` (regular files, directories, symlinks; a FIFO, socket or device
// node is ENOTSUP). `src_path` and `what` name things in errors.
Status copy_tree(int src_dir, int dst_dir, const std::filesystem::path& src_path, const std::string& what);

}  // namespace icbd::repl
