// Internal to libreplicator: the few BTRFS subvolume operations the repository
// needs (libbtrfsutil), with errors that name the path and keep errno (ENOSPC).
#pragma once

#include <array>
#include <cstdint>
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

// Who a subvolume is: its UUID, the UUID of the subvolume it is a snapshot of
// (zero if none) and its read-only flag (BTRFS_IOC_GET_SUBVOL_INFO, unprivileged).
struct SubvolumeIds {
    std::array<uint8_t, 16> uuid{};
    std::array<uint8_t, 16> parent_uuid{};
    bool read_only = false;
};
Result<SubvolumeIds> subvolume_ids(const std::filesystem::path& path, const std::string& what);

}  // namespace icbd::repl::detail
