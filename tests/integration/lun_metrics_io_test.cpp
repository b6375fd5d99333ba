// Per-LUN metrics through the real path: a private tgtd serving a bs_icbd LUN,
// I/O from libiscsi, and the LUN's metrics file read from outside tgtd moving
// by exactly what the initiator did (docs/metrics.md).
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "icbd/lun_metrics.hpp"
#include "integration_test.hpp"
#include "iscsi_client.hpp"
#include "temp_dir.hpp"
#include "tgtd_instance.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;
namespace m = icbd::metrics;

class LunMetricsIntegration : public ::testing::Test {
protected:
    void SetUp() override {
        ICBD_REQUIRE(TgtdInstance::unavailable());
        dir_ = std::make_unique<TempDir>("/var/tmp", "icbd-metrics-");
        metrics_dir_ = dir_->path() / "luns";
        // The environment variable, as a test or a private tgtd sets it.
        tgtd_ = std::make_unique<TgtdInstance>(TgtdOptions{{{m::dir_env, metrics_dir_.string()}}, false});
        tgtd_->add_target(1, "iqn.2026-12.org.icbd.test:metrics");
    }
    void TearDown() override {
        if (HasFailure() && tgtd_) std::cerr << "---- tgtd log (tail) ----\n" << tgtd_->log_tail(40) << "\n";
        tgtd_.reset();
        dir_.reset();
    }
    m::LunSnapshot read(const fs::path& backing) {
        auto s = m::read_lun_file(metrics_dir_ / m::file_name_for(backing.string()));
        EXPECT_TRUE(s) << s.status().message();
        return s ? *s : m::LunSnapshot{};
    }
    std::unique_ptr<TempDir> dir_;
    fs::path metrics_dir_;
    std::unique_ptr<TgtdInstance> tgtd_;
};

TEST_F(LunMetricsIntegration, CountersMoveByExactlyWhatTheInitiatorDid) {
    const fs::path file = dir_->path() / "disk.img";
    make_sparse_file(file, 16 << 20);
    tgtd_->add_lun({1, 1, file});
    IscsiClient c(tgtd_->url(1, 1));
    // Whatever the login sent (TEST UNIT READY, READ CAPACITY...) is counted
    // too: measure from here.
    const m::LunSnapshot before = read(file);
    EXPECT_EQ(before.tid, 1);
    EXPECT_EQ(before.lun, 1u);
    EXPECT_EQ(before.backing_path, file.string());
    EXPECT_TRUE(m::writer_alive(before)) << "the writer is tgtd";

    std::vector<uint8_t> data(8 * 512, 0x5a);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.write16(8 * i, data).good());
    for (int i = 0; i < 7; ++i) ASSERT_TRUE(c.read16(8 * i, 4).good());
    ASSERT_TRUE(c.sync_cache16().good());
    // A COMPARE AND WRITE that does not match: MISCOMPARE.
    std::vector<uint8_t> other(512, 0x11);
    ScsiResult miss = c.compare_and_write(0, other, other);
    ASSERT_EQ(miss.sense_key, scsi::key::miscompare) << miss;

    const m::LunSnapshot after = read(file);
    const auto& b = before.counters;
    const auto& a = after.counters;
    EXPECT_EQ(a.dir[m::dir_read].commands - b.dir[m::dir_read].commands, 7u);
    EXPECT_EQ(a.dir[m::dir_read].bytes - b.dir[m::dir_read].bytes, 7u * 4 * 512);
    EXPECT_EQ(a.dir[m::dir_write].commands - b.dir[m::dir_write].commands, 6u);  // 5 writes + the CAW
    EXPECT_EQ(a.dir[m::dir_write].bytes - b.dir[m::dir_write].bytes, 5u * 8 * 512);
    EXPECT_EQ(a.dir[m::dir_other].commands - b.dir[m::dir_other].commands, 1u);  // SYNCHRONIZE CACHE
    EXPECT_EQ(a.errors_by_sense_key[14] - b.errors_by_sense_key[14], 1u);  // MISCOMPARE
    EXPECT_EQ(a.queue_depth, 0u);
    uint64_t in_buckets = 0;
    for (uint64_t n : a.dir[m::dir_read].buckets) in_buckets += n;
    EXPECT_EQ(in_buckets, a.dir[m::dir_read].commands);

    // Deleting the LUN removes its file.
    const fs::path f = after.file;
    ASSERT_TRUE(tgtd_->delete_lun(1, 1).ok());
    EXPECT_FALSE(fs::exists(f));
}

TEST_F(LunMetricsIntegration, AnUnusableMetricsDirectoryLeavesTheLunWorking) {
    const fs::path file = dir_->path() / "disk.img";
    make_sparse_file(file, 4 << 20);
    { std::ofstream(dir_->path() / "plain").close(); }
    tgtd_->add_lun({1, 1, file, "metrics_dir=" + (dir_->path() / "plain" / "luns").string()});
    IscsiClient c(tgtd_->url(1, 1));
    std::vector<uint8_t> data(512, 3);
    EXPECT_TRUE(c.write16(0, data).good());
    EXPECT_TRUE(c.read16(0, 1).good());
    EXPECT_NE(tgtd_->log_tail(40).find("metrics off"), std::string::npos) << "one line says why";
}

}  // namespace
}  // namespace icbd::test
