// A LUN's boot set recording (docs/boot-set.md): what a boot reads from the
// first READ for the window lands in the sidecar, merged over boots; nothing
// after the window; a corrupt sidecar is replaced, never a failed LUN.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "boot_recorder.hpp"
#include "icbd/boot_set.hpp"
#include "icbd/bsopts.hpp"
#include "icbd/lun.hpp"
#include "lun_driver.hpp"
#include "scsi.hpp"

using namespace icbd;
using namespace icbd::test;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t KiB = 1024, MiB = 1024 * KiB;
constexpr uint64_t kSize = 16 * MiB;

class BootRecorderTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/icbd-bootrec-XXXXXX";
        dir_ = ::mkdtemp(tmpl);
        golden_ = dir_ / "images/win11/7/disk.raw";
        fs::create_directories(golden_.parent_path());
        std::ofstream(golden_).close();
        fs::resize_file(golden_, kSize);
        sidecar_ = boot_set_path(dir_, "win11", 7, "disk.raw");
    }
    void TearDown() override {
        lun_.reset();
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    // A client's LUN: the golden file under a fresh overlay, as blockd makes it.
    void open_lun(const std::string& extra = "") {
        lun_.reset();
        fs::remove(dir_ / "client.ovl");
        auto opts = parse_bsopts("overlay=" + (dir_ / "client.ovl").string() + ";bootset=" + sidecar_.string() +
                                 ";metrics_dir=off" + extra);
        ASSERT_TRUE(opts) << opts.status().message();
        auto lun = Lun::create(*opts, rec_.host(), "tgt 1 lun 1");
        ASSERT_TRUE(lun) << lun.status().message();
        lun_ = std::move(*lun);
        auto size = lun_->open(golden_.string(), 0);
        ASSERT_TRUE(size) << size.status().message();
    }
    void read(uint64_t offset, uint64_t length) {
        Cmd c = make_cmd(scsi::op::read_16, offset / 512, static_cast<uint32_t>(length / 512), kSize, 9);
        c.in.resize(length);
        ASSERT_EQ(run_cmd(*lun_, rec_, c).status, scsi::status_good);
    }
    void write(uint64_t offset, uint64_t length) {
        Cmd c = make_cmd(scsi::op::write_16, offset / 512, static_cast<uint32_t>(length / 512), kSize, 9);
        c.out.assign(length, 0x5a);
        ASSERT_EQ(run_cmd(*lun_, rec_, c).status, scsi::status_good);
    }
    BootSet sidecar() {
        auto s = load_boot_set(sidecar_);
        EXPECT_TRUE(s) << s.status().message();
        return s ? std::move(s.value()) : BootSet();
    }

    fs::path dir_, golden_, sidecar_;
    Recorder rec_;
    std::unique_ptr<Lun> lun_;
};

TEST_F(BootRecorderTest, WhatABootReadsIsInTheSidecarWhenTheLunCloses) {
    open_lun();
    read(0, 4 * KiB);
    read(5 * MiB, 128 * KiB);
    write(8 * MiB, 64 * KiB);  // writes are not the boot set
    lun_.reset();
    BootSet s = sidecar();
    EXPECT_EQ(s.runs(), (std::vector<BootSet::Run>{{0, 64 * KiB}, {5 * MiB, 128 * KiB}}));
    EXPECT_EQ(s.boots, 1u);
    EXPECT_EQ(s.version, 7u) << "the version, from the sidecar's place";
    EXPECT_EQ(s.file_size(), kSize);
}

TEST_F(BootRecorderTest, ReadsAfterTheWindowAreNotPartOfTheBoot) {
    open_lun(";bootset_window=1");
    read(MiB, 4 * KiB);
    std::this_thread::sleep_for(std::chrono::milliseconds(1100));
    read(10 * MiB, 4 * KiB);  // the desktop is up: its user's reads
    read(11 * MiB, 4 * KiB);
    // The window closed at the first READ past it: merged without closing the LUN.
    for (int i = 0; i < 200 && !fs::exists(sidecar_); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    BootSet s = sidecar();
    EXPECT_EQ(s.runs(), (std::vector<BootSet::Run>{{MiB, 64 * KiB}}));
}

TEST_F(BootRecorderTest, BootsOfSeveralDesktopsMerge) {
    open_lun();
    read(0, 4 * KiB);
    open_lun();  // the next desktop (or the next boot)
    read(2 * MiB, 4 * KiB);
    lun_.reset();
    BootSet s = sidecar();
    EXPECT_EQ(s.runs(), (std::vector<BootSet::Run>{{0, 64 * KiB}, {2 * MiB, 64 * KiB}}));
    EXPECT_EQ(s.boots, 2u);
}

TEST_F(BootRecorderTest, ALunThatNeverReadRecordsNothing) {
    open_lun();
    lun_.reset();
    EXPECT_FALSE(fs::exists(sidecar_));
}

TEST_F(BootRecorderTest, WindowZeroTurnsRecordingOff) {
    open_lun(";bootset_window=0");
    read(0, 4 * KiB);
    lun_.reset();
    EXPECT_FALSE(fs::exists(sidecar_));
}

TEST_F(BootRecorderTest, ACorruptSidecarIsReplacedAndTheLunServes) {
    fs::create_directories(sidecar_.parent_path());
    std::ofstream(sidecar_) << "garbage that is not a boot set";
    open_lun();
    read(3 * MiB, 4 * KiB);
    lun_.reset();
    BootSet s = sidecar();
    EXPECT_EQ(s.runs(), (std::vector<BootSet::Run>{{3 * MiB, 64 * KiB}}));
    EXPECT_EQ(s.boots, 1u);
}

TEST_F(BootRecorderTest, AnUnwritableSidecarPlaceLeavesTheLunServing) {
    sidecar_ = "/proc/icbd-no-such-dir/disk.raw.bset";
    open_lun();
    read(0, 4 * KiB);
    lun_.reset();  // the merge fails with a log line; nothing else happens
    EXPECT_FALSE(fs::exists(sidecar_));
}

TEST(BootRecorderVersion, ComesFromTheSidecarsPlaceInTheRepository) {
    EXPECT_EQ(BootRecorder::version_of("/r/images/w/.bootsets/12/disk.raw.bset"), 12u);
    EXPECT_EQ(BootRecorder::version_of("/r/images/w/.bootsets/12/a/b.raw.bset"), 12u);
    EXPECT_EQ(BootRecorder::version_of("/somewhere/disk.bset"), 0u);
    EXPECT_EQ(BootRecorder::version_of("/r/.bootsets/x/disk.bset"), 0u);
}

}  // namespace
