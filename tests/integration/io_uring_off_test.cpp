// Hosts without io_uring: with io_uring really switched off — by the
// kernel.io_uring_disabled sysctl, and by a seccomp filter as container runtimes
// install — a LUN with default bsopts is served by the libaio engine, tgtd's log
// says so and why, and I/O (FUA, SYNCHRONIZE CACHE, UNMAP included) works.
// Forcing engine=io_uring there fails the LUN creation cleanly.
//
// The sysctl is machine-wide: CTest runs this program alone (RUN_SERIAL), and
// the sysctl is off only while the LUNs are created, then restored (RAII, on
// every path) before any I/O, so other programs on the machine are blocked from
// creating io_uring instances for as short a time as possible.
#include <memory>

#include "integration_test.hpp"
#include "iscsi_client.hpp"
#include "sysctl_override.hpp"
#include "temp_dir.hpp"
#include "tgtd_instance.hpp"

namespace icbd::test {
namespace {

constexpr uint32_t kBlock = 512;
constexpr uint64_t kMiB = 1ull << 20;
const char* const kSysctl = "kernel.io_uring_disabled";

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

// The fallback line of the LUN just created, from the log since `mark`.
void expect_aio_fallback_logged(const std::string& log) {
    EXPECT_TRUE(contains(log, "bs_icbd: tgt 1 lun 1: io_uring unavailable (") &&
                contains(log, "serving this LUN with the libaio engine"))
        << "no log line saying the aio engine was chosen; log:\n"
        << log;
    EXPECT_TRUE(contains(log, "io_uring_setup") && contains(log, "Operation not permitted"))
        << "the log line does not say why (io_uring_setup: EPERM); log:\n"
        << log;
}

// Forcing io_uring where there is none: tgtadm fails, the log says why, tgtd lives.
void expect_forced_io_uring_refused(TgtdInstance& tgtd, const std::filesystem::path& file) {
    const size_t mark = tgtd.log().size();
    CommandResult r = tgtd.try_add_lun({1, 2, file, "engine=io_uring"});
    EXPECT_FALSE(r.ok()) << "engine=io_uring accepted with io_uring off: " << r.describe();
    const std::string log = tgtd.log_since(mark);
    EXPECT_TRUE(contains(log, "bs_icbd: tgt 1 lun 2: ") && contains(log, "io_uring_setup"))
        << "no clear error for engine=io_uring; log:\n"
        << log;
    EXPECT_TRUE(tgtd.alive());
}

// Plain, FUA and unaligned writes, SYNCHRONIZE CACHE, UNMAP: the aio engine does
// the whole data path.
void exercise(IscsiClient& c, const std::filesystem::path& file) {
    uint64_t seed = 1;
    for (uint32_t bytes : {512u, 4096u, 65536u, 1024u * 1024u}) {
        for (uint64_t lba : {0ull, 3ull, 2048ull}) {
            auto data = pattern(bytes, ++seed);
            const bool fua = seed % 2;
            ScsiResult w = c.write16(lba + 4096, data, fua);
            ASSERT_TRUE(w.good()) << w;
            ScsiResult r = c.read16(lba + 4096, bytes / kBlock);
            ASSERT_TRUE(r.good()) << r;
            ASSERT_TRUE(same_bytes(r.data, data)) << bytes << " bytes at LBA " << lba + 4096;
            ASSERT_TRUE(same_bytes(read_backing(file, (lba + 4096) * kBlock, bytes), data));
        }
    }
    ScsiResult s10 = c.sync_cache10();
    EXPECT_TRUE(s10.good()) << s10;
    ScsiResult s16 = c.sync_cache16();
    EXPECT_TRUE(s16.good()) << s16;
    const uint64_t lba = 8 * (kMiB / kBlock);
    ASSERT_TRUE(c.write16(lba, pattern(kMiB, 99)).good());
    ScsiResult u = c.unmap({{lba, static_cast<uint32_t>(kMiB / kBlock)}});
    ASSERT_TRUE(u.good()) << u;
    ScsiResult r = c.read16(lba, static_cast<uint32_t>(kMiB / kBlock));
    ASSERT_TRUE(r.good()) << r;
    EXPECT_TRUE(all_zero(r.data));
    EXPECT_TRUE(is_hole(file, lba * kBlock, kMiB));
}

TEST(IoUringOff, SysctlIoUringDisabledFallsBackToAio) {
    ICBD_REQUIRE(TgtdInstance::unavailable());
    const auto before = SysctlOverride::read(kSysctl);
    if (!before) GTEST_SKIP() << "this kernel has no " << kSysctl << " (Linux < 6.6); the seccomp test covers the path";

    TempDir dir("/var/tmp", "icbd-nouring-");
    auto file = dir / "disk.img", file2 = dir / "disk2.img";
    make_sparse_file(file, 32 * kMiB);
    make_sparse_file(file2, 32 * kMiB);
    TgtdInstance tgtd;  // tgtd itself needs no io_uring; only LUN creation does
    tgtd.add_target(1, "iqn.2026-01.org.icbd.test:nouring-sysctl");
    const size_t mark = tgtd.log().size();
    {
        SysctlOverride off(kSysctl, "2");  // 2: io_uring_setup fails with EPERM for everyone, root included
        tgtd.add_lun({1, 1, file, "", "thin_provisioning=1"});
        expect_forced_io_uring_refused(tgtd, file2);
    }
    ASSERT_EQ(SysctlOverride::read(kSysctl), before) << kSysctl << " was not restored";
    expect_aio_fallback_logged(tgtd.log_since(mark));

    IscsiClient c(tgtd.url(1, 1));
    ASSERT_NO_FATAL_FAILURE(exercise(c, file));
    EXPECT_TRUE(tgtd.alive());
    if (HasFailure()) std::cerr << "---- tgtd log (tail) ----\n" << tgtd.log_tail(30) << "\n";
}

TEST(IoUringOff, SeccompBlockedIoUringFallsBackToAio) {
    ICBD_REQUIRE(TgtdInstance::unavailable());
    TempDir dir("/var/tmp", "icbd-nouring-");
    auto file = dir / "disk.img", file2 = dir / "disk2.img";
    make_sparse_file(file, 32 * kMiB);
    make_sparse_file(file2, 32 * kMiB);
    TgtdInstance tgtd(TgtdOptions{.env = {}, .no_io_uring = true});
    tgtd.add_target(1, "iqn.2026-01.org.icbd.test:nouring-seccomp");
    const size_t mark = tgtd.log().size();
    tgtd.add_lun({1, 1, file, "", "thin_provisioning=1"});
    expect_aio_fallback_logged(tgtd.log_since(mark));
    expect_forced_io_uring_refused(tgtd, file2);

    IscsiClient c(tgtd.url(1, 1));
    ASSERT_NO_FATAL_FAILURE(exercise(c, file));
    EXPECT_TRUE(tgtd.alive());
    if (HasFailure()) std::cerr << "---- tgtd log (tail) ----\n" << tgtd.log_tail(30) << "\n";
}

}  // namespace
}  // namespace icbd::test
