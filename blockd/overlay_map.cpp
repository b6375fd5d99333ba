// OverlayMap: attach (identity check, map read) and the two-map bookkeeping.
#include "overlay_map.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "icbd/file_io.hpp"

namespace icbd {

Result<std::unique_ptr<OverlayMap>> OverlayMap::attach(const std::string& path, std::shared_ptr<GoldenFile> golden,
                                                       bool create) {
    if (create && ::access(path.c_str(), F_OK) != 0 && errno == ENOENT) {
        Status s = create_overlay(path, golden->identity());
        if (!s && s.code() != EEXIST) return s;
    }
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_LARGEFILE));
    if (!fd.valid()) return Status::from_errno(errno, "overlay '" + path + "': open");
    auto info = read_overlay_header(fd.get(), path);
    if (!info) return info.status();
    if (!(info->golden == golden->identity()))
        return Status::error(EINVAL, "overlay '" + path + "' belongs to " + info->golden.describe() + ", not to " +
                                         golden->identity().describe() + "; refusing to attach it (nothing changed)");
    struct stat st {};
    if (fstat(fd.get(), &st) < 0) return Status::from_errno(errno, "overlay '" + path + "': fstat");
    if (static_cast<uint64_t>(st.st_size) < info->map_offset + info->map_length)
        return Status::error(EINVAL, "overlay '" + path + "': truncated (allocation map incomplete)");
    auto m = std::unique_ptr<OverlayMap>(new OverlayMap(std::move(fd), std::move(golden), *info, path));
    if (Status s = full_pread(m->fd(), m->mem_.data(), m->mem_.size(), info->map_offset,
                              "overlay '" + path + "': reading the allocation map");
        !s)
        return s;
    // Bits past the last block would be the sign of a foreign writer; ignore them.
    for (uint64_t b = info->blocks(); b < m->mem_.size() * 8; ++b) m->mem_[b >> 3] &= uint8_t(~(1u << (b & 7)));
    m->disk_ = m->mem_;
    return m;
}

OverlayMap::OverlayMap(UniqueFd fd, std::shared_ptr<GoldenFile> golden, OverlayInfo info, std::string path)
    : fd_(std::move(fd)), golden_(std::move(golden)), info_(info), path_(std::move(path)) {
    mem_.assign(info_.map_length, 0);
    mem_dirty_flag_.assign(info_.map_length / page_size, 0);
    disk_dirty_flag_.assign(info_.map_length / page_size, 0);
}

bool OverlayMap::needs_copy_up(uint64_t offset, uint64_t len) const {
    if (len == 0) return false;
    const uint64_t end = offset + len;
    const uint64_t first = offset / block_size, last = (end - 1) / block_size;
    return (!covers(offset, end, first) && !present(first)) || (!covers(offset, end, last) && !present(last));
}

// A write of [offset, end) completes block b when it covers it up to its end,
// or up to the image's end for a final short block.
bool OverlayMap::covers(uint64_t offset, uint64_t end, uint64_t b) const {
    const uint64_t block_start = b * block_size;
    uint64_t block_end = block_start + block_size;
    if (block_end > size()) block_end = size();
    return offset <= block_start && end >= block_end;
}

uint64_t OverlayMap::set_bits(std::vector<uint8_t>& m, uint64_t first, uint64_t last, std::vector<uint32_t>& dirty,
                              std::vector<uint8_t>& flags) {
    uint64_t fresh = 0;
    for (uint64_t b = first; b <= last; ++b) {
        uint8_t mask = uint8_t(1u << (b & 7));
        if (m[b >> 3] & mask) continue;
        m[b >> 3] |= mask;
        ++fresh;
        uint32_t page = static_cast<uint32_t>((b >> 3) / page_size);
        if (!flags[page]) {
            flags[page] = 1;
            dirty.push_back(page);
        }
    }
    return fresh;
}

uint64_t OverlayMap::mark_present(uint64_t offset, uint64_t len) {
    if (len == 0) return 0;
    return set_bits(mem_, offset / block_size, (offset + len - 1) / block_size, mem_dirty_, mem_dirty_flag_);
}

void OverlayMap::mark_durable(uint64_t offset, uint64_t len) {
    if (len == 0) return;
    set_bits(disk_, offset / block_size, (offset + len - 1) / block_size, disk_dirty_, disk_dirty_flag_);
}

OverlayMap::Snapshot OverlayMap::snapshot_unsynced() {
    Snapshot s;
    s.pages.swap(mem_dirty_);
    s.bytes.resize(s.pages.size() * page_size);
    for (size_t i = 0; i < s.pages.size(); ++i) {
        mem_dirty_flag_[s.pages[i]] = 0;
        std::memcpy(s.bytes.data() + i * page_size, mem_.data() + uint64_t(s.pages[i]) * page_size, page_size);
    }
    return s;
}

void OverlayMap::apply_durable(const Snapshot& s) {
    for (size_t i = 0; i < s.pages.size(); ++i) {
        uint32_t p = s.pages[i];
        uint8_t* d = disk_.data() + uint64_t(p) * page_size;
        const uint8_t* src = s.bytes.data() + i * page_size;
        bool changed = false;
        for (size_t k = 0; k < page_size; ++k) {
            uint8_t v = d[k] | src[k];
            changed |= v != d[k];
            d[k] = v;
        }
        if (changed && !disk_dirty_flag_[p]) {
            disk_dirty_flag_[p] = 1;
            disk_dirty_.push_back(p);
        }
    }
}

std::vector<OverlayMap::PageWrite> OverlayMap::take_unwritten_pages(std::vector<uint8_t>& buf) {
    std::vector<uint32_t> pages;
    pages.swap(disk_dirty_);
    std::sort(pages.begin(), pages.end());
    buf.resize(pages.size() * page_size);
    std::vector<PageWrite> writes;
    for (size_t i = 0; i < pages.size(); ++i) {
        disk_dirty_flag_[pages[i]] = 0;
        uint32_t off = static_cast<uint32_t>(i * page_size);
        std::memcpy(buf.data() + off, disk_.data() + uint64_t(pages[i]) * page_size, page_size);
        uint64_t file_off = info_.map_offset + uint64_t(pages[i]) * page_size;
        if (!writes.empty() && writes.back().file_offset + writes.back().len == file_off)
            writes.back().len += page_size;
        else
            writes.push_back({file_off, static_cast<uint32_t>(page_size), off});
    }
    return writes;
}

void OverlayMap::requeue_unsynced(const Snapshot& s) {
    for (uint32_t p : s.pages)
        if (!mem_dirty_flag_[p]) {
            mem_dirty_flag_[p] = 1;
            mem_dirty_.push_back(p);
        }
}

void OverlayMap::requeue_pages(const std::vector<PageWrite>& writes) {
    for (const PageWrite& w : writes)
        for (uint64_t o = 0; o < w.len; o += page_size) {
            uint32_t p = static_cast<uint32_t>((w.file_offset + o - info_.map_offset) / page_size);
            if (!disk_dirty_flag_[p]) {
                disk_dirty_flag_[p] = 1;
                disk_dirty_.push_back(p);
            }
        }
}

}  // namespace icbd
