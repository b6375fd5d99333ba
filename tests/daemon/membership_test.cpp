// Membership over real mutual TLS on 127.0.0.1: replicas register with the
// master (only under their own certificate name, only with the cluster's CA),
// the keepalive walks a replica that stops answering through suspect to dead
// and back to alive, a hanging replica delays nobody else, and the registry in
// the SQLite store survives a restart of the master.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "icbd/unique_fd.hpp"
#include "membership.hpp"
#include "peer_certs.hpp"
#include "peer_server.hpp"
#include "store.hpp"

namespace icbd::node {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using Versions = std::map<std::string, std::vector<uint64_t>>;

// Polls `pred` until it holds or a generous deadline passes (CI machines are
// shared; the deadline only bounds a failing run).
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds deadline = 20s) {
    const auto end = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < end) {
        if (pred()) return true;
        std::this_thread::sleep_for(10ms);
    }
    return pred();
}

repl::TlsConfig tls(const std::string& node, const std::string& ca = "good") {
    return test::PeerCerts::get().tls(node, ca);
}

TEST(MembershipRules, NextState) {
    using L = Liveness;
    EXPECT_EQ(Membership::next_state(L::dead, true, 0, 3), L::alive);
    EXPECT_EQ(Membership::next_state(L::suspect, true, 0, 3), L::alive);
    EXPECT_EQ(Membership::next_state(L::alive, false, 1, 3), L::suspect);
    EXPECT_EQ(Membership::next_state(L::suspect, false, 2, 3), L::suspect);
    EXPECT_EQ(Membership::next_state(L::suspect, false, 3, 3), L::dead);
    EXPECT_EQ(Membership::next_state(L::dead, false, 7, 3), L::dead);
    EXPECT_EQ(Membership::next_state(L::alive, false, 1, 1), L::dead);
}

// The master: its store, membership and peer listener (register only).
struct Master {
    std::filesystem::path db;
    std::unique_ptr<NodeStore> store;
    std::unique_ptr<Membership> membership;
    std::unique_ptr<PeerServer> server;
    std::mutex mu;
    std::vector<std::pair<std::string, Liveness>> changes;  // what on_change saw

    Status start(std::chrono::milliseconds interval, uint16_t port = 0) {
        auto s = open_sqlite_store(db);
        if (!s) return s.status();
        store = std::move(*s);
        Membership::Options o;
        o.node_name = "master";
        o.tls = tls("master");
        o.keepalive_interval = interval;
        o.keepalive_tries = 3;
        membership = std::make_unique<Membership>(
            o, *store,
            [] {
                Catalog c;
                c["win10"] = CatalogImage{{1, 2, 3}, 3, 3, "disk.raw"};
                return c;
            },
            [this](const std::string& name) {
                auto r = store->replica(name);
                std::lock_guard lock(mu);
                if (r && r->has_value()) changes.emplace_back(name, (*r)->state);
            });
        auto srv = PeerServer::start("127.0.0.1", port, tls("master"), [this](const repl::PeerIdentity& p, const json& r) {
            if (r.value("type", "") == "register") return membership->handle_register(p, r);
            return error_message("master: request '" + r.value("type", "") + "' is not served here");
        });
        if (!srv) return srv.status();
        server = std::move(*srv);
        membership->start();
        return Status::ok();
    }
    void stop() {
        if (server) server->stop();
        if (membership) membership->stop();
        server.reset();
        membership.reset();
        store.reset();
    }
    ~Master() { stop(); }
    std::string address() const { return "127.0.0.1:" + std::to_string(server->port()); }

    std::optional<ReplicaRecord> replica(const std::string& name) {
        auto r = store->replica(name);
        return r ? *r : std::nullopt;
    }
    bool state_is(const std::string& name, Liveness l) {
        auto r = replica(name);
        return r && r->state == l;
    }
    bool saw(const std::string& name, Liveness l) {
        std::lock_guard lock(mu);
        for (auto& [n, s] : changes)
            if (n == name && s == l) return true;
        return false;
    }
};

// A replica: its peer listener (pings from the master only) and its link.
struct Replica {
    explicit Replica(std::string n) : name(std::move(n)) {}
    std::string name;
    std::unique_ptr<PeerServer> server;
    std::unique_ptr<MasterLink> link;
    std::atomic<int> pings{0};
    uint16_t port = 0;

