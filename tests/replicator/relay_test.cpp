// Relay trees (docs/replication-protocol.md, section 11): a master pushes to a
// relay that forwards each verified frame to its children while it receives;
// every hop on its own BTRFS loop device, real TLS on 127.0.0.1. A child cut
// mid-push resumes against the relay; a relay killed mid-push leaves nothing
// half-visible and its children get the version from the master.
// (The tree, proxy and tool helpers are those of replication_test.cpp.)
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

#include "../integration/integration_test.hpp"
#include "icbd/replicator/receiver.hpp"
#include "icbd/replicator/repository.hpp"
#include "icbd/replicator/sender.hpp"
#include "icbd/replicator/transport.hpp"
#include "loop_fs.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"

namespace icbd::repl {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::LoopFs;
using test::run_checked;
using test::TempDir;

constexpr uint64_t MiB = 1024 * 1024;

void sh(const std::string& script) { run_checked({"sh", "-ec", script}, {}, std::chrono::seconds(120)); }

// ---- trees ----

std::string describe_entry(const fs::path& p) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) return "<missing>";
    std::ostringstream o;
    o << (S_ISDIR(st.st_mode) ? "d" : S_ISLNK(st.st_mode) ? "l" : "f") << " mode " << std::oct << (st.st_mode & 07777)
      << std::dec << " uid " << st.st_uid << " gid " << st.st_gid << " mtime " << st.st_mtim.tv_sec << "."
      << st.st_mtim.tv_nsec;
    if (S_ISREG(st.st_mode)) o << " size " << st.st_size;
    if (S_ISLNK(st.st_mode)) o << " -> " << fs::read_symlink(p).string();
    return o.str();
}

bool same_content(const fs::path& a, const fs::path& b, std::string& why) {
    std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
    std::vector<char> ba(1 << 20), bb(1 << 20);
    uint64_t off = 0;
    for (;;) {
        fa.read(ba.data(), ba.size());
        fb.read(bb.data(), bb.size());
        if (fa.gcount() != fb.gcount()) {
            why = "lengths differ near offset " + std::to_string(off);
            return false;
        }
        if (std::memcmp(ba.data(), bb.data(), fa.gcount()) != 0) {
            why = "bytes differ in the MiB at offset " + std::to_string(off);
            return false;
        }
        if (fa.gcount() == 0) return true;
        off += fa.gcount();
    }
}

// Every entry of `want` exists in `got` with the same type, mode, owner, mtime,
// size, target and bytes, and holes stay holes (allocation not above the source's
// plus a little). Nothing more in `got`.
::testing::AssertionResult same_tree(const fs::path& got, const fs::path& want) {
    std::set<std::string> seen;
    for (auto it = fs::recursive_directory_iterator(want); it != fs::recursive_directory_iterator(); ++it) {
        std::string rel = it->path().lexically_relative(want).string();
        seen.insert(rel);
        fs::path g = got / rel;
        std::string dw = describe_entry(it->path()), dg = describe_entry(g);
        if (dw != dg) return ::testing::AssertionFailure() << rel << ": replica '" << dg << "', source '" << dw << "'";
        if (it->is_regular_file() && !it->is_symlink()) {
            std::string why;
            if (!same_content(g, it->path(), why)) return ::testing::AssertionFailure() << rel << ": " << why;
            uint64_t aw = test::allocated_bytes(it->path()), ag = test::allocated_bytes(g);
            if (ag > aw + 1 * MiB)
                return ::testing::AssertionFailure()
                       << rel << ": " << ag << " bytes allocated on the replica, " << aw << " on the source (holes lost)";
        }
    }
    for (auto it = fs::recursive_directory_iterator(got); it != fs::recursive_directory_iterator(); ++it) {
        std::string rel = it->path().lexically_relative(got).string();
        if (!seen.count(rel)) return ::testing::AssertionFailure() << rel << ": only on the replica";
    }
    return ::testing::AssertionSuccess();
}

// ---- a TCP proxy that cuts or stalls the connection ----

