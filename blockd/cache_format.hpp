// Bytes of the write-back cache file (docs/write-back-cache.md): geometry,
// superblock and entry encode/decode with their checks, and format().
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "icbd/status.hpp"

namespace icbd {

inline constexpr uint32_t kCacheBlockSize = 4096;
inline constexpr uint32_t kCacheEntrySize = 32;
inline constexpr uint32_t kCacheSuperblockSize = 4096;
inline constexpr uint64_t kCacheMetadataOffset = 2 * kCacheSuperblockSize;
inline constexpr uint32_t kCacheFormatVersion = 1;
inline constexpr uint64_t kCacheFreeLba = ~uint64_t{0};
inline constexpr size_t kCacheIdentityMax = 200;
inline constexpr uint64_t kCacheMaxBlocks = 0xfffffffeull;  // slot index fits u32, all-ones stays "none"

// Where things are in a cache file of `nr_blocks` data blocks.
struct CacheGeometry {
    uint64_t nr_blocks = 0;

    uint64_t metadata_offset() const { return kCacheMetadataOffset; }
    uint64_t metadata_length() const;  // padded to 4 KiB
    uint64_t data_offset() const { return metadata_offset() + metadata_length(); }
    uint64_t file_size() const { return data_offset() + nr_blocks * kCacheBlockSize; }
    uint64_t entry_offset(uint32_t slot) const { return metadata_offset() + uint64_t{slot} * kCacheEntrySize; }
    uint64_t block_offset(uint32_t slot) const { return data_offset() + uint64_t{slot} * kCacheBlockSize; }

    // The largest cache fitting in `cache_bytes`; nullopt when not even one block fits.
    static std::optional<CacheGeometry> for_cache_bytes(uint64_t cache_bytes);
};

// The device below, as recorded at format and checked at every open.
struct CacheIdentity {
    uint64_t device_size = 0;  // bytes
    std::string id;            // e.g. backing path or overlay UUID, <= 200 bytes

    bool operator==(const CacheIdentity&) const = default;
};

struct CacheSuperblock {
    CacheGeometry geometry;
    std::array<uint8_t, 16> uuid{};
    uint64_t generation = 0;  // written into slot generation % 2
    uint64_t committed_seq = 0;
    CacheIdentity device;

    // Stamped into every entry so entries of an earlier format never verify.
    uint32_t entry_tag() const;
};

inline uint64_t cache_superblock_offset(uint64_t generation) { return (generation % 2) * kCacheSuperblockSize; }

// Encodes into exactly kCacheSuperblockSize bytes (slot = generation % 2).
void encode_superblock(const CacheSuperblock& sb, std::span<uint8_t, kCacheSuperblockSize> out);
// Decodes the copy read from `slot` (0 = A, 1 = B); the error message says what
// is wrong without naming the file (the caller does).
Result<CacheSuperblock> decode_superblock(std::span<const uint8_t, kCacheSuperblockSize> in, unsigned slot);

enum class EntryKind : uint8_t { empty, free, used, corrupt };
struct DecodedEntry {
    EntryKind kind = EntryKind::empty;
    uint64_t lba = kCacheFreeLba;
    uint64_t seq = 0;
};

// lba == kCacheFreeLba encodes a FREE entry (seq is then written as 0).
void encode_entry(uint64_t lba, uint64_t seq, uint32_t slot, uint32_t tag,
                  std::span<uint8_t, kCacheEntrySize> out);
DecodedEntry decode_entry(std::span<const uint8_t, kCacheEntrySize> in, uint32_t slot, uint32_t tag);

struct CacheFormatParams {
    uint64_t cache_bytes = 0;  // size limit of the file; N is derived from it
    CacheIdentity device;
    std::string name;          // for messages, usually the path
};

// Writes a fresh, empty cache into `fd` (regular file: truncated and extended,
// sparse; block device: metadata area zeroed) and fsyncs it. Destroys any
// previous content. Returns the superblock now in force (generation 1).
Result<CacheSuperblock> format_cache(int fd, const CacheFormatParams& params);

// Size of a regular file or block device.
Result<uint64_t> cache_file_size(int fd, const std::string& name);

}  // namespace icbd
