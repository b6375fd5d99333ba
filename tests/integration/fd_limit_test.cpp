// Desktop LUNs (overlay + write-back cache) in a tgtd that runs out of file
// descriptors (RLIMIT_NOFILE, systemd's LimitNOFILE): the LUN that cannot get
// one fails with an error naming its file, "Too many open files" and the limit
// to raise; nothing of it stays behind; the desktops already served keep
// reading; once a LUN is deleted, a new one can be created and read.
#include <sys/resource.h>

#include <fstream>
#include <memory>
#include <random>
#include <thread>

#include "integration_test.hpp"
#include "iscsi_client.hpp"
#include "loop_fs.hpp"
#include "run_command.hpp"
#include "tgtd_instance.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kImage = 8ull << 20;
constexpr uint32_t kBlock = 512;

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
    std::vector<uint8_t> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
}

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

int count_fds(pid_t pid) {
    int n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) ++n;
    return n;
}

// tgtd closes a tgtadm connection when it sees the EOF, a moment after tgtadm
// has exited: count once the number holds still.
int open_fds(pid_t pid) {
    int n = count_fds(pid);
    for (int same = 0, i = 0; same < 3 && i < 100; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        int m = count_fds(pid);
        same = m == n ? same + 1 : 0;
        n = m;
    }
    return n;
}

std::string quoted(const fs::path& p) {
    std::string q = p.string();  // built apart: GCC 12 warns (-Wrestrict) on "'" + s + "'"
    q.insert(q.begin(), '\'');
    q.push_back('\'');
    return q;
}

std::string desktop(int i) { return "pc" + std::to_string(100 + i); }

class FdLimit : public ::testing::Test {
protected:
    void SetUp() override {
        ICBD_REQUIRE(TgtdInstance::unavailable());
        ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
        btrfs_ = std::make_unique<LoopFs>(LoopFs::Type::btrfs, 256ull << 20);
        // The golden image as a node keeps it: images/<image>/<version>, a read-only snapshot.
        btrfs_->create_subvolume("work");
        golden_data_ = random_bytes(kImage, 11);
        std::ofstream(*btrfs_ / "work/disk.raw", std::ios::binary)
            .write(reinterpret_cast<const char*>(golden_data_.data()), static_cast<std::streamsize>(kImage));
        fs::create_directories(*btrfs_ / "images/img");
        btrfs_->snapshot_readonly("work", "images/img/1");
        fs::create_directories(*btrfs_ / "clients");
        tgtd_ = std::make_unique<TgtdInstance>();
    }
    void TearDown() override {
        if (HasFailure() && tgtd_) std::cerr << "---- tgtd log (tail) ----\n" << tgtd_->log_tail(40) << "\n";
        tgtd_.reset();
        btrfs_.reset();
    }

    fs::path golden() const { return *btrfs_ / "images/img/1/disk.raw"; }
    fs::path overlay(int i) const { return *btrfs_ / ("clients/" + desktop(i) + ".ovl"); }
    fs::path cache(int i) const { return *btrfs_ / ("clients/" + desktop(i) + ".cache"); }

    // One target per desktop with its overlay made first, as blockd exports them.
    CommandResult add_desktop(int i) {
        if (!fs::exists(overlay(i))) {
            const auto tool = fs::path(std::getenv("ICBD_BUILD")) / "blockd/icbd-overlay";
            run_checked({tool.string(), "create", "--golden", golden().string(), overlay(i).string()});
            tgtd_->add_target(i, "iqn.2026-11.org.icbd.test:" + desktop(i));
        }
        return tgtd_->try_add_lun(
            {i, 1, golden(), "overlay=" + overlay(i).string() + ";cache=" + cache(i).string() + ";cache_size=16M"});
    }
    bool lun_exists(int tid) const {
        CommandResult r = tgtd_->adm({"--op", "show", "--mode", "target"});
        const std::string head = "Target " + std::to_string(tid) + ": ";
        size_t at = r.output.find(head);
        if (at == std::string::npos) return false;
        size_t next = r.output.find("\nTarget ", at + 1);
        return contains(r.output.substr(at, next == std::string::npos ? std::string::npos : next - at), "LUN: 1\n");
    }
    void set_nofile(rlim_t n) {
        rlimit rl{n, n};
        ASSERT_EQ(::prlimit(tgtd_->pid(), RLIMIT_NOFILE, &rl, nullptr), 0) << "prlimit: " << std::strerror(errno);
    }
    void expect_golden(IscsiClient& c, uint64_t lba) {
        ScsiResult r = c.read16(lba, 64);
        ASSERT_TRUE(r.good()) << r;
        EXPECT_TRUE(same_bytes(r.data, {golden_data_.data() + lba * kBlock, 64 * kBlock}));
    }

