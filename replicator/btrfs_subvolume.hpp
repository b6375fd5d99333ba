// Internal to libreplicator: the few BTRFS subvolume operations the repository
// needs (libbtrfsutil), with errors that name the path and keep errno (ENOSPC).
#pragma once

#include <filesystem>
#include <string>

#include "icbd/status.hpp"

namespace icbd::repl::detail {

// True when `fd` is on a BTRFS filesystem.
bool on_btrfs(int fd);
// True when `path` is the root of a BTRFS subvolume.
bool is_subvolume(const std::filesystem::path& path);
Status create_subvolume(const std::filesystem::path& path, const std::string& what);
Status snapshot_subvolume(const std::filesystem::path& source, const std::filesystem::path& dest, bool read_only,
                          const std::string& what);
Status set_read_only(const std::filesystem::path& path, bool read_only, const std::string& what);
// Deletes the subvolume (read-only or not); its space is freed by the cleaner.
Status delete_subvolume(const std::filesystem::path& path, const std::string& what);

}  // namespace icbd::repl::detail
