// Write-back cache LUNs inside a real tgtd: the LUN reports a volatile write
// cache (WCE=1); removing a LUN or stopping tgtd writes every cached block
// down, with progress in the log; a corrupt or truncated cache file is refused
// with a clear error while tgtd keeps serving; a full cache device turns writes
// into a clear error and loses nothing acknowledged before; a cache device
// that dies fails the commands that need it, and what it had committed comes
// back when it is there again.
#include <sys/stat.h>

#include <fstream>
#include <memory>
#include <random>
#include <thread>

#include "integration_test.hpp"
#include "iscsi_client.hpp"
#include "loop_fs.hpp"
#include "temp_dir.hpp"
#include "tgtd_instance.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;
constexpr uint32_t kBlock = 512;
constexpr uint64_t kLun = 64ull << 20;

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
    std::vector<uint8_t> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
}

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

class WriteBackCache : public ::testing::Test {
protected:
    void SetUp() override {
        ICBD_REQUIRE(TgtdInstance::unavailable());
        dir_ = std::make_unique<TempDir>("/var/tmp", "icbd-wbc-");
        disk_ = *dir_ / "disk.img";
        make_sparse_file(disk_, kLun);
        tgtd_ = std::make_unique<TgtdInstance>();
        tgtd_->add_target(1, "iqn.2026-11.org.icbd.test:cache");
    }
    void TearDown() override {
        if (HasFailure() && tgtd_) std::cerr << "---- tgtd log (tail) ----\n" << tgtd_->log_tail(40) << "\n";
        tgtd_.reset();
        small_.reset();
        dir_.reset();
    }
    LunSpec cached_lun(const fs::path& cache, const std::string& size = "256M", const std::string& more = "") const {
        return {1, 1, disk_, "cache=" + cache.string() + ";cache_size=" + size + more, "thin_provisioning=1"};
    }

    std::unique_ptr<TempDir> dir_;
    std::unique_ptr<LoopFs> small_;
    fs::path disk_;
    std::unique_ptr<TgtdInstance> tgtd_;
};

TEST_F(WriteBackCache, ReportsAVolatileWriteCache) {
    tgtd_->add_lun(cached_lun(*dir_ / "lun.cache"));
    IscsiClient c(tgtd_->url(1, 1));
    // MODE SENSE(10), caching mode page (08h): WCE is bit 2 of byte 2 of the page.
    const uint8_t cdb[10] = {0x5a, 0x08, 0x08, 0, 0, 0, 0, 0x01, 0x00, 0};
    ScsiResult r = c.raw(cdb, {}, 256, "MODE SENSE(10) caching page");
    ASSERT_TRUE(r.good()) << r;
    ASSERT_GE(r.data.size(), 8u);
    const size_t page = 8 + (size_t(r.data[6]) << 8 | r.data[7]);
    ASSERT_GT(r.data.size(), page + 2);
    EXPECT_EQ(r.data[page] & 0x3f, 0x08);
    EXPECT_TRUE(r.data[page + 2] & 0x04) << "WCE must be 1: initiators then send SYNCHRONIZE CACHE and FUA";
}

TEST_F(WriteBackCache, RemovingTheLunWritesEverythingBackWithProgress) {
    const fs::path cache = *dir_ / "lun.cache";
    tgtd_->add_lun(cached_lun(cache, "256M", ";cache_idle=0"));  // nothing written back before the removal
    auto data = random_bytes(32 << 20, 3);
    {
        IscsiClient c(tgtd_->url(1, 1));
        for (size_t off = 0; off < data.size(); off += 1 << 20)
            ASSERT_TRUE(c.write16((8 << 20) / kBlock + off / kBlock, {data.data() + off, 1 << 20}).good());
        ASSERT_TRUE(c.sync_cache16().good());
    }
    // 32 MiB in a 256 MiB cache stays below the low watermark: still only in the cache.
    EXPECT_FALSE(same_bytes(read_backing(disk_, 8 << 20, 1 << 20), {data.data(), 1 << 20}));
    const size_t log_at = tgtd_->log().size();
    ASSERT_TRUE(tgtd_->delete_lun(1, 1).ok());
    const std::string log = tgtd_->log_since(log_at);
    EXPECT_TRUE(contains(log, "writing back 8192 blocks (32 MiB)")) << log;
    EXPECT_TRUE(contains(log, "written back in")) << log;
    EXPECT_TRUE(same_bytes(read_backing(disk_, 8 << 20, data.size()), data));
}

