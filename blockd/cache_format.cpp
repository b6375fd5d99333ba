// Encoding and validation of the write-back cache superblock and entries, and
// the O(1) format of a new cache file. Byte tables: docs/write-back-cache.md.
#include "cache_format.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <vector>

#include "icbd/checksum.hpp"
#include "icbd/endian.hpp"
#include "icbd/file_io.hpp"

namespace icbd {
namespace {

constexpr char kMagic[8] = {'I', 'C', 'B', 'D', 'W', 'B', 'C', '1'};
constexpr size_t kSbCrcOffset = kCacheSuperblockSize - 4;
constexpr size_t kEntryCrcOffset = kCacheEntrySize - 4;

std::array<uint8_t, 16> random_uuid() {
    std::random_device rd;
    std::array<uint8_t, 16> u{};
    for (size_t i = 0; i < u.size(); i += 4) store_le32(u.data() + i, rd());
    u[6] = static_cast<uint8_t>((u[6] & 0x0f) | 0x40);  // RFC 4122 version 4
    u[8] = static_cast<uint8_t>((u[8] & 0x3f) | 0x80);
    return u;
}

}  // namespace

uint64_t CacheGeometry::metadata_length() const {
    uint64_t raw = nr_blocks * kCacheEntrySize;
    return (raw + kCacheBlockSize - 1) / kCacheBlockSize * kCacheBlockSize;
}

std::optional<CacheGeometry> CacheGeometry::for_cache_bytes(uint64_t cache_bytes) {
    if (cache_bytes < kCacheMetadataOffset) return std::nullopt;
    CacheGeometry g{(cache_bytes - kCacheMetadataOffset) / (kCacheBlockSize + kCacheEntrySize)};
    if (g.nr_blocks > kCacheMaxBlocks) g.nr_blocks = kCacheMaxBlocks;
    while (g.nr_blocks > 0 && g.file_size() > cache_bytes) --g.nr_blocks;  // metadata padding
    if (g.nr_blocks == 0) return std::nullopt;
    return g;
}

uint32_t CacheSuperblock::entry_tag() const { return crc32c(uuid.data(), uuid.size()); }

void encode_superblock(const CacheSuperblock& sb, std::span<uint8_t, kCacheSuperblockSize> out) {
    uint8_t* p = out.data();
    std::memset(p, 0, out.size());
    std::memcpy(p, kMagic, 8);
    store_le32(p + 8, kCacheFormatVersion);
    store_le32(p + 12, static_cast<uint32_t>(sb.generation % 2));
    store_le32(p + 16, kCacheBlockSize);
    store_le32(p + 20, kCacheEntrySize);
    store_le64(p + 24, sb.geometry.nr_blocks);
    store_le64(p + 32, sb.geometry.metadata_offset());
    store_le64(p + 40, sb.geometry.data_offset());
    std::memcpy(p + 48, sb.uuid.data(), 16);
    store_le64(p + 64, sb.generation);
    store_le64(p + 72, sb.committed_seq);
    store_le64(p + 80, sb.device.device_size);
    size_t idlen = std::min(sb.device.id.size(), kCacheIdentityMax);  // format_cache refuses longer ones
    store_le16(p + 88, static_cast<uint16_t>(idlen));
    std::memcpy(p + 96, sb.device.id.data(), idlen);
    store_le32(p + kSbCrcOffset, crc32c(p, kSbCrcOffset));
}

Result<CacheSuperblock> decode_superblock(std::span<const uint8_t, kCacheSuperblockSize> in, unsigned slot) {
    const uint8_t* p = in.data();
    if (std::memcmp(p, kMagic, 8) != 0) return Status::error(EINVAL, "bad magic (not a write-back cache superblock)");
    if (load_le32(p + kSbCrcOffset) != crc32c(p, kSbCrcOffset)) return Status::error(EINVAL, "checksum mismatch");
    uint32_t version = load_le32(p + 8);
    if (version != kCacheFormatVersion)
        return Status::error(EINVAL, "format version " + std::to_string(version) + " (this build reads version " +
                                         std::to_string(kCacheFormatVersion) + ")");
    CacheSuperblock sb;
    sb.geometry.nr_blocks = load_le64(p + 24);
    std::memcpy(sb.uuid.data(), p + 48, 16);
    sb.generation = load_le64(p + 64);
    sb.committed_seq = load_le64(p + 72);
    sb.device.device_size = load_le64(p + 80);
    size_t idlen = load_le16(p + 88);
    if (load_le32(p + 12) != slot || sb.generation % 2 != slot)
        return Status::error(EINVAL, "superblock of slot " + std::to_string(load_le32(p + 12)) + ", generation " +
                                         std::to_string(sb.generation) + " found in slot " + std::to_string(slot));
    if (load_le32(p + 16) != kCacheBlockSize || load_le32(p + 20) != kCacheEntrySize)
        return Status::error(EINVAL, "block size " + std::to_string(load_le32(p + 16)) + ", entry size " +
                                         std::to_string(load_le32(p + 20)) + " (expected 4096, 32)");
    if (sb.geometry.nr_blocks == 0 || sb.geometry.nr_blocks > kCacheMaxBlocks)
        return Status::error(EINVAL, "block count " + std::to_string(sb.geometry.nr_blocks) + " out of range");
    if (load_le64(p + 32) != sb.geometry.metadata_offset() || load_le64(p + 40) != sb.geometry.data_offset())
        return Status::error(EINVAL, "area offsets " + std::to_string(load_le64(p + 32)) + "/" +
                                         std::to_string(load_le64(p + 40)) + " do not match " +
                                         std::to_string(sb.geometry.nr_blocks) + " blocks");
    if (idlen > kCacheIdentityMax) return Status::error(EINVAL, "identity length " + std::to_string(idlen) + " > 200");
    sb.device.id.assign(reinterpret_cast<const char*>(p + 96), idlen);
    return sb;
}

void encode_entry(uint64_t lba, uint64_t seq, uint32_t slot, uint32_t tag, std::span<uint8_t, kCacheEntrySize> out) {
    uint8_t* p = out.data();
    std::memset(p, 0, out.size());
    store_le64(p, lba);
    store_le64(p + 8, lba == kCacheFreeLba ? 0 : seq);
    store_le32(p + 16, slot);
    store_le32(p + 20, tag);
    store_le32(p + kEntryCrcOffset, crc32c(p, kEntryCrcOffset));
}

DecodedEntry decode_entry(std::span<const uint8_t, kCacheEntrySize> in, uint32_t slot, uint32_t tag) {
    const uint8_t* p = in.data();
    bool zero = true;
    for (uint8_t b : in) zero = zero && b == 0;
    if (zero) return {};
    if (load_le32(p + kEntryCrcOffset) != crc32c(p, kEntryCrcOffset) || load_le32(p + 16) != slot || load_le32(p + 20) != tag)
        return {EntryKind::corrupt, kCacheFreeLba, 0};
    uint64_t lba = load_le64(p);
    if (lba == kCacheFreeLba) return {EntryKind::free, kCacheFreeLba, 0};
    return {EntryKind::used, lba, load_le64(p + 8)};
}

Result<uint64_t> cache_file_size(int fd, const std::string& name) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return Status::from_errno(errno, "cache file " + name + ": fstat");
    if (S_ISREG(st.st_mode)) return static_cast<uint64_t>(st.st_size);
    if (S_ISBLK(st.st_mode)) {
        uint64_t size = 0;
        if (::ioctl(fd, BLKGETSIZE64, &size) != 0) return Status::from_errno(errno, "cache file " + name + ": BLKGETSIZE64");
        return size;
    }
    return Status::error(EINVAL, "cache file " + name + ": not a regular file or block device");
}

