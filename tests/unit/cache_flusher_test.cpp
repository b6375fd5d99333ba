// The write-back cache's flusher (blockd/cache_flusher.hpp) round by round,
// on a real cache file over a raw file, with faults injected below
// (FaultyEngine): a round walks its named phases in order, and a failure in
// each phase undoes what that phase has to (blocks stay dirty, or the cache
// is failed), is remembered with its phase and errno, starts no retry loop,
// and is cleared by the next good round. What the initiator sees of the same
// failures through a LUN: cache_faults_test.
#include <fcntl.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <vector>

#include "cache_flusher.hpp"
#include "cache_layer.hpp"
#include "faulty_engine.hpp"
#include "icbd/unique_fd.hpp"
#include "io_queue.hpp"
#include "raw_layer.hpp"
#include "write_back_cache.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;
using Phase = CacheFlusher::Phase;

constexpr uint64_t kLunBytes = 4 << 20;
constexpr uint64_t kBlock = 4096;
constexpr uint64_t kBlocks = 16;  // what each test writes into the cache, at LBA 0

const char* name(Phase p) {
    switch (p) {
        case Phase::idle: return "idle";
        case Phase::committing: return "committing";
        case Phase::reading_cache: return "reading_cache";
        case Phase::writing_below: return "writing_below";
        case Phase::syncing_below: return "syncing_below";
        case Phase::writing_free_entries: return "writing_free_entries";
        case Phase::syncing_cache: return "syncing_cache";
    }
    return "?";
}

std::vector<uint8_t> random_bytes(size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
}

class CacheFlusherTest : public ::testing::Test {
protected:
    void SetUp() override {
        char dir[] = "/var/tmp/icbd-flusher-XXXXXX";
        ASSERT_NE(mkdtemp(dir), nullptr);
        dir_ = dir;
        before_ = random_bytes(kLunBytes, 3);
        std::ofstream(dir_ / "disk.raw", std::ios::binary)
            .write(reinterpret_cast<const char*>(before_.data()), static_cast<std::streamsize>(before_.size()));
        raw_fd_.reset(::open((dir_ / "disk.raw").c_str(), O_RDWR | O_CLOEXEC));
        ASSERT_TRUE(raw_fd_.valid());
        timer_fd_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
        ASSERT_TRUE(timer_fd_.valid());

        auto e = FaultyEngine::factory(plan_)({EngineKind::automatic, 32}, nullptr);
        ASSERT_TRUE(e) << e.status().message();
        engine_ = std::move(*e);
        host_.kick = [](void*) {};
        io_ = std::make_unique<IoQueue>(*engine_, host_, "flusher test");
        auto c = WriteBackCache::open((dir_ / "lun.cache").string(), 1 << 20, {kLunBytes, "raw disk.raw"});
        ASSERT_TRUE(c) << c.status().message();
        cache_ = std::move(*c);
        raw_ = std::make_unique<RawLayer>(*io_, raw_fd_.get(), -1, false);
        layer_ = std::make_unique<CacheLayer>(*io_, *cache_, *raw_);
        flusher().set_idle_timer(timer_fd_.get(), 60000);  // fired by hand: idle_round()
    }
    void TearDown() override {
        if (io_) pump();
        layer_.reset();
        raw_.reset();
        cache_.reset();
        io_.reset();
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }

    CacheFlusher& flusher() { return layer_->flusher(); }
    CacheCounts counts() const { return cache_->map().counts(); }

    // What the host's event loop does, until nothing is in flight.
    void pump() {
        for (;;) {
            io_->submit();
            io_->reap();
            if (io_->in_flight() == 0) return;
            io_->wait();
        }
    }
    // One pass: what was queued goes to the kernel, and at least one of its
    // completions comes back; what those queue next waits for the next pass,
    // so a round is seen in every phase it goes through.
    void step() {
        io_->submit();
        if (io_->in_flight() > 0) io_->wait();
        io_->reap();
    }