    repl::TlsConfig config(const std::string& ca = "good") const {
        auto c = tls(name, ca);
        c.allowed_peer_names = {"master"};
        return c;
    }
    Status listen() {
        auto srv = PeerServer::start("127.0.0.1", port, config(), [this](const repl::PeerIdentity& p, const json& r) {
            if (r.value("type", "") == "ping" && link) return link->handle_ping(p, r);
            return error_message(name + ": request '" + r.value("type", "") + "' is not served here");
        });
        if (!srv) return srv.status();
        server = std::move(*srv);
        port = server->port();
        return Status::ok();
    }
    void start_link(const std::string& master_address, const std::string& ca = "good") {
        MasterLink::Options o;
        o.node_name = name;
        o.master_address = master_address;
        o.tls = config();
        if (ca != "good") {
            // A stranger's certificate that trusts our CA: only the master can refuse it.
            auto foreign = tls(name, ca);
            o.tls.cert_file = foreign.cert_file;
            o.tls.key_file = foreign.key_file;
        }
        o.peer_address = "127.0.0.1:" + std::to_string(port);
        o.replication_address = "127.0.0.1:7400";
        o.subscribe = {"win10"};
        link = std::make_unique<MasterLink>(
            o, [] { return Versions{{"win10", {1, 2}}}; },
            [this](const PingRequest& ping) {
                pings++;
                PongReply pong;
                pong.subscribe = {"win10"};
                pong.versions = {{"win10", ping.catalog.at("win10").versions}};
                pong.in_use = {{"win10", {2}}};
                return pong;
            });
        link->start();
    }
    void stop() {
        if (link) link->stop();
        if (server) server->stop();
    }
    ~Replica() { stop(); }
};

class MembershipTest : public ::testing::Test {
protected:
    void SetUp() override {
        ICBD_REQUIRE_PEER_CERTS();
        dir_ = std::make_unique<test::TempDir>("/tmp", "icbd-membership-");
        master_.db = dir_->path() / "blockd.db";
    }
    void TearDown() override {
        r1_.stop();
        master_.stop();
    }
    std::unique_ptr<test::TempDir> dir_;
    Master master_;
    Replica r1_{std::string("r1")};
};

TEST_F(MembershipTest, ReplicaRegistersAndIsAlive) {
    ASSERT_TRUE(master_.start(200ms));
    ASSERT_TRUE(r1_.listen());
    r1_.start_link(master_.address());
    ASSERT_TRUE(eventually([&] { return master_.state_is("r1", Liveness::alive); }));
    ASSERT_TRUE(eventually([&] { return r1_.link->registered(); }));
    auto rec = master_.replica("r1");
    ASSERT_TRUE(rec);
    EXPECT_EQ(rec->peer_address, "127.0.0.1:" + std::to_string(r1_.port));
    EXPECT_EQ(rec->replication_address, "127.0.0.1:7400");
    EXPECT_EQ(rec->subscribe, std::vector<std::string>{"win10"});
    EXPECT_GT(rec->registered_ms, 0);
    EXPECT_TRUE(master_.saw("r1", Liveness::alive));
    // Keepalives reach it and its pong updates what the master knows it holds.
    ASSERT_TRUE(eventually([&] {
        auto r = master_.replica("r1");
        return r1_.pings > 0 && r && r->versions == Versions{{"win10", {1, 2, 3}}};
    }));
    ASSERT_TRUE(eventually([&] { return master_.membership->in_use()["r1"] == Versions{{"win10", {2}}}; }));
    EXPECT_TRUE(r1_.link->last_error().empty()) << r1_.link->last_error();
}

TEST_F(MembershipTest, RegisteringUnderAnotherNodesNameIsRefused) {
    ASSERT_TRUE(master_.start(10s));
    RegisterRequest req;
    req.node = "r2";  // but the certificate says r1
    req.peer_address = "127.0.0.1:1";
    req.replication_address = "127.0.0.1:2";
    req.subscribe = {"*"};
    auto answer = peer_call(master_.address(), tls("r1"), to_json(req));
    ASSERT_FALSE(answer);
    EXPECT_EQ(answer.status().code(), EREMOTEIO);
    EXPECT_NE(answer.status().message().find("'r2' refused"), std::string::npos) << answer.status().message();
    EXPECT_NE(answer.status().message().find("'r1'"), std::string::npos) << answer.status().message();
    auto all = master_.store->replicas();
    ASSERT_TRUE(all);
    EXPECT_TRUE(all->empty());
    // A malformed registration is refused as well, naming the field.
    json bad = to_json(req);
    bad["node"] = "r1";
    bad["subscribe"] = "win10";
    answer = peer_call(master_.address(), tls("r1"), bad);
    ASSERT_FALSE(answer);
    EXPECT_NE(answer.status().message().find("'subscribe'"), std::string::npos) << answer.status().message();
    EXPECT_TRUE(master_.store->replicas()->empty());
}

TEST_F(MembershipTest, AReplicaWithACertificateFromAnotherCaCannotRegister) {
    ASSERT_TRUE(master_.start(10s));
    ASSERT_TRUE(r1_.listen());
    r1_.start_link(master_.address(), "evil");
    ASSERT_TRUE(eventually([&] { return !r1_.link->last_error().empty(); }));
    EXPECT_FALSE(r1_.link->registered());
    EXPECT_TRUE(master_.store->replicas()->empty());
}

