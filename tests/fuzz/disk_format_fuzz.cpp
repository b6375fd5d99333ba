// libFuzzer target: the on-disk formats a LUN reads when it opens
// (docs/overlay-format.md, docs/write-back-cache.md). A crash or a power cut
// can leave any bytes there, so: the overlay header and cache superblock
// decoders never crash, and what they accept encodes to bytes they accept again
// unchanged; cache recovery over a file with a valid superblock and metadata
// entries made from the input (current, uncommitted, superseded, out of range,
// misdirected, garbage) never crashes, keeps for each LBA the newest committed
// entry and nothing else, and leaves every other entry zeroed on disk. A boot
// set sidecar (docs/boot-set.md) decodes or is refused, and what it accepts
// re-encodes to the same bytes.
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <span>
#include <vector>

#include "cache_recovery.hpp"
#include "icbd/boot_set.hpp"
#include "icbd/checksum.hpp"
#include "icbd/endian.hpp"
#include "icbd/file_io.hpp"
#include "icbd/overlay.hpp"
#include "icbd/unique_fd.hpp"

using namespace icbd;

namespace {

void require(bool ok) {
    if (!ok) std::abort();
}

// The first 4 KiB of the input (zero-padded) as an overlay header.
void overlay_header(std::span<const uint8_t> in) {
    std::array<uint8_t, overlay_header_size> raw{};
    std::memcpy(raw.data(), in.data(), std::min(in.size(), raw.size()));
    auto info = decode_overlay_header(raw.data(), "fuzz.ovl");
    if (!info) {
        require(!info.status().message().empty());
        return;
    }
    std::array<uint8_t, overlay_header_size> once{}, twice{};
    encode_overlay_header(*info, once.data());
    auto again = decode_overlay_header(once.data(), "fuzz.ovl");
    require(static_cast<bool>(again));
    encode_overlay_header(*again, twice.data());
    require(once == twice);
}

// The same bytes as a cache superblock, read from either slot.
void cache_superblock(std::span<const uint8_t> in) {
    std::array<uint8_t, kCacheSuperblockSize> raw{};
    std::memcpy(raw.data(), in.data(), std::min(in.size(), raw.size()));
    for (unsigned slot : {0u, 1u}) {
        auto sb = decode_superblock(raw, slot);
        if (!sb) continue;
        std::array<uint8_t, kCacheSuperblockSize> once{}, twice{};
        encode_superblock(*sb, once);
        auto again = decode_superblock(once, static_cast<unsigned>(sb->generation % 2));
        require(static_cast<bool>(again));
        encode_superblock(*again, twice);
        require(once == twice);
    }
}

// Consumes the input a byte at a time; zeros once it runs out.
struct Bytes {
    std::span<const uint8_t> in;
    size_t at = 0;
    uint8_t next() { return at < in.size() ? in[at++] : 0; }
};

// A cache of up to 64 blocks over a device of up to 64 blocks, entries from
// the input, then recover_cache and the checks against a model.
void cache_recovery(std::span<const uint8_t> in) {
    Bytes b{in};
    CacheSuperblock sb;
    sb.geometry.nr_blocks = 1 + b.next() % 64;
    const uint64_t device_blocks = 1 + b.next() % 64;
    sb.device = {device_blocks * kCacheBlockSize, "fuzz-device"};
    sb.committed_seq = b.next() % 32;
    sb.generation = 1 + b.next() % 4;
    sb.uuid[0] = b.next();
    const uint32_t tag = sb.entry_tag();

    UniqueFd fd(memfd_create("fuzz-cache", MFD_CLOEXEC));
    require(fd.valid());
    require(ftruncate(fd.get(), static_cast<off_t>(sb.geometry.file_size())) == 0);
    std::array<uint8_t, kCacheSuperblockSize> sbuf{};
    encode_superblock(sb, sbuf);
    require(full_pwrite(fd.get(), sbuf.data(), sbuf.size(), cache_superblock_offset(sb.generation), "sb").is_ok());

    // What recovery must keep: per LBA, the highest committed seq of a valid entry.
    std::map<uint64_t, uint64_t> newest;
    for (uint32_t slot = 0; slot < sb.geometry.nr_blocks; ++slot) {
        std::array<uint8_t, kCacheEntrySize> e{};
        const uint8_t kind = b.next() % 6;
        const uint64_t lba = b.next() % (device_blocks + 2);  // a few beyond the device
        const uint64_t seq = 1 + b.next() % 40;                // some not committed
        switch (kind) {
            case 0: break;                                                    // never written
            case 1: case 2: encode_entry(lba, seq, slot, tag, e); break;      // used
            case 3: encode_entry(kCacheFreeLba, 0, slot, tag, e); break;      // free
            case 4: encode_entry(lba, seq, slot ^ 1, tag ^ b.next(), e); break;  // misdirected or foreign
            case 5: for (auto& x : e) x = b.next(); break;                    // garbage
        }
        DecodedEntry d = decode_entry(e, slot, tag);
        if (d.kind == EntryKind::used && d.lba < device_blocks && d.seq <= sb.committed_seq) {
            auto [it, fresh] = newest.try_emplace(d.lba, d.seq);
            if (!fresh) it->second = std::max(it->second, d.seq);
        }
        require(full_pwrite(fd.get(), e.data(), e.size(), sb.geometry.entry_offset(slot), "entry").is_ok());
    }

    auto rec = recover_cache(fd.get(), "fuzz.cache", sb.device);
    require(static_cast<bool>(rec));
    const CacheMap& map = *rec->map;
    require(map.check_invariants().is_ok());
    require(rec->stats.dirty_kept == newest.size());
    for (auto [lba, seq] : newest) {
        auto slot = map.lookup(lba);
        require(slot.has_value());
        require(map.slot_lba(*slot) == lba && map.slot_seq(*slot) == seq);
    }
    // On disk: the kept entries as they were, every other one zeroed.
    for (uint32_t slot = 0; slot < sb.geometry.nr_blocks; ++slot) {
        std::array<uint8_t, kCacheEntrySize> e{};
        require(full_pread(fd.get(), e.data(), e.size(), sb.geometry.entry_offset(slot), "entry").is_ok());
        DecodedEntry d = decode_entry(e, slot, tag);
        auto it = newest.find(d.lba);
        const bool kept = d.kind == EntryKind::used && it != newest.end() && map.lookup(d.lba) == slot;
        require(kept || d.kind == EntryKind::empty);
    }
}

}  // namespace

