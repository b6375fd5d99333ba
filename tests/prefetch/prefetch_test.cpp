// prefetch_file on a real ext4 (loop device): exactly the boot set lands in the
// page cache, a second run reads nothing, and the early ends (memory pressure,
// file removed, cancel) stop it cleanly.
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include "icbd/prefetch.hpp"
#include "prefetch_fixture.hpp"
#include "run_command.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kFileSize = 256 * kMiB;

void write_meminfo(const fs::path& p, uint64_t total_kib, uint64_t available_kib) {
    std::ofstream(p) << "MemTotal:       " << total_kib << " kB\nMemFree:        " << available_kib
                     << " kB\nMemAvailable:   " << available_kib << " kB\nBuffers:        0 kB\n";
}

class PrefetchTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (LoopFs::unavailable(LoopFs::Type::ext4)) return;
        fs_ = std::make_unique<LoopFs>(LoopFs::Type::ext4, 768 * kMiB);
        write_golden(*fs_ / "golden.raw", kFileSize);
    }
    static void TearDownTestSuite() { fs_.reset(); }
    void SetUp() override {
        PREFETCH_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
        ASSERT_NE(fs_, nullptr);
        golden_ = *fs_ / "golden.raw";
        drop_cache(golden_);
        meminfo_ = *fs_ / "meminfo";
        write_meminfo(meminfo_, 16 * 1024 * 1024, 12 * 1024 * 1024);  // 16 GiB, 12 available
        options_.meminfo = meminfo_;
    }

    static std::unique_ptr<LoopFs> fs_;
    fs::path golden_;
    fs::path meminfo_;
    PrefetchOptions options_;
};
std::unique_ptr<LoopFs> PrefetchTest::fs_;

TEST_F(PrefetchTest, ReadsExactlyTheBootSetAndASecondRunReadsNothing) {
    const BootSet set = scattered_set(kFileSize, 80 * kMiB, 1);
    std::vector<PrefetchProgress> seen, first;
    options_.progress = [&](const PrefetchProgress& p) { seen.push_back(p); };
    Result<PrefetchSummary> s = Status::error(EAGAIN, "not run");
    Result<PrefetchSummary> again = Status::error(EAGAIN, "not run");
    Residency r;
    for (int attempt = 1;; ++attempt) {
        drop_cache(golden_);
        ASSERT_EQ(residency(golden_, set).in_set_resident, 0u) << "the cache of the golden file was not dropped";
        seen.clear();
        const uint64_t drops = global_cache_drops();
        s = prefetch_file(golden_, set, options_);
        first = seen;
        r = residency(golden_, set);
        again = prefetch_file(golden_, set, options_);
        if (global_cache_drops() == drops || attempt == kAttemptsAgainstDrops) break;
        std::cerr << "another process dropped the page cache meanwhile (drop_caches): again\n";
    }
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::complete) << s->detail;
    EXPECT_EQ(s->total_bytes, set.bytes());
    EXPECT_EQ(s->read_bytes, set.bytes());
    EXPECT_EQ(s->cached_bytes, 0u);
    // Requests of at most 1 MiB: at least one per run, at least one per MiB.
    EXPECT_GE(s->requests, set.runs().size());
    EXPECT_GE(s->requests, set.bytes() / kMiB);
    EXPECT_EQ(r.in_set_resident, r.in_set) << "pages of the boot set missing from the page cache";
    // No readahead past the set: of the other ~176 MiB, (almost) nothing.
    EXPECT_LE(r.outside_resident, r.outside / 100) << r.outside_resident << " of " << r.outside
                                                   << " pages outside the boot set were read too";
    // Progress at 64 MiB and at the end, the last one complete.
    ASSERT_GE(first.size(), 2u);
    EXPECT_EQ(first.back().done_bytes, set.bytes());
    EXPECT_EQ(first.back().total_bytes, set.bytes());
    EXPECT_GE(first.front().done_bytes, 64 * kMiB);

    ASSERT_TRUE(again) << again.status().message();
    EXPECT_EQ(again->end, PrefetchEnd::complete);
    EXPECT_EQ(again->read_bytes, 0u);
    EXPECT_EQ(again->requests, 0u);
    EXPECT_EQ(again->cached_bytes, set.bytes());
}

