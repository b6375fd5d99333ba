// A prefetch on a real throttled disk (ext4 on a loop device, blk-throttle on
// it, as the benches' slow disk): alone it runs at the speed of --full-speed;
// while another reader uses the same device it gives way (its controller
// records busy windows, drops to small paced reads) and reads far less in the
// same time. Assertions are on the controller's decisions and on ratios with
// wide margins, so that a loaded CI machine does not make them fail.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "icbd/prefetch.hpp"
#include "icbd/prefetch_report.hpp"
#include "prefetch_fixture.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr uint64_t kGoldenSize = 256 * kMiB;
constexpr uint64_t kSetBytes = 48 * kMiB;
constexpr uint64_t kThrottleBps = 32 * kMiB;
constexpr uint64_t kThrottleIops = 400;

std::string devno_of(const std::string& device) {
    struct stat st{};
    if (::stat(device.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) throw std::runtime_error(device + " is not a block device");
    return std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev));
}

void write_text(const fs::path& p, const std::string& text) {
    std::ofstream out(p);
    out << text;
    out.flush();
    if (!out) throw std::runtime_error("write " + p.string() + ": '" + text + "': " + std::strerror(errno));
}

// blk-throttle on one device's reads, undone in the destructor: cgroup v1
// blkio.throttle.* of the root cgroup, or cgroup v2 io.max of a child cgroup
// this test process moves into (and back out of).
class ReadThrottle {
public:
    static std::optional<std::string> unavailable() {
        if (fs::exists(kV1 / "blkio.throttle.read_bps_device") || v2_has_io()) return std::nullopt;
        return "no block throttle: neither cgroup v1 blkio.throttle nor cgroup v2 io.max";
    }
    ReadThrottle(std::string devno, uint64_t bps, uint64_t iops) : devno_(std::move(devno)) {
        if (fs::exists(kV1 / "blkio.throttle.read_bps_device")) {
            write_text(kV1 / "blkio.throttle.read_bps_device", devno_ + " " + std::to_string(bps));
            write_text(kV1 / "blkio.throttle.read_iops_device", devno_ + " " + std::to_string(iops));
            return;
        }
        std::ifstream self("/proc/self/cgroup");
        for (std::string line; std::getline(self, line);)
            if (line.rfind("0::", 0) == 0) home_ = fs::path("/sys/fs/cgroup") / line.substr(4);
        std::ifstream sub("/sys/fs/cgroup/cgroup.subtree_control");
        std::string ctl((std::istreambuf_iterator<char>(sub)), {});
        if (ctl.find("io") == std::string::npos) write_text("/sys/fs/cgroup/cgroup.subtree_control", "+io");
        cgroup_ = fs::path("/sys/fs/cgroup") / ("icbd-pacing-test." + std::to_string(::getpid()));
        fs::create_directory(cgroup_);
        write_text(cgroup_ / "cgroup.procs", std::to_string(::getpid()));
        write_text(cgroup_ / "io.max", devno_ + " rbps=" + std::to_string(bps) + " riops=" + std::to_string(iops));
    }
    ~ReadThrottle() {
        try {
            if (cgroup_.empty()) {
                write_text(kV1 / "blkio.throttle.read_bps_device", devno_ + " 0");
                write_text(kV1 / "blkio.throttle.read_iops_device", devno_ + " 0");
            } else {
                write_text(home_ / "cgroup.procs", std::to_string(::getpid()));
                std::error_code ec;
                fs::remove(cgroup_, ec);
            }
        } catch (const std::exception& e) {
            std::cerr << "ReadThrottle: " << e.what() << "\n";
        }
    }
    ReadThrottle(const ReadThrottle&) = delete;
    ReadThrottle& operator=(const ReadThrottle&) = delete;

private:
    static inline const fs::path kV1 = "/sys/fs/cgroup/blkio";
    static bool v2_has_io() {
        std::ifstream in("/sys/fs/cgroup/cgroup.controllers");
        std::string s((std::istreambuf_iterator<char>(in)), {});
        return s.find("io") != std::string::npos;
    }
    std::string devno_;
    fs::path home_, cgroup_;
};

// Sectors read and written by the device so far.
uint64_t device_sectors(const std::string& device) {
    const std::string name = fs::path(device).filename().string();
    std::ifstream in("/sys/block/" + name + "/stat");
    uint64_t v[7] = {};
    for (auto& x : v) in >> x;
    return v[2] + v[6];
}

// Until the device moved nothing for a second (ext4's lazy inode-table
// initialisation and journal commits after the files were written), 60 s at most.
void wait_until_quiet(const std::string& device) {
    const auto give_up = std::chrono::steady_clock::now() + 60s;
    uint64_t last = device_sectors(device);
    while (std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(1s);
        const uint64_t now = device_sectors(device);
        if (now == last) return;
        last = now;
    }
}

