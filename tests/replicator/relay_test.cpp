// Relay trees (docs/replication-protocol.md, section 11): a master pushes to a
// relay that forwards each verified frame to its children while it receives;
// every hop on its own BTRFS loop device, real TLS on 127.0.0.1. A child cut
// mid-push resumes against the relay; a relay killed mid-push leaves nothing
// half-visible and its children get the version from the master.
// (The tree, proxy and tool helpers: replication_fixture.hpp.)
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
#include "replication_fixture.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"

namespace icbd::repl {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::LoopFs;
using test::run_checked;
using test::TempDir;

using namespace fixture;  // trees, Proxy, ToolServer (replication_fixture.hpp)

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
                  std::chrono::milliseconds relay_max_stall = 10s, std::vector<std::string> allow_peers = {},
                  std::vector<std::string> accept_from = {}) {
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
        o.accept_from = std::move(accept_from);
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

// A relay whose disk fills up reports no_space (ENOSPC, naming the relay) to
// the master, cancels its children (who keep their staging) and publishes
// nothing; the master takes the children over in the same push
// (`icbd-replicate push --json`, its own process) and each resumes from its
// checkpoint.
TEST_F(RelayTest, ARelayWithAFullDiskReportsENOSPCAndTheMasterServesItsChildrenInTheSamePush) {
    make_v1(192);
    LoopFs fr(LoopFs::Type::btrfs, 160 * MiB), f1(LoopFs::Type::btrfs, 512 * MiB), f2(LoopFs::Type::btrfs, 512 * MiB);
    ReplicaServer c1(f1 / "repo", tls("child1"), "child1");
    ReplicaServer c2(f2 / "repo", tls("child2"), "child2");
    ReplicaServer relay(fr / "repo", tls("relay"), "relay", {c1.target(), c2.target()});
    const TlsConfig m = tls("master");
    auto r = test::run_command({ToolServer::tool().string(), "push", "--root", master_root_.string(), "--image", "vm",
                                "--version", "1", "--to", relay.target().text(), "--ca", m.ca_file, "--cert",
                                m.cert_file, "--key", m.key_file, "--name", "master", "--compress", "none", "--json"},
                               {}, 240s);
    EXPECT_EQ(r.exit_code, 1) << r.describe();  // the relay failed
    const std::string& js = r.output;
    std::cout << "[ measured ] push --json: " << js.substr(0, 600) << "\n";
    // The relay's entry: no_space, naming the relay and ENOSPC, and the children it named.
    EXPECT_NE(js.find("\"result\":\"no_space\""), std::string::npos) << js;
    EXPECT_NE(js.find("ENOSPC"), std::string::npos) << js;
    EXPECT_NE(js.find("to replica relay ("), std::string::npos) << js;
    EXPECT_NE(js.find("\"relay_children\":[\"child1 (" + c1.target().text() + ")\",\"child2 (" + c2.target().text() + ")\"]"),
              std::string::npos)
        << js;
    // Both children: taken over from the relay, ok.
    for (const auto* c : {&c1, &c2}) {
        const std::string entry = "\"target\":\"" + c->target().text() + "\"";
        size_t at = js.find(entry);
        ASSERT_NE(at, std::string::npos) << js;
        size_t res = js.find("\"result\":\"", at);
        ASSERT_NE(res, std::string::npos) << js;
        const std::string one = js.substr(at, res + 16 - at);
        EXPECT_NE(one.find("\"taken_over_from\":\"" + relay.target().text() + "\""), std::string::npos) << one;
        EXPECT_EQ(js.compare(res, 13, "\"result\":\"ok\""), 0) << one;
    }
    for (auto* c : {&c1, &c2}) {
        auto reps = c->wait_reports(2);
        ASSERT_EQ(reps.size(), 2u);
        // First the relay's stream, cancelled naming the relay; then the master's, resumed.
        EXPECT_FALSE(reps[0].published);
        EXPECT_EQ(reps[0].code, ErrorCode::cancelled) << reps[0].status.message();
        EXPECT_NE(reps[0].status.message().find("relay"), std::string::npos) << reps[0].status.message();
        EXPECT_TRUE(reps[0].staging_kept);
        EXPECT_TRUE(reps[1].published) << reps[1].status.message();
        EXPECT_EQ(reps[1].peer.rfind("master (", 0), 0u) << reps[1].peer;
        EXPECT_GT(reps[1].resumed_after, 0u);
    }
    EXPECT_FALSE(fs::exists(fr / "repo/images/vm/1"));
    for (const LoopFs* f : {&f1, &f2}) EXPECT_TRUE(same_tree(*f / "repo/images/vm/1", master_version(1)));
}

// A child that accepts versions only from its parents (--accept-from: the
// relay and the master) refuses any other sender with a clear error on both
// sides, before any offer; its parents still feed it.
TEST_F(RelayTest, AChildRefusesAVersionFromAnUnexpectedParentWithAClearErrorOnBothSides) {
    make_v1(8);
    LoopFs f1(LoopFs::Type::btrfs, 256 * MiB);
    ReplicaServer c1(f1 / "repo", tls("child1"), "child1", {}, 64 * MiB, 10s, {}, {"relay", "master"});
    auto o = options({c1.target()}, 1);
    o.tls = tls("child2");  // a certificate of the cluster, but not one of child1's parents
    o.node_name = "child2";
    auto rogue = push(o);
    ASSERT_TRUE(rogue) << rogue.status().message();
    const auto& rr = rogue->replicas[0];
    ASSERT_FALSE(rr.ok());
    EXPECT_EQ(rr.code, ErrorCode::refused) << rr.status.message();
    EXPECT_NE(rr.status.message().find("replica 'child1' accepts versions only from relay, master: the sender child2 ("),
              std::string::npos)
        << rr.status.message();
    auto reps = c1.wait_reports(1);
    ASSERT_EQ(reps.size(), 1u);
    EXPECT_EQ(reps[0].code, ErrorCode::refused);
    EXPECT_NE(reps[0].status.message().find("the sender child2 ("), std::string::npos) << reps[0].status.message();
    EXPECT_FALSE(fs::exists(f1 / "repo/images/vm/1"));
    EXPECT_TRUE(fs::is_empty(f1 / "repo") || !fs::exists(f1 / "repo/images/vm") || fs::is_empty(f1 / "repo/images/vm"));
    auto good = push(options({c1.target()}, 1));  // the master is one of its parents
    ASSERT_TRUE(good) << good.status().message();
    EXPECT_TRUE(good->replicas[0].ok()) << good->replicas[0].status.message();
    EXPECT_TRUE(same_tree(f1 / "repo/images/vm/1", master_version(1)));
}

// A cycle no single configuration shows (relay -> child1 -> relay) is refused
// on the wire by the route of the offer: the relay finds itself on it and
// answers refused at once (no busy wait), and both get the version once.
TEST_F(RelayTest, ARelayCycleIsRefusedByTheRouteAndEachNodeGetsTheVersionOnce) {
    make_v1(8);
    LoopFs fa(LoopFs::Type::btrfs, 256 * MiB), fb(LoopFs::Type::btrfs, 256 * MiB);
    Proxy back(1);  // child1 -> relay, aimed once the relay listens
    ReplicaServer b(fb / "repo", tls("child1"), "child1", {back.target()});
    ReplicaServer a(fa / "repo", tls("relay"), "relay", {b.target()});
    back.retarget(a.target().port);
    auto t0 = std::chrono::steady_clock::now();
    auto one = push(options({a.target()}, 1));
    ASSERT_TRUE(one) << one.status().message();
    ASSERT_TRUE(one->replicas[0].ok()) << one->replicas[0].status.message();
    auto ra = a.wait_reports(2);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_EQ(ra.size(), 2u);
    // child1's offer back to the relay came while the relay still received:
    // refused for the cycle, not after the 2 s busy wait.
    const ReceiveReport& cyc = ra[0].peer.rfind("child1 (", 0) == 0 ? ra[0] : ra[1];
    EXPECT_EQ(cyc.code, ErrorCode::refused) << cyc.status.message();
    EXPECT_NE(cyc.status.message().find("relay cycle: the offer came master -> relay -> child1 and replica 'relay' is on that route"),
              std::string::npos)
        << cyc.status.message();
    EXPECT_LT(secs, 10.0);
    auto rb = b.wait_reports(1);
    ASSERT_EQ(rb.size(), 1u);
    EXPECT_TRUE(rb[0].published) << rb[0].status.message();
    EXPECT_TRUE(same_tree(fa / "repo/images/vm/1", master_version(1)));
    EXPECT_TRUE(same_tree(fb / "repo/images/vm/1", master_version(1)));
}

// Config-time checks of `serve --relay-to`: refused (exit 2) before it binds.
TEST_F(RelayTest, ServeRefusesToRelayToItselfOrToOneChildTwice) {
    const TlsConfig t = tls("relay");
    TempDir root{"/tmp", "icbd-relay-self-"};
    auto serve = [&](const std::string& listen, std::vector<std::string> relay_to) {
        std::vector<std::string> argv = {ToolServer::tool().string(), "serve", "--root", root.path().string(),
                                         "--listen", listen, "--ca", t.ca_file, "--cert", t.cert_file, "--key",
                                         t.key_file};
        for (auto& r : relay_to) {
            argv.push_back("--relay-to");
            argv.push_back(std::move(r));
        }
        return test::run_command(argv, {}, 10s);
    };
    auto r = serve("127.0.0.1:7411", {"127.0.0.1:7412,127.0.0.1:7411"});  // refused before it binds or serves
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    EXPECT_NE(r.output.find("--relay-to: 127.0.0.1:7411 is this server's own --listen address"), std::string::npos)
        << r.output;
    auto bad = serve("127.0.0.1:0", {"127.0.0.1"});
    EXPECT_EQ(bad.exit_code, 2) << bad.describe();
    EXPECT_NE(bad.output.find("--relay-to:"), std::string::npos) << bad.output;
    auto twice = serve("127.0.0.1:0", {"127.0.0.1:7412", "127.0.0.1:7412"});
    EXPECT_EQ(twice.exit_code, 2) << twice.describe();
    EXPECT_NE(twice.output.find("--relay-to: 127.0.0.1:7412 is named twice"), std::string::npos) << twice.output;
}

// kill -9 of a relay process in the middle of a push: the master takes its
// children over in the same push; each resumes from its own checkpoint (the
// relay forwarded the master's frames), publishes after checking the digest
// and ends byte-identical; nothing is half-visible anywhere. child1 accepts
// versions only from its parents (the relay and the master).
TEST_F(RelayTest, ARelayKilledMidPushHasItsChildrenTakenOverByTheMasterInTheSamePush) {
    make_v1(96);
    LoopFs fr(LoopFs::Type::btrfs, 384 * MiB), f1(LoopFs::Type::btrfs, 384 * MiB), f2(LoopFs::Type::btrfs, 384 * MiB);
    ReplicaServer c1(f1 / "repo", tls("child1"), "child1", {}, 64 * MiB, 10s, {}, {"relay", "master"});
    ReplicaServer c2(f2 / "repo", tls("child2"), "child2");
    ToolServer relay(fr / "repo", tls("relay"),
                     {"--name", "relay", "--relay-to", c1.target().text() + "," + c2.target().text()});
    // A slow push (16 MiB/s), killed at about half.
    auto o = options({relay.target()}, 1);
    o.bandwidth_limit = 16 * MiB;
    std::atomic<uint64_t> sent{0};
    std::atomic<bool> killed{false};
    o.on_progress = [&](const std::vector<ReplicaProgress>& p) {
        if (!p.empty()) sent = p[0].payload_sent;
    };
    o.progress_interval = 50ms;
    std::jthread killer([&] {
        for (int i = 0; i < 600 && sent.load() < 48 * MiB; ++i) std::this_thread::sleep_for(20ms);
        relay.kill9();
        killed = true;
    });
    auto first = push(o);
    killer.join();
    ASSERT_TRUE(first) << first.status().message();
    ASSERT_TRUE(killed.load());
    std::cout << "[ measured ] relay killed after " << sent.load() / MiB << " MiB of 96\n";
    ASSERT_EQ(first->replicas.size(), 3u);
    const auto& rr = first->replicas[0];
    EXPECT_FALSE(rr.ok());
    EXPECT_NE(rr.status.message().find("taken over by master"), std::string::npos) << rr.status.message();
    ASSERT_EQ(rr.relay_children.size(), 2u);
    for (size_t i = 1; i < 3; ++i) {
        const auto& r = first->replicas[i];
        EXPECT_TRUE(r.ok()) << r.status.message();
        EXPECT_EQ(r.taken_over_from, relay.target().text());
        EXPECT_GT(r.resume_seq, 0u) << r.target;  // from its own checkpoint
        EXPECT_LT(r.payload_bytes, 96 * MiB) << r.target;
        std::cout << "[ measured ] " << r.peer << " taken over: resumed after change " << r.resume_seq << ", "
                  << r.payload_bytes / MiB << " MiB sent again\n";
    }
    EXPECT_EQ(first->replicas[1].target, c1.target().text());
    EXPECT_EQ(first->replicas[2].target, c2.target().text());
    for (auto* c : {&c1, &c2}) {
        auto reps = c->wait_reports(2);
        ASSERT_EQ(reps.size(), 2u);
        EXPECT_FALSE(reps[0].published);  // cut with the relay
        EXPECT_TRUE(reps[0].staging_kept);
        EXPECT_TRUE(reps[1].published) << reps[1].status.message();  // the digest checked
        EXPECT_EQ(reps[1].peer.rfind("master (", 0), 0u) << reps[1].peer;
    }
    for (const LoopFs* f : {&f1, &f2}) EXPECT_TRUE(same_tree(*f / "repo/images/vm/1", master_version(1)));
    EXPECT_FALSE(fs::exists(fr / "repo/images/vm/1"));
    EXPECT_TRUE(nothing_half_visible(fr / "repo", 1, master_version(1)));
}

// Two levels: master -> relay (its own process) -> child1 (a relay too) ->
// child2. kill -9 of the top relay mid-push: the master takes child1 over;
// child1, a relay, names child2 in its turn and forwards the master's stream
// to it, so the whole subtree finishes from the master in the same push,
// each hop resuming from its own checkpoint.
TEST_F(RelayTest, ARelayKilledAboveAnotherRelayHasTheWholeSubtreeFinishFromTheMaster) {
    make_v1(96);
    LoopFs fr(LoopFs::Type::btrfs, 384 * MiB), f1(LoopFs::Type::btrfs, 384 * MiB), f2(LoopFs::Type::btrfs, 384 * MiB);
    ReplicaServer leaf(f2 / "repo", tls("child2"), "child2");
    ReplicaServer mid(f1 / "repo", tls("child1"), "child1", {leaf.target()});
    ToolServer top(fr / "repo", tls("relay"), {"--name", "relay", "--relay-to", mid.target().text()});
    auto o = options({top.target()}, 1);
    o.bandwidth_limit = 16 * MiB;
    std::atomic<uint64_t> sent{0};
    o.on_progress = [&](const std::vector<ReplicaProgress>& p) {
        if (!p.empty()) sent = p[0].payload_sent;
    };
    o.progress_interval = 50ms;
    std::jthread killer([&] {
        for (int i = 0; i < 600 && sent.load() < 48 * MiB; ++i) std::this_thread::sleep_for(20ms);
        top.kill9();
    });
    auto first = push(o);
    killer.join();
    ASSERT_TRUE(first) << first.status().message();
    ASSERT_EQ(first->replicas.size(), 2u);
    EXPECT_FALSE(first->replicas[0].ok());
    const auto& m = first->replicas[1];
    EXPECT_TRUE(m.ok()) << m.status.message();
    EXPECT_EQ(m.target, mid.target().text());
    EXPECT_EQ(m.taken_over_from, top.target().text());
    EXPECT_GT(m.resume_seq, 0u);
    ASSERT_EQ(m.relay_children.size(), 1u);  // child1 named child2 to the master
    EXPECT_EQ(m.relay_children[0], "child2 (" + leaf.target().text() + ")");
    auto lr = leaf.wait_reports(2);
    ASSERT_EQ(lr.size(), 2u);
    EXPECT_FALSE(lr[0].published);
    EXPECT_TRUE(lr[0].staging_kept);
    EXPECT_TRUE(lr[1].published) << lr[1].status.message();
    EXPECT_EQ(lr[1].peer.rfind("child1 (", 0), 0u) << lr[1].peer;  // still through its own relay
    EXPECT_GT(lr[1].resumed_after, 0u);
    std::cout << "[ measured ] top relay killed after " << sent.load() / MiB << " MiB of 96; child1 resumed after change "
              << m.resume_seq << ", child2 after " << lr[1].resumed_after << "\n";
    for (const LoopFs* f : {&f1, &f2}) EXPECT_TRUE(same_tree(*f / "repo/images/vm/1", master_version(1)));
    EXPECT_FALSE(fs::exists(fr / "repo/images/vm/1"));
}

}  // namespace
}  // namespace icbd::repl