TEST_F(PrefetchTest, ReadsOnlyTheUncachedPartsOfAPartlyCachedSet) {
    const BootSet set = scattered_set(kFileSize, 16 * kMiB, 2);
    const auto runs = set.runs();
    Result<PrefetchSummary> s = Status::error(EAGAIN, "not run");
    for (int attempt = 1;; ++attempt) {
        drop_cache(golden_);
        const uint64_t drops = global_cache_drops();
        // The first run already in memory (read by a client, say).
        UniqueFd fd(::open(golden_.c_str(), O_RDONLY | O_CLOEXEC));
        ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_RANDOM);
        std::vector<uint8_t> buf(runs[0].length);
        ASSERT_EQ(::pread(fd.get(), buf.data(), buf.size(), static_cast<off_t>(runs[0].offset)), ssize_t(buf.size()));
        s = prefetch_file(golden_, set, options_);
        if (global_cache_drops() == drops || attempt == kAttemptsAgainstDrops) break;
        std::cerr << "another process dropped the page cache meanwhile (drop_caches): again\n";
    }
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::complete);
    EXPECT_EQ(s->cached_bytes, runs[0].length);
    EXPECT_EQ(s->read_bytes, set.bytes() - runs[0].length);
}

TEST_F(PrefetchTest, ReadsAtIdleIoPriorityOnItsOwnThreads) {
    const BootSet set = scattered_set(kFileSize, 72 * kMiB, 3);
    std::atomic<int> idle_class_seen{-1};
    const pid_t caller = static_cast<pid_t>(::syscall(SYS_gettid));
    options_.progress = [&](const PrefetchProgress&) {
        if (static_cast<pid_t>(::syscall(SYS_gettid)) == caller) return;  // the final call
        const long prio = ::syscall(SYS_ioprio_get, 1 /* IOPRIO_WHO_PROCESS */, 0);
        idle_class_seen = static_cast<int>(prio >> 13);
    };
    const long before = ::syscall(SYS_ioprio_get, 1, 0);
    auto s = prefetch_file(golden_, set, options_);
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(idle_class_seen.load(), 3) << "the reading thread's I/O class (3: idle)";
    EXPECT_EQ(::syscall(SYS_ioprio_get, 1, 0), before) << "the caller's I/O priority changed";
}

TEST_F(PrefetchTest, LowMemAvailableStopsBeforeTheFirstRead) {
    const BootSet set = scattered_set(kFileSize, 16 * kMiB, 4);
    write_meminfo(meminfo_, 16 * 1024 * 1024, 200 * 1024);  // 200 MiB of 16 GiB
    auto s = prefetch_file(golden_, set, options_);
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::memory_pressure);
    EXPECT_EQ(s->read_bytes, 0u);
    EXPECT_NE(s->detail.find(meminfo_.string()), std::string::npos) << s->detail;
    EXPECT_STREQ(prefetch_end_name(s->end), "memory pressure");
    EXPECT_EQ(residency(golden_, set).in_set_resident, 0u);
}

TEST_F(PrefetchTest, MemAvailableFallingMidwayStopsThere) {
    const BootSet set = scattered_set(kFileSize, 128 * kMiB, 5);
    options_.in_flight = 1;
    // What is left plus the reserve no longer fits once the first 64 MiB are in.
    options_.progress = [&](const PrefetchProgress& p) {
        if (p.done_bytes < p.total_bytes) write_meminfo(meminfo_, 16 * 1024 * 1024, 300 * 1024);
    };
    auto s = prefetch_file(golden_, set, options_);
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::memory_pressure);
    EXPECT_GE(s->read_bytes, 64 * kMiB);
    EXPECT_LT(s->read_bytes, set.bytes());
}

TEST_F(PrefetchTest, UnreadableMeminfoIsAnErrorNamingIt) {
    const BootSet set = scattered_set(kFileSize, 4 * kMiB, 6);
    options_.meminfo = *fs_ / "no-such-meminfo";
    auto s = prefetch_file(golden_, set, options_);
    ASSERT_FALSE(s);
    EXPECT_NE(s.status().message().find("no-such-meminfo"), std::string::npos) << s.status().message();
}

TEST_F(PrefetchTest, FileDeletedMidwayEndsFileGoneNotAnError) {
    const fs::path victim = *fs_ / "victim.raw";
    write_golden(victim, 64 * kMiB);
    drop_cache(victim);
    const BootSet set = scattered_set(64 * kMiB, 48 * kMiB, 7);
    options_.max_rate = 16 * kMiB;  // 3 s for the whole set
    std::jthread deleter([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(400));
        fs::remove(victim);
    });
    auto s = prefetch_file(victim, set, options_);
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::file_gone) << s->detail;
    EXPECT_LT(s->read_bytes, set.bytes());
    EXPECT_LT(s->seconds, 2.5) << "it went on reading a removed file";
    EXPECT_NE(s->detail.find("victim.raw"), std::string::npos) << s->detail;
}

