// LoopFs: truncate + losetup + mkfs + mount, each undone by its own RAII owner.
#include "loop_fs.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <thread>

#include "run_command.hpp"

namespace icbd::test {

// `losetup -d` on destruction.
struct LoopFs::LoopDevice {
    std::string dev;
    explicit LoopDevice(const std::filesystem::path& image) {
        dev = run_checked({"losetup", "-f", "--show", image.string()}).output;
        if (dev.rfind("/dev/loop", 0) != 0) throw std::runtime_error("losetup printed no device: '" + dev + "'");
    }
    ~LoopDevice() {
        CommandResult r = run_command({"losetup", "-d", dev});
        if (!r.ok()) std::fprintf(stderr, "LoopFs: %s\n", r.describe().c_str());
    }
};

// `umount` on destruction. Retries briefly: a tgtd that just let go of a
// backing file, or udev probing the device, can keep it busy for a moment.
struct LoopFs::Mount {
    std::string dir;
    Mount(const std::string& dev, const std::string& d) : dir(d) { run_checked({"mount", dev, dir}); }
    // Plain umount, retried while busy for up to `patience`; false if still busy.
    bool unmount(std::chrono::milliseconds patience) {
        for (auto end = std::chrono::steady_clock::now() + patience;;) {
            if (run_command({"umount", dir}).ok()) {
                dir.clear();
                return true;
            }
            if (std::chrono::steady_clock::now() > end) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }
    ~Mount() {
        if (dir.empty() || unmount(std::chrono::seconds(5))) return;
        // Still busy: detach lazily so at least the loop device can go away.
        CommandResult r = run_command({"umount", "-l", dir});
        std::fprintf(stderr, "LoopFs: umount %s was busy for 5 s; lazy umount: %s\n", dir.c_str(),
                     r.ok() ? "ok" : r.describe().c_str());
    }
};

std::optional<std::string> LoopFs::unavailable(Type type) {
    if (geteuid() != 0) return "needs root (losetup, mkfs, mount)";
    for (const char* p : {"losetup", "mount", "umount"})
        if (!have_program(p)) return std::string(p) + " is not installed";
    if (type == Type::btrfs && (!have_program("mkfs.btrfs") || !have_program("btrfs")))
        return std::string("btrfs-progs (mkfs.btrfs, btrfs) is not installed");
    if (type == Type::ext4 && !have_program("mkfs.ext4")) return std::string("mkfs.ext4 is not installed");
    if (access("/dev/loop-control", R_OK | W_OK) != 0) return std::string("no /dev/loop-control (loop devices)");
    return std::nullopt;
}

LoopFs::LoopFs(Type type, uint64_t size, const std::filesystem::path& base)
    : type_(type), image_dir_(base, "icbd-loopimg-"), mount_dir_("/tmp", "icbd-mnt-") {
    const auto image = image_dir_ / "fs.img";
    make_sparse_file(image, size);
    loop_ = std::make_unique<LoopDevice>(image);
    device_ = loop_->dev;
    if (type == Type::btrfs) {
        run_checked({"mkfs.btrfs", "-q", "-f", device_});
    } else {
        // No reserved blocks: "full" means full for root too.
        run_checked({"mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", device_});
    }
    mount_point_ = mount_dir_.path();
    mount_ = std::make_unique<Mount>(device_, mount_point_.string());
}

LoopFs::~LoopFs() {
    mount_.reset();  // umount before losetup -d before the image goes
    loop_.reset();
}

void LoopFs::power_cut() {
    if (type_ != Type::ext4) throw std::logic_error("power_cut needs ext4 (BTRFS has no shutdown ioctl here)");
    constexpr unsigned long fs_ioc_shutdown = _IOR('X', 125, uint32_t);  // EXT4_IOC_SHUTDOWN
    constexpr uint32_t nologflush = 0x2;                                  // EXT4_GOING_FLAGS_NOLOGFLUSH
    int fd = ::open(mount_point_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("power_cut: open " + mount_point_.string() + ": " + std::strerror(errno));
    uint32_t flags = nologflush;
    int r = ioctl(fd, fs_ioc_shutdown, &flags);
    int err = errno;
    ::close(fd);
    if (r < 0) throw std::runtime_error("power_cut: FS_IOC_SHUTDOWN on " + mount_point_.string() + ": " +
                                       std::strerror(err));
}

void LoopFs::remount() {
    // Never lazily: a lazily detached filesystem keeps its superblock, and
    // mounting the device again would hand back that same (shut down) one.
    // A killed process's io_uring can hold files for a while after its death
    // (the ring is torn down by a kernel worker), so be patient.
    // And a copy of the mount in another mount namespace (a test that ran
    // `unshare -m` meanwhile) keeps the old superblock alive too: then the
    // new mount is the shut down filesystem again, which the probe file shows.
    const auto probe = mount_point_ / ".icbd-remount-probe";
    for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);;) {
        if (!mount_->unmount(std::chrono::seconds(60))) {
            CommandResult who = run_command({"fuser", "-vm", mount_point_.string()});
            throw std::runtime_error("remount: " + mount_point_.string() + " still busy after 60 s: " + who.output);
        }
        mount_ = std::make_unique<Mount>(device_, mount_point_.string());
        int fd = ::open(probe.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        if (fd >= 0) {
            ::close(fd);
            ::unlink(probe.c_str());
            return;
        }
        if (std::chrono::steady_clock::now() > end)
            throw std::runtime_error("remount: " + mount_point_.string() + " is still the shut down filesystem " +
                                     "after 60 s (" + std::strerror(errno) + "): another mount namespace holds it");
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
}

void LoopFs::create_subvolume(const std::string& name) {
    if (type_ != Type::btrfs) throw std::logic_error("create_subvolume on a non-BTRFS LoopFs");
    run_checked({"btrfs", "-q", "subvolume", "create", (mount_point_ / name).string()});
}

void LoopFs::snapshot_readonly(const std::string& source, const std::string& dest) {
    if (type_ != Type::btrfs) throw std::logic_error("snapshot_readonly on a non-BTRFS LoopFs");
    run_checked({"btrfs", "-q", "subvolume", "snapshot", "-r", (mount_point_ / source).string(),
                 (mount_point_ / dest).string()});
}

}  // namespace icbd::test
