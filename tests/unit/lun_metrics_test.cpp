// Per-LUN metrics files (docs/metrics.md): the layout a reader relies on, the
// reader's refusals, that no field can be read torn, and that a LUN's commands
// move its counters by exactly what it did.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "icbd/lun.hpp"
#include "icbd/lun_metrics.hpp"
#include "lun_driver.hpp"
#include "lun_metrics.hpp"
#include "scsi.hpp"

using namespace icbd;
using namespace icbd::test;
namespace fs = std::filesystem;
namespace m = icbd::metrics;

namespace {

class MetricsDir : public ::testing::Test {
protected:
    void SetUp() override {
        char name[] = "/tmp/icbd-metrics-XXXXXX";
        ASSERT_NE(mkdtemp(name), nullptr);
        dir_ = name;
    }
    void TearDown() override {
        lun_.reset();
        fs::remove_all(dir_);
    }
    LunMetricsIdentity identity(const std::string& backing = "/srv/images/win10/7/disk.raw") {
        return {(dir_ / "luns").string(), "tgt 3 lun 2", backing, "", "", false};
    }
    std::vector<fs::path> files() {
        std::vector<fs::path> out;
        if (fs::exists(dir_ / "luns"))
            for (auto& e : fs::directory_iterator(dir_ / "luns")) out.push_back(e.path());
        return out;
    }
    // A LUN over a sparse file of `size` bytes with the given bsopts.
    void open_lun(const std::string& bsopts, uint64_t size = 8 << 20) {
        backing_ = dir_ / "disk.raw";
        { std::ofstream(backing_).close(); }
        fs::resize_file(backing_, size);
        size_ = size;
        auto opts = parse_bsopts("metrics_dir=" + (dir_ / "luns").string() + bsopts);
        ASSERT_TRUE(opts) << opts.status().message();
        auto lun = Lun::create(*opts, rec_.host(), "tgt 5 lun 1");
        ASSERT_TRUE(lun) << lun.status().message();
        lun_ = std::move(*lun);
        auto s = lun_->open(backing_, 0);
        ASSERT_TRUE(s) << s.status().message();
    }
    m::LunSnapshot snapshot() {
        auto f = files();
        EXPECT_EQ(f.size(), 1u);
        auto s = m::read_lun_file(f.at(0));
        EXPECT_TRUE(s) << s.status().message();
        return *s;
    }
    fs::path dir_, backing_;
    uint64_t size_ = 0;
    Recorder rec_;
    std::unique_ptr<Lun> lun_;
};

TEST(LunMetricsLayout, BucketsAreLog2MicrosecondsWithInfLast) {
    EXPECT_EQ(m::latency_bucket(0), 0u);
    EXPECT_EQ(m::latency_bucket(1000), 0u);   // 1 us: le 1e-6
    EXPECT_EQ(m::latency_bucket(1001), 1u);   // just above: le 2e-6
    EXPECT_EQ(m::latency_bucket(2000), 1u);
    EXPECT_EQ(m::latency_bucket(2001), 2u);
    EXPECT_EQ(m::latency_bucket(1'000'000), 10u);  // 1 ms <= 1024 us
    EXPECT_EQ(m::latency_bucket(1024'000), 10u);
    EXPECT_EQ(m::latency_bucket(1024'001), 11u);
    EXPECT_EQ(m::latency_bucket(uint64_t(1) << 62), m::latency_buckets - 1);  // +Inf
}

TEST(LunMetricsLayout, FileNamesAreStableEscapedPaths) {
    EXPECT_EQ(m::file_name_for("/var/lib/icbd/clients/alice.ovl"), "var-lib-icbd-clients-alice.ovl.lunm");
    EXPECT_EQ(m::file_name_for("/a-b/c d%"), "a%2Db-c%20d%25.lunm");  // '-' escaped: no collision with '/'
    EXPECT_NE(m::file_name_for("/a-b"), m::file_name_for("/a/b"));
    std::string long_path = "/" + std::string(300, 'x');
    std::string n = m::file_name_for(long_path);
    EXPECT_LE(n.size(), 255u);
    EXPECT_NE(n, m::file_name_for(long_path + "y"));
}

TEST_F(MetricsDir, WriterPublishesHeaderAndReaderSeesCounters) {
    auto w = LunMetrics::create(identity());
    ASSERT_TRUE(w);
    EXPECT_EQ(fs::path(w->path()).filename(), "srv-images-win10-7-disk.raw.lunm");
    EXPECT_EQ(fs::file_size(w->path()), m::file_bytes);
    w->record(m::dir_read, 4096, 1500, 0, 0);     // 1.5 us: bucket 1
    w->record(m::dir_write, 8192, 3'000'000, 0, 0);
    w->record(m::dir_write, 512, 10'000, 2, 3);   // CHECK CONDITION, MEDIUM ERROR
    auto s = m::read_lun_file(w->path());
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(s->name, "tgt 3 lun 2");
    EXPECT_EQ(s->tid, 3);
    EXPECT_EQ(s->lun, 2u);
    EXPECT_EQ(s->backing_path, "/srv/images/win10/7/disk.raw");
    EXPECT_EQ(s->writer_pid, static_cast<uint32_t>(getpid()));
    EXPECT_TRUE(m::writer_alive(*s));
    const auto& c = s->counters;
    EXPECT_EQ(c.dir[m::dir_read].commands, 1u);
    EXPECT_EQ(c.dir[m::dir_read].bytes, 4096u);
    EXPECT_EQ(c.dir[m::dir_read].buckets[1], 1u);
    EXPECT_EQ(c.dir[m::dir_write].commands, 2u);
    EXPECT_EQ(c.dir[m::dir_write].bytes, 8192u);  // the failed one moved no bytes
    EXPECT_EQ(c.dir[m::dir_write].latency_sum_ns, 3'010'000u);
    EXPECT_EQ(c.errors_by_sense_key[3], 1u);
    EXPECT_EQ(c.block_size, 4096u);
    // No temporary file is left beside the published one.
    EXPECT_EQ(files().size(), 1u);
    const std::string path = w->path();
    w.reset();
    EXPECT_FALSE(fs::exists(path)) << "the file outlived its LUN";
}

TEST_F(MetricsDir, ReaderRefusesOtherLayoutsWithAClearMessage) {
    auto w = LunMetrics::create(identity());
    ASSERT_TRUE(w);
    int fd = open(w->path().c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint32_t v = 2;
    ASSERT_EQ(pwrite(fd, &v, 4, 8), 4);
    auto s = m::read_lun_file(w->path());
    ASSERT_FALSE(s);
    EXPECT_EQ(s.status().code(), EPROTO);
    EXPECT_NE(s.status().message().find("layout version 2, this reader knows 1"), std::string::npos)
        << s.status().message();
    EXPECT_NE(s.status().message().find(w->path()), std::string::npos);
    // A directory scrape reports it and goes on.
    auto d = m::read_lun_dir(dir_ / "luns");
    EXPECT_TRUE(d.luns.empty());
    ASSERT_EQ(d.refused.size(), 1u);
    v = 1;
    ASSERT_EQ(pwrite(fd, &v, 4, 8), 4);
    ASSERT_EQ(ftruncate(fd, 4096), 0);  // cut short
    s = m::read_lun_file(w->path());
    ASSERT_FALSE(s);
    EXPECT_NE(s.status().message().find("4096 bytes"), std::string::npos) << s.status().message();
    uint64_t bad = 42;
    ASSERT_EQ(pwrite(fd, &bad, 8, 0), 8);
    s = m::read_lun_file(w->path());
    ASSERT_FALSE(s);
    EXPECT_NE(s.status().message().find("bad magic"), std::string::npos);
    close(fd);
}

TEST_F(MetricsDir, FilesOfDeadWritersAreSkipped) {
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        auto w = LunMetrics::create(identity());
        LunMetrics* leaked = w.release();  // killed without cleanup, as tgtd under kill -9
        _exit(leaked ? 0 : 1);
    }
    int st = 0;
    ASSERT_EQ(waitpid(child, &st, 0), child);
    ASSERT_EQ(WEXITSTATUS(st), 0);
    ASSERT_EQ(files().size(), 1u);
    auto d = m::read_lun_dir(dir_ / "luns");
    EXPECT_TRUE(d.luns.empty());
    EXPECT_EQ(d.stale, 1u);
    // The next LUN with that identity takes the name over.
    auto w = LunMetrics::create(identity());
    ASSERT_TRUE(w);
    d = m::read_lun_dir(dir_ / "luns");
    EXPECT_EQ(d.luns.size(), 1u);
}

TEST_F(MetricsDir, AClosingLunDoesNotRemoveItsSuccessorsFile) {
    auto first = LunMetrics::create(identity());
    auto second = LunMetrics::create(identity());  // same backing file: replaces the name
    ASSERT_TRUE(first && second);
    first.reset();
    EXPECT_TRUE(fs::exists(second->path()));
}

TEST_F(MetricsDir, AnUncreatableDirectoryTurnsMetricsOffOnly) {
    { std::ofstream(dir_ / "file").close(); }
    LunMetricsIdentity id = identity();
    id.dir = (dir_ / "file" / "luns").string();
    EXPECT_EQ(LunMetrics::create(id), nullptr);
    // A LUN whose metrics directory cannot be made serves I/O all the same.
    auto opts = parse_bsopts("metrics_dir=" + id.dir);
    ASSERT_TRUE(opts);
    backing_ = dir_ / "disk.raw";
    { std::ofstream(backing_).close(); }
    fs::resize_file(backing_, 1 << 20);
    auto lun = Lun::create(*opts, rec_.host(), "tgt 1 lun 1");
    ASSERT_TRUE(lun);
    ASSERT_TRUE((*lun)->open(backing_, 0));
    LunOps ops{**lun, rec_, 1 << 20};
    ops.write(0, std::vector<uint8_t>(4096, 7));
    EXPECT_EQ(ops.read(0, 8), std::vector<uint8_t>(4096, 7));
}

TEST_F(MetricsDir, MetricsDirOffMakesNoFile) {
    auto opts = parse_bsopts("metrics_dir=off");
    ASSERT_TRUE(opts);
    EXPECT_EQ(opts->metrics_dir, "off");
    EXPECT_EQ(LunMetrics::resolve_dir("off"), "");
    EXPECT_FALSE(parse_bsopts("metrics_dir=relative"));
}

// Every field is an aligned 8-byte word stored atomically: a reader in another
// process never sees half of an old value and half of a new one. The writer
// stores values whose two halves are equal; a torn read would mix them.
TEST_F(MetricsDir, NoFieldCanBeReadTorn) {
    auto w = LunMetrics::create(identity());
    ASSERT_TRUE(w);
    uint64_t* fields = reinterpret_cast<uint64_t*>(&w->counters());
    constexpr size_t n = sizeof(m::LunCounters) / 8;
    for (size_t i = 0; i < n; ++i) m::set(fields[i], 0);  // block_size = 4096 would read as "torn"
    std::atomic<bool> stop{false};
    std::thread writer([&] {
        for (uint32_t k = 1; !stop.load(std::memory_order_relaxed); ++k) {
            uint32_t v = k * 0x9E3779B1u;  // both halves change in every bit pattern
            for (size_t i = 0; i < n; ++i) m::set(fields[i], uint64_t(v) << 32 | v);
        }
    });
    // The reader maps the file itself, as blockd does.
    int fd = open(w->path().c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    void* map = mmap(nullptr, m::file_bytes, PROT_READ, MAP_SHARED, fd, 0);
    ASSERT_NE(map, MAP_FAILED);
    const auto* live = reinterpret_cast<const uint64_t*>(static_cast<const char*>(map) + m::header_bytes);
    size_t torn = 0, reads = 0;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
    while (std::chrono::steady_clock::now() < until) {
        for (size_t i = 0; i < n; ++i, ++reads) {
            uint64_t v = m::load(live[i]);
            if ((v >> 32) != (v & 0xffffffffu)) ++torn;
        }
        auto s = m::read_lun_file(w->path());  // the reader API too
        ASSERT_TRUE(s);
        const auto* c = reinterpret_cast<const uint64_t*>(&s->counters);
        for (size_t i = 0; i < n; ++i, ++reads)
            if ((c[i] >> 32) != (c[i] & 0xffffffffu)) ++torn;
    }
    stop = true;
    writer.join();
    munmap(map, m::file_bytes);
    close(fd);
    EXPECT_EQ(torn, 0u) << "of " << reads << " reads";
    EXPECT_GT(reads, 100000u);
}

// The counters of a raw LUN move by exactly what its commands did.
TEST_F(MetricsDir, RawLunCountsCommandsBytesErrorsAndQueueDepth) {
    open_lun("");
    LunOps ops{*lun_, rec_, size_};
    ops.write(0, std::vector<uint8_t>(8192, 1));   // 16 blocks
    ops.write(100, std::vector<uint8_t>(512, 2));
    ops.read(0, 8);
    ops.read(0, 16);
    ops.read(3, 1);
    ops.sync();
    // COMPARE AND WRITE that does not match: MISCOMPARE, no bytes written.
    Cmd caw = make_cmd(scsi::op::compare_and_write, 0, 1, size_);
    caw.out.assign(1024, 9);  // compare half differs from the 1s written above
    EXPECT_EQ(run_cmd(*lun_, rec_, caw).sense_key, scsi::key::miscompare);
    auto s = snapshot();
    EXPECT_EQ(s.tid, 5);
    EXPECT_EQ(s.backing_path, backing_.string());
    const auto& c = s.counters;
    EXPECT_EQ(c.dir[m::dir_read].commands, 3u);
    EXPECT_EQ(c.dir[m::dir_read].bytes, (8 + 16 + 1) * 512u);
    EXPECT_EQ(c.dir[m::dir_write].commands, 3u);
    EXPECT_EQ(c.dir[m::dir_write].bytes, 8192u + 512u);
    EXPECT_EQ(c.dir[m::dir_other].commands, 1u);
    EXPECT_EQ(c.dir[m::dir_other].bytes, 0u);
    EXPECT_EQ(c.errors_by_sense_key[scsi::key::miscompare], 1u);
    for (unsigned d = 0; d < m::dir_count; ++d) {
        uint64_t in_buckets = 0;
        for (uint64_t b : c.dir[d].buckets) in_buckets += b;
        EXPECT_EQ(in_buckets, c.dir[d].commands) << m::dir_name(d);
        EXPECT_GT(c.dir[d].latency_sum_ns, 0u);
    }
    EXPECT_EQ(c.queue_depth, 0u);
    EXPECT_EQ(c.cache_blocks_total, 0u);
    // Commands in flight show as queue depth until they complete.
    Cmd r1 = make_cmd(scsi::op::read_16, 0, 8, size_), r2 = make_cmd(scsi::op::read_16, 8, 8, size_);
    r1.in.resize(4096), r2.in.resize(4096);
    for (Cmd* c2 : {&r1, &r2}) {
        c2->lc.cookie = c2;
        c2->lc.in_buf = c2->in.data();
        c2->lc.in_len = 4096;
        lun_->submit(c2->lc);
    }
    EXPECT_EQ(snapshot().counters.queue_depth, 2u);
    for (int i = 0; i < 10000 && rec_.done.size() < 2; ++i) {
        lun_->submit_batch();
        lun_->process_completions();
        usleep(100);
    }
    EXPECT_EQ(snapshot().counters.queue_depth, 0u);
    const std::string file = files().at(0);
    lun_.reset();
    EXPECT_FALSE(fs::exists(file)) << "removing the LUN removes its file";
}

TEST_F(MetricsDir, CachedLunShowsUsedDirtyFlushesAndCommits) {
    open_lun(";cache=" + (dir_ / "lun.cache").string() + ";cache_size=4M;cache_idle=0");
    LunOps ops{*lun_, rec_, size_};
    auto s = snapshot();
    EXPECT_EQ(s.cache_path, (dir_ / "lun.cache").string());
    EXPECT_TRUE(s.flags & m::flag_cache);
    EXPECT_GT(s.counters.cache_blocks_total, 0u);
    EXPECT_EQ(s.counters.cache_blocks_used, 0u);
    ops.write(0, std::vector<uint8_t>(4 * 4096, 3));  // 4 cache blocks
    s = snapshot();
    EXPECT_EQ(s.counters.cache_blocks_used, 4u);
    EXPECT_EQ(s.counters.cache_blocks_dirty, 4u);
    const uint64_t commits = s.counters.cache_commits;
    ops.sync();
    EXPECT_GT(snapshot().counters.cache_commits, commits);
    const std::string file = files().at(0);
    lun_->close();
    EXPECT_FALSE(fs::exists(file));
}

TEST_F(MetricsDir, CachedLunCountsWriteBack) {
    open_lun(";cache=" + (dir_ / "lun.cache").string() + ";cache_size=4M;cache_idle=1");
    LunOps ops{*lun_, rec_, size_};
    ops.write(0, std::vector<uint8_t>(4 * 4096, 3));
    // Idle write-back after 1 ms: drive the timer as tgtd's loop would.
    m::LunSnapshot s;
    for (int i = 0; i < 2000; ++i) {
        usleep(1000);
        lun_->on_timer();
        lun_->submit_batch();
        lun_->process_completions();
        s = snapshot();
        if (s.counters.cache_blocks_dirty == 0 && s.counters.cache_flush_bytes) break;
    }
    EXPECT_EQ(s.counters.cache_flush_bytes, 4 * 4096u);
    EXPECT_EQ(s.counters.cache_blocks_dirty, 0u);
}

TEST_F(MetricsDir, OverlayLunCountsBlocksCopiedUpOnce) {
    backing_ = dir_ / "golden.raw";
    { std::ofstream(backing_).close(); }
    fs::resize_file(backing_, 1 << 20);
    const fs::path overlay = dir_ / "alice.ovl";
    auto opts = parse_bsopts("metrics_dir=" + (dir_ / "luns").string() + ";overlay=" + overlay.string());
    ASSERT_TRUE(opts);
    auto lun = Lun::create(*opts, rec_.host(), "tgt 2 lun 1");
    ASSERT_TRUE(lun);
    lun_ = std::move(*lun);
    ASSERT_TRUE(lun_->open(backing_, 0));
    auto s = snapshot();
    EXPECT_EQ(s.file.filename(), m::file_name_for(overlay.string())) << "named by the overlay, not the shared golden file";
    EXPECT_EQ(s.overlay_path, overlay.string());
    EXPECT_EQ(s.backing_path, backing_.string());
    EXPECT_TRUE(s.flags & m::flag_overlay);
    LunOps ops{*lun_, rec_, 1 << 20};
    ops.write(0, std::vector<uint8_t>(512, 1));     // part of block 0: copied up
    ops.write(8, std::vector<uint8_t>(8192, 2));    // blocks 1 and 2, whole
    ops.write(1, std::vector<uint8_t>(512, 3));     // block 0 again: already present
    EXPECT_EQ(snapshot().counters.overlay_blocks_written, 3u);
}

}  // namespace
