// Boot sets: which chunks of a golden file clients read while they boot, and
// the sidecar file that keeps one per file of a version (docs/boot-set.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "icbd/status.hpp"

namespace icbd {

inline constexpr uint32_t kBootSetDefaultChunkShift = 16;  // 64 KiB chunks
inline constexpr uint32_t kBootSetMinChunkShift = 12;
inline constexpr uint32_t kBootSetMaxChunkShift = 24;
inline constexpr size_t kBootSetHeaderSize = 48;
inline constexpr uint64_t kBootSetMaxBitmapBytes = 64ull << 20;

// A bitmap of the chunks of one golden file. Marking is allocation-free and
// makes no system call (the LUN's recorder calls it on the I/O path).
class BootSet {
public:
    struct Run {
        uint64_t offset = 0;  // bytes into the file
        uint64_t length = 0;  // bytes, clamped to the file's end
        bool operator==(const Run&) const = default;
    };

    BootSet() = default;
    // An empty set for a file of `file_size` bytes (EINVAL: chunk shift out of
    // range or a bitmap over kBootSetMaxBitmapBytes).
    static Result<BootSet> create(uint64_t file_size, uint32_t chunk_shift = kBootSetDefaultChunkShift);
    // Parses a sidecar's bytes; `what` names it in errors (EBADMSG).
    static Result<BootSet> decode(std::span<const uint8_t> bytes, const std::string& what);
    std::vector<uint8_t> encode() const;

    // Sets the chunks that bytes [offset, offset + length) touch; what lies
    // past the file's end is ignored.
    void mark(uint64_t offset, uint64_t length) noexcept;
    bool has_chunk(uint64_t chunk) const noexcept;
    bool empty() const noexcept;
    // ORs `other` in (same chunk shift, else EINVAL; another file size is
    // resized first) and adds its boots.
    Status merge(const BootSet& other);
    // Drops chunks past a new end, adds zero chunks up to it.
    void resize(uint64_t file_size);
    // Runs of set chunks in offset order, adjacent chunks joined.
    std::vector<Run> runs() const;
    uint64_t bytes() const;  // sum of runs()' lengths

    uint32_t chunk_shift() const noexcept { return chunk_shift_; }
    uint64_t chunk_size() const noexcept { return uint64_t(1) << chunk_shift_; }
    uint64_t chunks() const noexcept { return chunks_; }
    uint64_t file_size() const noexcept { return file_size_; }

    uint32_t boots = 0;        // boots merged in; 0: predicted from another version
    uint64_t version = 0;      // the version those boots were recorded on
    uint64_t updated_ms = 0;   // last update, Unix ms

private:
    uint32_t chunk_shift_ = kBootSetDefaultChunkShift;
    uint64_t file_size_ = 0;
    uint64_t chunks_ = 0;
    std::vector<uint8_t> bits_;
};

// <repo>/images/<image>/.bootsets/<version>/<file>.bset, `file` relative to
// the version's directory.
std::filesystem::path boot_set_path(const std::filesystem::path& repo, const std::string& image, uint64_t version,
                                    const std::string& file);

// Reads and decodes a sidecar (ENOENT when there is none).
Result<BootSet> load_boot_set(const std::filesystem::path& path);
// Writes a sidecar atomically: temporary file, fsync, rename, fsync of the
// directory (created if missing).
Status save_boot_set(const std::filesystem::path& path, const BootSet& set);
// Read-merge-write under flock of the directory's `.lock`: ORs `seen` into the
// sidecar at `path` (a missing, corrupt or foreign one is replaced; `replaced`
// then says why, for the caller's one log line; a prediction, boots 0, is
// replaced by the first recorded boot without a word). Sets updated_ms to now.
Status merge_into_boot_set(const std::filesystem::path& path, const BootSet& seen, std::string* replaced = nullptr);

}  // namespace icbd