TEST_F(MembershipTest, KeepaliveWalksASilentReplicaToDeadAndBack) {
    ASSERT_TRUE(master_.start(200ms));
    ASSERT_TRUE(r1_.listen());
    r1_.start_link(master_.address());
    ASSERT_TRUE(eventually([&] { return master_.state_is("r1", Liveness::alive) && r1_.pings > 0; }));

    r1_.server->stop();  // the replica's peer listener goes away; its link stays
    ASSERT_TRUE(eventually([&] { return master_.state_is("r1", Liveness::dead); }));
    EXPECT_TRUE(master_.saw("r1", Liveness::suspect)) << "it went dead without being suspect first";
    auto rec = master_.replica("r1");
    ASSERT_TRUE(rec);
    EXPECT_GE(rec->missed, 3u);
    // Never forgotten: still listed while dead, and still pinged.
    EXPECT_EQ(master_.store->replicas()->size(), 1u);

    ASSERT_TRUE(r1_.listen());  // same port again
    ASSERT_TRUE(eventually([&] { return master_.state_is("r1", Liveness::alive); }));
    rec = master_.replica("r1");
    EXPECT_EQ(rec->missed, 0u);
}

// A TCP port that accepts connections (the kernel's backlog) but never speaks
// TLS: a replica that hangs rather than refuses.
struct HangingPeer {
    UniqueFd fd;
    uint16_t port = 0;
    HangingPeer() {
        fd = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (fd.get() < 0 || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::listen(fd.get(), 256) != 0 || ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
            return;
        port = ntohs(a.sin_port);
    }
};

TEST_F(MembershipTest, HangingReplicasDoNotDelayTheKeepaliveOfOthers) {
    ASSERT_TRUE(master_.start(200ms));
    // Five replicas that hang for a whole ping timeout each: pinged one after
    // the other they would stretch every keepalive pass to over a second.
    std::vector<std::unique_ptr<HangingPeer>> hanging;
    for (int i = 0; i < 5; ++i) {
        hanging.push_back(std::make_unique<HangingPeer>());
        ASSERT_NE(hanging.back()->port, 0) << "cannot listen on 127.0.0.1";
        ReplicaRecord r;
        r.name = "h" + std::to_string(i);
        r.peer_address = "127.0.0.1:" + std::to_string(hanging.back()->port);
        r.replication_address = r.peer_address;
        r.subscribe = {"*"};
        ASSERT_TRUE(master_.store->upsert_replica(r));
    }
    ASSERT_TRUE(r1_.listen());
    r1_.start_link(master_.address());
    ASSERT_TRUE(eventually([&] { return r1_.pings > 0; }));
    // Ten more keepalives take about 2 s at 200 ms when nobody waits for the
    // hanging ones, and over 10 s when they are waited for.
    const int before = r1_.pings;
    EXPECT_TRUE(eventually([&] { return r1_.pings >= before + 10; }, 6s))
        << "r1 got " << (r1_.pings - before) << " keepalives in 6 s at a 200 ms interval";
    EXPECT_TRUE(master_.state_is("r1", Liveness::alive));
    EXPECT_TRUE(eventually([&] { return master_.state_is("h0", Liveness::dead); }));
}

TEST_F(MembershipTest, TheRegistrySurvivesARestartOfTheMaster) {
    ASSERT_TRUE(master_.start(200ms));
    ASSERT_TRUE(r1_.listen());
    r1_.start_link(master_.address());
    ASSERT_TRUE(eventually([&] { return master_.state_is("r1", Liveness::alive); }));
    const int64_t registered = master_.replica("r1")->registered_ms;
    r1_.server->stop();
    ASSERT_TRUE(eventually([&] { return master_.state_is("r1", Liveness::dead); }));

    const uint16_t port = master_.server->port();
    master_.stop();
    ASSERT_TRUE(master_.start(200ms, port));
    // The new master object knows r1 from the database, dead as it was left.
    auto rec = master_.replica("r1");
    ASSERT_TRUE(rec);
    EXPECT_EQ(rec->registered_ms, registered);
    EXPECT_EQ(rec->peer_address, "127.0.0.1:" + std::to_string(r1_.port));
    EXPECT_NE(rec->state, Liveness::alive);
    // Its keepalive finds r1 again without r1 registering anew (its link only
    // re-registers after 30 s without pings).
    ASSERT_TRUE(r1_.listen());
    ASSERT_TRUE(eventually([&] { return master_.state_is("r1", Liveness::alive); }));
    EXPECT_EQ(master_.replica("r1")->registered_ms, registered);
}

}  // namespace
}  // namespace icbd::node
