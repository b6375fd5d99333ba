// Overlay LUNs without tgtd: the on-disk header, O(1) create and reset, the
// identity check, and the data semantics against a byte-for-byte reference
// model (random writes, unmaps, reads at random sizes and alignments).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "icbd/overlay.hpp"
#include "icbd/unique_fd.hpp"
#include "lun_driver.hpp"

using namespace icbd;
using namespace icbd::test;
namespace fs = std::filesystem;

namespace {

constexpr unsigned kShift = 9;
constexpr uint64_t kSector = 1u << kShift;

std::vector<uint8_t> read_file(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

class OverlayTest : public ::testing::Test {
protected:
    void SetUp() override {
        char name[] = "/tmp/icbd-overlay-XXXXXX";
        ASSERT_NE(mkdtemp(name), nullptr);
        dir_ = name;
        golden_ = dir_ / "golden.raw";
        overlay_ = dir_ / "client.ovl";
    }
    void TearDown() override {
        lun_.reset();
        fs::remove_all(dir_);
    }
    // A golden file of `size` bytes of pseudo-random content.
    void make_golden(uint64_t size, uint32_t seed = 1) {
        golden_data_.resize(size);
        std::mt19937 rng(seed);
        for (auto& b : golden_data_) b = static_cast<uint8_t>(rng());
        std::ofstream(golden_, std::ios::binary).write(reinterpret_cast<const char*>(golden_data_.data()), size);
    }
    Status attach(const std::string& extra = "") {
        lun_.reset();
        auto opts = parse_bsopts("overlay=" + overlay_.string() + extra);
        if (!opts) return opts.status();
        auto lun = Lun::create(*opts, rec_.host());
        if (!lun) return lun.status();
        lun_ = std::move(*lun);
        auto size = lun_->open(golden_, 0);
        if (!size) {
            lun_.reset();
            return size.status();
        }
        EXPECT_EQ(*size, golden_data_.size());
        return Status::ok();
    }
    Cmd make(uint8_t op, uint64_t lba, uint32_t blocks, uint8_t byte1 = 0) {
        return make_cmd(op, lba, blocks, golden_data_.size(), kShift, byte1);
    }
    ScsiResult run(Cmd& c) { return run_cmd(*lun_, rec_, c); }
    LunOps ops() { return {*lun_, rec_, golden_data_.size()}; }
    std::vector<uint8_t> read_lun(uint64_t lba, uint32_t blocks) { return ops().read(lba, blocks); }
    void write_lun(uint64_t lba, const std::vector<uint8_t>& d, bool fua = false) { ops().write(lba, d, fua); }
    void unmap_lun(uint64_t lba, uint32_t blocks) { ops().unmap(lba, blocks); }
    void sync_lun() { ops().sync(); }
    // Blocks marked in the on-disk allocation map.
    uint64_t blocks_on_disk() {
        auto n = count_overlay_blocks(overlay_);
        EXPECT_TRUE(n) << n.status().message();
        return n ? *n : 0;
    }

    fs::path dir_, golden_, overlay_;
    std::vector<uint8_t> golden_data_;
    Recorder rec_;
    std::unique_ptr<Lun> lun_;
};

TEST(OverlayHeader, RoundTripAndRejection) {
    GoldenIdentity g;
    g.size = (10ull << 30) + 512;
    g.version = 7;
    g.image = "win11";
    g.file = "disk.raw";
    g.mtime_ns = 123456789;
    g.subvol_uuid[0] = 0x5f;
    OverlayInfo info = plan_overlay(g);
    EXPECT_EQ(info.map_offset, 4096u);
    EXPECT_EQ(info.map_length % 4096, 0u);
    EXPECT_GE(info.map_length * 8, info.blocks());
    EXPECT_EQ(info.data_offset % (1u << 20), 0u);
    uint8_t h[overlay_header_size];
    encode_overlay_header(info, h);
    EXPECT_EQ(std::memcmp(h, "ICBDOVL1", 8), 0);
    auto back = decode_overlay_header(h, "x");
    ASSERT_TRUE(back) << back.status().message();
    EXPECT_TRUE(back->golden == g);
    EXPECT_EQ(back->overlay_uuid, info.overlay_uuid);

    uint8_t bad[overlay_header_size];
    std::memcpy(bad, h, sizeof h);
    bad[200] ^= 1;  // any bit: checksum
    EXPECT_NE(decode_overlay_header(bad, "x").status().message().find("checksum"), std::string::npos);
    std::memcpy(bad, h, sizeof h);
    bad[0] = 'X';
    EXPECT_NE(decode_overlay_header(bad, "x").status().message().find("magic"), std::string::npos);
}

TEST_F(OverlayTest, CreateIsConstantTimeAndSpace) {
    // A 64 GiB golden image (sparse): the overlay costs a header, nothing more.
    { std::ofstream(golden_).put('x'); }
    fs::resize_file(golden_, 64ull << 30);
    golden_data_.resize(0);
    UniqueFd g(::open(golden_.c_str(), O_RDONLY));
    auto id = golden_identity(g.get(), golden_);
    ASSERT_TRUE(id);
    auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(create_overlay(overlay_, *id));
    auto elapsed = std::chrono::steady_clock::now() - t0;
    struct stat st {};
    ASSERT_EQ(stat(overlay_.c_str(), &st), 0);
    EXPECT_LE(st.st_blocks * 512, 64 * 1024) << "the map and data area must stay holes";
    EXPECT_LT(elapsed, std::chrono::seconds(1));
    EXPECT_EQ(create_overlay(overlay_, *id).code(), EEXIST);
}

TEST_F(OverlayTest, ReadsGoldenUntilWrittenThenOverlay) {
    make_golden(1 << 20);
    ASSERT_TRUE(attach());
    EXPECT_EQ(read_lun(0, 2048), golden_data_);
    std::vector<uint8_t> data(8192, 0xab);
    write_lun(16, data);
    auto got = read_lun(0, 2048);
    std::vector<uint8_t> want = golden_data_;
    std::memcpy(want.data() + 16 * kSector, data.data(), data.size());
    EXPECT_EQ(got, want);
    // The golden file is never written.
    EXPECT_EQ(read_file(golden_), golden_data_);
}

TEST_F(OverlayTest, PartialWriteCopiesUpTheRestOfTheBlock) {
    make_golden(1 << 20);
    ASSERT_TRUE(attach());
    std::vector<uint8_t> one(kSector, 0x11);
    write_lun(9, one);  // second sector of block 1
    write_lun(3, std::vector<uint8_t>(kSector, 0x22));  // block 0 (regression: needs_copy_up, written with a lambda and std::min, came out false at -O3 and block 0 lost its golden bytes)
    auto b0 = read_lun(0, 8);
    EXPECT_EQ(std::memcmp(b0.data(), golden_data_.data(), 1536), 0);
    sync_lun();
    lun_.reset();
    // The whole 4 KiB block now lives in the overlay: golden bytes around the
    // written sector were copied up.
    EXPECT_EQ(blocks_on_disk(), 2u);
    auto ovl = read_file(overlay_);
    auto info = read_overlay_info(overlay_);
    ASSERT_TRUE(info);
    const uint8_t* block1 = ovl.data() + info->data_offset + 4096;
    EXPECT_EQ(std::memcmp(block1, golden_data_.data() + 4096, 512), 0);
    EXPECT_EQ(std::memcmp(block1 + 512, one.data(), 512), 0);
    EXPECT_EQ(std::memcmp(block1 + 1024, golden_data_.data() + 4096 + 1024, 3072), 0);
}

TEST_F(OverlayTest, UnmapReadsZerosNotGoldenAndFreesSpace) {
    make_golden(4 << 20);
    ASSERT_TRUE(attach());
    std::vector<uint8_t> data(1 << 20, 0x5a);
    write_lun(0, data);
    sync_lun();
    struct stat before {};
    ASSERT_EQ(stat(overlay_.c_str(), &before), 0);
    unmap_lun(0, 2048);       // the written MiB
    unmap_lun(4096 + 3, 17);  // unaligned, never written: zeros, not golden
    sync_lun();
    EXPECT_EQ(read_lun(0, 2048), std::vector<uint8_t>(1 << 20, 0));
    auto got = read_lun(4096, 32);
    std::vector<uint8_t> want(golden_data_.begin() + 4096 * 512, golden_data_.begin() + 4128 * 512);
    std::memset(want.data() + 3 * 512, 0, 17 * 512);
    EXPECT_EQ(got, want);
    struct stat after {};
    ASSERT_EQ(stat(overlay_.c_str(), &after), 0);
    EXPECT_LE(after.st_blocks * 512 + (1 << 20) - 64 * 1024, before.st_blocks * 512) << "unmapped space is freed";
    // And it stays so across a re-attach.
    ASSERT_TRUE(attach());
    EXPECT_EQ(read_lun(0, 2048), std::vector<uint8_t>(1 << 20, 0));
    EXPECT_EQ(read_lun(4096, 32), want);
}

TEST_F(OverlayTest, MapBitsReachDiskOnlyAfterTheirData) {
    make_golden(1 << 20);
    ASSERT_TRUE(attach());
    write_lun(0, std::vector<uint8_t>(4096, 1));
    EXPECT_EQ(blocks_on_disk(), 0u) << "a buffered write's bit must wait for SYNCHRONIZE CACHE";
    sync_lun();
    EXPECT_EQ(blocks_on_disk(), 1u);
    write_lun(8, std::vector<uint8_t>(8192, 2), /*fua=*/true);
    EXPECT_EQ(blocks_on_disk(), 3u) << "a FUA write's bits are durable when it completes";
}

TEST_F(OverlayTest, IdentityMismatchIsRefusedAndNothingChanges) {
    make_golden(1 << 20);
    ASSERT_TRUE(attach());
    write_lun(0, std::vector<uint8_t>(4096, 7));
    sync_lun();
    lun_.reset();
    auto before = read_file(overlay_);
    // Another golden file (another version of the image).
    fs::path other = dir_ / "other.raw";
    fs::copy_file(golden_, other);
    golden_ = other;
    Status s = attach();
    ASSERT_FALSE(s);
    EXPECT_NE(s.message().find("belongs to"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("other.raw"), std::string::npos) << s.message();
    EXPECT_EQ(read_file(overlay_), before);
}

TEST_F(OverlayTest, ResetForgetsTheClientsWrites) {
    make_golden(1 << 20);
    ASSERT_TRUE(attach());
    write_lun(0, std::vector<uint8_t>(1 << 16, 9));
    sync_lun();
    lun_.reset();
    auto before = read_overlay_info(overlay_);
    ASSERT_TRUE(before);
    ASSERT_TRUE(reset_overlay(overlay_));
    auto after = read_overlay_info(overlay_);
    ASSERT_TRUE(after);
    EXPECT_NE(before->overlay_uuid, after->overlay_uuid);
    EXPECT_TRUE(after->golden == before->golden);
    EXPECT_EQ(blocks_on_disk(), 0u);
    ASSERT_TRUE(attach());
    EXPECT_EQ(read_lun(0, 2048), golden_data_);
}

TEST_F(OverlayTest, CorruptHeaderIsRefused) {
    make_golden(1 << 20);
    ASSERT_TRUE(attach());
    lun_.reset();
    {
        UniqueFd fd(::open(overlay_.c_str(), O_RDWR));
        uint8_t x = 0xff;
        ASSERT_EQ(pwrite(fd.get(), &x, 1, 300), 1);
    }
    Status s = attach();
    ASSERT_FALSE(s);
    EXPECT_NE(s.message().find("checksum"), std::string::npos) << s.message();
}

// Random writes (plain and FUA), unmaps, syncs and reads at random sizes and
// alignments against a byte array; a re-attach at the end must show the same
// bytes (the map reached the disk). The image size is not a multiple of the
// 4 KiB overlay block, so the final short block is exercised too.
TEST_F(OverlayTest, MatchesReferenceModel) {
    const uint64_t size = (6 << 20) + 1536;
    make_golden(size, 42);
    std::vector<uint8_t> model = golden_data_;
    ASSERT_TRUE(attach());
    std::mt19937_64 rng(2026);
    const uint64_t sectors = size / kSector;
    auto pick = [&](uint64_t max_blocks, uint64_t* lba, uint32_t* n) {
        *n = static_cast<uint32_t>(1 + rng() % max_blocks);
        // Half the time near a 4 KiB boundary, sometimes at the very end.
        uint64_t l = rng() % sectors;
        if (rng() % 8 == 0) l = sectors - std::min<uint64_t>(sectors, *n + rng() % 3);
        *lba = std::min(l, sectors - 1);
        *n = static_cast<uint32_t>(std::min<uint64_t>(*n, sectors - *lba));
    };
    for (int i = 0; i < 3000; ++i) {
        uint64_t lba;
        uint32_t n;
        switch (rng() % 10) {
            case 0: case 1: case 2: case 3: {
                pick(rng() % 4 ? 16 : 300, &lba, &n);
                std::vector<uint8_t> d(n * kSector);
                for (auto& b : d) b = static_cast<uint8_t>(rng());
                write_lun(lba, d, rng() % 5 == 0);
                std::memcpy(model.data() + lba * kSector, d.data(), d.size());
                break;
            }
            case 4: {
                pick(64, &lba, &n);
                unmap_lun(lba, n);
                std::memset(model.data() + lba * kSector, 0, n * kSector);
                break;
            }
            case 5: sync_lun(); break;
            default: {
                pick(rng() % 4 ? 32 : 2000, &lba, &n);
                auto got = read_lun(lba, n);
                ASSERT_EQ(0, std::memcmp(got.data(), model.data() + lba * kSector, got.size()))
                    << "read lba " << lba << " blocks " << n << " at step " << i;
            }
        }
    }
    sync_lun();
    ASSERT_TRUE(attach());
    auto all = read_lun(0, static_cast<uint32_t>(sectors));
    EXPECT_TRUE(all == model) << "contents after re-attach differ from the model";
    EXPECT_EQ(read_file(golden_), golden_data_) << "the golden file must never change";
}

}  // namespace
