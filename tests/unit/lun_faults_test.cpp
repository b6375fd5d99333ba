// Error paths of raw and overlay LUNs, driven by faults injected below the LUN
// (FaultyEngine): what the initiator sees (status, sense key, ASC) for EIO,
// ENOSPC and short transfers on reads, writes, SYNCHRONIZE CACHE, copy-up and
// the overlay map, and that every acknowledged write reads back after the LUN
// is closed and opened again.
#include "faulty_lun.hpp"

using namespace icbd;
using namespace icbd::test;

namespace {

constexpr uint64_t kLunBytes = 4 << 20;

// ---- raw LUNs, in every I/O mode ----

class RawLunFaults : public FaultyLunTest, public ::testing::WithParamInterface<std::string> {
protected:
    void SetUp() override {
        FaultyLunTest::SetUp();
        make_backing(kLunBytes);
        open_lun(GetParam());
    }
};

TEST_P(RawLunFaults, AReadEioIsAMediumErrorAndTheNextReadSucceeds) {
    expect_read_eio_is_a_medium_error(1 << 20, 64 << 10, "disk.raw", 1);
    expect_acknowledged_data_after_reopen();
}

TEST_P(RawLunFaults, AWriteEioIsAMediumErrorWriteErrorAndLosesNothingAcknowledged) {
    ASSERT_EQ(write(0, pattern(32 << 10, 2)).status, scsi::status_good);
    fault(IoOp::write, "disk.raw");
    EXPECT_TRUE(medium_error_write(write(2 << 20, pattern(32 << 10, 3))));
    EXPECT_EQ(plan_->hits(), 1u);
    ASSERT_EQ(write(3 << 20, pattern(8 << 10, 4)).status, scsi::status_good);
    ASSERT_EQ(sync().status, scsi::status_good);
    expect_acknowledged_data_after_reopen();
}

TEST_P(RawLunFaults, AFullDeviceIsSpaceAllocationFailed) {
    expect_full_device_is_space_allocation_failed("disk.raw", 4096, 5);
    expect_acknowledged_data_after_reopen();
}

TEST_P(RawLunFaults, AFailedSynchronizeCacheIsAMediumErrorAndTheNextOneSucceeds) {
    ASSERT_EQ(write(512 << 10, pattern(16 << 10, 7)).status, scsi::status_good);
    fault(IoOp::fdatasync, "disk.raw");
    EXPECT_TRUE(medium_error_write(sync()));
    EXPECT_EQ(plan_->hits(), 1u);
    EXPECT_EQ(sync().status, scsi::status_good);
    expect_acknowledged_data_after_reopen();
}

TEST_P(RawLunFaults, AFuaWriteThatFailsIsAMediumError) {
    fault(IoOp::write, "disk.raw");
    EXPECT_TRUE(medium_error_write(write(1 << 20, pattern(4096, 8), true)));
    EXPECT_EQ(plan_->hits(), 1u);
    expect_acknowledged_data_after_reopen();
}

TEST_P(RawLunFaults, ShortTransfersAreContinuedUntilTheCommandIsDone) {
    const auto a = pattern(256 << 10, 9);
    short_transfer(IoOp::write, "disk.raw");
    ASSERT_EQ(write(128 << 10, a).status, scsi::status_good);
    short_transfer(IoOp::read, "disk.raw");
    EXPECT_EQ(read_good(128 << 10, 256 << 10), a);
    EXPECT_EQ(plan_->hits(), 2u);
    EXPECT_EQ(file_bytes(backing_), expected_) << "the backing file holds every byte of the short write";
    expect_acknowledged_data_after_reopen();
}

INSTANTIATE_TEST_SUITE_P(Modes, RawLunFaults,
                         ::testing::Values("engine=io_uring", "engine=aio", "engine=io_uring;direct=1",
                                           "engine=io_uring;direct=writes"),
                         [](const auto& info) {
                             std::string n = info.param;
                             for (char& ch : n)
                                 if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                             return n;
                         });

// ---- overlay LUNs: golden file below, client overlay above ----

class OverlayLunFaults : public FaultyLunTest {
protected:
    void SetUp() override {
        FaultyLunTest::SetUp();
        make_backing(kLunBytes);
        golden_ = expected_;
        open_lun("overlay={dir}/client.ovl");
    }
    std::vector<uint8_t> golden_;
};

TEST_F(OverlayLunFaults, AGoldenFileReadEioIsAMediumError) {
    fault(IoOp::read, "disk.raw");
    EXPECT_TRUE(medium_error_read(read(0, 16 << 10)));
    EXPECT_EQ(plan_->hits(), 1u);
    const auto got = read_good(0, 16 << 10);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), golden_.begin()));
}

