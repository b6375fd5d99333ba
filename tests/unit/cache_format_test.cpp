// The write-back cache's bytes: superblock and entry layouts match the byte
// tables in docs/write-back-cache.md, every check rejects what it must, and
// format() makes a sparse, empty cache in O(1).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cache_format.hpp"
#include "icbd/checksum.hpp"
#include "icbd/endian.hpp"
#include "icbd/unique_fd.hpp"

using namespace icbd;

namespace {

// A temporary regular file, removed at the end of the test.
struct TempFile {
    std::string path;
    UniqueFd fd;
    TempFile() {
        const char* dir = std::getenv("TMPDIR");
        path = std::string(dir ? dir : "/tmp") + "/icbd-cache-format-XXXXXX";
        fd.reset(::mkstemp(path.data()));
        EXPECT_TRUE(fd.valid());
    }
    ~TempFile() { ::unlink(path.c_str()); }
};

CacheSuperblock sample() {
    CacheSuperblock sb;
    sb.geometry.nr_blocks = 1000;
    for (size_t i = 0; i < 16; ++i) sb.uuid[i] = static_cast<uint8_t>(i * 7 + 1);
    sb.generation = 5;
    sb.committed_seq = 123456789;
    sb.device.device_size = 1ull << 30;
    sb.device.id = "/srv/images/win11/7/overlay-ws042";
    return sb;
}

CacheFormatParams params(uint64_t bytes, uint64_t dev_size, const std::string& id, const std::string& name) {
    CacheFormatParams p;
    p.cache_bytes = bytes;
    p.device.device_size = dev_size;
    p.device.id = id;
    p.name = name;
    return p;
}

using SbBytes = std::array<uint8_t, kCacheSuperblockSize>;
using EntryBytes = std::array<uint8_t, kCacheEntrySize>;

}  // namespace

TEST(CacheGeometry, LayoutOfAreas) {
    CacheGeometry g{1000};
    EXPECT_EQ(g.metadata_offset(), 8192u);
    EXPECT_EQ(g.metadata_length(), 32768u);  // 32000 padded to 4 KiB
    EXPECT_EQ(g.data_offset(), 8192u + 32768u);
    EXPECT_EQ(g.file_size(), 8192u + 32768u + 1000u * 4096u);
    EXPECT_EQ(g.entry_offset(3), 8192u + 96u);
    EXPECT_EQ(g.block_offset(3), 8192u + 32768u + 3u * 4096u);
}

TEST(CacheGeometry, LargestCacheThatFits) {
    for (uint64_t bytes : {16384ull, 100000ull, 1ull << 20, 64ull << 20, (1ull << 30) + 12345}) {
        auto g = CacheGeometry::for_cache_bytes(bytes);
        ASSERT_TRUE(g) << bytes;
        EXPECT_LE(g->file_size(), bytes);
        CacheGeometry bigger{g->nr_blocks + 1};
        EXPECT_GT(bigger.file_size(), bytes) << "one more block would have fit in " << bytes;
    }
    EXPECT_FALSE(CacheGeometry::for_cache_bytes(16383));
    EXPECT_FALSE(CacheGeometry::for_cache_bytes(0));
}

TEST(CacheSuperblock, BytesMatchTheTable) {
    CacheSuperblock sb = sample();
    SbBytes b;
    encode_superblock(sb, b);
    EXPECT_EQ(std::memcmp(b.data(), "ICBDWBC1", 8), 0);
    EXPECT_EQ(load_le32(&b[8]), 1u);                 // version
    EXPECT_EQ(load_le32(&b[12]), 1u);                // slot = generation 5 % 2
    EXPECT_EQ(load_le32(&b[16]), 4096u);
    EXPECT_EQ(load_le32(&b[20]), 32u);
    EXPECT_EQ(load_le64(&b[24]), 1000u);
    EXPECT_EQ(load_le64(&b[32]), 8192u);
    EXPECT_EQ(load_le64(&b[40]), 8192u + 32768u);
    EXPECT_EQ(b[48], 1);
    EXPECT_EQ(b[63], 15 * 7 + 1);
    EXPECT_EQ(load_le64(&b[64]), 5u);
    EXPECT_EQ(load_le64(&b[72]), 123456789u);
    EXPECT_EQ(load_le64(&b[80]), 1ull << 30);
    EXPECT_EQ(load_le16(&b[88]), static_cast<int>(sb.device.id.size()));
    EXPECT_EQ(std::string(reinterpret_cast<char*>(&b[96]), sb.device.id.size()), sb.device.id);
    for (size_t i = 96 + sb.device.id.size(); i < 4092; ++i) ASSERT_EQ(b[i], 0) << i;
    EXPECT_EQ(load_le32(&b[4092]), crc32c(b.data(), 4092));
}

