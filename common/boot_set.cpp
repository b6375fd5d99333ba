// The boot set bitmap and its sidecar file (docs/boot-set.md, "File format").
#include "icbd/boot_set.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "icbd/checksum.hpp"
#include "icbd/endian.hpp"
#include "icbd/file_io.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd {

namespace {

constexpr char kMagic[8] = {'I', 'C', 'B', 'D', 'B', 'S', 'E', 'T'};
constexpr uint16_t kFormatVersion = 1;
constexpr size_t kTrailer = 4;

uint64_t chunks_for(uint64_t file_size, uint32_t shift) {
    return file_size == 0 ? 0 : ((file_size - 1) >> shift) + 1;
}

uint64_t bitmap_bytes(uint64_t chunks) { return (chunks + 7) / 8; }

uint64_t now_ms() {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
}

// Clears the bits past the last chunk (they must read as 0 on disk).
void clear_tail(std::vector<uint8_t>& bits, uint64_t chunks) {
    if (chunks % 8 != 0 && !bits.empty()) bits.back() &= static_cast<uint8_t>((1u << (chunks % 8)) - 1);
}

}  // namespace

Result<BootSet> BootSet::create(uint64_t file_size, uint32_t chunk_shift) {
    if (chunk_shift < kBootSetMinChunkShift || chunk_shift > kBootSetMaxChunkShift)
        return Status::error(EINVAL, "boot set: chunk shift " + std::to_string(chunk_shift) + " is not in " +
                                         std::to_string(kBootSetMinChunkShift) + ".." +
                                         std::to_string(kBootSetMaxChunkShift));
    const uint64_t chunks = chunks_for(file_size, chunk_shift);
    if (bitmap_bytes(chunks) > kBootSetMaxBitmapBytes)
        return Status::error(EINVAL, "boot set: a file of " + std::to_string(file_size) + " bytes needs more than " +
                                         std::to_string(kBootSetMaxBitmapBytes) + " bytes of bitmap at " +
                                         std::to_string(uint64_t(1) << chunk_shift) + "-byte chunks");
    BootSet s;
    s.chunk_shift_ = chunk_shift;
    s.file_size_ = file_size;
    s.chunks_ = chunks;
    s.bits_.assign(bitmap_bytes(chunks), 0);
    return s;
}

Result<BootSet> BootSet::decode(std::span<const uint8_t> in, const std::string& what) {
    auto bad = [&](const std::string& why) { return Status::error(EBADMSG, "boot set '" + what + "': " + why); };
    if (in.size() < kBootSetHeaderSize + kTrailer)
        return bad("truncated (" + std::to_string(in.size()) + " bytes, a header is " +
                   std::to_string(kBootSetHeaderSize + kTrailer) + ")");
    const uint8_t* p = in.data();
    if (std::memcmp(p, kMagic, sizeof kMagic) != 0) return bad("not a boot set (magic)");
    if (uint16_t v = load_le16(p + 8); v != kFormatVersion)
        return bad("format version " + std::to_string(v) + " (this build reads " + std::to_string(kFormatVersion) + ")");
    const uint32_t shift = load_le16(p + 10);
    const uint64_t file_size = load_le64(p + 16);
    const uint32_t bitmap_len = load_le32(p + 40);
    if (load_le32(p + 44) != 0) return bad("reserved field is not 0");
    auto made = create(file_size, shift);
    if (!made) return bad(made.status().message());
    BootSet s = std::move(made.value());
    if (bitmap_len != s.bits_.size())
        return bad("bitmap of " + std::to_string(bitmap_len) + " bytes for a file of " + std::to_string(file_size) +
                   " bytes (expected " + std::to_string(s.bits_.size()) + ")");
    if (in.size() != kBootSetHeaderSize + bitmap_len + kTrailer)
        return bad("file of " + std::to_string(in.size()) + " bytes (expected " +
                   std::to_string(kBootSetHeaderSize + bitmap_len + kTrailer) + ")");
    const size_t body = kBootSetHeaderSize + bitmap_len;
    if (load_le32(p + body) != crc32c(p, body)) return bad("checksum mismatch");
    std::memcpy(s.bits_.data(), p + kBootSetHeaderSize, bitmap_len);
    auto tail = s.bits_;
    clear_tail(tail, s.chunks_);
    if (tail != s.bits_) return bad("bits set past the file's last chunk");
    s.boots = load_le32(p + 12);
    s.version = load_le64(p + 24);
    s.updated_ms = load_le64(p + 32);
    return s;
}

std::vector<uint8_t> BootSet::encode() const {
    std::vector<uint8_t> out(kBootSetHeaderSize + bits_.size() + kTrailer, 0);
    uint8_t* p = out.data();
    std::memcpy(p, kMagic, sizeof kMagic);
    store_le16(p + 8, kFormatVersion);
    store_le16(p + 10, static_cast<uint16_t>(chunk_shift_));
    store_le32(p + 12, boots);
    store_le64(p + 16, file_size_);
    store_le64(p + 24, version);
    store_le64(p + 32, updated_ms);
    store_le32(p + 40, static_cast<uint32_t>(bits_.size()));
    if (!bits_.empty()) std::memcpy(p + kBootSetHeaderSize, bits_.data(), bits_.size());
    const size_t body = kBootSetHeaderSize + bits_.size();
    store_le32(p + body, crc32c(p, body));
    return out;
}

void BootSet::mark(uint64_t offset, uint64_t length) noexcept {
    if (length == 0 || offset >= file_size_) return;
    const uint64_t end = std::min(file_size_, offset + std::min(length, file_size_ - offset));
    const uint64_t first = offset >> chunk_shift_;
    const uint64_t last = (end - 1) >> chunk_shift_;
    for (uint64_t c = first; c <= last; ++c) bits_[c / 8] |= static_cast<uint8_t>(1u << (c % 8));
}

