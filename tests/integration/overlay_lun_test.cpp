// Client overlays inside a real tgtd, over golden files in read-only BTRFS
// snapshots (images/<image>/<version>): each client sees its own writes over
// the shared golden data; the golden file is opened once for all LUNs; an
// overlay refuses a golden file of another version; writes survive a restart;
// a reset overlay shows the golden image again.
#include <dirent.h>

#include <fstream>
#include <memory>
#include <random>

#include "integration_test.hpp"
#include "iscsi_client.hpp"
#include "loop_fs.hpp"
#include "run_command.hpp"
#include "tgtd_instance.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kImage = 16ull << 20;
constexpr uint32_t kBlock = 512;

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
    std::vector<uint8_t> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
}

// How many of tgtd's open descriptors point at `file`.
int open_count(pid_t pid, const fs::path& file) {
    int n = 0;
    for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
        std::error_code ec;
        if (fs::read_symlink(e.path(), ec) == file) ++n;
    }
    return n;
}

class OverlayLun : public ::testing::Test {
protected:
    void SetUp() override {
        ICBD_REQUIRE(TgtdInstance::unavailable());
        ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
        btrfs_ = std::make_unique<LoopFs>(LoopFs::Type::btrfs, 512ull << 20);
        // Version 1, then version 2 with its first MiB changed: both read-only snapshots.
        btrfs_->create_subvolume("work");
        golden1_ = random_bytes(kImage, 1);
        write_file(*btrfs_ / "work/disk.raw", golden1_);
        fs::create_directories(*btrfs_ / "images/win11");
        btrfs_->snapshot_readonly("work", "images/win11/1");
        golden2_ = golden1_;
        std::fill_n(golden2_.begin(), 1 << 20, 0x77);
        write_file(*btrfs_ / "work/disk.raw", golden2_);
        btrfs_->snapshot_readonly("work", "images/win11/2");
        fs::create_directories(*btrfs_ / "overlays");
        tgtd_ = std::make_unique<TgtdInstance>();
        tgtd_->add_target(1, "iqn.2026-11.org.icbd.test:overlay");
    }
    void TearDown() override {
        if (HasFailure() && tgtd_) std::cerr << "---- tgtd log (tail) ----\n" << tgtd_->log_tail(40) << "\n";
        tgtd_.reset();
        btrfs_.reset();
    }
    static void write_file(const fs::path& p, const std::vector<uint8_t>& d) {
        std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(d.data()), d.size());
    }
    fs::path golden(int version) const { return *btrfs_ / ("images/win11/" + std::to_string(version) + "/disk.raw"); }
    fs::path overlay(const std::string& client) const { return *btrfs_ / ("overlays/" + client + ".ovl"); }
    LunSpec client_lun(int lun, int version, const std::string& client) const {
        return {1, lun, golden(version), "overlay=" + overlay(client).string(), "thin_provisioning=1"};
    }
    std::vector<uint8_t> read_all(IscsiClient& c) {
        std::vector<uint8_t> out;
        for (uint64_t lba = 0; lba < kImage / kBlock; lba += 4096) {
            ScsiResult r = c.read16(lba, 4096);
            EXPECT_TRUE(r.good()) << r;
            out.insert(out.end(), r.data.begin(), r.data.end());
        }
        return out;
    }

    std::unique_ptr<LoopFs> btrfs_;
    std::unique_ptr<TgtdInstance> tgtd_;
    std::vector<uint8_t> golden1_, golden2_;
};

TEST_F(OverlayLun, EachClientSeesItsOwnWritesOverOneSharedGoldenFile) {
    tgtd_->add_lun(client_lun(1, 1, "c1"));
    tgtd_->add_lun(client_lun(2, 1, "c2"));
    IscsiClient c1(tgtd_->url(1, 1)), c2(tgtd_->url(1, 2));
    EXPECT_TRUE(same_bytes(read_all(c1), golden1_));

    auto data = random_bytes(8 * kBlock, 9);
    ASSERT_TRUE(c1.write16(100, data).good());
    ASSERT_TRUE(c1.write16(3, std::vector<uint8_t>(kBlock, 0xee)).good());  // partial 4 KiB block: copy-up
    ASSERT_TRUE(c1.unmap({{4096, 64}}).good());
    auto want1 = golden1_;
    std::copy(data.begin(), data.end(), want1.begin() + 100 * kBlock);
    std::fill_n(want1.begin() + 3 * kBlock, kBlock, 0xee);
    std::fill_n(want1.begin() + 4096 * kBlock, 64 * kBlock, 0);
    EXPECT_TRUE(same_bytes(read_all(c1), want1));
    EXPECT_TRUE(same_bytes(read_all(c2), golden1_)) << "another client must not see c1's writes";
    EXPECT_TRUE(same_bytes(read_backing(golden(1), 0, kImage), golden1_)) << "the golden file changed";

    // One open file (one inode, one page cache) serves both LUNs.
    EXPECT_EQ(open_count(tgtd_->pid(), golden(1)), 1);

    // Durable across a restart of tgtd.
    ASSERT_TRUE(c1.sync_cache16().good());
}

