// Error paths of LUNs with a write-back cache (over a raw file or an overlay),
// driven by faults injected below the LUN (FaultyEngine): a failing commit, a
// failing write-back, writers parked on a full cache failed by the write-back
// error, a full cache device, EIO on reads. Each test shows what the
// initiator sees and that every acknowledged write reads back after the LUN
// is closed and opened again (docs/write-back-cache.md, "A full cache device").
#include <cstdint>

#include "faulty_lun.hpp"

using namespace icbd;
using namespace icbd::test;

namespace {

constexpr uint64_t kLunBytes = 4 << 20;

struct Below {
    const char* name;
    bool overlay;
};

class CacheFaults : public FaultyLunTest, public ::testing::WithParamInterface<Below> {
protected:
    void SetUp() override {
        FaultyLunTest::SetUp();
        make_backing(kLunBytes);
    }
    // cache_idle=0: write-back only under pressure and at close, so that the
    // tests decide when the flusher runs.
    void open_cached(const std::string& cache_size) {
        std::string o = "cache={dir}/lun.cache;cache_idle=0;cache_size=" + cache_size;
        if (GetParam().overlay) o += ";overlay={dir}/client.ovl";
        open_lun(o);
    }
    // Where the flusher writes: the raw file, or the client's overlay.
    std::string below_file() const { return GetParam().overlay ? "client.ovl" : "disk.raw"; }
    std::vector<uint8_t> model_slice(uint64_t off, uint64_t len) const {
        return {expected_.begin() + static_cast<ptrdiff_t>(off), expected_.begin() + static_cast<ptrdiff_t>(off + len)};
    }
    // One failed fdatasync below, then write-back works again: the very same
    // blocks are written back once more, and must end up in the device below
    // for good (on an overlay: with their map bits on disk).
    void one_failed_fdatasync_below_then_write_back() {
        open_cached("1M");
        fault(IoOp::fdatasync, below_file());
        // 128 blocks: just above the low watermark, so the flusher's first
        // round takes every one of them.
        EXPECT_EQ(write_until_failure(0, 512 << 10, 140).status, scsi::status_good);
        settle_until([&] { return plan_->hits() >= 1; });
        ASSERT_EQ(plan_->hits(), 1u) << "the flusher never synced below: the test proved nothing";
        expect_acknowledged_data_after_reopen();
    }
    // Every `op` of the flusher below fails while the host fills the cache
    // to 70 %: each write is acknowledged all the same, and the flusher did
    // try to write back.
    void fill_while_write_back_fails(IoOp op, uint32_t seed) {
        open_cached("1M");
        fault(op, below_file(), 1, EIO, UINT64_MAX);
        EXPECT_EQ(write_until_failure(0, 704 << 10, seed).status, scsi::status_good);
        settle_until([&] { return plan_->hits() > 0; });
        EXPECT_GT(plan_->hits(), 0u) << "the flusher never reached the device below: the test proved nothing";
    }
    // 64 KiB writes from `from` on until one fails or `until`; returns the
    // failed one's result (GOOD when none failed).
    ScsiResult write_until_failure(uint64_t from, uint64_t until, uint32_t seed) {
        for (uint64_t o = from; o < until; o += 64 << 10) {
            ScsiResult r = write(o, pattern(64 << 10, seed++));
            if (r.status != scsi::status_good) return r;
        }
        return {};
    }
};

TEST_P(CacheFaults, ASyncWhoseCacheCommitFailsIsAMediumErrorAndTheCacheRefusesWrites) {
    open_cached("4M");
    const auto a = pattern(64 << 10, 1);
    ASSERT_EQ(write(0, a).status, scsi::status_good);
    ASSERT_EQ(sync().status, scsi::status_good);  // a is committed
    const auto before_b = model_slice(1 << 20, 64 << 10);
    const auto b = pattern(64 << 10, 2);
    ASSERT_EQ(write(1 << 20, b).status, scsi::status_good);

    fault(IoOp::fdatasync, "lun.cache");
    EXPECT_TRUE(medium_error_write(sync()));
    EXPECT_EQ(plan_->hits(), 1u);
    EXPECT_TRUE(medium_error_write(write(2 << 20, pattern(4096, 3)))) << "a failed cache takes no more writes";
    EXPECT_EQ(read_good(0, 64 << 10), a);
    EXPECT_EQ(read_good(1 << 20, 64 << 10), b);
    // The initiator was told the SYNC failed: b was never made durable, and a
    // failed cache writes back only what it had committed (documented).
    may_be_lost(1 << 20, before_b);
    expect_acknowledged_data_after_reopen();
}

TEST_P(CacheFaults, AFuaWriteWhoseCacheCommitFailsIsAMediumError) {
    open_cached("4M");
    ASSERT_EQ(write(0, pattern(16 << 10, 4), true).status, scsi::status_good);
    fault(IoOp::fdatasync, "lun.cache");
    EXPECT_TRUE(medium_error_write(write(1 << 20, pattern(16 << 10, 5), true)));
    EXPECT_EQ(plan_->hits(), 1u);
    EXPECT_TRUE(medium_error_write(write(2 << 20, pattern(4096, 6))));
    expect_acknowledged_data_after_reopen();
}

// The second step of a commit, the superblock write (RWF_DSYNC, slot A or B
// in the first 8 KiB), fails like its fdatasync would.
TEST_P(CacheFaults, ASyncWhoseSuperblockWriteFailsIsAMediumErrorAndTheCacheRefusesWrites) {
    open_cached("4M");
    const auto before = model_slice(1 << 20, 64 << 10);
    ASSERT_EQ(write(1 << 20, pattern(64 << 10, 7)).status, scsi::status_good);
    plan_->add({IoOp::write, "lun.cache", 0, 8192, 1, 1, FaultKind::error, EIO});
    EXPECT_TRUE(medium_error_write(sync()));
    EXPECT_EQ(plan_->hits(), 1u);
    EXPECT_TRUE(medium_error_write(write(2 << 20, pattern(4096, 8))));
    may_be_lost(1 << 20, before);  // never committed, as the failed SYNC said
    expect_acknowledged_data_after_reopen();
}

// A write-back round ends by making the FREE entries of the written-back
// slots durable; when that fdatasync fails, the cache is failed (its state on
// disk is unknown): it refuses writes, the next SYNCHRONIZE CACHE tells the
// initiator, and what was committed reads back after re-opening. Writes
// acknowledged but not committed yet may be gone, as after a failed commit
// (docs/write-back-cache.md, "A full cache device").
TEST_P(CacheFaults, AFailedFreeEntrySyncFailsTheCacheAndKeepsWhatWasCommitted) {
    open_cached("1M");  // 252 blocks: write-back starts above 126
    EXPECT_EQ(write_until_failure(0, 448 << 10, 110).status, scsi::status_good);
    ASSERT_EQ(sync().status, scsi::status_good);  // 112 blocks committed
    // The flusher's first round: the commit's fdatasync, then the one after
    // the FREE entries.
    fault(IoOp::fdatasync, "lun.cache", 2);
    const auto before = model_slice(448 << 10, 256 << 10);
    write_until_failure(448 << 10, 704 << 10, 120);
    may_be_lost(448 << 10, before);
    settle_until([&] { return plan_->hits() >= 1; });
    ASSERT_EQ(plan_->hits(), 1u) << "no write-back round reached its FREE entries";
    EXPECT_TRUE(medium_error_write(sync())) << "the initiator must learn that its writes are not durable";
    EXPECT_TRUE(medium_error_write(write(1 << 20, pattern(4096, 130)))) << "a failed cache takes no more writes";
    expect_acknowledged_data_after_reopen();
}

// The flusher's writes below fail while the host keeps writing (the cache
// is above its low watermark): the blocks stay dirty in the cache, every
// command succeeds, and once the device below works again closing writes all
// of it back.
TEST_P(CacheFaults, AFailingWriteBackKeepsTheBlocksAndClosingWritesThemBack) {
    fill_while_write_back_fails(IoOp::write, 10);
    EXPECT_EQ(sync().status, scsi::status_good);
    EXPECT_EQ(read_good(0, 704 << 10), model_slice(0, 704 << 10));
    plan_->clear();
    lun_->close();
    if (!GetParam().overlay) {
        EXPECT_EQ(file_bytes(backing_), expected_) << "closing wrote everything back";
    }
    expect_acknowledged_data_after_reopen();
}

TEST_P(CacheFaults, AFailingFdatasyncBelowKeepsTheBlocksInTheCache) {
    fill_while_write_back_fails(IoOp::fdatasync, 20);
    plan_->clear();
    expect_acknowledged_data_after_reopen();
}

// The device below stays broken through the close: what the cache could not
// write back stays in it, committed, and comes back when the LUN is opened again.
TEST_P(CacheFaults, BlocksThatCannotBeWrittenBackAtCloseComeBackFromTheCache) {
    open_cached("1M");
    ASSERT_EQ(write(512 << 10, pattern(128 << 10, 30)).status, scsi::status_good);
    fault(IoOp::write, below_file(), 1, EIO, UINT64_MAX);
    expect_acknowledged_data_after_reopen();  // closes with the fault in place
    EXPECT_GT(plan_->hits(), 0u);
}

// A full cache parks writers until the flusher makes room; when writing back
// fails, nothing will make room, and the parked writer fails with the cause.
TEST_P(CacheFaults, WritersParkedOnAFullCacheFailWithMediumErrorWhenWriteBackGetsEio) {
    open_cached("1M");
    fault(IoOp::write, below_file(), 1, EIO, UINT64_MAX);
    EXPECT_TRUE(medium_error_write(write_until_failure(0, kLunBytes, 40)));
    EXPECT_GT(plan_->hits(), 0u);
    plan_->clear();
    expect_acknowledged_data_after_reopen();
}

TEST_P(CacheFaults, WritersParkedOnAFullCacheFailWithSpaceAllocationFailedWhenTheDeviceBelowIsFull) {
    open_cached("1M");
    fault(IoOp::write, below_file(), 1, ENOSPC, UINT64_MAX);
    EXPECT_TRUE(space_allocation_failed(write_until_failure(0, kLunBytes, 60)));
    EXPECT_GT(plan_->hits(), 0u);
    plan_->clear();
    expect_acknowledged_data_after_reopen();
}

// ENOSPC on the cache file itself (a sparse cache on a full filesystem): the
// write fails, its slots are freed, and the cache goes on.
TEST_P(CacheFaults, AFullCacheDeviceFailsTheWriteWithSpaceAllocationFailedAndTheCacheGoesOn) {
    open_cached("4M");
    expect_full_device_is_space_allocation_failed("lun.cache", 1 << 20, 70);
    ASSERT_EQ(sync().status, scsi::status_good);
    expect_acknowledged_data_after_reopen();
}

TEST_P(CacheFaults, ACacheReadEioIsAMediumError) {
    open_cached("4M");
    expect_read_eio_is_a_medium_error(1 << 20, 32 << 10, "lun.cache", 80);
    expect_acknowledged_data_after_reopen();
}

TEST_P(CacheFaults, AReadEioBelowTheCacheIsAMediumError) {
    open_cached("4M");
    fault(IoOp::read, "disk.raw");  // never written: read from the raw or golden file
    EXPECT_TRUE(medium_error_read(read(3 << 20, 16 << 10)));
    EXPECT_EQ(plan_->hits(), 1u);
    expect_acknowledged_data_after_reopen();
}

// A 512-byte write fills the rest of its 4 KiB cache block from below first.
TEST_P(CacheFaults, APartialBlockWriteWhoseFillReadFailsFailsTheWrite) {
    open_cached("4M");
    fault(IoOp::read, "disk.raw");
    EXPECT_TRUE(medium_error_read(write(3 << 20, pattern(512, 90))));
    EXPECT_EQ(plan_->hits(), 1u);
    ASSERT_EQ(write(3 << 20, pattern(512, 91)).status, scsi::status_good);
    expect_acknowledged_data_after_reopen();
}

TEST_P(CacheFaults, ShortTransfersOnTheCacheFileAreContinued) {
    open_cached("4M");
    const auto a = pattern(128 << 10, 100);
    short_transfer(IoOp::write, "lun.cache");
    ASSERT_EQ(write(0, a, true).status, scsi::status_good);
    short_transfer(IoOp::read, "lun.cache");
    EXPECT_EQ(read_good(0, 128 << 10), a);
    EXPECT_EQ(plan_->hits(), 2u);
    expect_acknowledged_data_after_reopen();
}

INSTANTIATE_TEST_SUITE_P(Below, CacheFaults, ::testing::Values(Below{"raw", false}, Below{"overlay", true}),
                         [](const ::testing::TestParamInfo<Below>& i) { return std::string(i.param.name); });

class RawCacheFaults : public CacheFaults {};

TEST_P(RawCacheFaults, OneFailedFdatasyncBelowLosesNothingOnceWriteBackWorksAgain) {
    one_failed_fdatasync_below_then_write_back();
}

INSTANTIATE_TEST_SUITE_P(Below, RawCacheFaults, ::testing::Values(Below{"raw", false}),
                         [](const ::testing::TestParamInfo<Below>& i) { return std::string(i.param.name); });

// Regression: when the flusher's fdatasync of the overlay failed, the map
// pages OverlayLayer::sync had taken were dropped; the blocks were written back
// again once the device worked, but their bits were already set in memory, so
// no map page was dirtied again: the cache freed the slots and, after the LUN
// was closed and opened again, every one of those blocks read golden data.
class OverlayCacheFaults : public CacheFaults {};

TEST_P(OverlayCacheFaults, OneFailedFdatasyncBelowLosesNothingOnceWriteBackWorksAgain) {
    one_failed_fdatasync_below_then_write_back();
}

INSTANTIATE_TEST_SUITE_P(Below, OverlayCacheFaults, ::testing::Values(Below{"overlay", true}),
                         [](const ::testing::TestParamInfo<Below>& i) { return std::string(i.param.name); });

}  // namespace