TEST(CacheSuperblock, RoundTrip) {
    CacheSuperblock sb = sample();
    SbBytes b;
    encode_superblock(sb, b);
    auto d = decode_superblock(b, 1);
    ASSERT_TRUE(d) << d.status().message();
    EXPECT_EQ(d->geometry.nr_blocks, 1000u);
    EXPECT_EQ(d->uuid, sb.uuid);
    EXPECT_EQ(d->generation, 5u);
    EXPECT_EQ(d->committed_seq, 123456789u);
    EXPECT_EQ(d->device, sb.device);
    EXPECT_EQ(d->entry_tag(), sb.entry_tag());
}

TEST(CacheSuperblock, RejectsDamageWithAReason) {
    CacheSuperblock sb = sample();
    SbBytes good;
    encode_superblock(sb, good);

    SbBytes b = good;
    b[0] = 'X';
    EXPECT_NE(decode_superblock(b, 1).status().message().find("bad magic"), std::string::npos);

    b = good;
    b[100] ^= 1;  // any bit, e.g. inside the identity
    EXPECT_NE(decode_superblock(b, 1).status().message().find("checksum"), std::string::npos);

    SbBytes zero{};
    EXPECT_FALSE(decode_superblock(zero, 0));

    // Read from the wrong slot (a misdirected write).
    EXPECT_NE(decode_superblock(good, 0).status().message().find("found in slot 0"), std::string::npos);

    // A future version, correctly checksummed.
    b = good;
    b[8] = 2;
    uint32_t c = crc32c(b.data(), 4092);
    std::memcpy(&b[4092], &c, 4);
    EXPECT_NE(decode_superblock(b, 1).status().message().find("version 2"), std::string::npos);

    // Offsets that do not follow from the block count.
    b = good;
    b[40] ^= 0x10;
    c = crc32c(b.data(), 4092);
    std::memcpy(&b[4092], &c, 4);
    EXPECT_NE(decode_superblock(b, 1).status().message().find("offsets"), std::string::npos);
}

TEST(CacheEntry, BytesMatchTheTable) {
    EntryBytes e;
    encode_entry(0x1122334455667788ull, 42, 7, 0xdeadbeef, e);
    EXPECT_EQ(load_le64(&e[0]), 0x1122334455667788ull);
    EXPECT_EQ(load_le64(&e[8]), 42u);
    EXPECT_EQ(load_le32(&e[16]), 7u);
    EXPECT_EQ(load_le32(&e[20]), 0xdeadbeefu);
    EXPECT_EQ(load_le32(&e[24]), 0u);
    EXPECT_EQ(load_le32(&e[28]), crc32c(e.data(), 28));
    DecodedEntry d = decode_entry(e, 7, 0xdeadbeef);
    EXPECT_EQ(d.kind, EntryKind::used);
    EXPECT_EQ(d.lba, 0x1122334455667788ull);
    EXPECT_EQ(d.seq, 42u);
}

TEST(CacheEntry, ZeroBytesAreEmptyAndFreeIsFree) {
    EntryBytes zero{};
    EXPECT_EQ(decode_entry(zero, 0, 1).kind, EntryKind::empty);
    EntryBytes f;
    encode_entry(kCacheFreeLba, 99, 3, 1, f);
    EXPECT_EQ(load_le64(&f[8]), 0u) << "a FREE entry carries no seq";
    EXPECT_EQ(decode_entry(f, 3, 1).kind, EntryKind::free);
}