// A desktop that shut down leaves its LUN quiet: after cache_idle the cache
// is committed and written back by itself (no SYNCHRONIZE CACHE needed), so
// the removal at logoff, which blocks tgtd while it writes back, has nothing
// left to do.
TEST_F(WriteBackCache, AQuietLunIsWrittenBackBeforeItIsRemoved) {
    tgtd_->add_lun(cached_lun(*dir_ / "lun.cache", "256M", ";cache_idle=300"));
    auto data = random_bytes(8 << 20, 5);
    {
        IscsiClient c(tgtd_->url(1, 1));
        for (size_t off = 0; off < data.size(); off += 1 << 20)
            ASSERT_TRUE(c.write16((4 << 20) / kBlock + off / kBlock, {data.data() + off, 1 << 20}).good());
        EXPECT_FALSE(same_bytes(read_backing(disk_, 4 << 20, 1 << 20), {data.data(), 1 << 20}))
            << "8 MiB in a 256 MiB cache is below the watermark: written back only when idle";
        // The session stays logged in, just quiet.
        bool below = false;
        for (int i = 0; i < 100 && !below; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            below = same_bytes(read_backing(disk_, 4 << 20, data.size()), data);
        }
        EXPECT_TRUE(below) << "5 s after the last command the data is still only in the cache";
        // The LUN serves the same data afterwards.
        auto r = c.read16((4 << 20) / kBlock, 2048);
        ASSERT_TRUE(r.good()) << r;
        EXPECT_TRUE(same_bytes(r.data, {data.data(), 1 << 20}));
    }
    const size_t log_at = tgtd_->log().size();
    ASSERT_TRUE(tgtd_->delete_lun(1, 1).ok());
    const std::string log = tgtd_->log_since(log_at);
    EXPECT_FALSE(contains(log, "writing back")) << "the removal still had to write back:\n" << log;
}

TEST_F(WriteBackCache, StoppingTgtdWritesEverythingBack) {
    tgtd_->add_lun(cached_lun(*dir_ / "lun.cache"));
    auto data = random_bytes(4 << 20, 4);
    {
        IscsiClient c(tgtd_->url(1, 1));
        ASSERT_TRUE(c.write16(0, data).good());
    }
    tgtd_->stop();
    EXPECT_TRUE(same_bytes(read_backing(disk_, 0, data.size()), data));
}

