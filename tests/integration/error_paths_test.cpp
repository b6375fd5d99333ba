// Error paths of the module inside a real tgtd: read-only LUNs (the readonly
// bsopt, and a file in a read-only BTRFS snapshot) refuse every write with DATA
// PROTECT / WRITE PROTECTED and still serve reads; bad --bsopts, unknown options
// and bad backing files make tgtadm fail with a clear message in tgtd's log
// while tgtd keeps serving its other LUNs; a full filesystem turns writes into
// DATA PROTECT / SPACE ALLOCATION FAILED without hurting tgtd or earlier data.
#include <sys/stat.h>

#include <algorithm>
#include <memory>

#include "integration_test.hpp"
#include "iscsi_client.hpp"
#include "loop_fs.hpp"
#include "temp_dir.hpp"
#include "tgtd_instance.hpp"

namespace icbd::test {
namespace {

constexpr uint32_t kBlock = 512;
constexpr uint64_t kMiB = 1ull << 20;

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

class ErrorPaths : public ::testing::Test {
protected:
    void SetUp() override {
        ICBD_REQUIRE(TgtdInstance::unavailable());
        dir_ = std::make_unique<TempDir>("/var/tmp", "icbd-errpaths-");
        tgtd_ = std::make_unique<TgtdInstance>();
    }
    void TearDown() override {
        if (HasFailure() && tgtd_) std::cerr << "---- tgtd log (tail) ----\n" << tgtd_->log_tail(40) << "\n";
        tgtd_.reset();  // before the files and filesystems it serves
        btrfs_.reset();
        dir_.reset();
    }

    // Every kind of write the module executes, each expected to be refused with
    // DATA PROTECT / WRITE PROTECTED; and the data unchanged afterwards.
    void expect_all_writes_refused(IscsiClient& c, const std::vector<uint8_t>& original) {
        const auto one = pattern(kBlock, 77);
        const std::vector<uint8_t> zero(kBlock, 0);
        auto refused = [](const ScsiResult& r) {
            EXPECT_TRUE(r.check_condition(scsi::key::data_protect, scsi::asc::write_protected)) << r;
        };
        refused(c.write16(0, one));
        refused(c.write16(1, one, /*fua=*/true));
        refused(c.write10(2, one));
        refused(c.write_same16(0, 8, one));
        refused(c.write_same16(0, 8, zero, /*unmap=*/true));
        refused(c.unmap({{0, 8}}));
        refused(c.orwrite16(0, one));
        refused(c.write_verify16(0, one));
        refused(c.compare_and_write(0, std::span(original).subspan(0, kBlock), one));
        ScsiResult r = c.read16(0, static_cast<uint32_t>(original.size() / kBlock));
        ASSERT_TRUE(r.good()) << r;
        EXPECT_TRUE(same_bytes(r.data, original)) << "a refused write changed the data";
    }

    // MODE SENSE(6), all pages: the WP bit of the device-specific parameter.
    static bool write_protect_bit(IscsiClient& c) {
        const uint8_t cdb[6] = {0x1a, 0x08, 0x3f, 0x00, 0xff, 0x00};
        ScsiResult r = c.raw(cdb, {}, 255, "MODE SENSE(6)");
        EXPECT_TRUE(r.good()) << r;
        return r.data.size() > 2 && (r.data[2] & 0x80);
    }