bool BootSet::has_chunk(uint64_t chunk) const noexcept {
    return chunk < chunks_ && (bits_[chunk / 8] >> (chunk % 8)) & 1u;
}

bool BootSet::empty() const noexcept {
    for (uint8_t b : bits_)
        if (b) return false;
    return true;
}

void BootSet::resize(uint64_t file_size) {
    file_size_ = file_size;
    chunks_ = chunks_for(file_size, chunk_shift_);
    bits_.resize(bitmap_bytes(chunks_), 0);
    clear_tail(bits_, chunks_);
}

Status BootSet::merge(const BootSet& other) {
    if (other.chunk_shift_ != chunk_shift_)
        return Status::error(EINVAL, "boot set: cannot merge " + std::to_string(other.chunk_size()) +
                                         "-byte chunks into " + std::to_string(chunk_size()) + "-byte ones");
    const size_t n = std::min(bits_.size(), other.bits_.size());
    for (size_t i = 0; i < n; ++i) bits_[i] |= other.bits_[i];
    clear_tail(bits_, chunks_);
    boots = other.boots > UINT32_MAX - boots ? UINT32_MAX : boots + other.boots;
    return Status::ok();
}

std::vector<BootSet::Run> BootSet::runs() const {
    std::vector<Run> out;
    for (uint64_t c = 0; c < chunks_;) {
        // Whole zero bytes are skipped at once: most of a disk is not booted from.
        if (c % 8 == 0 && bits_[c / 8] == 0) {
            c += 8;
            continue;
        }
        if (!has_chunk(c)) {
            ++c;
            continue;
        }
        uint64_t e = c;
        while (e < chunks_ && has_chunk(e)) ++e;
        const uint64_t off = c << chunk_shift_;
        out.push_back({off, std::min(file_size_, e << chunk_shift_) - off});
        c = e;
    }
    return out;
}

uint64_t BootSet::bytes() const {
    uint64_t n = 0;
    for (const Run& r : runs()) n += r.length;
    return n;
}

std::filesystem::path boot_set_path(const std::filesystem::path& repo, const std::string& image, uint64_t version,
                                    const std::string& file) {
    return repo / "images" / image / ".bootsets" / std::to_string(version) / (file + ".bset");
}

Result<BootSet> load_boot_set(const std::filesystem::path& path) {
    const std::string what = path.string();
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Status::from_errno(errno, "boot set '" + what + "'");
    struct stat st{};
    if (::fstat(fd.get(), &st) < 0) return Status::from_errno(errno, "boot set '" + what + "'");
    if (static_cast<uint64_t>(st.st_size) > kBootSetHeaderSize + kBootSetMaxBitmapBytes + kTrailer)
        return Status::error(EBADMSG, "boot set '" + what + "': file of " + std::to_string(st.st_size) +
                                          " bytes is larger than any boot set");
    std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
    if (Status s = full_pread(fd.get(), bytes.data(), bytes.size(), 0, "boot set '" + what + "'"); !s) return s;
    return BootSet::decode(bytes, what);
}

Status save_boot_set(const std::filesystem::path& path, const BootSet& set) {
    const std::string what = "boot set '" + path.string() + "'";
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec) return Status::error(ec.value(), what + ": creating its directory: " + ec.message());
    const std::filesystem::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
    const auto bytes = set.encode();
    {
        UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
        if (!fd.valid()) return Status::from_errno(errno, what + ": " + tmp.string());
        Status s = full_pwrite(fd.get(), bytes.data(), bytes.size(), 0, what);
        if (s && ::fsync(fd.get()) < 0) s = Status::from_errno(errno, what + ": fsync");
        if (!s) {
            ::unlink(tmp.c_str());
            return s;
        }
    }
    if (::rename(tmp.c_str(), path.c_str()) < 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        return Status::from_errno(err, what + ": rename");
    }
    UniqueFd dir(::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir.valid() || ::fsync(dir.get()) < 0) return Status::from_errno(errno, what + ": fsync of its directory");
    return Status::ok();
}

Status merge_into_boot_set(const std::filesystem::path& path, const BootSet& seen, std::string* replaced) {
    const std::string what = "boot set '" + path.string() + "'";
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec) return Status::error(ec.value(), what + ": creating its directory: " + ec.message());
    const std::filesystem::path lock_path = path.parent_path() / ".lock";
    UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!lock.valid()) return Status::from_errno(errno, what + ": " + lock_path.string());
    while (::flock(lock.get(), LOCK_EX) < 0)
        if (errno != EINTR) return Status::from_errno(errno, what + ": flock");

    BootSet merged = seen;
    auto old = load_boot_set(path);
    // A prediction (boots 0: another version's boots) gives way to the first
    // real boot of this version rather than mixing with it: OR-ed in, its
    // chunks would be reported as this version's own.
    const bool prediction_replaced = old && old->boots == 0 && seen.boots > 0;
    if (old && !prediction_replaced && old->chunk_shift() == seen.chunk_shift()) {
        merged = std::move(old.value());
        merged.resize(seen.file_size());
        if (Status s = merged.merge(seen); !s) return s;
        if (seen.boots > 0) merged.version = seen.version;
    } else if (replaced && !prediction_replaced) {
        if (old) *replaced = "replaced a boot set of " + std::to_string(old->chunk_size()) + "-byte chunks";
        else if (old.status().code() != ENOENT) *replaced = old.status().message();
    }
    merged.updated_ms = now_ms();
    return save_boot_set(path, merged);
}

}  // namespace icbd
