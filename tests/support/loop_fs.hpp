// LoopFs: a real filesystem (BTRFS, or a small ext4 for ENOSPC tests) on a loop
// device over a sparse image file, mounted on a private directory, and taken
// down again (umount, losetup -d, image removed) whatever happens to the test.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "temp_dir.hpp"

namespace icbd::test {

class LoopFs {
public:
    enum class Type { btrfs, ext4 };

    // Why LoopFs cannot work on this machine (not root, a tool or loop devices
    // missing), or nullopt when it can. Tests GTEST_SKIP with this reason.
    static std::optional<std::string> unavailable(Type type);

    // Makes and mounts the filesystem; `size` is the image size (BTRFS needs
    // about 128 MiB at least). The image lives under `base` (ext4 /var/tmp, so
    // the loop device is not backed by tmpfs), the mount point under /tmp.
    // Throws std::runtime_error naming the failed step and its output.
    LoopFs(Type type, uint64_t size, const std::filesystem::path& base = "/var/tmp");
    ~LoopFs();
    LoopFs(const LoopFs&) = delete;
    LoopFs& operator=(const LoopFs&) = delete;

    Type type() const { return type_; }
    const std::filesystem::path& mount_point() const { return mount_point_; }
    const std::string& device() const { return device_; }
    std::filesystem::path operator/(const std::string& name) const { return mount_point_ / name; }

    // BTRFS only: `btrfs subvolume create` and `btrfs subvolume snapshot -r`
    // (paths relative to the mount point). Throw on failure.
    void create_subvolume(const std::string& name);
    void snapshot_readonly(const std::string& source, const std::string& dest);

    // A simulated power cut (ext4 only): FS_IOC_SHUTDOWN with NOLOGFLUSH, the
    // xfstests "godown" way. From then on every I/O on the filesystem fails,
    // and whatever was not yet written to the device (dirty page cache,
    // uncommitted journal) is gone, as in a power loss. Call remount() after
    // the processes using the filesystem have died.
    void power_cut();
    // umount + mount again (journal replay): the state after a reboot.
    void remount();

private:
    // Each set-up step has its own owner, so a failure half-way undoes exactly
    // the steps that were done.
    struct LoopDevice;
    struct Mount;

    Type type_;
    TempDir image_dir_;
    TempDir mount_dir_;
    std::filesystem::path mount_point_;
    std::string device_;
    std::unique_ptr<LoopDevice> loop_;
    std::unique_ptr<Mount> mount_;
};

}  // namespace icbd::test