TEST_F(PrefetchTest, FileReplacedByAnotherEndsFileGone) {
    const fs::path victim = *fs_ / "replaced.raw";
    write_golden(victim, 32 * kMiB);
    drop_cache(victim);
    const BootSet set = scattered_set(32 * kMiB, 24 * kMiB, 8);
    options_.max_rate = 16 * kMiB;
    std::jthread replacer([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        std::ofstream(*fs_ / "other.raw") << "x";
        fs::rename(*fs_ / "other.raw", victim);
    });
    auto s = prefetch_file(victim, set, options_);
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::file_gone) << s->detail;
    EXPECT_NE(s->detail.find("another file"), std::string::npos) << s->detail;
    fs::remove(victim);
}

TEST_F(PrefetchTest, MissingFileEndsFileGone) {
    const BootSet set = scattered_set(kFileSize, 4 * kMiB, 9);
    auto s = prefetch_file(*fs_ / "never-there.raw", set, options_);
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::file_gone);
    EXPECT_EQ(s->read_bytes, 0u);
}

TEST_F(PrefetchTest, MaxRateBoundsTheRate) {
    const BootSet set = scattered_set(kFileSize, 24 * kMiB, 10);
    options_.max_rate = 32 * kMiB;
    auto s = prefetch_file(golden_, set, options_);
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::complete);
    // The first request goes at once; the rest at 32 MiB/s.
    EXPECT_GE(s->seconds, double(set.bytes() - kMiB) / double(32 * kMiB) * 0.95);
    EXPECT_LE(s->mib_per_s(), 32 * 1.1);
}

TEST_F(PrefetchTest, CancelStopsBeforeTheNextRead) {
    const BootSet set = scattered_set(kFileSize, 32 * kMiB, 11);
    options_.max_rate = 8 * kMiB;
    std::atomic<bool> cancel{false};
    options_.cancel = &cancel;
    std::jthread canceller([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        cancel = true;
    });
    auto s = prefetch_file(golden_, set, options_);
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::cancelled);
    EXPECT_LT(s->seconds, 1.5);
    EXPECT_LT(s->read_bytes, set.bytes());
}

TEST_F(PrefetchTest, AFileShorterThanItsSetIsReadToItsEnd) {
    const fs::path small = *fs_ / "short.raw";
    write_golden(small, 8 * kMiB + 12345);
    drop_cache(small);
    auto made = BootSet::create(32 * kMiB);
    ASSERT_TRUE(made);
    BootSet set = std::move(made.value());
    set.mark(6 * kMiB, 20 * kMiB);  // runs past the file's end
    auto s = prefetch_file(small, set, options_);
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::complete);
    EXPECT_EQ(s->total_bytes, 2 * kMiB + 12345);
    EXPECT_EQ(s->read_bytes, 2 * kMiB + 12345);
    fs::remove(small);
}

// A version is a read-only BTRFS snapshot: deleting it leaves an open file
// readable, only the path tells.
TEST(PrefetchBtrfsTest, VersionSubvolumeDeletedMidwayEndsFileGone) {
    PREFETCH_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
    PREFETCH_REQUIRE(have_program("btrfs") ? std::nullopt : std::optional<std::string>("btrfs-progs not installed"));
    LoopFs btrfs(LoopFs::Type::btrfs, 384 * kMiB);
    btrfs.create_subvolume("work");
    write_golden(btrfs / "work/disk.raw", 48 * kMiB);
    btrfs.snapshot_readonly("work", "7");
    const fs::path file = btrfs / "7/disk.raw";
    drop_cache(file);
    const BootSet set = scattered_set(48 * kMiB, 32 * kMiB, 12);
    PrefetchOptions o;
    o.max_rate = 16 * kMiB;  // 2 s for the whole set
    CommandResult deleted;
    std::jthread deleter([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(400));
        deleted = run_command({"btrfs", "subvolume", "delete", (btrfs / "7").string()});
    });
    auto s = prefetch_file(file, set, o);
    deleter.join();
    ASSERT_TRUE(deleted.ok()) << deleted.describe();
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->end, PrefetchEnd::file_gone) << s->detail;
    EXPECT_LT(s->read_bytes, set.bytes());
}

}  // namespace
}  // namespace icbd::test