Result<CacheSuperblock> format_cache(int fd, const CacheFormatParams& params) {
    const std::string who = "cache file " + params.name;
    if (params.device.id.size() > kCacheIdentityMax)
        return Status::error(EINVAL, who + ": identity of the device below is " +
                                         std::to_string(params.device.id.size()) + " bytes (at most 200)");
    auto geometry = CacheGeometry::for_cache_bytes(params.cache_bytes);
    if (!geometry)
        return Status::error(EINVAL, who + ": size " + std::to_string(params.cache_bytes) +
                                         " bytes holds no cache block (at least " +
                                         std::to_string(kCacheMetadataOffset + kCacheBlockSize + kCacheBlockSize) +
                                         " bytes)");
    struct stat st {};
    if (::fstat(fd, &st) != 0) return Status::from_errno(errno, who + ": fstat");
    if (S_ISREG(st.st_mode)) {
        // Truncating to 0 drops every old block, so the metadata area reads as zeros: O(1).
        if (::ftruncate(fd, 0) != 0 || ::ftruncate(fd, static_cast<off_t>(geometry->file_size())) != 0)
            return Status::from_errno(errno, who + ": resize to " + std::to_string(geometry->file_size()) + " bytes");
        // Superblocks and metadata are allocated now (0.8 % of the cache, read
        // as zeros): an entry write never meets a full filesystem, so a cache
        // whose data area runs out of space still records FREE entries and
        // keeps working (regression: ENOSPC on a FREE entry failed the cache).
        if (::fallocate(fd, 0, 0, static_cast<off_t>(geometry->metadata_offset() + geometry->metadata_length())) != 0 &&
            errno != EOPNOTSUPP)
            return Status::from_errno(errno, who + ": allocating the superblocks and the metadata area");
    } else {
        auto size = cache_file_size(fd, params.name);
        if (!size) return size.status();
        if (*size < geometry->file_size())
            return Status::error(ENOSPC, who + ": device has " + std::to_string(*size) + " bytes, cache needs " +
                                             std::to_string(geometry->file_size()));
        // A block device keeps old bytes: zero the metadata area (32 bytes per block).
        std::vector<uint8_t> zeros(1 << 20);
        for (uint64_t off = 0; off < geometry->metadata_length(); off += zeros.size()) {
            size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), geometry->metadata_length() - off));
            if (Status s = full_pwrite(fd, zeros.data(), n, geometry->metadata_offset() + off, who + ": zero metadata"); !s)
                return s;
        }
    }
    CacheSuperblock sb;
    sb.geometry = *geometry;
    sb.uuid = random_uuid();
    sb.device = params.device;
    std::array<uint8_t, kCacheSuperblockSize> buf{};
    for (uint64_t gen : {0, 1}) {
        sb.generation = gen;
        encode_superblock(sb, buf);
        if (Status s = full_pwrite(fd, buf.data(), buf.size(), cache_superblock_offset(gen), who + ": write superblock");
            !s)
            return s;
    }
    if (::fsync(fd) != 0) return Status::from_errno(errno, who + ": fsync");
    return sb;
}

}  // namespace icbd