// Forwards one connection at a time to 127.0.0.1:`to`. The client->server
// direction stops after `limit` bytes: the proxy then closes both sides (a cut)
// or, with `stall`, stops reading (a replica that falls behind).
class Proxy {
public:
    explicit Proxy(uint16_t to) : to_(to) {
        lfd_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(lfd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) || ::listen(lfd_.get(), 8))
            throw std::runtime_error("proxy: bind/listen");
        socklen_t len = sizeof a;
        ::getsockname(lfd_.get(), reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
        thread_ = std::jthread([this] { loop(); });
    }
    ~Proxy() {
        stop_ = true;
        thread_.join();
    }
    uint16_t port() const { return port_; }
    HostPort target() const { return HostPort{"127.0.0.1", port_}; }
    void arm(uint64_t limit, bool stall = false) {
        limit_ = limit;
        stall_ = stall;
    }
    uint64_t bytes_up() const { return up_; }  // client -> server, all connections

private:
    void loop() {
        while (!stop_) {
            pollfd p{lfd_.get(), POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            UniqueFd c(::accept4(lfd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (!c.valid()) continue;
            UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            a.sin_port = htons(to_);
            if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) continue;
            forward(c.get(), s.get());
        }
    }
    static bool write_all(int fd, const char* b, size_t n) {
        while (n) {
            ssize_t w = ::send(fd, b, n, MSG_NOSIGNAL);
            if (w <= 0) return false;
            b += w;
            n -= w;
        }
        return true;
    }
    void forward(int c, int s) {
        uint64_t limit = limit_, done = 0;
        bool stall = stall_, reading_client = true;
        std::vector<char> buf(64 * 1024);
        while (!stop_) {
            pollfd p[2] = {{c, short(reading_client ? POLLIN : 0), 0}, {s, POLLIN, 0}};
            if (::poll(p, 2, 50) <= 0) continue;
            if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
                size_t want = std::min<uint64_t>(buf.size(), limit - done);
                ssize_t n = ::read(c, buf.data(), want);
                if (n <= 0) break;
                done += n;
                up_ += n;
                if (!write_all(s, buf.data(), n)) break;
                if (done >= limit) {
                    if (!stall) break;  // the cut: both sides closed at once
                    reading_client = false;
                }
            }
            if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t n = ::read(s, buf.data(), buf.size());
                if (n <= 0) break;
                if (!write_all(c, buf.data(), n)) break;
            }
        }
    }

    uint16_t to_;
    uint16_t port_ = 0;
    UniqueFd lfd_;
    std::atomic<uint64_t> limit_{UINT64_MAX};
    std::atomic<bool> stall_{false};
    std::atomic<uint64_t> up_{0};
    std::atomic<bool> stop_{false};
    std::jthread thread_;
};


// ---- certificates, replicas ----

struct Certs {
    TempDir dir{"/tmp", "icbd-relay-certs-"};
    Certs() {
        const std::string script = std::string(ICBD_SOURCE_DIR) + "/scripts/make-certs.sh";
        run_checked({script, dir.path().string(), "master", "relay", "child1", "child2"});
    }
    TlsConfig config(const std::string& name) const {
        TlsConfig t;
        t.ca_file = (dir.path() / "ca.crt").string();
        t.cert_file = (dir.path() / (name + ".crt")).string();
        t.key_file = (dir.path() / (name + ".key")).string();
        t.io_timeout = 20s;
        return t;
    }
};