TEST(CacheEntry, CorruptMisdirectedOrForeignEntriesAreRejected) {
    EntryBytes e;
    encode_entry(5, 6, 7, 8, e);
    EXPECT_EQ(decode_entry(e, 8, 8).kind, EntryKind::corrupt) << "entry of slot 7 read at slot 8";
    EXPECT_EQ(decode_entry(e, 7, 9).kind, EntryKind::corrupt) << "entry of another format (tag)";
    for (size_t byte = 0; byte < kCacheEntrySize; ++byte) {
        EntryBytes b = e;
        b[byte] ^= 0x40;
        EXPECT_EQ(decode_entry(b, 7, 8).kind, EntryKind::corrupt) << byte;
    }
}

TEST(CacheFormat, AllocatesMetadataButNotData) {
    TempFile f;
    CacheFormatParams p = params(64ull << 20, 8ull << 30, "overlay 0f3c-uuid", f.path);
    auto sb = format_cache(f.fd.get(), p);
    ASSERT_TRUE(sb) << sb.status().message();
    struct stat st {};
    ASSERT_EQ(::fstat(f.fd.get(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), sb->geometry.file_size());
    // Format allocates the superblocks and the metadata area (so an entry write
    // never meets a full filesystem), never the data area: O(N x 32 bytes).
    EXPECT_LE(static_cast<uint64_t>(st.st_blocks) * 512,
              sb->geometry.metadata_offset() + sb->geometry.metadata_length() + 64u * 1024)
        << "format must not allocate the data area";
    EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, sb->geometry.metadata_offset() + sb->geometry.metadata_length())
        << "the metadata area must be allocated";
    EXPECT_EQ(sb->generation, 1u);
    EXPECT_EQ(sb->committed_seq, 0u);

    // Both copies valid, generations 0 (A) and 1 (B), same cache.
    SbBytes b;
    for (unsigned slot : {0u, 1u}) {
        ASSERT_EQ(::pread(f.fd.get(), b.data(), b.size(), slot * 4096), 4096);
        auto d = decode_superblock(b, slot);
        ASSERT_TRUE(d) << d.status().message();
        EXPECT_EQ(d->generation, slot);
        EXPECT_EQ(d->uuid, sb->uuid);
        EXPECT_EQ(d->device, p.device);
    }
    // Every entry reads as empty.
    std::vector<uint8_t> meta(sb->geometry.metadata_length());
    ASSERT_EQ(::pread(f.fd.get(), meta.data(), meta.size(), 8192), static_cast<ssize_t>(meta.size()));
    for (uint32_t i = 0; i < sb->geometry.nr_blocks; ++i)
        ASSERT_EQ(decode_entry(std::span<const uint8_t, 32>(meta.data() + 32 * i, 32), i, sb->entry_tag()).kind,
                  EntryKind::empty);
}

TEST(CacheFormat, ReformatDropsOldEntriesAndChangesTheUuid) {
    TempFile f;
    CacheFormatParams p = params(1ull << 20, 1ull << 30, "dev", f.path);
    auto first = format_cache(f.fd.get(), p);
    ASSERT_TRUE(first);
    EntryBytes e;
    encode_entry(1, 1, 0, first->entry_tag(), e);
    ASSERT_EQ(::pwrite(f.fd.get(), e.data(), e.size(), 8192), 32);
    auto second = format_cache(f.fd.get(), p);
    ASSERT_TRUE(second);
    EXPECT_NE(second->uuid, first->uuid);
    ASSERT_EQ(::pread(f.fd.get(), e.data(), e.size(), 8192), 32);
    EXPECT_EQ(decode_entry(e, 0, second->entry_tag()).kind, EntryKind::empty);
}

TEST(CacheFormat, RefusesTooLongIdentityAndTooSmallSize) {
    TempFile f;
    auto r = format_cache(f.fd.get(), params(1ull << 20, 1ull << 30, std::string(201, 'x'), f.path));
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("at most 200"), std::string::npos) << r.status().message();
    r = format_cache(f.fd.get(), params(10000, 1ull << 30, "dev", f.path));
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find(f.path), std::string::npos) << r.status().message();
}
