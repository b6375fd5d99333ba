// The boot set bitmap and its sidecar file (docs/boot-set.md): what the
// recorder marks, what the prefetcher reads, and refusal of bad sidecars.
#include "icbd/boot_set.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "icbd/checksum.hpp"
#include "icbd/endian.hpp"

namespace {

namespace fs = std::filesystem;
using icbd::BootSet;
constexpr uint64_t KiB = 1024, MiB = 1024 * KiB;

class ScratchDir {
public:
    ScratchDir() {
        char tmpl[] = "/tmp/icbd-bootset-XXXXXX";
        path_ = ::mkdtemp(tmpl);
    }
    ~ScratchDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

BootSet make(uint64_t size, uint32_t shift = icbd::kBootSetDefaultChunkShift) {
    auto s = BootSet::create(size, shift);
    EXPECT_TRUE(s) << s.status().message();
    return std::move(s.value());
}

std::vector<uint8_t> read_all(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

void write_all(const fs::path& p, const std::vector<uint8_t>& b) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

TEST(BootSet, ReadsMarkTheChunksTheyTouchAndRunsJoinNeighbours) {
    BootSet s = make(10 * MiB);  // 160 chunks of 64 KiB
    EXPECT_TRUE(s.empty());
    s.mark(0, 512);                       // chunk 0
    s.mark(64 * KiB - 512, 1024);         // chunks 0 and 1
    s.mark(5 * MiB + 4096, 4096);         // chunk 80
    s.mark(10 * MiB - 512, 64 * KiB);     // last chunk; the rest is past the end
    s.mark(20 * MiB, 4096);               // past the end: nothing
    EXPECT_TRUE(s.has_chunk(0));
    EXPECT_TRUE(s.has_chunk(1));
    EXPECT_FALSE(s.has_chunk(2));
    EXPECT_TRUE(s.has_chunk(80));
    EXPECT_TRUE(s.has_chunk(159));
    EXPECT_FALSE(s.has_chunk(160));
    const std::vector<BootSet::Run> want{{0, 128 * KiB}, {5 * MiB, 64 * KiB}, {10 * MiB - 64 * KiB, 64 * KiB}};
    EXPECT_EQ(s.runs(), want);
    EXPECT_EQ(s.bytes(), 256 * KiB);
}

TEST(BootSet, TheLastRunEndsAtTheFilesEndNotAtItsChunks) {
    BootSet s = make(100 * KiB + 7);
    s.mark(99 * KiB, 10 * KiB);
    ASSERT_EQ(s.runs().size(), 1u);
    EXPECT_EQ(s.runs()[0].offset, 64 * KiB);
    EXPECT_EQ(s.runs()[0].length, 36 * KiB + 7);
}

TEST(BootSet, RoundTripsThroughItsSidecarFile) {
    ScratchDir d;
    BootSet s = make(3 * MiB + 1, 12);
    s.mark(4096, 8192);
    s.mark(3 * MiB, 1);
    s.boots = 3;
    s.version = 7;
    s.updated_ms = 1234567;
    const fs::path p = icbd::boot_set_path(d.path(), "win11", 7, "sub/disk.raw");
    EXPECT_EQ(p, d.path() / "images/win11/.bootsets/7/sub/disk.raw.bset");
    ASSERT_TRUE(icbd::save_boot_set(p, s));
    auto back = icbd::load_boot_set(p);
    ASSERT_TRUE(back) << back.status().message();
    EXPECT_EQ(back->runs(), s.runs());
    EXPECT_EQ(back->file_size(), s.file_size());
    EXPECT_EQ(back->chunk_shift(), 12u);
    EXPECT_EQ(back->boots, 3u);
    EXPECT_EQ(back->version, 7u);
    EXPECT_EQ(back->updated_ms, 1234567u);
    EXPECT_EQ(read_all(p).size(), icbd::kBootSetHeaderSize + (769 + 7) / 8 + 4);
    for (const auto& e : fs::directory_iterator(p.parent_path()))
        EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << "temporary file left: " << e.path();
}

TEST(BootSet, BootsMergeByOrAndCountTheBoots) {
    ScratchDir d;
    const fs::path p = d.path() / "v/disk.raw.bset";
    BootSet a = make(MiB);
    a.mark(0, 4096);
    a.boots = 1;
    a.version = 5;
    ASSERT_TRUE(icbd::merge_into_boot_set(p, a));
    BootSet b = make(MiB);
    b.mark(512 * KiB, 4096);
    b.boots = 1;
    b.version = 5;
    ASSERT_TRUE(icbd::merge_into_boot_set(p, b));
    auto m = icbd::load_boot_set(p);
    ASSERT_TRUE(m) << m.status().message();
    EXPECT_TRUE(m->has_chunk(0));
    EXPECT_TRUE(m->has_chunk(8));
    EXPECT_EQ(m->bytes(), 128 * KiB);
    EXPECT_EQ(m->boots, 2u);
    EXPECT_GT(m->updated_ms, 0u);
}

TEST(BootSet, TheFirstRealBootReplacesAPredictionInsteadOfMixingWithIt) {
    // A replica saved the master's prediction (version 6's boots) for version
    // 7; the first desktop booting 7 records what 7 really reads.
    ScratchDir d;
    const fs::path p = d.path() / "disk.raw.bset";
    BootSet predicted = make(MiB);
    predicted.mark(0, 1);
    predicted.boots = 0;
    predicted.version = 6;
    ASSERT_TRUE(icbd::save_boot_set(p, predicted));
    BootSet seen = make(MiB);
    seen.mark(256 * KiB, 1);
    seen.boots = 1;
    seen.version = 7;
    std::string why;
    ASSERT_TRUE(icbd::merge_into_boot_set(p, seen, &why));
    EXPECT_TRUE(why.empty()) << why;
    auto m = icbd::load_boot_set(p);
    ASSERT_TRUE(m) << m.status().message();
    EXPECT_EQ(m->runs(), (std::vector<BootSet::Run>{{256 * KiB, 64 * KiB}}));
    EXPECT_EQ(m->boots, 1u);
    EXPECT_EQ(m->version, 7u);
}

TEST(BootSet, ASetForAnotherFileSizeIsResizedWhenMerged) {
    // The next version's disk grew (or shrank): what the old boots read
    // still predicts the new boots, chunks past the new end are dropped.
    ScratchDir d;
    const fs::path p = d.path() / "disk.raw.bset";
    BootSet old = make(2 * MiB);
    old.mark(0, 1);
    old.mark(2 * MiB - 1, 1);  // chunk 31
    old.boots = 4;
    ASSERT_TRUE(icbd::save_boot_set(p, old));
    BootSet seen = make(MiB);  // 16 chunks
    seen.mark(64 * KiB, 1);
    seen.boots = 1;
    ASSERT_TRUE(icbd::merge_into_boot_set(p, seen));
    auto m = icbd::load_boot_set(p);
    ASSERT_TRUE(m) << m.status().message();
    EXPECT_EQ(m->file_size(), MiB);
    EXPECT_EQ(m->runs(), (std::vector<BootSet::Run>{{0, 128 * KiB}}));
    EXPECT_EQ(m->boots, 5u);
}

TEST(BootSet, ACorruptSidecarIsReplacedAndTheCallerToldWhy) {
    ScratchDir d;
    const fs::path p = d.path() / "disk.raw.bset";
    fs::create_directories(p.parent_path());
    write_all(p, {'n', 'o', 't', ' ', 'a', ' ', 's', 'e', 't'});
    BootSet seen = make(MiB);
    seen.mark(0, 1);
    seen.boots = 1;
    std::string why;
    ASSERT_TRUE(icbd::merge_into_boot_set(p, seen, &why));
    EXPECT_NE(why.find("truncated"), std::string::npos) << why;
    EXPECT_NE(why.find(p.string()), std::string::npos) << "names the file: " << why;
    auto m = icbd::load_boot_set(p);
    ASSERT_TRUE(m) << m.status().message();
    EXPECT_EQ(m->boots, 1u);
}

class BadSidecar : public ::testing::Test {
protected:
    void SetUp() override {
        BootSet s = make(MiB);
        s.mark(0, MiB);
        good_ = s.encode();
    }
    // Re-seals the CRC so that only the field under test is wrong.
    void reseal(std::vector<uint8_t>& b) {
        const size_t body = b.size() - 4;
        icbd::store_le32(b.data() + body, icbd::crc32c(b.data(), body));
    }
    void expect_refused(const std::vector<uint8_t>& b, const std::string& needle) {
        auto r = BootSet::decode(b, "t.bset");
        ASSERT_FALSE(r) << "accepted a sidecar with " << needle;
        EXPECT_EQ(r.status().code(), EBADMSG);
        EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
        EXPECT_NE(r.status().message().find("t.bset"), std::string::npos) << r.status().message();
    }
    std::vector<uint8_t> good_;
};

TEST_F(BadSidecar, GoodOneDecodes) { EXPECT_TRUE(BootSet::decode(good_, "t.bset")); }

TEST_F(BadSidecar, Truncated) {
    expect_refused({good_.begin(), good_.begin() + 20}, "truncated");
    expect_refused({good_.begin(), good_.end() - 1}, "expected");
}

TEST_F(BadSidecar, ForeignMagic) {
    auto b = good_;
    b[0] = 'X';
    expect_refused(b, "magic");
}

TEST_F(BadSidecar, AnotherFormatVersion) {
    auto b = good_;
    icbd::store_le16(b.data() + 8, 2);
    reseal(b);
    expect_refused(b, "format version 2");
}

TEST_F(BadSidecar, ChunkShiftOutOfRange) {
    auto b = good_;
    icbd::store_le16(b.data() + 10, 40);
    reseal(b);
    expect_refused(b, "chunk shift");
}

TEST_F(BadSidecar, BitmapLengthThatDoesNotFitTheFileSize) {
    auto b = good_;
    icbd::store_le64(b.data() + 16, 100 * MiB);
    reseal(b);
    expect_refused(b, "bitmap of");
}

TEST_F(BadSidecar, FlippedBit) {
    auto b = good_;
    b[icbd::kBootSetHeaderSize] ^= 0x10;
    expect_refused(b, "checksum");
}

TEST_F(BadSidecar, BitsPastTheLastChunk) {
    BootSet s = make(3 * 64 * KiB);  // 3 chunks: bits 3..7 of byte 0 must be 0
    auto b = s.encode();
    b[icbd::kBootSetHeaderSize] = 0x80;
    reseal(b);
    expect_refused(b, "past the file's last chunk");
}

TEST(BootSet, RefusesChunkSizesAndFilesItCannotDescribe) {
    EXPECT_FALSE(BootSet::create(MiB, 11));
    EXPECT_FALSE(BootSet::create(MiB, 25));
    // 64 MiB of bitmap at 4 KiB chunks covers 2 TiB: one byte more is refused.
    EXPECT_TRUE(BootSet::create(0, 12));
    EXPECT_FALSE(BootSet::create((2ull << 40) + 1, 12));
}

TEST(BootSet, MergingChunksOfAnotherSizeIsRefused) {
    BootSet a = make(MiB, 16);
    BootSet b = make(MiB, 12);
    auto s = a.merge(b);
    EXPECT_FALSE(s);
    EXPECT_EQ(s.code(), EINVAL);
}

}  // namespace