// An in-process replica, a relay when `relay_to` is not empty.
class ReplicaServer {
public:
    ReplicaServer(const fs::path& root, const TlsConfig& tls, const std::string& name,
                  std::vector<HostPort> relay_to = {}, uint64_t relay_window = 64 * MiB,
                  std::chrono::milliseconds relay_max_stall = 10s, std::vector<std::string> allow_peers = {}) {
        fs::create_directories(root);
        TlsConfig server_tls = tls;
        server_tls.allowed_peer_names = std::move(allow_peers);
        auto l = Listener::bind("127.0.0.1", 0, server_tls);
        if (!l) throw std::runtime_error(l.status().message());
        listener_ = std::move(l.value());
        ReceiverOptions o;
        o.root = root;
        o.node_name = name;
        o.relay_to = std::move(relay_to);
        o.relay_tls = tls;
        o.relay_window_bytes = relay_window;
        o.relay_max_stall = relay_max_stall;
        o.busy_wait = 2s;
        rx_ = std::make_unique<Receiver>(o);
        thread_ = std::jthread([this] { (void)rx_->serve(listener_); });
    }
    ~ReplicaServer() {
        rx_->stop();
        thread_.join();
    }
    HostPort target() const { return HostPort{"127.0.0.1", listener_.port()}; }
    std::vector<ReceiveReport> reports() { return rx_->reports(); }
    // Waits until `n` offers were reported.
    std::vector<ReceiveReport> wait_reports(size_t n, std::chrono::milliseconds timeout = 30s) {
        auto until = std::chrono::steady_clock::now() + timeout;
        while (rx_->reports().size() < n && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(10ms);
        return rx_->reports();
    }

private:
    Listener listener_;
    std::unique_ptr<Receiver> rx_;
    std::jthread thread_;
};

// `icbd-replicate serve` as its own process (a relay with --relay-to).
struct ToolServer {
    pid_t pid = -1;
    uint16_t port = 0;
    TempDir out{"/tmp", "icbd-relay-tool-"};
    static fs::path tool() {
        return fs::read_symlink("/proc/self/exe").parent_path().parent_path().parent_path() / "replicator/icbd-replicate";
    }
    ToolServer(const fs::path& root, const TlsConfig& tls, std::vector<std::string> extra) {
        fs::create_directories(root);
        std::vector<std::string> argv = {tool().string(), "serve", "--root", root.string(), "--listen", "127.0.0.1:0",
                                         "--ca", tls.ca_file, "--cert", tls.cert_file, "--key", tls.key_file,
                                         "--name", "relay"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        test::SpawnActions fa;
        std::string so = (out.path() / "stdout").string(), se = (out.path() / "stderr").string();
        posix_spawn_file_actions_addopen(&fa.a, 1, so.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        posix_spawn_file_actions_addopen(&fa.a, 2, se.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (posix_spawn(&pid, args[0], &fa.a, nullptr, args.data(), environ) != 0)
            throw std::runtime_error("cannot start " + argv[0] + ": " + strerror(errno));
        for (int i = 0; i < 500 && !port; ++i) {
            std::ifstream in(so);
            std::string line;
            if (std::getline(in, line) && line.rfind("listening on ", 0) == 0)
                port = static_cast<uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
            else std::this_thread::sleep_for(10ms);
        }
        if (!port) throw std::runtime_error("icbd-replicate serve did not start: " + stderr_text());
    }
    std::string stderr_text() const {
        std::ifstream in(out.path() / "stderr");
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }
    HostPort target() const { return HostPort{"127.0.0.1", port}; }
    void kill9() {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
            pid = -1;
        }
    }
    ~ToolServer() { kill9(); }
};

// Nothing of `image` version `v` is visible under images/ on `root` but a
// complete published version: either absent or equal to the master's.
::testing::AssertionResult nothing_half_visible(const fs::path& root, uint64_t v, const fs::path& master_v) {
    fs::path p = root / "images/vm" / std::to_string(v);
    if (!fs::exists(p)) return ::testing::AssertionSuccess();
    return same_tree(p, master_v);
}

class RelayTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (::geteuid() == 0 && test::have_program("openssl")) certs_ = std::make_unique<Certs>();
    }
    static void TearDownTestSuite() { certs_.reset(); }
    void SetUp() override {
        ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
        if (!certs_) {
            if (test::skips_forbidden()) FAIL() << "openssl is missing";
            GTEST_SKIP() << "openssl is missing";
        }
        master_fs_ = std::make_unique<LoopFs>(LoopFs::Type::btrfs, 768 * MiB);
        master_fs_->create_subvolume("work");
        master_root_ = *master_fs_ / "repo";
        fs::create_directories(master_root_);
        auto r = Repository::open(master_root_);
        if (!r) throw std::runtime_error(r.status().message());
        master_ = std::make_unique<Repository>(std::move(r.value()));
    }
    fs::path work() const { return *master_fs_ / "work"; }
    void commit(uint64_t v) {
        Status s = master_->commit("vm", v, work());
        ASSERT_TRUE(s) << s.message();
    }
    // Version 1: `mib` MiB of random data and a few small files.
    void make_v1(int mib) {
        sh("cd " + work().string() + " && dd if=/dev/urandom of=disk.raw bs=1M count=" + std::to_string(mib) +
           " status=none && mkdir -p conf && echo a=1 > conf/a.cfg && ln -s conf/a.cfg link");
        commit(1);
    }
    fs::path master_version(uint64_t v) const { return master_root_ / "images/vm" / std::to_string(v); }
    PushOptions options(std::vector<HostPort> to, uint64_t version) const {
        PushOptions o;
        o.root = master_root_;
        o.image = "vm";
        o.version = version;
        o.targets = std::move(to);
        o.tls = certs_->config("master");
        o.node_name = "master";
        o.compression = Compression::none;  // wire bytes comparable with the change
        return o;
    }
    static TlsConfig tls(const std::string& name) { return certs_->config(name); }