TEST_F(OverlayLun, WritesSurviveARestartAndResetForgetsThem) {
    tgtd_->add_lun(client_lun(1, 1, "c1"));
    auto data = random_bytes(64 * kBlock, 5);
    {
        IscsiClient c1(tgtd_->url(1, 1));
        ASSERT_TRUE(c1.write16(2048, data).good());
        ASSERT_TRUE(c1.sync_cache16().good());
    }
    tgtd_->stop();
    tgtd_->restart();
    auto want = golden1_;
    std::copy(data.begin(), data.end(), want.begin() + 2048 * kBlock);
    {
        IscsiClient c1(tgtd_->url(1, 1));
        EXPECT_TRUE(same_bytes(read_all(c1), want));
    }
    // Logoff of a non-persistent desktop: LUN out, reset, LUN in.
    ASSERT_TRUE(tgtd_->delete_lun(1, 1).ok());
    const auto tool = fs::path(std::getenv("ICBD_BUILD")) / "blockd/icbd-overlay";
    CommandResult r = run_command({tool.string(), "reset", overlay("c1").string()});
    ASSERT_TRUE(r.ok()) << r.describe();
    r = run_command({tool.string(), "info", overlay("c1").string(), "--json"});
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_NE(r.output.find("\"blocks_written\":0"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\"image\":\"win11\",\"version\":1"), std::string::npos) << r.output;
    tgtd_->add_lun(client_lun(1, 1, "c1"));
    IscsiClient c1(tgtd_->url(1, 1));
    EXPECT_TRUE(same_bytes(read_all(c1), golden1_));
}

TEST_F(OverlayLun, AnOverlayRefusesAnotherVersionAndIsLeftUntouched) {
    tgtd_->add_lun(client_lun(1, 1, "c1"));
    {
        IscsiClient c1(tgtd_->url(1, 1));
        ASSERT_TRUE(c1.write16(0, std::vector<uint8_t>(4096, 1)).good());
        ASSERT_TRUE(c1.sync_cache16().good());
    }
    ASSERT_TRUE(tgtd_->delete_lun(1, 1).ok());
    auto before = read_backing(overlay("c1"), 0, 2 << 20);
    const size_t log_at = tgtd_->log().size();
    CommandResult r = tgtd_->try_add_lun(client_lun(2, 2, "c1"));
    EXPECT_FALSE(r.ok()) << "attaching version 1's overlay to version 2 must fail";
    const std::string log = tgtd_->log_since(log_at);
    EXPECT_NE(log.find("belongs to image 'win11' version 1"), std::string::npos) << log;
    EXPECT_NE(log.find("not to image 'win11' version 2"), std::string::npos) << log;
    EXPECT_TRUE(same_bytes(read_backing(overlay("c1"), 0, 2 << 20), before));
    // tgtd still serves: the right version attaches.
    tgtd_->add_lun(client_lun(1, 1, "c1"));
    IscsiClient c1(tgtd_->url(1, 1));
    EXPECT_TRUE(c1.read16(0, 8).good());
}

TEST_F(OverlayLun, BadOverlayPathIsAClearError) {
    const size_t log_at = tgtd_->log().size();
    CommandResult r = tgtd_->try_add_lun({1, 1, golden(1), "overlay=relative.ovl"});
    EXPECT_FALSE(r.ok());
    EXPECT_NE(tgtd_->log_since(log_at).find("option 'overlay': bad value 'relative.ovl' (expected an absolute path)"),
              std::string::npos)
        << tgtd_->log_since(log_at);
    r = tgtd_->try_add_lun({1, 1, golden(1), "overlay=/nonexistent-dir/c.ovl"});
    EXPECT_FALSE(r.ok());
    EXPECT_NE(tgtd_->log_since(log_at).find("/nonexistent-dir/c.ovl"), std::string::npos);
}

}  // namespace
}  // namespace icbd::test