    std::unique_ptr<LoopFs> btrfs_;
    std::unique_ptr<TgtdInstance> tgtd_;
    std::vector<uint8_t> golden_data_;
};

TEST_F(FdLimit, TheLunThatGetsNoDescriptorFailsClearlyAndTheOthersKeepServing) {
    const pid_t pid = tgtd_->pid();
    ASSERT_TRUE(add_desktop(1).ok()) << tgtd_->log_tail(5);
    IscsiClient booted(tgtd_->url(1, 1));  // a desktop that booted before the limit was reached
    expect_golden(booted, 0);

    // What one more desktop costs (the golden file is already open: shared).
    const int before = open_fds(pid);
    ASSERT_TRUE(add_desktop(2).ok()) << tgtd_->log_tail(5);
    const int per_lun = open_fds(pid) - before;
    ASSERT_GE(per_lun, 2);
    EXPECT_LE(per_lun, 5) << "each desktop LUN must stay within 5 descriptors (issue 11: 500 desktops per tgtd)";

    // Room for two more desktops and all but one descriptor of a third: that
    // one fails on one of the last files it opens.
    set_nofile(static_cast<rlim_t>(open_fds(pid) + 3 * per_lun - 1));
    ASSERT_TRUE(add_desktop(3).ok()) << tgtd_->log_tail(5);
    ASSERT_TRUE(add_desktop(4).ok()) << tgtd_->log_tail(5);
    const int full = open_fds(pid);
    const size_t log_at = tgtd_->log().size();
    CommandResult r = add_desktop(5);
    EXPECT_FALSE(r.ok()) << "the LUN was created beyond the descriptor limit";
    const std::string log = tgtd_->log_since(log_at);
    EXPECT_TRUE(contains(log, "tgt 5 lun 1: ")) << log;
    // tgtadm's own connection takes a descriptor too: the LUN fails on its
    // cache file or, one earlier, on the golden file (shared, but each open
    // takes a descriptor until it is matched with the one already open).
    EXPECT_TRUE(contains(log, quoted(cache(5))) || contains(log, quoted(golden())))
        << "the error must name the file:\n" << log;
    EXPECT_TRUE(contains(log, "Too many open files")) << log;
    EXPECT_TRUE(contains(log, "limit of " + std::to_string(full + per_lun - 1) + " open files, RLIMIT_NOFILE"))
        << "the error must say which limit to raise:\n" << log;

    // Nothing half-made: no LUN, no descriptor kept, no cache file.
    EXPECT_FALSE(lun_exists(5));
    EXPECT_EQ(open_fds(pid), full) << "the failed LUN left descriptors open";
    EXPECT_FALSE(fs::exists(cache(5)));

    // The desktop already connected keeps reading, at the limit.
    expect_golden(booted, 4096);
    expect_golden(booted, kImage / kBlock - 64);

    // A desktop logs off: its LUN goes, and the waiting one can be created and read.
    ASSERT_TRUE(tgtd_->delete_lun(4, 1).ok());
    r = add_desktop(5);
    ASSERT_TRUE(r.ok()) << r.describe() << "\n" << tgtd_->log_tail(5);
    EXPECT_TRUE(lun_exists(5));
    IscsiClient fresh(tgtd_->url(5, 1));
    expect_golden(fresh, 8192);
    expect_golden(booted, 128);
}

}  // namespace
}  // namespace icbd::test