// The input as a boot set sidecar; and, the bytes past its header with a valid
// header and checksum put in front, so the bitmap checks are reached too.
void boot_set(std::span<const uint8_t> in) {
    auto s = BootSet::decode(in, "fuzz.bset");
    if (!s) {
        require(!s.status().message().empty());
    } else {
        auto again = s->encode();
        require(again.size() == in.size() && std::memcmp(again.data(), in.data(), in.size()) == 0);
        uint64_t sum = 0;
        for (const auto& r : s->runs()) {
            require(r.length > 0 && r.offset + r.length <= s->file_size());
            sum += r.length;
        }
        require(sum == s->bytes());
    }
    if (in.size() < 9) return;
    uint64_t file_size = 0;
    std::memcpy(&file_size, in.data(), 8);
    auto made = BootSet::create(file_size % (1ull << 30), 12 + in[8] % 13);
    if (!made) return;
    auto bytes = made->encode();
    const size_t n = std::min(in.size() - 9, bytes.size() - kBootSetHeaderSize - 4);
    std::memcpy(bytes.data() + kBootSetHeaderSize, in.data() + 9, n);
    const size_t body = bytes.size() - 4;
    store_le32(bytes.data() + body, crc32c(bytes.data(), body));
    auto t = BootSet::decode(bytes, "fuzz.bset");
    if (t) require(t->encode() == bytes);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::span<const uint8_t> in(data, size);
    overlay_header(in);
    cache_superblock(in);
    cache_recovery(in);
    boot_set(in);
    return 0;
}
