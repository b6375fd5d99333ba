// Open-time recovery of the write-back cache with synchronous preads: bounded by
// the metadata area (32 bytes per block); no data block is read.
#include "cache_recovery.hpp"

#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "icbd/file_io.hpp"
#include "icbd/log.hpp"

namespace icbd {
namespace {

std::string describe(const CacheIdentity& id) {
    return "'" + id.id + "' (" + std::to_string(id.device_size) + " bytes)";
}

constexpr uint64_t kChunk = 1 << 20;  // metadata read per pread: 32768 entries

}  // namespace

std::string CacheRecoveryStats::summary() const {
    char ms[32];
    std::snprintf(ms, sizeof ms, "%.1f", static_cast<double>(elapsed_ns) / 1e6);
    std::string s = std::string("recovered in ") + ms + " ms: superblock " + (superblock_slot ? "B" : "A") +
                    " generation " + std::to_string(generation) + ", committed seq " + std::to_string(committed_seq) +
                    "; " + std::to_string(entries_scanned) + " entries scanned, " + std::to_string(dirty_kept) +
                    " dirty kept, " + std::to_string(uncommitted_discarded) + " uncommitted discarded, " +
                    std::to_string(superseded) + " superseded, " + std::to_string(corrupted) + " corrupted, " +
                    std::to_string(scrubbed) + " scrubbed";
    if (!other_superblock.empty()) s += "; other superblock unusable: " + other_superblock;
    return s;
}

Result<RecoveredCache> recover_cache(int fd, const std::string& name, const CacheIdentity& expected) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string who = "cache file " + name;
    CacheRecoveryStats st;

    // 1. Superblocks: the valid copy with the highest generation.
    std::vector<uint8_t> sbuf(2 * kCacheSuperblockSize);
    if (Status s = full_pread(fd, sbuf.data(), sbuf.size(), 0, who + ": read superblocks"); !s) {
        if (s.code() == ENODATA) return Status::error(EINVAL, who + ": truncated: shorter than its two superblocks");
        return s;
    }
    Result<CacheSuperblock> copies[2] = {
        decode_superblock(std::span<const uint8_t, kCacheSuperblockSize>(sbuf.data(), kCacheSuperblockSize), 0),
        decode_superblock(
            std::span<const uint8_t, kCacheSuperblockSize>(sbuf.data() + kCacheSuperblockSize, kCacheSuperblockSize),
            1)};
    if (!copies[0] && !copies[1])
        return Status::error(EINVAL, who + ": superblock corrupt (both copies): A: " + copies[0].status().message() +
                                         "; B: " + copies[1].status().message());
    unsigned use = !copies[0] ? 1 : !copies[1] ? 0 : (copies[1]->generation > copies[0]->generation ? 1 : 0);
    if (!copies[1 - use]) st.other_superblock = std::string(use ? "A: " : "B: ") + copies[1 - use].status().message();
    const CacheSuperblock sb = *copies[use];
    st.superblock_slot = use;
    st.generation = sb.generation;
    st.committed_seq = sb.committed_seq;
    if (copies[0] && copies[1] && copies[0]->uuid != copies[1]->uuid)
        return Status::error(EINVAL, who + ": the two superblocks belong to different caches (uuid differs)");

    // 2. Identity of the device below, and a file holding everything the superblock describes.
    if (!(sb.device == expected))
        return Status::error(EINVAL, who + ": belongs to device " + describe(sb.device) + ", not to " +
                                         describe(expected) +
                                         "; refusing to open it (flush it with its own device, or format it anew)");
    auto size = cache_file_size(fd, name);
    if (!size) return size.status();
    if (*size < sb.geometry.file_size())
        return Status::error(EINVAL, who + ": truncated: " + std::to_string(*size) + " bytes, its superblock describes " +
                                         std::to_string(sb.geometry.nr_blocks) + " blocks in " +
                                         std::to_string(sb.geometry.file_size()) +
                                         " bytes; refusing to open it (committed data would be missing)");

    // 3. Scan the metadata area: per LBA the committed entry with the highest seq.
    const uint64_t n = sb.geometry.nr_blocks;
    const uint32_t tag = sb.entry_tag();
    const uint64_t device_blocks = sb.device.device_size / kCacheBlockSize;
    std::unordered_map<uint64_t, RecoveredSlot> best;  // LBA -> winner so far
    std::vector<uint32_t> drop;                         // non-empty entries not kept
    uint64_t max_seq = 0;
    std::vector<uint8_t> buf(kChunk);
    for (uint64_t first = 0; first < n; first += kChunk / kCacheEntrySize) {
        uint64_t count = std::min<uint64_t>(kChunk / kCacheEntrySize, n - first);
        uint64_t off = sb.geometry.entry_offset(static_cast<uint32_t>(first));
        if (Status s = full_pread(fd, buf.data(), count * kCacheEntrySize, off, who + ": read metadata"); !s) return s;
        for (uint64_t k = 0; k < count; ++k) {
            auto slot = static_cast<uint32_t>(first + k);
            DecodedEntry e = decode_entry(
                std::span<const uint8_t, kCacheEntrySize>(buf.data() + k * kCacheEntrySize, kCacheEntrySize), slot, tag);
            ++st.entries_scanned;
            if (e.kind == EntryKind::empty) continue;
            if (e.kind == EntryKind::used && e.lba >= device_blocks) e.kind = EntryKind::corrupt;
            if (e.kind == EntryKind::corrupt) ++st.corrupted;
            if (e.kind != EntryKind::used) {
                drop.push_back(slot);
                continue;
            }
            max_seq = std::max(max_seq, e.seq);
            if (e.seq > sb.committed_seq) {
                ++st.uncommitted_discarded;
                drop.push_back(slot);
                continue;
            }
            RecoveredSlot r{slot, e.lba, e.seq};
            auto [it, inserted] = best.try_emplace(e.lba, r);
            if (inserted) continue;
            ++st.superseded;
            if (r.seq > it->second.seq) std::swap(r, it->second);
            drop.push_back(r.slot);  // the loser
        }
    }
    std::vector<RecoveredSlot> kept;
    kept.reserve(best.size());
    for (auto& [lba, r] : best) kept.push_back(r);
    st.dirty_kept = kept.size();

    // 4. Scrub: zero every entry not kept, durably, before anything new is written
    // (a later commit must not turn a discarded entry into a committed one).
    if (!drop.empty()) {
        std::sort(drop.begin(), drop.end());
        std::fill(buf.begin(), buf.end(), 0);
        const uint64_t max_run = kChunk / kCacheEntrySize;
        for (size_t i = 0; i < drop.size();) {
            size_t j = i + 1;  // coalesce neighbouring slots into one write
            while (j < drop.size() && drop[j] == drop[j - 1] + 1 && j - i < max_run) ++j;
            if (Status s = full_pwrite(fd, buf.data(), (j - i) * kCacheEntrySize, sb.geometry.entry_offset(drop[i]),
                                       who + ": scrub metadata");
                !s)
                return s;
            i = j;
        }
        if (::fdatasync(fd) != 0) return Status::from_errno(errno, who + ": fdatasync after scrub");
        st.scrubbed = drop.size();
    }

    st.elapsed_ns = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
    if (st.corrupted > 0)
        log(LogLevel::warning, who + ": " + std::to_string(st.corrupted) +
                                   " corrupted metadata entries treated as free (a block they described is lost)");
    log(LogLevel::info, who + ": " + st.summary());
    RecoveredCache out;
    out.map = std::make_unique<CacheMap>(sb, kept, max_seq);
    out.stats = st;
    return out;
}

}  // namespace icbd
