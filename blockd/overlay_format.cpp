// The overlay file's header (docs/overlay-format.md): encoding, validation, and
// the O(1) create and reset of an overlay file.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <vector>

#include "icbd/checksum.hpp"
#include "icbd/endian.hpp"
#include "icbd/file_io.hpp"
#include "icbd/overlay.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd {
namespace {

constexpr char kMagic[8] = {'I', 'C', 'B', 'D', 'O', 'V', 'L', '1'};
constexpr uint32_t kFormatVersion = 1;
constexpr uint64_t kDataAlign = 1u << 20;
constexpr size_t kImageNameLen = 64, kFileNameLen = 256;

uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

std::string get_str(const uint8_t* p, size_t n) {
    size_t len = strnlen(reinterpret_cast<const char*>(p), n);
    return std::string(reinterpret_cast<const char*>(p), len);
}

uint64_t now_ns() {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
}

Status write_new_overlay(int fd, const OverlayInfo& info, const std::string& name) {
    uint8_t header[overlay_header_size];
    encode_overlay_header(info, header);
    if (Status s = full_pwrite(fd, header, sizeof header, 0, "overlay '" + name + "': writing the header"); !s)
        return s;
    if (ftruncate(fd, static_cast<off_t>(info.data_offset + info.image_size)) < 0)
        return Status::from_errno(errno, "overlay '" + name + "': setting its size");
    if (fsync(fd) < 0) return Status::from_errno(errno, "overlay '" + name + "': fsync");
    return Status::ok();
}

Status fsync_dir_of(const std::string& path) {
    auto dir = std::filesystem::path(path).parent_path();
    UniqueFd d(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!d.valid() || fsync(d.get()) < 0) return Status::from_errno(errno, "directory '" + dir.string() + "': fsync");
    return Status::ok();
}

}  // namespace

std::string uuid_to_string(const std::array<uint8_t, 16>& u) {
    static const char* hex = "0123456789abcdef";
    std::string s;
    for (size_t i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
        s += hex[u[i] >> 4];
        s += hex[u[i] & 15];
    }
    return s;
}

std::string GoldenIdentity::describe() const {
    std::string s = image.empty() ? "golden file '" + file + "'"
                                  : "image '" + image + "' version " + std::to_string(version) + " file '" + file + "'";
    s += " (";
    if (subvol_uuid != std::array<uint8_t, 16>{}) s += "subvolume " + uuid_to_string(subvol_uuid) + ", ";
    return s + std::to_string(size) + " bytes)";
}

void encode_overlay_header(const OverlayInfo& info, uint8_t out[overlay_header_size]) {
    std::memset(out, 0, overlay_header_size);
    std::memcpy(out, kMagic, 8);
    store_le32(out + 8, kFormatVersion);
    store_le32(out + 12, overlay_header_size);
    store_le32(out + 16, OverlayInfo::block_shift);
    store_le32(out + 20, 0);
    store_le64(out + 24, info.image_size);
    store_le64(out + 32, info.map_offset);
    store_le64(out + 40, info.map_length);
    store_le64(out + 48, info.data_offset);
    std::memcpy(out + 56, info.overlay_uuid.data(), 16);
    std::memcpy(out + 72, info.golden.subvol_uuid.data(), 16);
    store_le64(out + 88, info.golden.version);
    store_le64(out + 96, info.golden.mtime_ns);
    store_le64(out + 104, info.created_ns);
    std::memcpy(out + 112, info.golden.image.data(), std::min(info.golden.image.size(), kImageNameLen - 1));
    std::memcpy(out + 176, info.golden.file.data(), std::min(info.golden.file.size(), kFileNameLen - 1));
    store_le32(out + overlay_header_size - 4, crc32c(out, overlay_header_size - 4));
}