    static std::unique_ptr<Certs> certs_;
    std::unique_ptr<LoopFs> master_fs_;
    fs::path master_root_;
    std::unique_ptr<Repository> master_;
};
std::unique_ptr<Certs> RelayTest::certs_;

TEST_F(RelayTest, ARelayFeedsItsChildrenWhileItReceivesAndTheMasterSendsOneCopy) {
    make_v1(24);
    LoopFs fr(LoopFs::Type::btrfs, 256 * MiB), f1(LoopFs::Type::btrfs, 256 * MiB), f2(LoopFs::Type::btrfs, 256 * MiB);
    ReplicaServer c1(f1 / "repo", tls("child1"), "child1");
    ReplicaServer c2(f2 / "repo", tls("child2"), "child2");
    ReplicaServer relay(fr / "repo", tls("relay"), "relay", {c1.target(), c2.target()});

    // Version 1 in full, then an incremental version 2.
    for (uint64_t v : {1, 2}) {
        if (v == 2) {
            sh("cd " + work().string() +
               " && dd if=/dev/urandom of=disk.raw bs=1M seek=5 count=4 conv=notrunc status=none && echo b > conf/b.cfg");
            commit(2);
        }
        auto one = push(options({relay.target()}, v));
        ASSERT_TRUE(one) << one.status().message();
        ASSERT_EQ(one->replicas.size(), 1u);
        const auto& r = one->replicas[0];
        ASSERT_TRUE(r.ok()) << r.status.message();
        EXPECT_EQ(r.kind, v == 1 ? NeedKind::full : NeedKind::incremental);
        // The children published too: their reports arrive right after the relay's RESULT.
        auto r1 = c1.wait_reports(v), r2 = c2.wait_reports(v);
        ASSERT_EQ(r1.size(), v);
        ASSERT_EQ(r2.size(), v);
        for (const auto* rep : {&r1.back(), &r2.back()}) {
            EXPECT_TRUE(rep->published) << rep->status.message();
            EXPECT_EQ(rep->peer.rfind("relay (", 0), 0u) << rep->peer;  // from the relay, not the master
            EXPECT_EQ(rep->base, v == 1 ? 0u : 1u);
        }
        // One copy on the master's link: the change plus headers and TLS (a few %).
        std::cout << "[ measured ] v" << v << ": master sent " << r.wire_bytes_sent << " wire bytes for "
                  << r.payload_bytes << " payload bytes (relay with 2 children)\n";
        EXPECT_LT(r.wire_bytes_sent, r.payload_bytes + r.payload_bytes / 20 + 256 * 1024);
        const fs::path want = master_version(v);
        for (const LoopFs* f : {&fr, &f1, &f2})
            EXPECT_TRUE(same_tree(*f / ("repo/images/vm/" + std::to_string(v)), want)) << f->mount_point();
    }
}

// Two levels of relays: master -> relay -> child1 (a relay too) -> child2.
TEST_F(RelayTest, ARelayOfARelayForwardsTheMastersStreamToTheLeaf) {
    make_v1(16);
    LoopFs fr(LoopFs::Type::btrfs, 256 * MiB), f1(LoopFs::Type::btrfs, 256 * MiB), f2(LoopFs::Type::btrfs, 256 * MiB);
    ReplicaServer leaf(f2 / "repo", tls("child2"), "child2");
    ReplicaServer mid(f1 / "repo", tls("child1"), "child1", {leaf.target()});
    ReplicaServer top(fr / "repo", tls("relay"), "relay", {mid.target()});
    auto one = push(options({top.target()}, 1));
    ASSERT_TRUE(one) << one.status().message();
    ASSERT_TRUE(one->replicas[0].ok()) << one->replicas[0].status.message();
    auto r = leaf.wait_reports(1);
    ASSERT_EQ(r.size(), 1u);
    EXPECT_TRUE(r[0].published) << r[0].status.message();
    EXPECT_EQ(r[0].peer.rfind("child1 (", 0), 0u) << r[0].peer;
    for (const LoopFs* f : {&fr, &f1, &f2}) EXPECT_TRUE(same_tree(*f / "repo/images/vm/1", master_version(1)));
}

TEST_F(RelayTest, AChildCutMidPushResumesFromItsCheckpointAgainstTheRelay) {
    make_v1(64);
    LoopFs fr(LoopFs::Type::btrfs, 256 * MiB), f1(LoopFs::Type::btrfs, 256 * MiB), f2(LoopFs::Type::btrfs, 256 * MiB);
    ReplicaServer c1(f1 / "repo", tls("child1"), "child1");
    ReplicaServer c2(f2 / "repo", tls("child2"), "child2");
    Proxy cut(c1.target().port);
    cut.arm(40 * MiB);  // after ~40 MiB (beyond the relay's first checkpoints to child1)
    ReplicaServer relay(fr / "repo", tls("relay"), "relay", {cut.target(), c2.target()});
    auto one = push(options({relay.target()}, 1));
    ASSERT_TRUE(one) << one.status().message();
    ASSERT_TRUE(one->replicas[0].ok()) << one->replicas[0].status.message();
    // child1: a failed first attempt (kept staging), then a resumed one that published.
    auto reps = c1.wait_reports(2);
    ASSERT_EQ(reps.size(), 2u);
    EXPECT_FALSE(reps[0].published);
    EXPECT_TRUE(reps[0].staging_kept);
    EXPECT_TRUE(reps[1].published) << reps[1].status.message();
    EXPECT_GT(reps[1].resumed_after, 0u);
    std::cout << "[ measured ] child1 cut at 40 MiB of 64: resumed after change " << reps[1].resumed_after << " of "
              << reps[1].resumed_after + reps[1].changes_applied << "\n";
    EXPECT_LT(reps[0].changes_applied + reps[1].changes_applied, 64u + 40u);  // not everything twice
    auto r2 = c2.wait_reports(1);
    ASSERT_EQ(r2.size(), 1u);
    EXPECT_TRUE(r2[0].published);
    for (const LoopFs* f : {&fr, &f1, &f2}) EXPECT_TRUE(same_tree(*f / "repo/images/vm/1", master_version(1)));
}

TEST_F(RelayTest, ASlowChildIsDroppedWithoutStallingItsSiblingOrTheRelay) {
    make_v1(64);
    LoopFs fr(LoopFs::Type::btrfs, 256 * MiB), f1(LoopFs::Type::btrfs, 256 * MiB), f2(LoopFs::Type::btrfs, 256 * MiB);
    ReplicaServer c1(f1 / "repo", tls("child1"), "child1");
    ReplicaServer c2(f2 / "repo", tls("child2"), "child2");
    auto slow = std::make_unique<Proxy>(c1.target().port);
    slow->arm(8 * MiB, /*stall=*/true);  // child1 stops reading after 8 MiB
    ReplicaServer relay(fr / "repo", tls("relay"), "relay", {slow->target(), c2.target()}, 8 * MiB, 1s);
    auto t0 = std::chrono::steady_clock::now();
    auto one = push(options({relay.target()}, 1));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(one) << one.status().message();
    ASSERT_TRUE(one->replicas[0].ok()) << one->replicas[0].status.message();
    std::cout << "[ measured ] push through a relay with a stalled child: " << secs << " s\n";
    // The relay's receive waited for the stalled child once, max_stall (1 s),
    // not for as long as the child's socket timeout (20 s).
    EXPECT_LT(secs, 15.0);
    auto r2 = c2.wait_reports(1);
    ASSERT_EQ(r2.size(), 1u);
    EXPECT_TRUE(r2[0].published) << r2[0].status.message();
    EXPECT_TRUE(same_tree(f2 / "repo/images/vm/1", master_version(1)));
    EXPECT_TRUE(same_tree(fr / "repo/images/vm/1", master_version(1)));
    EXPECT_FALSE(fs::exists(f1 / "repo/images/vm/1"));  // nothing half-visible on the dropped child
    // The dropped child resumes from its checkpoint at the next push (from the
    // master here), once it has seen its connection end (the stalled proxy goes).
    slow.reset();
    ASSERT_EQ(c1.wait_reports(1).size(), 1u);
    auto again = push(options({c1.target()}, 1));
    ASSERT_TRUE(again) << again.status().message();
    ASSERT_TRUE(again->replicas[0].ok()) << again->replicas[0].status.message();
    EXPECT_GT(again->replicas[0].resume_seq, 0u);
    EXPECT_TRUE(same_tree(f1 / "repo/images/vm/1", master_version(1)));
}

// Bad input and faults: a child that accepts only the master refuses the relay
// (TLS, --allow-peer); the relay and its other child go on; the master feeds it.
TEST_F(RelayTest, AChildRefusesAnUnexpectedParentAndTheOthersGoOn) {
    make_v1(8);
    LoopFs fr(LoopFs::Type::btrfs, 256 * MiB), f1(LoopFs::Type::btrfs, 256 * MiB), f2(LoopFs::Type::btrfs, 256 * MiB);
    ReplicaServer c1(f1 / "repo", tls("child1"), "child1", {}, 64 * MiB, 10s, {"master"});
    ReplicaServer c2(f2 / "repo", tls("child2"), "child2");
    ReplicaServer relay(fr / "repo", tls("relay"), "relay", {c1.target(), c2.target()});
    auto one = push(options({relay.target()}, 1));
    ASSERT_TRUE(one) << one.status().message();
    ASSERT_TRUE(one->replicas[0].ok()) << one->replicas[0].status.message();
    auto r2 = c2.wait_reports(1);
    ASSERT_EQ(r2.size(), 1u);
    EXPECT_TRUE(r2[0].published);
    EXPECT_TRUE(c1.reports().empty());  // refused at the TLS handshake: no offer reached it
    EXPECT_FALSE(fs::exists(f1 / "repo/images/vm/1"));
    auto direct = push(options({c1.target()}, 1));
    ASSERT_TRUE(direct) << direct.status().message();
    EXPECT_TRUE(direct->replicas[0].ok()) << direct->replicas[0].status.message();
    EXPECT_TRUE(same_tree(f1 / "repo/images/vm/1", master_version(1)));
}

// A relay whose disk fills up reports no_space to the master, cancels its
// children (who keep their staging) and publishes nothing; the master then
// serves the children directly and they resume from their checkpoints.
TEST_F(RelayTest, ARelayWithAFullDiskCancelsItsChildrenWhoThenResumeFromTheMaster) {
    make_v1(192);
    LoopFs fr(LoopFs::Type::btrfs, 160 * MiB), f1(LoopFs::Type::btrfs, 512 * MiB), f2(LoopFs::Type::btrfs, 512 * MiB);
    ReplicaServer c1(f1 / "repo", tls("child1"), "child1");
    ReplicaServer c2(f2 / "repo", tls("child2"), "child2");
    ReplicaServer relay(fr / "repo", tls("relay"), "relay", {c1.target(), c2.target()});
    auto one = push(options({relay.target()}, 1));
    ASSERT_TRUE(one) << one.status().message();
    ASSERT_FALSE(one->replicas[0].ok());
    EXPECT_EQ(one->replicas[0].code, ErrorCode::no_space) << one->replicas[0].status.message();
    for (auto* c : {&c1, &c2}) {
        auto reps = c->wait_reports(1);
        ASSERT_EQ(reps.size(), 1u);
        EXPECT_FALSE(reps[0].published);
        EXPECT_EQ(reps[0].code, ErrorCode::cancelled) << reps[0].status.message();
        EXPECT_NE(reps[0].status.message().find("relay"), std::string::npos) << reps[0].status.message();
        EXPECT_TRUE(reps[0].staging_kept);
    }
    for (const LoopFs* f : {&fr, &f1, &f2}) EXPECT_FALSE(fs::exists(*f / "repo/images/vm/1")) << f->mount_point();
    auto direct = push(options({c1.target(), c2.target()}, 1));
    ASSERT_TRUE(direct) << direct.status().message();
    for (const auto& r : direct->replicas) {
        EXPECT_TRUE(r.ok()) << r.status.message();
        EXPECT_GT(r.resume_seq, 0u) << r.target;
    }
    for (const LoopFs* f : {&f1, &f2}) EXPECT_TRUE(same_tree(*f / "repo/images/vm/1", master_version(1)));
}

TEST_F(RelayTest, ServeRefusesToRelayToItself) {
    const TlsConfig t = tls("relay");
    TempDir root{"/tmp", "icbd-relay-self-"};
    auto r = test::run_command({ToolServer::tool().string(), "serve", "--root", root.path().string(), "--listen",
                                "127.0.0.1:7411", "--ca", t.ca_file, "--cert", t.cert_file, "--key", t.key_file,
                                "--relay-to", "127.0.0.1:7412,127.0.0.1:7411"},
                               {}, 10s);  // refused before it binds or serves
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    EXPECT_NE(r.output.find("--relay-to: 127.0.0.1:7411 is this server's own --listen address"), std::string::npos)
        << r.output;
    auto bad = test::run_command({ToolServer::tool().string(), "serve", "--root", root.path().string(), "--listen",
                                  "127.0.0.1:0", "--ca", t.ca_file, "--cert", t.cert_file, "--key", t.key_file,
                                  "--relay-to", "127.0.0.1"},
                                 {}, 10s);
    EXPECT_EQ(bad.exit_code, 2) << bad.describe();
    EXPECT_NE(bad.output.find("--relay-to:"), std::string::npos) << bad.output;
}

TEST_F(RelayTest, ARelayKilledMidPushLeavesNothingHalfVisibleAndItsChildrenResumeFromTheMaster) {
    make_v1(96);
    LoopFs fr(LoopFs::Type::btrfs, 384 * MiB), f1(LoopFs::Type::btrfs, 384 * MiB), f2(LoopFs::Type::btrfs, 384 * MiB);
    ReplicaServer c1(f1 / "repo", tls("child1"), "child1");
    ReplicaServer c2(f2 / "repo", tls("child2"), "child2");
    ToolServer relay(fr / "repo", tls("relay"),
                     {"--relay-to", c1.target().text() + "," + c2.target().text()});
    // A slow push (16 MiB/s), killed at about half.
    auto o = options({relay.target()}, 1);
    o.bandwidth_limit = 16 * MiB;
    std::atomic<uint64_t> sent{0};
    o.on_progress = [&](const std::vector<ReplicaProgress>& p) {
        if (!p.empty()) sent = p[0].payload_sent;
    };
    o.progress_interval = 50ms;
    std::jthread killer([&] {
        for (int i = 0; i < 600 && sent.load() < 48 * MiB; ++i) std::this_thread::sleep_for(20ms);
        relay.kill9();
    });
    auto first = push(o);
    killer.join();
    ASSERT_TRUE(first) << first.status().message();
    EXPECT_FALSE(first->replicas[0].ok());
    std::cout << "[ measured ] relay killed after " << sent.load() / MiB << " MiB of 96\n";
    for (auto* c : {&c1, &c2}) {
        auto reps = c->wait_reports(1);
        ASSERT_EQ(reps.size(), 1u);
        EXPECT_FALSE(reps[0].published);
        EXPECT_TRUE(reps[0].staging_kept);
    }
    for (const LoopFs* f : {&fr, &f1, &f2}) {
        EXPECT_FALSE(fs::exists(*f / "repo/images/vm/1")) << f->mount_point();
    }
    // The fallback: the master pushes to the children of the relay it lost;
    // each resumes from its own checkpoint (the relay forwarded the master's frames).
    auto second = push(options({c1.target(), c2.target()}, 1));
    ASSERT_TRUE(second) << second.status().message();
    for (const auto& r : second->replicas) {
        EXPECT_TRUE(r.ok()) << r.status.message();
        EXPECT_GT(r.resume_seq, 0u) << r.target;
        EXPECT_LT(r.payload_bytes, 96 * MiB) << r.target;
    }
    for (const LoopFs* f : {&f1, &f2}) EXPECT_TRUE(same_tree(*f / "repo/images/vm/1", master_version(1)));
    EXPECT_TRUE(nothing_half_visible(fr / "repo", 1, master_version(1)));
}

}  // namespace
}  // namespace icbd::repl
