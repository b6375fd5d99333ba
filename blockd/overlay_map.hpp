// An overlay attached to a LUN: its open file, the shared golden file, and the
// allocation map in memory, with the bookkeeping that keeps a 1 bit on disk
// from ever getting ahead of its data (docs/overlay-format.md, "Durability").
// Pure state: the overlay layer (overlay_layer.hpp) does the I/O.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "golden_file.hpp"
#include "icbd/overlay.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd {

class OverlayMap {
public:
    static constexpr uint64_t block_size = OverlayInfo::block_size;
    static constexpr uint64_t page_size = 4096;  // map I/O unit

    // Opens the overlay file for `golden` (creating it when missing and
    // `create`), checks that it belongs to that golden file, reads the map.
    static Result<std::unique_ptr<OverlayMap>> attach(const std::string& path, std::shared_ptr<GoldenFile> golden,
                                                      bool create);

    int fd() const { return fd_.get(); }
    int golden_fd() const { return golden_->fd(); }
    uint64_t size() const { return info_.image_size; }
    uint64_t data_offset() const { return info_.data_offset; }
    const std::string& path() const { return path_; }
    const OverlayInfo& info() const { return info_; }

    bool present(uint64_t block) const { return bit(mem_, block); }
    // Calls f(in_overlay, offset, len) for the maximal runs of [offset, offset+len).
    template <typename F>
    void for_each_run(uint64_t offset, uint64_t len, F&& f) const {
        uint64_t end = offset + len;
        while (offset < end) {
            uint64_t b = offset / block_size;
            bool in = present(b);
            uint64_t run_end = (b + 1) * block_size;
            while (run_end < end && present(run_end / block_size) == in) run_end += block_size;
            run_end = std::min(run_end, end);
            f(in, offset, run_end - offset);
            offset = run_end;
        }
    }
    // True when a write of [offset, offset+len) partly covers a block that is
    // not in the overlay yet (that block must be copied up first).
    bool needs_copy_up(uint64_t offset, uint64_t len) const;

    // A write or punch of [offset, offset+len) completed: the blocks it
    // overlaps now live in the overlay (in memory; not durable yet).
    // Returns how many of them were not present before (metrics).
    uint64_t mark_present(uint64_t offset, uint64_t len);
    // Their data is durable too (FUA): the bits may go to disk.
    void mark_durable(uint64_t offset, uint64_t len);

    // SYNCHRONIZE CACHE: taken when the fdatasync is issued (every bit set by
    // then has its data covered by that fdatasync), applied when it completed.
    struct Snapshot {
        std::vector<uint32_t> pages;
        std::vector<uint8_t> bytes;  // page_size bytes per page
    };
    Snapshot snapshot_unsynced();
    void apply_durable(const Snapshot& s);
    // The fdatasync failed: its pages are unsynced again, so the next
    // SYNCHRONIZE CACHE covers them (their bits are still set in memory).
    void requeue_unsynced(const Snapshot& s);

    // Map writes (serialized by the caller: at most one batch in flight).
    bool has_unwritten_pages() const { return !disk_dirty_.empty(); }
    struct PageWrite {
        uint64_t file_offset;
        uint32_t len;
        uint32_t buf_offset;  // into the buffer given to take_unwritten_pages
    };
    // Copies the durable map pages not yet written into `buf` (resized) and
    // returns the writes to issue (contiguous pages coalesced).
    std::vector<PageWrite> take_unwritten_pages(std::vector<uint8_t>& buf);
    void requeue_pages(const std::vector<PageWrite>& writes);  // a map write failed

private:
    OverlayMap(UniqueFd fd, std::shared_ptr<GoldenFile> golden, OverlayInfo info, std::string path);
    bool covers(uint64_t offset, uint64_t end, uint64_t block) const;
    static bool bit(const std::vector<uint8_t>& m, uint64_t b) { return m[b >> 3] >> (b & 7) & 1; }
    uint64_t set_bits(std::vector<uint8_t>& m, uint64_t first, uint64_t last, std::vector<uint32_t>& dirty,
                  std::vector<uint8_t>& flags);

    UniqueFd fd_;
    std::shared_ptr<GoldenFile> golden_;
    OverlayInfo info_;
    std::string path_;
    std::vector<uint8_t> mem_;   // what reads see
    std::vector<uint8_t> disk_;  // bits whose data is durable (what may go to disk)
    std::vector<uint32_t> mem_dirty_, disk_dirty_;         // page lists
    std::vector<uint8_t> mem_dirty_flag_, disk_dirty_flag_;  // per page: in the list
};

}  // namespace icbd
