// Lun semantics without tgtd: each SCSI command's effect on the backing file,
// its sense data, and the completion contract (exactly once, never inside submit).
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <vector>

#include "icbd/lun.hpp"
#include "scsi.hpp"
#include "icbd/unique_fd.hpp"
#include "epoll_wait_ready.hpp"
#include "lun_driver.hpp"

using namespace icbd;
using namespace icbd::test;

namespace {

constexpr unsigned kShift = 9;
constexpr uint64_t kBlock = 1u << kShift;
constexpr uint64_t kSize = 8 << 20;

class LunTest : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        char name[] = "/tmp/icbd-lun-XXXXXX";
        int fd = mkstemp(name);
        ASSERT_GE(fd, 0);
        path_ = name;
        ASSERT_EQ(ftruncate(fd, kSize), 0);
        close(fd);
        auto opts = parse_bsopts(GetParam());
        ASSERT_TRUE(opts);
        auto lun = Lun::create(*opts, rec_.host());
        ASSERT_TRUE(lun) << lun.status().message();
        lun_ = std::move(*lun);
        auto size = lun_->open(path_, 0);
        ASSERT_TRUE(size) << size.status().message();
        ASSERT_EQ(*size, kSize);
        raw_ = open(path_.c_str(), O_RDWR);
    }
    void TearDown() override {
        lun_.reset();
        close(raw_);
        unlink(path_.c_str());
    }

    Cmd make(uint8_t op, uint64_t lba, uint32_t blocks, uint8_t byte1 = 0) {
        return make_cmd(op, lba, blocks, kSize, kShift, byte1);
    }
    ScsiResult run(Cmd& c) { return run_cmd(*lun_, rec_, c); }
    std::vector<uint8_t> file_bytes(uint64_t off, size_t len) {
        std::vector<uint8_t> b(len);
        EXPECT_EQ(pread(raw_, b.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
        return b;
    }
    static std::vector<uint8_t> pattern(size_t len, uint8_t seed) {
        std::vector<uint8_t> b(len);
        for (size_t i = 0; i < len; ++i) b[i] = static_cast<uint8_t>(seed + i * 31 + (i >> 9));
        return b;
    }

    Recorder rec_;
    std::unique_ptr<Lun> lun_;
    std::string path_;
    int raw_ = -1;
};

TEST_P(LunTest, WriteThenReadAtOddSizes) {
    for (auto [lba, blocks] : std::vector<std::pair<uint64_t, uint32_t>>{{0, 1}, {7, 7}, {1001, 128}, {16383, 1}}) {
        Cmd w = make(scsi::op::write_16, lba, blocks);
        w.out = pattern(blocks * kBlock, static_cast<uint8_t>(lba));
        EXPECT_EQ(run(w).status, scsi::status_good);
        Cmd r = make(scsi::op::read_16, lba, blocks);
        r.in.resize(blocks * kBlock);
        EXPECT_EQ(run(r).status, scsi::status_good);
        EXPECT_EQ(r.in, w.out) << "lba " << lba;
        EXPECT_EQ(file_bytes(lba * kBlock, blocks * kBlock), w.out);
    }
}

// iSCSI lets an initiator send fewer data-out bytes than the CDB's blocks
// (libiscsi's iSCSIResiduals.Write* do): the bytes that arrived are written.
// direct=writes sends them through the page cache (O_DIRECT takes whole
// blocks); direct=1, which has no buffered descriptor, reads the blocks
// around them and writes those back (it refused, writing nothing, until the
// conformance run covered direct=1).
TEST_P(LunTest, ADataOutShorterThanItsBlocksWritesWhatArrived) {
    const auto old = pattern(8 * kBlock, 4);  // not zeros: a block rewritten from zeros would show
    ASSERT_EQ(pwrite(raw_, old.data(), old.size(), 0), static_cast<ssize_t>(old.size()));
    const auto before = file_bytes(0, 8 * kBlock);
    Cmd w = make(scsi::op::write_16, 3, 2);
    w.out = pattern(700, 9);
    ScsiResult r = run(w);
    auto expect = before;
    std::copy(w.out.begin(), w.out.end(), expect.begin() + 3 * kBlock);
    EXPECT_EQ(r.status, scsi::status_good);
    EXPECT_EQ(file_bytes(0, 8 * kBlock), expect) << "the bytes beside the 700 that arrived must not change";
    // Whole blocks on either side still go direct and read back.
    Cmd full = make(scsi::op::write_16, 2, 4);
    full.out = pattern(4 * kBlock, 5);
    EXPECT_EQ(run(full).status, scsi::status_good);
    Cmd rd = make(scsi::op::read_16, 2, 4);
    rd.in.resize(4 * kBlock);
    EXPECT_EQ(run(rd).status, scsi::status_good);
    EXPECT_EQ(rd.in, full.out);
}

// Found in review: on direct=1 a short Data-Out is a read-modify-write of
// its blocks; a full write of one of those blocks in flight at the same time
// must not be undone by the write-back of what the first one read. The
// result is one of the two orders, never a mix.
TEST_P(LunTest, AShortDataOutAndAnOverlappingWriteInFlightTogetherLandInSomeOrder) {
    const auto old = pattern(4 * kBlock, 6);
    ASSERT_EQ(pwrite(raw_, old.data(), old.size(), 0), static_cast<ssize_t>(old.size()));
    Cmd a = make(scsi::op::write_16, 0, 2);
    a.out = pattern(700, 7);
    Cmd b = make(scsi::op::write_16, 1, 1);
    b.out = pattern(kBlock, 8);
    for (Cmd* c : {&a, &b}) {
        c->lc.cookie = c;
        c->lc.out_buf = c->out.data();
        c->lc.out_len = static_cast<uint32_t>(c->out.size());
        lun_->submit(c->lc);
    }
    for (int i = 0; i < 10000 && rec_.done.size() < 2; ++i) {  // at most ~1 s
        lun_->submit_batch();
        lun_->process_completions();
        if (rec_.done.size() < 2) usleep(100);
    }
    ASSERT_EQ(rec_.done.size(), 2u);
    auto a_then_b = old, b_then_a = old;
    std::copy(a.out.begin(), a.out.end(), a_then_b.begin());
    std::copy(b.out.begin(), b.out.end(), a_then_b.begin() + kBlock);
    std::copy(b.out.begin(), b.out.end(), b_then_a.begin() + kBlock);
    std::copy(a.out.begin(), a.out.end(), b_then_a.begin());
    const auto got = file_bytes(0, 4 * kBlock);
    EXPECT_TRUE(got == a_then_b || got == b_then_a) << "a mix of the two writes and the old data";
}

TEST_P(LunTest, CompareAndWriteHitAndMissWithOffset) {
    auto old = pattern(2 * kBlock, 1);
    ASSERT_EQ(pwrite(raw_, old.data(), old.size(), 10 * kBlock), static_cast<ssize_t>(old.size()));
    auto fresh = pattern(2 * kBlock, 99);

    Cmd miss = make(scsi::op::compare_and_write, 10, 2);
    miss.out = old;
    miss.out[700] ^= 0xff;  // differs at byte 700 of the compare half
    miss.out.insert(miss.out.end(), fresh.begin(), fresh.end());
    ScsiResult r = run(miss);
    EXPECT_EQ(r.status, scsi::status_check_condition);
    EXPECT_EQ(r.sense_key, scsi::key::miscompare);
    EXPECT_EQ(r.asc, scsi::asc::miscompare_during_verify);
    EXPECT_TRUE(r.has_info);
    EXPECT_EQ(r.info, 700u);
    EXPECT_EQ(file_bytes(10 * kBlock, old.size()), old) << "a miscompare must not write";

    Cmd hit = make(scsi::op::compare_and_write, 10, 2);
    hit.out = old;
    hit.out.insert(hit.out.end(), fresh.begin(), fresh.end());
    EXPECT_EQ(run(hit).status, scsi::status_good);
    EXPECT_EQ(file_bytes(10 * kBlock, fresh.size()), fresh);
}

// Block Limits advertises MAXIMUM COMPARE AND WRITE LENGTH (tgt: 128 blocks);
// a longer command is an invalid field and writes nothing (regression:
// iscsi-test-cu's CompareAndWrite.Simple/Miscompare).
TEST_P(LunTest, CompareAndWriteBeyondTheAdvertisedMaximumIsRefused) {
    for (uint32_t blocks : {128u, 129u}) {
        auto old = pattern(blocks * kBlock, 7);
        ASSERT_EQ(pwrite(raw_, old.data(), old.size(), 0), static_cast<ssize_t>(old.size()));
        Cmd c = make(scsi::op::compare_and_write, 0, blocks);
        c.lc.max_compare_and_write_blocks = 128;
        c.out = old;
        auto fresh = pattern(blocks * kBlock, 8);
        c.out.insert(c.out.end(), fresh.begin(), fresh.end());
        ScsiResult r = run(c);
        if (blocks <= 128) {
            EXPECT_EQ(r.status, scsi::status_good);
            EXPECT_EQ(file_bytes(0, fresh.size()), fresh);
        } else {
            EXPECT_EQ(r.sense_key, scsi::key::illegal_request);
            EXPECT_EQ(r.asc, scsi::asc::invalid_field_in_cdb);
            EXPECT_EQ(file_bytes(0, old.size()), old);
        }
    }
}

TEST_P(LunTest, OrWriteOrsIntoExistingData) {
    std::vector<uint8_t> old(kBlock, 0x0f);
    ASSERT_EQ(pwrite(raw_, old.data(), kBlock, 3 * kBlock), static_cast<ssize_t>(kBlock));
    Cmd c = make(scsi::op::orwrite_16, 3, 1);
    c.out.assign(kBlock, 0x30);
    EXPECT_EQ(run(c).status, scsi::status_good);
    EXPECT_EQ(file_bytes(3 * kBlock, kBlock), std::vector<uint8_t>(kBlock, 0x3f));
}

TEST_P(LunTest, WriteSameRepeatsAndStampsLba) {
    Cmd c = make(scsi::op::write_same_16, 100, 3000);  // > one 1 MiB chunk
    c.out = pattern(kBlock, 5);
    EXPECT_EQ(run(c).status, scsi::status_good);
    for (uint64_t b : {100u, 1500u, 3099u}) EXPECT_EQ(file_bytes(b * kBlock, kBlock), c.out) << b;
    EXPECT_NE(file_bytes(3100 * kBlock, kBlock), c.out);

    Cmd lb = make(scsi::op::write_same_16, 200, 4, 0x02);  // LBDATA
    lb.out = pattern(kBlock, 9);
    EXPECT_EQ(run(lb).status, scsi::status_good);
    for (uint64_t b = 200; b < 204; ++b) {
        auto got = file_bytes(b * kBlock, kBlock);
        uint8_t want[4];
        store_be(want, b, 4);
        EXPECT_EQ(std::memcmp(got.data(), want, 4), 0) << b;
        EXPECT_TRUE(std::equal(got.begin() + 4, got.end(), lb.out.begin() + 4));
    }
}

// WRITE SAME with the UNMAP bit on a thin LUN deallocates even when the data
// block is not zeros; the blocks read as zeros (LBPRZ). Regression: we wrote
// the pattern instead, and iscsi-test-cu's WriteSame10.UnmapUntilEnd failed.
TEST_P(LunTest, WriteSameWithUnmapBitDeallocatesWhateverTheData) {
    std::vector<uint8_t> data(64 * kBlock, 0xff);
    ASSERT_EQ(pwrite(raw_, data.data(), data.size(), 512 * kBlock), static_cast<ssize_t>(data.size()));
    ASSERT_EQ(fsync(raw_), 0);
    struct stat before{};
    ASSERT_EQ(fstat(raw_, &before), 0);
    Cmd c = make(scsi::op::write_same_16, 512, 64, 0x08);
    c.out = std::vector<uint8_t>(kBlock, 0xff);
    EXPECT_EQ(run(c).status, scsi::status_good);
    EXPECT_EQ(file_bytes(512 * kBlock, 64 * kBlock), std::vector<uint8_t>(64 * kBlock, 0));
    struct stat after{};
    ASSERT_EQ(fstat(raw_, &after), 0);
    EXPECT_LT(after.st_blocks, before.st_blocks);
}

TEST_P(LunTest, UnmapPunchesHolesAllOrNothing) {
    std::vector<uint8_t> data(1 << 20, 0x5a);
    ASSERT_EQ(pwrite(raw_, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
    fsync(raw_);
    auto unmap = [&](std::vector<std::pair<uint64_t, uint32_t>> descs) {
        Cmd c = make(scsi::op::unmap, 0, 0);
        c.cdb.assign(10, 0);
        c.cdb[0] = scsi::op::unmap;
        c.out.assign(8 + 16 * descs.size(), 0);
        store_be(&c.out[0], 6 + 16 * descs.size(), 2);
        store_be(&c.out[2], 16 * descs.size(), 2);
        for (size_t i = 0; i < descs.size(); ++i) {
            store_be(&c.out[8 + 16 * i], descs[i].first, 8);
            store_be(&c.out[16 + 16 * i], descs[i].second, 4);
        }
        return run(c);
    };
    // The second descriptor runs past the end: nothing may be unmapped.
    ScsiResult bad = unmap({{0, 256}, {kSize / kBlock - 1, 2}});
    EXPECT_EQ(bad.sense_key, scsi::key::illegal_request);
    EXPECT_EQ(bad.asc, scsi::asc::lba_out_of_range);
    EXPECT_EQ(file_bytes(0, 256 * kBlock), std::vector<uint8_t>(256 * kBlock, 0x5a));

    struct stat before {};
    fstat(raw_, &before);
    EXPECT_EQ(unmap({{0, 256}, {1024, 512}}).status, scsi::status_good);
    struct stat after {};
    fstat(raw_, &after);
    EXPECT_LT(after.st_blocks, before.st_blocks);
    EXPECT_EQ(file_bytes(0, 256 * kBlock), std::vector<uint8_t>(256 * kBlock, 0));
    EXPECT_EQ(file_bytes(256 * kBlock, kBlock), std::vector<uint8_t>(kBlock, 0x5a));
}

TEST_P(LunTest, UnmapRefusedWithoutThinProvisioning) {
    Cmd c = make(scsi::op::unmap, 0, 0);
    c.lc.thin_provisioning = false;
    c.out.assign(24, 0);
    ScsiResult r = run(c);
    EXPECT_EQ(r.sense_key, scsi::key::illegal_request);
}

// The host contract for the event fd, as tgtd uses it: level-triggered. A
// wake-up the host does not act on (tgtd abandons the rest of an epoll batch
// after any fd is deleted) is delivered again; once the host has processed
// completions, the fd goes quiet instead of spinning the loop.
// Regression: with EPOLLET, iscsi-test-cu hung with a completion in the ring.
TEST_P(LunTest, SkippedWakeUpIsDeliveredAgainAndProcessingQuietsIt) {
    UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ASSERT_EQ(epoll_ctl(ep.get(), EPOLL_CTL_ADD, lun_->event_fd(), &ev), 0);
    // A flush: it goes through the kernel (a cached read would be served
    // inline by submit_batch() and never wake the host at all).
    Cmd c = make(scsi::op::synchronize_cache_16, 0, 0);
    c.lc.cookie = &c;
    lun_->submit(c.lc);
    lun_->submit_batch();
    ASSERT_EQ(wait_ready(ep.get(), 5000), 1);
    // The host skips this wake-up...
    ASSERT_EQ(wait_ready(ep.get(), 0), 1) << "a skipped wake-up was lost";
    lun_->process_completions();
    EXPECT_TRUE(rec_.done.count(&c));
    EXPECT_EQ(wait_ready(ep.get(), 50), 0) << "the event fd stays readable after processing";
}

// Found by scsi_command_fuzz: a VERIFY of zero blocks finished inside
// submit(), breaking the "never complete from inside submit()" contract.
TEST_P(LunTest, ZeroLengthVerifyCompletesOutsideSubmit) {
    Cmd c = make(scsi::op::verify_16, 40, 0, 0x02);
    EXPECT_EQ(run(c).status, scsi::status_good);  // run() checks where it completed
}

TEST_P(LunTest, VerifyByteCheckFindsTheDifference) {
    auto data = pattern(4 * kBlock, 3);
    ASSERT_EQ(pwrite(raw_, data.data(), data.size(), 40 * kBlock), static_cast<ssize_t>(data.size()));
    Cmd ok = make(scsi::op::verify_16, 40, 4, 0x02);
    ok.out = data;
    EXPECT_EQ(run(ok).status, scsi::status_good);
    Cmd bad = make(scsi::op::verify_16, 40, 4, 0x02);
    bad.out = data;
    bad.out[1500] ^= 1;
    ScsiResult r = run(bad);
    EXPECT_EQ(r.sense_key, scsi::key::miscompare);
    EXPECT_EQ(r.info, 1500u);
}

TEST_P(LunTest, WriteVerifyAndSyncAndPrefetch) {
    Cmd w = make(scsi::op::write_verify_16, 64, 8);
    w.out = pattern(8 * kBlock, 77);
    EXPECT_EQ(run(w).status, scsi::status_good);
    EXPECT_EQ(file_bytes(64 * kBlock, w.out.size()), w.out);
    Cmd s = make(scsi::op::synchronize_cache_16, 0, 0);
    EXPECT_EQ(run(s).status, scsi::status_good);
    Cmd p = make(scsi::op::pre_fetch_16, 0, 128);
    EXPECT_EQ(run(p).status, scsi::status_good);
}

TEST_P(LunTest, ManyCommandsInFlightCompleteOnceEach) {
    std::vector<Cmd> cmds;
    cmds.reserve(300);
    for (uint64_t i = 0; i < 300; ++i) {
        cmds.push_back(make(i % 2 ? scsi::op::write_16 : scsi::op::read_16, (i * 37) % 16000, 8, i % 5 ? 0 : 0x08));
        Cmd& c = cmds.back();
        (i % 2 ? c.out : c.in).resize(8 * kBlock, static_cast<uint8_t>(i));
        c.lc.cookie = &c;
        c.lc.in_buf = c.in.data();
        c.lc.in_len = static_cast<uint32_t>(c.in.size());
        c.lc.out_buf = c.out.data();
        c.lc.out_len = static_cast<uint32_t>(c.out.size());
        rec_.inside_submit = true;
        lun_->submit(c.lc);
        rec_.inside_submit = false;
    }
    EXPECT_GE(rec_.kicks, 1);
    for (int i = 0; i < 100000 && rec_.done.size() < cmds.size(); ++i) {  // at most ~10 s
        lun_->submit_batch();
        lun_->process_completions();
        if (rec_.done.size() < cmds.size()) usleep(100);
    }
    EXPECT_EQ(rec_.done.size(), cmds.size());
    EXPECT_EQ(rec_.duplicates, 0);
    EXPECT_EQ(rec_.completed_inside_submit, 0);
    for (auto& [cookie, r] : rec_.done) EXPECT_EQ(r.status, scsi::status_good);
    EXPECT_EQ(lun_->commands_in_flight(), 0u);
}

// direct=1 goes through O_DIRECT and must bounce buffers that are not aligned.
INSTANTIATE_TEST_SUITE_P(Modes, LunTest,
                         ::testing::Values("engine=io_uring", "engine=aio", "engine=io_uring;direct=1",
                                           "engine=aio;direct=1;queue_depth=4", "engine=io_uring;direct=writes",
                                           "engine=aio;direct=writes"),
                         [](const auto& info) {
                             std::string n = info.param;
                             for (char& ch : n)
                                 if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                             return n;
                         });

TEST(LunOpen, ErrorsNameTheFile) {
    Recorder rec;
    auto lun = Lun::create({}, {Recorder::complete, Recorder::kick, &rec});
    ASSERT_TRUE(lun);
    auto r = (*lun)->open("/nonexistent/disk.img", 0);
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("'/nonexistent/disk.img'"), std::string::npos);
    EXPECT_NE(r.status().message().find("No such file"), std::string::npos);
    auto d = (*lun)->open("/tmp", 0);
    ASSERT_FALSE(d);
}

TEST(LunOpen, ReadonlyOptionOpensReadOnly) {
    char name[] = "/tmp/icbd-ro-XXXXXX";
    int fd = mkstemp(name);
    ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
    close(fd);
    Recorder rec;
    LunOptions o;
    o.readonly = true;
    auto lun = Lun::create(o, {Recorder::complete, Recorder::kick, &rec});
    ASSERT_TRUE(lun);
    ASSERT_TRUE((*lun)->open(name, 0));
    EXPECT_TRUE((*lun)->readonly());
    EXPECT_EQ(fcntl((*lun)->fd(), F_GETFL) & O_ACCMODE, O_RDONLY);
    unlink(name);
}

}  // namespace