    // kBlocks blocks into the cache; `commit`: with FUA, so that a round
    // needs no commit of its own.
    void write_blocks(bool commit) {
        data_ = random_bytes(kBlocks * kBlock, 9);
        int error = -1;
        layer_->write(data_.data(), data_.size(), 0, commit,
                      {[](void* ctx, int e, IoOp) { *static_cast<int*>(ctx) = e; }, &error});
        pump();
        ASSERT_EQ(error, 0);
        ASSERT_EQ(counts().dirty + counts().dirty_uncommitted, kBlocks);
        ASSERT_FALSE(flusher().running()) << "below the low watermark nothing starts a round by itself";
    }
    // The LUN went quiet (the idle timer fired with no command since it was
    // armed): a round writes everything back. Returns the phases it went
    // through, in order, ending with idle.
    std::vector<Phase> idle_round() {
        flusher().on_idle_timer();
        EXPECT_TRUE(flusher().running()) << "the idle timer started no round";
        std::vector<Phase> seen{flusher().phase()};
        for (int i = 0; i < 10000 && flusher().running(); ++i) {
            step();
            if (flusher().phase() != seen.back()) seen.push_back(flusher().phase());
        }
        EXPECT_FALSE(flusher().running()) << "the round never ended";
        pump();
        return seen;
    }
    std::vector<uint8_t> below(uint64_t offset, uint64_t len) {
        std::vector<uint8_t> v(len);
        EXPECT_EQ(::pread(raw_fd_.get(), v.data(), len, static_cast<off_t>(offset)), static_cast<ssize_t>(len));
        return v;
    }
    std::vector<uint8_t> before(uint64_t offset, uint64_t len) const {
        auto first = before_.begin() + static_cast<ptrdiff_t>(offset);
        return {first, first + static_cast<ptrdiff_t>(len)};
    }
    void fault(IoOp op, const std::string& file, int err = EIO) {
        plan_->add({op, file, 0, UINT64_MAX, 1, 1, FaultKind::error, err});
    }

    fs::path dir_;
    std::vector<uint8_t> before_, data_;
    UniqueFd raw_fd_, timer_fd_;
    std::shared_ptr<FaultPlan> plan_ = std::make_shared<FaultPlan>();
    std::unique_ptr<IoEngine> engine_;
    LunHost host_;
    std::unique_ptr<IoQueue> io_;
    std::unique_ptr<WriteBackCache> cache_;
    std::unique_ptr<RawLayer> raw_;
    std::unique_ptr<CacheLayer> layer_;
};

std::string describe(const std::vector<Phase>& phases) {
    std::string s;
    for (Phase p : phases) s += std::string(s.empty() ? "" : " -> ") + name(p);
    return s;
}

TEST_F(CacheFlusherTest, ARoundCommitsWritesBackSyncsBelowThenFreesTheSlots) {
    ASSERT_NO_FATAL_FAILURE(write_blocks(false));
    const std::vector<Phase> want{Phase::committing,    Phase::reading_cache,        Phase::writing_below,
                                  Phase::syncing_below, Phase::writing_free_entries, Phase::syncing_cache,
                                  Phase::idle};
    const std::vector<Phase> seen = idle_round();
    EXPECT_EQ(seen, want) << describe(seen);
    EXPECT_EQ(flusher().error(), 0);
    EXPECT_EQ(counts().dirty + counts().dirty_uncommitted, 0u);
    EXPECT_EQ(counts().used(), 0u) << "the written-back slots were not freed";
    EXPECT_EQ(below(0, data_.size()), data_);
}

// Committed by the host already: the round has nothing to commit.
TEST_F(CacheFlusherTest, ARoundOfCommittedBlocksStartsWritingBackAtOnce) {
    ASSERT_NO_FATAL_FAILURE(write_blocks(true));
    const std::vector<Phase> seen = idle_round();
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.front(), Phase::reading_cache) << describe(seen);
    EXPECT_EQ(seen.back(), Phase::idle);
    EXPECT_EQ(below(0, data_.size()), data_);
}

// A fault in one phase of a round and what it must leave behind.
struct PhaseFault {
    Phase phase;
    IoOp op;
    const char* file;
    bool host_commits;  // the host's FUA committed the blocks: no committing phase
    bool fails_cache;   // the cache's own state on disk is unknown: it refuses writes
    bool written_back;  // the blocks reached the device below before the failure
};

void PrintTo(const PhaseFault& f, std::ostream* os) { *os << name(f.phase); }

class FlusherPhaseFaults : public CacheFlusherTest, public ::testing::WithParamInterface<PhaseFault> {};

