// The data layers under the SCSI commands, driven directly (contract in
// blockd/data_layer.hpp): a completion runs exactly once and never inside a
// file I/O call, short and unaligned transfers are handled below the layers,
// and the overlay's copy-up and FUA map write keep what a client wrote.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <vector>

#include "data_layer.hpp"
#include "golden_file.hpp"
#include "icbd/unique_fd.hpp"
#include "io_queue.hpp"
#include "overlay_layer.hpp"
#include "overlay_map.hpp"
#include "raw_layer.hpp"

using namespace icbd;
namespace fs = std::filesystem;

namespace {

struct Calls {
    int n = 0;
    int error = -1;
    IoOp op = IoOp::prefetch;
};

Done counted(Calls& c) {
    return {[](void* ctx, int error, IoOp op) {
                auto& c = *static_cast<Calls*>(ctx);
                ++c.n;
                c.error = error;
                c.op = op;
            },
            &c};
}

TEST(Join, ChildrenCompletingBeforeSealDoNotEndIt) {
    Calls c;
    Join j;
    j.begin(counted(c));
    j.child()(0, IoOp::read);  // completes at once, as a failed cache write does
    EXPECT_EQ(c.n, 0);
    Done later = j.child();
    j.seal();
    EXPECT_EQ(c.n, 0);
    later(0, IoOp::read);
    EXPECT_EQ(c.n, 1);
    EXPECT_EQ(c.error, 0);
}

TEST(Join, TheFirstErrorAndItsOperationWin) {
    Calls c;
    Join j;
    j.begin(counted(c));
    Done a = j.child(), b = j.child();
    j.seal();
    a(EIO, IoOp::write);
    b(ENOSPC, IoOp::read);
    EXPECT_EQ(c.n, 1);
    EXPECT_EQ(c.error, EIO);
    EXPECT_EQ(c.op, IoOp::write);
}

std::vector<uint8_t> random_bytes(size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
}

class LayerTest : public ::testing::Test {
protected:
    void SetUp() override {
        // /var/tmp: a disk filesystem (O_DIRECT), unlike a tmpfs /tmp.
        char name[] = "/var/tmp/icbd-layers-XXXXXX";
        ASSERT_NE(mkdtemp(name), nullptr);
        dir_ = name;
        auto e = make_io_engine({EngineKind::automatic, 32}, nullptr);
        ASSERT_TRUE(e) << e.status().message();
        engine_ = std::move(*e);
        host_.kick = [](void* ctx) { ++*static_cast<int*>(ctx); };
        host_.ctx = &kicks_;
        io_ = std::make_unique<IoQueue>(*engine_, host_, "layer test");
    }
    void TearDown() override {
        io_.reset();
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    // What the host's event loop does: submit, deliver, wait, until idle.
    void pump() {
        for (;;) {
            io_->submit();
            io_->reap();
            if (io_->in_flight() == 0) return;
            io_->wait();
        }
    }
    fs::path write_file(const char* name, const std::vector<uint8_t>& data) {
        fs::path p = dir_ / name;
        std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(data.data()),
                                                 static_cast<std::streamsize>(data.size()));
        return p;
    }

    // Invalid only where the filesystem refuses O_DIRECT (EINVAL); any other failure fails the test.
    UniqueFd open_direct(const fs::path& p) {
        UniqueFd fd(::open(p.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT));
        if (!fd.valid()) {
            EXPECT_EQ(errno, EINVAL) << p << ": " << std::strerror(errno);
        }
        return fd;
    }