TEST_F(OverlayLunFaults, AnOverlayReadEioIsAMediumError) {
    expect_read_eio_is_a_medium_error(64 << 10, 8 << 10, "client.ovl", 10);
    expect_acknowledged_data_after_reopen();
}

// A failed data write must not mark its blocks present: they keep reading the
// golden data, not zeros or a half-written overlay block.
TEST_F(OverlayLunFaults, AFailedOverlayWriteLeavesTheBlocksReadingTheGoldenData) {
    fault(IoOp::write, "client.ovl");
    EXPECT_TRUE(medium_error_write(write(1 << 20, pattern(16 << 10, 11))));
    EXPECT_EQ(plan_->hits(), 1u);
    const auto got = read_good(1 << 20, 16 << 10);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), golden_.begin() + (1 << 20)));
    ASSERT_EQ(sync().status, scsi::status_good);
    expect_acknowledged_data_after_reopen();
}

TEST_F(OverlayLunFaults, AFullOverlayDeviceIsSpaceAllocationFailed) {
    expect_full_device_is_space_allocation_failed("client.ovl", 0, 12);
    expect_acknowledged_data_after_reopen();
}

// A 512-byte write into a block the client never wrote copies the rest of the
// block up from the golden file; when that read fails, the write fails with
// the read's sense (the medium could not be read), and the block still reads
// as golden.
TEST_F(OverlayLunFaults, ACopyUpWhoseGoldenReadFailsFailsTheWrite) {
    fault(IoOp::read, "disk.raw");
    EXPECT_TRUE(medium_error_read(write(2 << 20, pattern(512, 14))));
    EXPECT_EQ(plan_->hits(), 1u);
    const auto got = read_good(2 << 20, 4096);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), golden_.begin() + (2 << 20)));
    expect_acknowledged_data_after_reopen();
}

TEST_F(OverlayLunFaults, AFailedSynchronizeCacheIsAMediumErrorAndTheNextOneSucceeds) {
    const auto a = pattern(32 << 10, 15);
    ASSERT_EQ(write(3 << 20, a).status, scsi::status_good);
    fault(IoOp::fdatasync, "client.ovl");
    EXPECT_TRUE(medium_error_write(sync()));
    EXPECT_EQ(plan_->hits(), 1u);
    EXPECT_EQ(sync().status, scsi::status_good);
    EXPECT_EQ(read_good(3 << 20, 32 << 10), a);
}

// Regression: when the fdatasync of a SYNCHRONIZE CACHE on an overlay LUN
// failed, the map pages it had taken out of the "set since the last sync" list
// were dropped: the next SYNCHRONIZE CACHE succeeded, yet after the LUN was
// removed and added again those blocks read as golden data.
TEST_F(OverlayLunFaults, WritesBeforeAFailedSynchronizeCacheAreMadeDurableByTheNextOne) {
    ASSERT_EQ(write(3 << 20, pattern(32 << 10, 15)).status, scsi::status_good);
    fault(IoOp::fdatasync, "client.ovl");
    EXPECT_TRUE(medium_error_write(sync()));
    EXPECT_EQ(plan_->hits(), 1u);
    EXPECT_EQ(sync().status, scsi::status_good);
    expect_acknowledged_data_after_reopen();
}

// After the fdatasync, SYNCHRONIZE CACHE writes the overlay's map pages; when
// that write fails, the SYNC fails, and the next SYNC writes them again.
TEST_F(OverlayLunFaults, AFailedMapWriteFailsTheSyncAndTheNextSyncWritesTheMap) {
    ASSERT_EQ(write(1 << 20, pattern(64 << 10, 16)).status, scsi::status_good);
    fault(IoOp::write, "client.ovl");  // the first write a SYNC makes is a map page
    EXPECT_TRUE(medium_error_write(sync()));
    EXPECT_EQ(plan_->hits(), 1u);
    ASSERT_EQ(sync().status, scsi::status_good);
    expect_acknowledged_data_after_reopen();
}

// Regression: closing an overlay LUN (LUN removal, tgtd stop) without a
// SYNCHRONIZE CACHE left the map bits of the writes since the last one in
// memory only, so re-opening the overlay read those blocks from the golden
// file again: acknowledged writes were lost without any crash.
TEST_F(OverlayLunFaults, ClosingWithoutSynchronizeCacheKeepsAcknowledgedWrites) {
    ASSERT_EQ(write(64 << 10, pattern(8 << 10, 17)).status, scsi::status_good);
    ASSERT_EQ(write(2 << 20, pattern(512, 18)).status, scsi::status_good);  // a copy-up
    expect_acknowledged_data_after_reopen();
}

}  // namespace
