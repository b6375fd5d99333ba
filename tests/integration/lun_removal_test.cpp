// Removing a LUN, and force-removing a whole target, while a libiscsi initiator
// keeps dozens of commands in flight on it: the deletion completes in bounded
// time (tgtd refuses while commands are queued, so tgtadm is retried), every
// command the initiator sent gets an answer or a clean connection drop (no
// command is left hanging), tgtd survives, and it keeps serving its other LUNs.
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "integration_test.hpp"
#include "iscsi_client.hpp"
#include "temp_dir.hpp"
#include "tgtd_instance.hpp"

namespace icbd::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kBlock = 512;
constexpr uint64_t kMiB = 1ull << 20;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// An asynchronous load on one LUN, on its own thread with its own session:
// `depth` commands in flight (64 KiB reads and writes, some FUA, now and then a
// SYNCHRONIZE CACHE) until stop().
class Load {
public:
    Load(std::string url, unsigned depth, uint64_t seed) : url_(std::move(url)), depth_(depth), seed_(seed) {
        thread_ = std::thread([this] { run(); });
    }
    ~Load() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    Load(const Load&) = delete;
    Load& operator=(const Load&) = delete;

    // Waits until `n` commands completed GOOD (the load really runs).
    bool wait_good(uint64_t n, std::chrono::milliseconds patience) {
        const auto deadline = Clock::now() + patience;
        while (good_ < n && !finished_ && Clock::now() < deadline) std::this_thread::sleep_for(5ms);
        return good_ >= n;
    }
    // Stops submitting and waits for the thread: it ends when every command got
    // its answer, or when the connection dropped. False if that takes longer
    // than `patience` (a hang); the thread is then still joined (the session's
    // own 30 s command timeout bounds it).
    bool stop(std::chrono::milliseconds patience) {
        stop_ = true;
        const auto deadline = Clock::now() + patience;
        while (!finished_ && Clock::now() < deadline) std::this_thread::sleep_for(5ms);
        const bool in_time = finished_;
        if (thread_.joinable()) thread_.join();
        return in_time;
    }
    // Wait for a dropped connection to be noticed.
    bool wait_connection_lost(std::chrono::milliseconds patience) {
        const auto deadline = Clock::now() + patience;
        while (!connection_lost_ && !finished_ && Clock::now() < deadline) std::this_thread::sleep_for(5ms);
        return connection_lost_;
    }

    uint64_t good() const { return good_; }
    uint64_t lun_gone() const { return lun_gone_; }
    uint64_t unexpected() const { return unexpected_; }
    bool connection_lost() const { return connection_lost_; }
    size_t left_in_flight() const { return left_in_flight_; }
    std::string first_unexpected() const {
        std::lock_guard<std::mutex> g(mu_);
        return first_unexpected_;
    }
    std::string error() const {
        std::lock_guard<std::mutex> g(mu_);
        return error_;
    }

private:
    void run() {
        try {
            IscsiClient c(url_);
            std::mt19937_64 rng(seed_);
            const uint64_t span = c.blocks() - 128;
            auto on_done = [this](const ScsiResult& r) {
                if (r.good()) {
                    ++good_;
                } else if (r.check_condition(scsi::key::illegal_request, scsi::asc::logical_unit_not_supported)) {
                    ++lun_gone_;  // the LUN was deleted under us: the right answer
                } else if (r.status == scsi::check_condition && r.sense_key == scsi::key::unit_attention) {
                    // "reported LUNs data has changed": also expected after a deletion
                } else if (r.transport_failed()) {
                    // transport-level end: counted by the connection-lost path
                } else {
                    ++unexpected_;
                    std::lock_guard<std::mutex> g(mu_);
                    if (first_unexpected_.empty()) first_unexpected_ = r.describe();
                }
            };
            uint64_t n = 0;
            while (!stop_) {
                while (c.in_flight() < depth_ && !stop_) {
                    const uint64_t lba = rng() % span;
                    const unsigned kind = static_cast<unsigned>(n++ % 16);
                    bool queued = kind == 15 ? c.async_sync_cache16(on_done)
                                  : kind % 2 ? c.async_read16(lba, 128, on_done)
                                             : c.async_write16(lba, pattern(64 * 1024, n), kind == 4, on_done);
                    if (!queued) break;
                }
                if (!c.service(50ms)) {
                    connection_lost_ = true;
                    break;
                }
            }
            // Drain: every command still in flight must get its answer.
            const auto deadline = Clock::now() + 20s;
            while (!connection_lost_ && c.in_flight() > 0 && Clock::now() < deadline)
                if (!c.service(50ms)) connection_lost_ = true;
            left_in_flight_ = connection_lost_ ? 0 : c.in_flight();
        } catch (const std::exception& e) {
            std::lock_guard<std::mutex> g(mu_);
            error_ = e.what();
        }
        finished_ = true;
    }

    std::string url_;
    unsigned depth_;
    uint64_t seed_;
    std::atomic<bool> stop_{false}, finished_{false}, connection_lost_{false};
    std::atomic<uint64_t> good_{0}, lun_gone_{0}, unexpected_{0};
    std::atomic<size_t> left_in_flight_{0};
    mutable std::mutex mu_;
    std::string first_unexpected_, error_;
    std::thread thread_;
};