Result<OverlayInfo> decode_overlay_header(const uint8_t in[overlay_header_size], const std::string& name) {
    auto bad = [&](const std::string& why) {
        return Status::error(EINVAL, "overlay '" + name + "': " + why);
    };
    if (std::memcmp(in, kMagic, 8) != 0) return bad("not an overlay file (bad magic)");
    if (load_le32(in + overlay_header_size - 4) != crc32c(in, overlay_header_size - 4))
        return bad("header checksum mismatch (corrupt header)");
    if (load_le32(in + 8) != kFormatVersion)
        return bad("format version " + std::to_string(load_le32(in + 8)) + " not supported (this build reads 1)");
    if (load_le32(in + 12) != overlay_header_size) return bad("bad header size");
    if (load_le32(in + 16) != OverlayInfo::block_shift)
        return bad("block shift " + std::to_string(load_le32(in + 16)) + " not supported");
    if (load_le32(in + 20) != 0) return bad("unknown flags set");
    OverlayInfo info;
    info.image_size = load_le64(in + 24);
    info.map_offset = load_le64(in + 32);
    info.map_length = load_le64(in + 40);
    info.data_offset = load_le64(in + 48);
    std::memcpy(info.overlay_uuid.data(), in + 56, 16);
    std::memcpy(info.golden.subvol_uuid.data(), in + 72, 16);
    info.golden.version = load_le64(in + 88);
    info.golden.mtime_ns = load_le64(in + 96);
    info.created_ns = load_le64(in + 104);
    info.golden.image = get_str(in + 112, kImageNameLen);
    info.golden.file = get_str(in + 176, kFileNameLen);
    info.golden.size = info.image_size;
    // The layout must be exactly what plan_overlay() makes for this size: the
    // offsets then cannot point anywhere strange.
    OverlayInfo expect = plan_overlay(info.golden);
    if (info.image_size == 0 || info.image_size > (1ull << 50)) return bad("bad image size");
    if (info.map_offset != expect.map_offset || info.map_length != expect.map_length ||
        info.data_offset != expect.data_offset)
        return bad("inconsistent layout (map or data offset)");
    return info;
}

OverlayInfo plan_overlay(const GoldenIdentity& golden) {
    OverlayInfo info;
    info.golden = golden;
    info.image_size = golden.size;
    info.map_offset = overlay_header_size;
    info.map_length = round_up(round_up(info.blocks(), 8) / 8, 4096);
    info.data_offset = round_up(info.map_offset + info.map_length, kDataAlign);
    if (getrandom(info.overlay_uuid.data(), 16, 0) != 16) {
        uint64_t t = now_ns();  // getrandom cannot really fail here; stay unique anyway
        std::memcpy(info.overlay_uuid.data(), &t, 8);
    }
    info.created_ns = now_ns();
    return info;
}

Status create_overlay(const std::string& path, const GoldenIdentity& golden) {
    if (golden.size == 0) return Status::error(EINVAL, "overlay '" + path + "': golden file is empty");
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd.valid()) return Status::from_errno(errno, "overlay '" + path + "': create");
    Status s = write_new_overlay(fd.get(), plan_overlay(golden), path);
    if (!s) {
        ::unlink(path.c_str());
        return s;
    }
    return fsync_dir_of(path);
}

Status reset_overlay(const std::string& path) {
    auto info = read_overlay_info(path);
    if (!info) return info.status();
    std::string tmp = path + ".reset-XXXXXX";
    std::vector<char> name(tmp.begin(), tmp.end());
    name.push_back('\0');
    UniqueFd fd(mkostemp(name.data(), O_CLOEXEC));
    if (!fd.valid()) return Status::from_errno(errno, "overlay '" + path + "': creating its replacement");
    struct stat st {};
    if (stat(path.c_str(), &st) == 0) fchmod(fd.get(), st.st_mode & 07777);
    OverlayInfo fresh = plan_overlay(info->golden);
    Status s = write_new_overlay(fd.get(), fresh, path);
    if (s && ::rename(name.data(), path.c_str()) < 0) s = Status::from_errno(errno, "overlay '" + path + "': rename");
    if (!s) {
        ::unlink(name.data());
        return s;
    }
    return fsync_dir_of(path);
}

Result<OverlayInfo> read_overlay_info(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Status::from_errno(errno, "overlay '" + path + "': open");
    return read_overlay_header(fd.get(), path);
}

Result<OverlayInfo> read_overlay_header(int fd, const std::string& path) {
    uint8_t header[overlay_header_size];
    Status s = full_pread(fd, header, sizeof header, 0, "overlay '" + path + "': reading the header");
    if (s.code() == ENODATA) return Status::error(EINVAL, "overlay '" + path + "': truncated (no complete header)");
    if (!s) return s;
    return decode_overlay_header(header, path);
}

Result<uint64_t> count_overlay_blocks(const std::string& path) {
    auto info = read_overlay_info(path);
    if (!info) return info.status();
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Status::from_errno(errno, "overlay '" + path + "': open");
    std::vector<uint8_t> map(info->map_length);
    if (Status s = full_pread(fd.get(), map.data(), map.size(), info->map_offset,
                              "overlay '" + path + "': reading the allocation map");
        !s)
        return s;
    uint64_t n = 0;
    for (uint8_t b : map) n += static_cast<uint64_t>(__builtin_popcount(b));
    return n;
}

}  // namespace icbd