// 4 KiB O_DIRECT random reads of `file`, one after the other, until stopped.
class CompetingReader {
public:
    explicit CompetingReader(const fs::path& file) : fd_(::open(file.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC)) {
        if (!fd_.valid()) throw std::runtime_error("open O_DIRECT " + file.string() + ": " + std::strerror(errno));
        blocks_ = fs::file_size(file) / 4096;
        thread_ = std::jthread([this](std::stop_token st) { run(st); });
    }
    uint64_t reads() const { return reads_; }

private:
    void run(std::stop_token st) {
        void* raw = nullptr;
        if (::posix_memalign(&raw, 4096, 4096) != 0) return;
        std::unique_ptr<void, decltype(&std::free)> buf(raw, &std::free);
        std::mt19937_64 rng(42);
        while (!st.stop_requested()) {
            if (::pread(fd_.get(), buf.get(), 4096, static_cast<off_t>((rng() % blocks_) * 4096)) == 4096) ++reads_;
        }
    }
    UniqueFd fd_;
    uint64_t blocks_ = 0;
    std::atomic<uint64_t> reads_{0};
    std::jthread thread_;  // last: stopped and joined before the fd closes
};

class PrefetchPacingTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (LoopFs::unavailable(LoopFs::Type::ext4) || ReadThrottle::unavailable()) return;
        fs_ = std::make_unique<LoopFs>(LoopFs::Type::ext4, 768 * kMiB);
        write_golden(*fs_ / "golden.raw", kGoldenSize);
        write_golden(*fs_ / "client.raw", 128 * kMiB);
    }
    static void TearDownTestSuite() { fs_.reset(); }
    void SetUp() override {
        PREFETCH_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
        PREFETCH_REQUIRE(ReadThrottle::unavailable());
        ASSERT_NE(fs_, nullptr);
        golden_ = *fs_ / "golden.raw";
        set_ = scattered_set(kGoldenSize, kSetBytes, 14);
    }

    // One cold prefetch, stopped after `limit` if it is still running.
    PrefetchSummary prefetch(bool adaptive, std::chrono::seconds limit = 60s) {
        drop_cache(golden_);
        PrefetchOptions o;
        o.adaptive = adaptive;
        std::atomic<bool> cancel{false};
        o.cancel = &cancel;
        std::jthread timer([&](std::stop_token st) {
            const auto end = std::chrono::steady_clock::now() + limit;
            while (!st.stop_requested() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(10ms);
            cancel = true;
        });
        auto s = prefetch_file(golden_, set_, o);
        timer.request_stop();
        if (!s) throw std::runtime_error(s.status().message());
        return *s;
    }

    static std::unique_ptr<LoopFs> fs_;
    fs::path golden_;
    BootSet set_ = BootSet::create(4096).value();
};
std::unique_ptr<LoopFs> PrefetchPacingTest::fs_;

double rate(const PrefetchSummary& s) { return double(s.read_bytes) / std::max(s.seconds, 1e-3); }

TEST_F(PrefetchPacingTest, GivesWayToAnotherReaderOfTheDeviceAndRunsAtFullSpeedAlone) {
    ReadThrottle throttle(devno_of(fs_->device()), kThrottleBps, kThrottleIops);
    wait_until_quiet(fs_->device());

    // Alone, the two ways in turn: the default must not be slower than full speed
    // beyond noise (48 MiB at 32 MiB/s: about 1.5 s each).
    const PrefetchSummary full = prefetch(false);
    const PrefetchSummary alone = prefetch(true);
    std::cout << "full speed: " << prefetch_summary_line(full) << "\ndefault, alone: " << prefetch_summary_line(alone)
              << " (" << alone.pacing.stats.windows << " windows)\n";
    ASSERT_EQ(full.end, PrefetchEnd::complete);
    ASSERT_EQ(alone.end, PrefetchEnd::complete);
    EXPECT_FALSE(full.pacing.adaptive);
    ASSERT_TRUE(alone.pacing.adaptive);
    EXPECT_EQ(alone.pacing.device, fs::path(fs_->device()).filename().string()) << alone.pacing.device_note;
    EXPECT_GE(alone.pacing.stats.windows, 3u);
    // Nobody else reads this device (slow windows are left out: a throttle
    // lets reads after a pause through at burst speed, which moves the baseline).
    EXPECT_LE(alone.pacing.stats.busy_windows, alone.pacing.stats.windows / 4)
        << "busy " << alone.pacing.stats.busy_windows << " of " << alone.pacing.stats.windows;
    EXPECT_GE(rate(alone), 0.6 * rate(full)) << "alone " << alone.seconds << " s, full speed " << full.seconds << " s";

    // Another reader on the same device: the prefetch gives way. Stopped after
    // 6 s: it only has to show that it read far less than alone meanwhile.
    uint64_t client_reads = 0;
    PrefetchSummary shared;
    {
        CompetingReader client(*fs_ / "client.raw");
        std::this_thread::sleep_for(300ms);
        shared = prefetch(true, 6s);
        client_reads = client.reads();
    }
    std::cout << "default, with a reader (" << client_reads << " reads): " << prefetch_summary_line(shared) << "\n";
    ASSERT_TRUE(shared.pacing.adaptive);
    const PacerStats& st = shared.pacing.stats;
    EXPECT_GT(client_reads, 100u);
    EXPECT_GE(st.windows, 5u);
    EXPECT_GE(st.busy_windows, st.windows / 2) << "busy " << st.busy_windows << " of " << st.windows;
    EXPECT_LE(st.min_level, 1.0 / 16);
    EXPECT_GE(st.others_bytes, client_reads * 4096 / 2);
    EXPECT_LE(rate(shared), 0.5 * rate(alone)) << "shared " << shared.read_bytes << " bytes in " << shared.seconds
                                               << " s; alone " << alone.read_bytes << " in " << alone.seconds << " s";
}

}  // namespace
}  // namespace icbd::test