TEST_P(FlusherPhaseFaults, AFailedPhaseIsRememberedUndoneAndNotRetriedInALoop) {
    const PhaseFault& f = GetParam();
    ASSERT_NO_FATAL_FAILURE(write_blocks(f.host_commits));
    fault(f.op, f.file);
    idle_round();
    ASSERT_EQ(plan_->hits(), 1u) << "the fault never fired: the test proved nothing";

    EXPECT_EQ(flusher().failed_phase(), f.phase) << "failed in " << name(flusher().failed_phase());
    EXPECT_EQ(flusher().error(), EIO);
    EXPECT_EQ(flusher().phase(), Phase::idle);
    EXPECT_EQ(cache_->failed, f.fails_cache);
    EXPECT_EQ(counts().flushing, 0u) << "blocks left in flight by the failed round";
    if (f.written_back) {
        EXPECT_EQ(below(0, data_.size()), data_);
        EXPECT_EQ(counts().dirty, 0u);
    } else {
        // Nothing below changed for good, and every block is still dirty in
        // the cache, to be written back by a later round.
        EXPECT_EQ(counts().dirty + counts().dirty_uncommitted, kBlocks);
        if (f.phase != Phase::syncing_below) {  // (written, not made durable: the page cache has it)
            EXPECT_EQ(below(0, data_.size()), before(0, data_.size()));
        }
    }

    // No retry loop: without a writer waiting for room, neither a kick nor
    // the idle timer starts another round.
    flusher().kick();
    flusher().on_idle_timer();
    EXPECT_FALSE(flusher().running());
    EXPECT_EQ(io_->in_flight(), 0u);
    EXPECT_EQ(plan_->hits(), 1u);
}

// Write-back that failed below leaves the cache working: closing writes the
// blocks back, and that good round clears the error and its phase.
class FlusherWriteBackFaults : public FlusherPhaseFaults {};

TEST_P(FlusherWriteBackFaults, AGoodRoundAfterAFailedOneClearsTheError) {
    const PhaseFault& f = GetParam();
    ASSERT_FALSE(f.fails_cache);
    ASSERT_NO_FATAL_FAILURE(write_blocks(f.host_commits));
    fault(f.op, f.file);
    idle_round();
    ASSERT_EQ(flusher().failed_phase(), f.phase);
    flusher().drain([&] {
        io_->submit();
        if (io_->in_flight() > 0) io_->wait();
        io_->reap();
    });
    EXPECT_EQ(flusher().error(), 0);
    EXPECT_EQ(flusher().failed_phase(), Phase::idle);
    EXPECT_EQ(counts().used(), 0u);
    EXPECT_EQ(below(0, data_.size()), data_);
}

// The round's own commit: its fdatasync of the cache file.
const PhaseFault kCommitting{Phase::committing, IoOp::fdatasync, "lun.cache", false, true, false};
// Write-back: the device below, or the cache file it reads from.
const PhaseFault kReadingCache{Phase::reading_cache, IoOp::read, "lun.cache", true, false, false};
const PhaseFault kWritingBelow{Phase::writing_below, IoOp::write, "disk.raw", true, false, false};
const PhaseFault kSyncingBelow{Phase::syncing_below, IoOp::fdatasync, "disk.raw", true, false, false};
// With the host's commit done, the round's only writes to the cache file are
// its FREE entries, and its only fdatasync there the last.
const PhaseFault kWritingFreeEntries{Phase::writing_free_entries, IoOp::write, "lun.cache", true, true, true};
const PhaseFault kSyncingCache{Phase::syncing_cache, IoOp::fdatasync, "lun.cache", true, true, true};

std::string phase_name(const ::testing::TestParamInfo<PhaseFault>& i) { return name(i.param.phase); }

INSTANTIATE_TEST_SUITE_P(Phases, FlusherPhaseFaults,
                         ::testing::Values(kCommitting, kReadingCache, kWritingBelow, kSyncingBelow,
                                           kWritingFreeEntries, kSyncingCache),
                         phase_name);
INSTANTIATE_TEST_SUITE_P(Phases, FlusherWriteBackFaults, ::testing::Values(kReadingCache, kWritingBelow, kSyncingBelow),
                         phase_name);

}  // namespace
}  // namespace icbd::test