class LunRemoval : public ::testing::Test {
protected:
    void SetUp() override {
        ICBD_REQUIRE(TgtdInstance::unavailable());
        dir_ = std::make_unique<TempDir>("/var/tmp", "icbd-removal-");
        tgtd_ = std::make_unique<TgtdInstance>();
    }
    void TearDown() override {
        if (HasFailure() && tgtd_) std::cerr << "---- tgtd log (tail) ----\n" << tgtd_->log_tail(40) << "\n";
        tgtd_.reset();
        dir_.reset();
    }
    std::filesystem::path image(const std::string& name) {
        auto p = *dir_ / name;
        make_sparse_file(p, 64 * kMiB);
        return p;
    }
    // Write, read back, compare: the LUN serves.
    static void expect_serves(IscsiClient& c, uint64_t seed) {
        auto data = pattern(64 * 1024, seed);
        ScsiResult w = c.write16(256, data, true);
        ASSERT_TRUE(w.good()) << w;
        ScsiResult r = c.read16(256, 128);
        ASSERT_TRUE(r.good()) << r;
        EXPECT_TRUE(same_bytes(r.data, data)) << "on " << c.url();
    }

    std::unique_ptr<TempDir> dir_;
    std::unique_ptr<TgtdInstance> tgtd_;
};

TEST_F(LunRemoval, DeleteLunWithCommandsInFlight) {
    tgtd_->add_target(1, "iqn.2026-01.org.icbd.test:removal-lun");
    const auto victim = image("victim.img");
    tgtd_->add_lun({1, 1, victim});
    tgtd_->add_lun({1, 2, image("neighbour.img")});
    IscsiClient neighbour(tgtd_->url(1, 2));  // a session open across the deletion

    Load load(tgtd_->url(1, 1), 32, 1);
    ASSERT_TRUE(load.wait_good(300, 10s)) << "the load did not get going: " << load.error();

    const auto t0 = Clock::now();
    int attempts = 0;
    CommandResult del = tgtd_->delete_lun(1, 1, 30s, &attempts);
    const double took = seconds_since(t0);
    ASSERT_TRUE(del.ok()) << "LUN not deleted within 30 s under load: " << del.describe();
    std::cout << "LUN deleted under load after " << took << " s, " << attempts
              << " tgtadm attempts (tgtd refuses while commands are queued); " << load.good()
              << " commands done before\n";

    std::this_thread::sleep_for(200ms);  // the initiator keeps sending to the deleted LUN
    ASSERT_TRUE(load.stop(25s)) << "commands in flight on the deleted LUN never completed (hang)";
    EXPECT_EQ(load.error(), "");
    EXPECT_EQ(load.left_in_flight(), 0u);
    EXPECT_FALSE(load.connection_lost()) << "deleting one LUN dropped the session";
    EXPECT_GT(load.lun_gone(), 0u) << "no command saw LOGICAL UNIT NOT SUPPORTED after the deletion";
    EXPECT_EQ(load.unexpected(), 0u) << "first: " << load.first_unexpected();

    ASSERT_TRUE(tgtd_->alive()) << "tgtd died";
    ASSERT_NO_FATAL_FAILURE(expect_serves(neighbour, 11));
    // The same LUN number over the same file again: nothing of the old one is left over.
    tgtd_->add_lun({1, 1, victim});
    IscsiClient again(tgtd_->url(1, 1));
    ASSERT_NO_FATAL_FAILURE(expect_serves(again, 12));
}

TEST_F(LunRemoval, ForceDeleteTargetWithCommandsInFlight) {
    tgtd_->add_target(1, "iqn.2026-01.org.icbd.test:removal-survivor");
    tgtd_->add_lun({1, 1, image("survivor.img")});
    tgtd_->add_target(2, "iqn.2026-01.org.icbd.test:removal-target");
    tgtd_->add_lun({2, 1, image("t2l1.img")});
    tgtd_->add_lun({2, 2, image("t2l2.img"), "engine=aio;direct=1"});
    IscsiClient survivor(tgtd_->url(1, 1));

    Load l1(tgtd_->url(2, 1), 32, 2), l2(tgtd_->url(2, 2), 32, 3);
    ASSERT_TRUE(l1.wait_good(300, 10s)) << l1.error();
    ASSERT_TRUE(l2.wait_good(300, 10s)) << l2.error();

    const auto t0 = Clock::now();
    int attempts = 0;
    CommandResult del = tgtd_->delete_target(2, /*force=*/true, 30s, &attempts);
    const double took = seconds_since(t0);
    ASSERT_TRUE(del.ok()) << "target not deleted within 30 s under load: " << del.describe();
    std::cout << "target force-deleted under load after " << took << " s, " << attempts << " tgtadm attempts\n";

    // The sessions of a deleted target end: the initiators must notice, not wait forever.
    EXPECT_TRUE(l1.wait_connection_lost(15s)) << "session to a deleted target still up";
    EXPECT_TRUE(l2.wait_connection_lost(15s)) << "session to a deleted target still up";
    ASSERT_TRUE(l1.stop(15s));
    ASSERT_TRUE(l2.stop(15s));
    EXPECT_EQ(l1.unexpected() + l2.unexpected(), 0u) << l1.first_unexpected() << " " << l2.first_unexpected();

    ASSERT_TRUE(tgtd_->alive()) << "tgtd died";
    CommandResult show = tgtd_->adm({"--op", "show", "--mode", "target"});
    EXPECT_EQ(show.output.find("removal-target"), std::string::npos) << show.output;
    ASSERT_NO_FATAL_FAILURE(expect_serves(survivor, 21));
    IscsiClient fresh(tgtd_->url(1, 1));
    ASSERT_NO_FATAL_FAILURE(expect_serves(fresh, 22));
}

}  // namespace
}  // namespace icbd::test