    fs::path dir_;
    std::unique_ptr<IoEngine> engine_;
    LunHost host_;
    int kicks_ = 0;
    std::unique_ptr<IoQueue> io_;
};

TEST_F(LayerTest, ARawReadCompletesOnceAndOnlyFromTheEventLoop) {
    const auto data = random_bytes(16384, 1);
    UniqueFd fd(::open(write_file("raw", data).c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    RawLayer raw(*io_, fd.get(), -1, false);
    std::vector<uint8_t> got(8192);
    Calls c;
    raw.read(got.data(), got.size(), 4096, counted(c));
    EXPECT_EQ(c.n, 0) << "completed inside the call";
    EXPECT_EQ(kicks_, 1) << "the host must be asked for one submission";
    pump();
    EXPECT_EQ(c.n, 1);
    EXPECT_EQ(c.error, 0);
    EXPECT_EQ(0, std::memcmp(got.data(), data.data() + 4096, got.size()));
}

// A file that shrank under the LUN: the part past its end reads as zeros
// (the short read is continued, then the empty one ends it).
TEST_F(LayerTest, ARawReadPastTheEndOfTheFileReadsZeros) {
    const auto data = random_bytes(8192, 2);
    UniqueFd fd(::open(write_file("short", data).c_str(), O_RDWR | O_CLOEXEC));
    RawLayer raw(*io_, fd.get(), -1, false);
    std::vector<uint8_t> got(8192, 0xaa);
    Calls c;
    raw.read(got.data(), got.size(), 4096, counted(c));
    pump();
    ASSERT_EQ(c.error, 0);
    EXPECT_EQ(0, std::memcmp(got.data(), data.data() + 4096, 4096));
    EXPECT_TRUE(std::all_of(got.begin() + 4096, got.end(), [](uint8_t b) { return b == 0; }));
}

TEST_F(LayerTest, AnUnalignedBufferOnAnODirectFileIsBounced) {
    const auto data = random_bytes(16384, 3);
    const fs::path p = write_file("direct", data);
    UniqueFd fd = open_direct(p);
    if (!fd.valid()) GTEST_SKIP() << dir_ << ": the filesystem refuses O_DIRECT";
    RawLayer raw(*io_, fd.get(), -1, true);
    std::vector<uint8_t> mem(4096 + 1);
    Calls c;
    raw.read(mem.data() + 1, 4096, 8192, counted(c));  // never 512-aligned
    pump();
    ASSERT_EQ(c.error, 0);
    EXPECT_EQ(0, std::memcmp(mem.data() + 1, data.data() + 8192, 4096));
}

// iSCSI residuals (conformance iSCSIResiduals.Read10Residuals with
// direct=1): the initiator expects fewer bytes than the CDB's blocks, so a
// transfer's length is not a multiple of 512. O_DIRECT refused it with
// EINVAL; it must read exactly those bytes.
TEST_F(LayerTest, AReadShorterThanABlockOnAnODirectFileReadsJustThoseBytes) {
    const auto data = random_bytes(16384, 6);
    const fs::path p = write_file("direct-short-read", data);
    UniqueFd fd = open_direct(p);
    if (!fd.valid()) GTEST_SKIP() << dir_ << ": the filesystem refuses O_DIRECT";
    RawLayer raw(*io_, fd.get(), -1, true);
    std::vector<uint8_t> got(4096, 0xaa);
    Calls c;
    raw.read(got.data(), 200, 4096, counted(c));
    pump();
    ASSERT_EQ(c.n, 1);
    ASSERT_EQ(c.error, 0);
    EXPECT_EQ(c.op, IoOp::read);
    EXPECT_EQ(0, std::memcmp(got.data(), data.data() + 4096, 200));
    EXPECT_TRUE(std::all_of(got.begin() + 200, got.end(), [](uint8_t b) { return b == 0xaa; }))
        << "bytes past the transfer were overwritten";
}

// The write half of the residual tests: 200 bytes into a block on an
// O_DIRECT file land, and the other 312 bytes of the block stay as they were
// (a read-modify-write of the block), durably with FUA.
TEST_F(LayerTest, AWriteShorterThanABlockOnAnODirectFileKeepsTheRestOfTheBlock) {
    const auto data = random_bytes(16384, 7);
    const fs::path p = write_file("direct-short-write", data);
    UniqueFd fd = open_direct(p);
    if (!fd.valid()) GTEST_SKIP() << dir_ << ": the filesystem refuses O_DIRECT";
    RawLayer raw(*io_, fd.get(), -1, true);
    const auto written = random_bytes(200, 8);
    Calls c;
    raw.write(written.data(), written.size(), 8192 + 512, true, counted(c));
    pump();
    ASSERT_EQ(c.n, 1);
    ASSERT_EQ(c.error, 0);
    EXPECT_EQ(c.op, IoOp::write);
    std::vector<uint8_t> expect = data;
    std::copy(written.begin(), written.end(), expect.begin() + 8192 + 512);
    std::ifstream in(p, std::ios::binary);
    std::vector<uint8_t> on_disk(data.size());
    in.read(reinterpret_cast<char*>(on_disk.data()), static_cast<std::streamsize>(on_disk.size()));
    EXPECT_EQ(on_disk, expect);
}

// A 512-byte FUA write into a block the client never wrote: the rest of the
// block comes up from the golden file, and the block is the client's on disk
// (map bit written) when the write completes.
TEST_F(LayerTest, AnOverlayCopyUpKeepsTheGoldenDataAroundTheWriteAndItsMapBitIsDurable) {
    const auto golden_data = random_bytes(64 << 10, 4);
    const fs::path golden_path = write_file("golden", golden_data);
    const fs::path overlay_path = dir_ / "client.ovl";
    const auto written = random_bytes(512, 5);
    {
        auto golden = GoldenFile::open(golden_path);
        ASSERT_TRUE(golden) << golden.status().message();
        auto map = OverlayMap::attach(overlay_path, *golden, true);
        ASSERT_TRUE(map) << map.status().message();
        OverlayLayer overlay(*io_, **map);
        EXPECT_TRUE(overlay.write_rewrites_blocks(4096 + 1024, 512));
        Calls c;
        overlay.write(written.data(), written.size(), 4096 + 1024, true, counted(c));
        pump();
        ASSERT_EQ(c.n, 1);
        ASSERT_EQ(c.error, 0);
        EXPECT_FALSE(overlay.write_rewrites_blocks(4096 + 1024, 512)) << "the block is in the overlay now";
    }
    auto golden = GoldenFile::open(golden_path);
    ASSERT_TRUE(golden);
    auto map = OverlayMap::attach(overlay_path, *golden, false);
    ASSERT_TRUE(map) << map.status().message();
    EXPECT_TRUE((*map)->present(1)) << "a FUA write's map bit must be on disk when it completes";
    EXPECT_FALSE((*map)->present(0));
    OverlayLayer overlay(*io_, **map);
    std::vector<uint8_t> got(8192);
    Calls c;
    overlay.read(got.data(), got.size(), 0, counted(c));
    pump();
    ASSERT_EQ(c.error, 0);
    std::vector<uint8_t> expected(golden_data.begin(), golden_data.begin() + 8192);
    std::memcpy(expected.data() + 4096 + 1024, written.data(), written.size());
    EXPECT_EQ(got, expected);
}

}  // namespace
