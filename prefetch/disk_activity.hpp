// DiskActivity: the bytes the block device under a file has read, from
// /sys/dev/block/MAJ:MIN/stat, so that a prefetch can subtract its own reads
// and see everyone else's (docs/boot-set.md, "Giving way to clients").
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace icbd::prefetch_detail {

class DiskActivity {
public:
    // The device of the filesystem holding `file` (st_dev `dev`): the block
    // device itself when `dev` is one (ext4, XFS), else the block device the
    // mount holding the file was mounted from (BTRFS gives each subvolume an
    // anonymous st_dev). nullopt, with why in `why`, when there is none
    // (tmpfs, NFS) or its counters cannot be read.
    static std::optional<DiskActivity> for_file(const std::filesystem::path& file, dev_t dev, std::string& why);

    // Sectors read, in bytes; nullopt when the file cannot be read any more
    // (the device went away). Writes are left out: the filesystem's journal
    // commits and writeback come in bursts that no client waits on, and a
    // heavy write load shows in the latency of the prefetch's own reads.
    std::optional<uint64_t> bytes() const;
    const std::string& name() const { return name_; }  // "loop3", "sda1"

private:
    DiskActivity(std::filesystem::path stat, std::string name) : stat_(std::move(stat)), name_(std::move(name)) {}
    std::filesystem::path stat_;
    std::string name_;
};

}  // namespace icbd::prefetch_detail