TEST_F(WriteBackCache, ACorruptOrTruncatedCacheIsRefusedAndTgtdKeepsServing) {
    const fs::path cache = *dir_ / "lun.cache";
    tgtd_->add_lun(cached_lun(cache, "16M"));
    ASSERT_TRUE(tgtd_->delete_lun(1, 1).ok());
    {  // both superblock copies
        std::fstream f(cache, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(40);
        f.write("garbage!", 8);
        f.seekp(4096 + 40);
        f.write("garbage!", 8);
    }
    size_t log_at = tgtd_->log().size();
    EXPECT_FALSE(tgtd_->try_add_lun(cached_lun(cache, "16M")).ok());
    EXPECT_TRUE(contains(tgtd_->log_since(log_at), "superblock")) << tgtd_->log_since(log_at);
    EXPECT_TRUE(contains(tgtd_->log_since(log_at), cache.string())) << tgtd_->log_since(log_at);

    const fs::path cache2 = *dir_ / "lun2.cache";
    tgtd_->add_lun(cached_lun(cache2, "16M"));
    ASSERT_TRUE(tgtd_->delete_lun(1, 1).ok());
    fs::resize_file(cache2, 8192 + 4096);  // metadata area cut short
    log_at = tgtd_->log().size();
    EXPECT_FALSE(tgtd_->try_add_lun(cached_lun(cache2, "16M")).ok());
    EXPECT_TRUE(contains(tgtd_->log_since(log_at), "trunc")) << tgtd_->log_since(log_at);

    // tgtd still serves: a good cache attaches.
    tgtd_->add_lun(cached_lun(*dir_ / "lun3.cache", "16M"));
    IscsiClient c(tgtd_->url(1, 1));
    EXPECT_TRUE(c.read16(0, 8).good());
}

TEST_F(WriteBackCache, AFullCacheDeviceIsAClearErrorAndLosesNothing) {
    ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
    small_ = std::make_unique<LoopFs>(LoopFs::Type::ext4, 24ull << 20);
    const fs::path cache = *small_ / "lun.cache";
    tgtd_->add_lun(cached_lun(cache, "64M"));  // a sparse 64 MiB cache on a 24 MiB filesystem
    IscsiClient c(tgtd_->url(1, 1));
    auto first = random_bytes(1 << 20, 5);
    ASSERT_TRUE(c.write16(0, first).good());
    ASSERT_TRUE(c.sync_cache16().good());
    // Keep writing until the cache's filesystem is full.
    ScsiResult last;
    uint64_t lba = 4096;
    for (int i = 0; i < 64 && (last = c.write16(lba, random_bytes(1 << 20, 6 + i))).good(); ++i) lba += 2048;
    ASSERT_FALSE(last.good()) << "the cache device never filled up";
    EXPECT_TRUE(last.check_condition(scsi::key::data_protect, scsi::asc::space_allocation_failed) ||
                last.check_condition(scsi::key::medium_error, scsi::asc::write_error) ||
                last.check_condition(scsi::key::hardware_error, scsi::asc::internal_target_failure))
        << "want a clear SCSI error (SPACE ALLOCATION FAILED / write error), got " << last;
    // What was acknowledged durable before is still there, through the LUN and after write-back.
    ScsiResult r = c.read16(0, 2048);
    ASSERT_TRUE(r.good()) << r;
    EXPECT_TRUE(same_bytes(r.data, first));
    ASSERT_TRUE(tgtd_->delete_lun(1, 1).ok());
    EXPECT_TRUE(same_bytes(read_backing(disk_, 0, first.size()), first));
}

TEST_F(WriteBackCache, ADeadCacheDeviceFailsClearlyAndItsCommittedDataComesBack) {
    ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
    small_ = std::make_unique<LoopFs>(LoopFs::Type::ext4, 128ull << 20);
    const fs::path cache = *small_ / "lun.cache";
    tgtd_->add_lun(cached_lun(cache, "64M"));
    auto first = random_bytes(1 << 20, 7);
    {
        IscsiClient c(tgtd_->url(1, 1));
        ASSERT_TRUE(c.write16(0, first).good());
        ASSERT_TRUE(c.sync_cache16().good());  // committed in the cache, not yet below
        small_->power_cut();                   // the cache device dies: every I/O on it fails
        ScsiResult w = c.write16(4096, random_bytes(1 << 20, 8));
        ScsiResult s = c.sync_cache16();
        EXPECT_FALSE(w.good() && s.good()) << "a write and SYNCHRONIZE CACHE cannot both succeed on a dead cache";
        EXPECT_FALSE(s.good()) << "SYNCHRONIZE CACHE must not report durability it cannot give";
    }
    const size_t log_at = tgtd_->log().size();
    ASSERT_TRUE(tgtd_->delete_lun(1, 1).ok());  // cannot write back: says so
    EXPECT_TRUE(contains(tgtd_->log_since(log_at), "could not be written back")) << tgtd_->log_since(log_at);
    // The device comes back (remount): recovery finds the committed data.
    small_->remount();
    tgtd_->add_lun(cached_lun(cache, "64M"));
    {
        IscsiClient c(tgtd_->url(1, 1));
        ScsiResult r = c.read16(0, 2048);
        ASSERT_TRUE(r.good()) << r;
        EXPECT_TRUE(same_bytes(r.data, first));
    }
    ASSERT_TRUE(tgtd_->delete_lun(1, 1).ok());
    EXPECT_TRUE(same_bytes(read_backing(disk_, 0, first.size()), first));
}

}  // namespace
}  // namespace icbd::test
