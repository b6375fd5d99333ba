// Per-client copy-on-write overlays over a shared golden file: identity of a
// golden file, and creating, resetting and inspecting overlay files.
// Format and rules: docs/overlay-format.md.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "icbd/status.hpp"

namespace icbd {

// What an overlay belongs to: derived from the golden file and its path
// (`.../images/<image>/<version>/<file>`).
struct GoldenIdentity {
    std::array<uint8_t, 16> subvol_uuid{};  // zero when not on BTRFS
    uint64_t version = 0;                   // 0 when the path has no version directory
    uint64_t mtime_ns = 0;
    uint64_t size = 0;
    std::string image;  // may be empty
    std::string file;

    bool operator==(const GoldenIdentity&) const = default;
    // "image 'win11' version 7 file 'disk.raw' (subvolume 5f3a..., 4294967296 bytes)"
    std::string describe() const;
};

// Identity of the open golden file `fd` found at `path`.
Result<GoldenIdentity> golden_identity(int fd, const std::string& path);

struct OverlayInfo {
    static constexpr uint32_t block_shift = 12;
    static constexpr uint64_t block_size = 1u << block_shift;
    GoldenIdentity golden;
    std::array<uint8_t, 16> overlay_uuid{};
    uint64_t image_size = 0;
    uint64_t map_offset = 0;
    uint64_t map_length = 0;
    uint64_t data_offset = 0;
    uint64_t created_ns = 0;
    uint64_t blocks() const { return (image_size + block_size - 1) >> block_shift; }
};

inline constexpr size_t overlay_header_size = 4096;

// Byte encoding of the header (docs/overlay-format.md) and its validation.
void encode_overlay_header(const OverlayInfo& info, uint8_t out[overlay_header_size]);
// `name` names the file in error messages.
Result<OverlayInfo> decode_overlay_header(const uint8_t in[overlay_header_size], const std::string& name);

// Layout of a new overlay for `golden`: offsets and sizes filled in, random uuid.
OverlayInfo plan_overlay(const GoldenIdentity& golden);

// Creates a new overlay file for the golden file (fails with EEXIST if the
// file exists). O(1): header + sparse file.
Status create_overlay(const std::string& overlay_path, const GoldenIdentity& golden);
// Replaces the overlay by an empty one for the same golden file (new file,
// renamed over the old one). Must not be attached to a LUN meanwhile.
Status reset_overlay(const std::string& overlay_path);
Result<OverlayInfo> read_overlay_info(const std::string& overlay_path);
// The same from an open overlay file.
Result<OverlayInfo> read_overlay_header(int fd, const std::string& overlay_path);
// Counts blocks whose map bit is set (reads the map).
Result<uint64_t> count_overlay_blocks(const std::string& overlay_path);

std::string uuid_to_string(const std::array<uint8_t, 16>& uuid);

}  // namespace icbd