    std::unique_ptr<TempDir> dir_;
    std::unique_ptr<LoopFs> btrfs_;
    std::unique_ptr<TgtdInstance> tgtd_;
};

// bsopts readonly=1 on a writable file: reads fine, every write refused, the
// file untouched, WP set in MODE SENSE.
TEST_F(ErrorPaths, ReadOnlyOptionRefusesWrites) {
    auto file = *dir_ / "ro.img";
    make_sparse_file(file, 16 * kMiB);
    const auto original = pattern(kMiB, 1);
    write_backing(file, 0, original);
    tgtd_->add_target(1, "iqn.2026-01.org.icbd.test:readonly");
    tgtd_->add_lun({1, 1, file, "readonly=1", "thin_provisioning=1"});
    IscsiClient c(tgtd_->url(1, 1));
    EXPECT_TRUE(write_protect_bit(c)) << "MODE SENSE does not report the LUN write-protected";
    ASSERT_NO_FATAL_FAILURE(expect_all_writes_refused(c, original));
    EXPECT_TRUE(same_bytes(read_backing(file, 0, original.size()), original)) << "backing file changed";
    EXPECT_TRUE(tgtd_->alive());
}

// A golden image inside a read-only BTRFS snapshot, exported with default
// bsopts: the module notices it cannot write it, serves it read-only, says so in
// the log, and refuses writes with WRITE PROTECTED (not MEDIUM ERROR or EROFS
// surprises at write time).
TEST_F(ErrorPaths, FileInReadOnlySnapshotIsServedReadOnly) {
    ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
    btrfs_ = std::make_unique<LoopFs>(LoopFs::Type::btrfs, 256 * kMiB);
    btrfs_->create_subvolume("golden");
    auto img = *btrfs_ / "golden/disk.img";
    make_sparse_file(img, 16 * kMiB);
    const auto original = pattern(kMiB, 2);
    write_backing(img, 0, original);
    btrfs_->snapshot_readonly("golden", "golden@1");
    auto snap_img = *btrfs_ / "golden@1/disk.img";

    const size_t log_mark = tgtd_->log().size();
    tgtd_->add_target(1, "iqn.2026-01.org.icbd.test:snapshot");
    tgtd_->add_lun({1, 1, snap_img, "", "thin_provisioning=1"});
    const std::string log = tgtd_->log_since(log_mark);
    EXPECT_TRUE(contains(log, snap_img.string()) && contains(log, "read-only"))
        << "no log line saying the snapshot file is served read-only; log:\n"
        << log;

    IscsiClient c(tgtd_->url(1, 1));
    EXPECT_TRUE(write_protect_bit(c)) << "MODE SENSE does not report the LUN write-protected";
    ASSERT_NO_FATAL_FAILURE(expect_all_writes_refused(c, original));
    EXPECT_TRUE(same_bytes(read_backing(snap_img, 0, original.size()), original));
    EXPECT_TRUE(tgtd_->alive());
}

// Bad --bsopts values, an unknown option, and bad backing files: tgtadm fails
// with tgtd's error, tgtd's log has the module's message naming the LUN and the
// problem, no half-made LUN stays behind, and tgtd keeps serving a LUN that
// was there before — while a session to it is open.
TEST_F(ErrorPaths, BadOptionsAndFilesFailCleanlyAndTgtdKeepsServing) {
    auto good_file = *dir_ / "good.img";
    make_sparse_file(good_file, 16 * kMiB);
    tgtd_->add_target(1, "iqn.2026-01.org.icbd.test:healthy");
    tgtd_->add_lun({1, 1, good_file});
    IscsiClient healthy(tgtd_->url(1, 1));
    ASSERT_TRUE(healthy.write16(0, pattern(4096, 3)).good());

    tgtd_->add_target(2, "iqn.2026-01.org.icbd.test:victim");
    auto victim = *dir_ / "victim.img";
    make_sparse_file(victim, 16 * kMiB);
    auto empty = *dir_ / "empty.img";
    make_sparse_file(empty, 0);
    auto missing = *dir_ / "does-not-exist.img";

    struct Case {
        std::filesystem::path path;
        std::string bsopts;
        std::string tgtadm_says;  // tgtadm's own (generic) message
        std::string log_says;     // the module's specific message in tgtd's log
    };
    const Case cases[] = {
        {victim, "queue_depth=0", "invalid request", "option 'queue_depth': bad value '0'"},
        {victim, "queue_depth=5000", "invalid request", "option 'queue_depth': bad value '5000'"},
        {victim, "queue_depth=12x", "invalid request", "option 'queue_depth': bad value '12x'"},
        {victim, "engine=turbo", "invalid request", "option 'engine': bad value 'turbo'"},
        {victim, "direct=maybe", "invalid request", "option 'direct': bad value 'maybe'"},
        {victim, "readonly", "invalid request", "'readonly' is not of the form name=value"},
        {victim, "readonly=1;colour=blue", "unknown parameter", "unknown option 'colour'"},
        {victim, "foo=1", "unknown parameter", "unknown option 'foo'"},
        {missing, "", "", missing.string() + "': open: No such file or directory"},
        {dir_->path(), "", "", dir_->path().string()},  // a directory
        {empty, "", "", empty.string() + "': is empty"},
    };
    for (const Case& k : cases) {
        SCOPED_TRACE("bsopts \"" + k.bsopts + "\", file " + k.path.string());
        const size_t mark = tgtd_->log().size();
        CommandResult r = tgtd_->try_add_lun({2, 1, k.path, k.bsopts});
        EXPECT_FALSE(r.ok()) << "tgtadm accepted it: " << r.describe();
        if (!k.tgtadm_says.empty()) {
            EXPECT_TRUE(contains(r.output, k.tgtadm_says)) << r.describe();
        }
        const std::string log = tgtd_->log_since(mark);
        EXPECT_TRUE(contains(log, "bs_icbd: tgt 2 lun 1: ")) << "the log does not name the LUN:\n" << log;
        EXPECT_TRUE(contains(log, k.log_says)) << "the log does not say \"" << k.log_says << "\":\n" << log;

        ASSERT_TRUE(tgtd_->alive()) << "tgtd died";
        CommandResult show = tgtd_->adm({"--op", "show", "--mode", "target", "--tid", "2"});
        EXPECT_FALSE(contains(show.output, "LUN: 1")) << "a failed LUN was left behind:\n" << show.output;
        auto data = pattern(4096, 1000 + mark);
        ScsiResult w = healthy.write16(8, data);
        ASSERT_TRUE(w.good()) << w;
        ScsiResult rd = healthy.read16(8, 8);
        ASSERT_TRUE(rd.good()) << rd;
        EXPECT_TRUE(same_bytes(rd.data, data));
    }
    // Nothing leaked: the same LUN number with good options works.
    tgtd_->add_lun({2, 1, victim, "queue_depth=64;engine=aio;direct=1"});
    IscsiClient c(tgtd_->url(2, 1));
    auto data = pattern(8192, 5);
    ASSERT_TRUE(c.write16(0, data).good());
    ScsiResult rd = c.read16(0, 16);
    ASSERT_TRUE(rd.good()) << rd;
    EXPECT_TRUE(same_bytes(rd.data, data));
}

// A sparse backing file larger than its (small, ext4) filesystem: once the
// filesystem is full a write fails with DATA PROTECT / SPACE ALLOCATION FAILED;
// tgtd survives, data written before is intact, and after space is freed (UNMAP)
// the same write succeeds — ENOSPC is not sticky.
class Enospc : public ::testing::TestWithParam<const char*> {};

TEST_P(Enospc, FullFilesystemGivesSpaceAllocationFailed) {
    ICBD_REQUIRE(TgtdInstance::unavailable());
    ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
    LoopFs fs(LoopFs::Type::ext4, 32 * kMiB);
    auto file = fs / "big.img";
    make_sparse_file(file, 128 * kMiB);
    TgtdInstance tgtd;
    tgtd.add_target(1, "iqn.2026-01.org.icbd.test:enospc");
    tgtd.add_lun({1, 1, file, GetParam(), "thin_provisioning=1"});
    IscsiClient c(tgtd.url(1, 1));

    const auto first = pattern(64 * 1024, 9);
    ASSERT_TRUE(c.write16(0, first, /*fua=*/true).good());

    const uint32_t per = kMiB / kBlock;
    const auto chunk = pattern(kMiB, 10);
    ScsiResult failed;
    uint64_t failed_lba = 0;
    for (uint64_t lba = per; lba + per <= c.blocks(); lba += per) {
        ScsiResult w = c.write16(lba, chunk);
        if (!w.good()) {
            failed = w;
            failed_lba = lba;
            break;
        }
    }
    ASSERT_NE(failed_lba, 0u) << "128 MiB of writes fit on a 32 MiB filesystem?";
    EXPECT_TRUE(failed.check_condition(scsi::key::data_protect, scsi::asc::space_allocation_failed)) << failed;
    const std::string log = tgtd.log();
    EXPECT_TRUE(contains(log, "No space left on device")) << "tgtd log does not say why:\n" << tgtd.log_tail(20);

    ASSERT_TRUE(tgtd.alive()) << "tgtd died on ENOSPC";
    ScsiResult r = c.read16(0, static_cast<uint32_t>(first.size() / kBlock));
    ASSERT_TRUE(r.good()) << r;
    EXPECT_TRUE(same_bytes(r.data, first)) << "data written before ENOSPC";
    ScsiResult again = c.write16(failed_lba, chunk);
    EXPECT_TRUE(again.check_condition(scsi::key::data_protect, scsi::asc::space_allocation_failed)) << again;

    // Free what the chunks took, then the failed write goes through.
    ScsiResult u = c.unmap({{per, static_cast<uint32_t>(failed_lba - per)}});
    ASSERT_TRUE(u.good()) << u;
    ScsiResult retry = c.write16(failed_lba, chunk);
    EXPECT_TRUE(retry.good()) << "after UNMAP freed space: " << retry;
    ScsiResult back = c.read16(failed_lba, per);
    ASSERT_TRUE(back.good()) << back;
    EXPECT_TRUE(same_bytes(back.data, chunk));
    if (HasFailure()) std::cerr << "---- tgtd log (tail) ----\n" << tgtd.log_tail(30) << "\n";
}

INSTANTIATE_TEST_SUITE_P(Engines, Enospc, ::testing::Values("", "engine=aio", "direct=1"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                             std::string s = i.param;
                             std::replace(s.begin(), s.end(), '=', '_');
                             return s.empty() ? std::string("default") : s;
                         });

}  // namespace
}  // namespace icbd::test
