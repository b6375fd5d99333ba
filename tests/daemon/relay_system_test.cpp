// Relay trees through blockd, as an operator runs them (docs/blockd.md, "Relay
// trees"): a master configured to feed two cache servers through a third
// sends one copy of a version, every node ends with the same bytes; with the
// relay killed (-9), the next version still reaches its children, from the
// master. A leaf refuses a push from anyone but the master and its parent.
// Cycles and unknown parents are refused at load and by blockctl.
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <random>

#include "blockd_cluster.hpp"
#include "icbd/replicator/sender.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr unsigned kDiskMiB = 32;

void make_disk(const fs::path& file, unsigned mib, unsigned seed) {
    std::ofstream out(file, std::ios::binary);
    std::mt19937_64 rng(seed);
    std::vector<uint64_t> buf(1 << 17);  // 1 MiB; random: compression cannot hide a second copy
    for (unsigned i = 0; i < mib; ++i) {
        for (auto& w : buf) w = rng();
        out.write(reinterpret_cast<const char*>(buf.data()), buf.size() * 8);
    }
}

json node_record(const BlockdNode& master, const std::string& replica) {
    for (const json& n : master.ctl_ok({"node", "list"}))
        if (n["name"] == replica) return n;
    return json();
}

uint64_t newest_on(const BlockdNode& master, const std::string& replica, const std::string& image) {
    json n = node_record(master, replica);
    if (n.is_null() || !n["images"].contains(image)) return 0;
    return n["images"][image]["newest"].get<uint64_t>();
}

// The master's push history for one version, by replica (the newest record each).
std::map<std::string, json> pushes_of(const BlockdNode& master, uint64_t version) {
    std::map<std::string, json> out;
    for (const json& p : master.ctl_ok({"push", "list", "--limit", "200"})) {
        if (p["version"] != version) continue;
        const std::string r = p["replica"].get<std::string>();
        if (!out.count(r)) out[r] = p;  // newest first
    }
    return out;
}

const char* kRelayConfig = "[relay.via]\nleaf1 = \"hub\"\nleaf2 = \"hub\"\n";

class RelaySystemTest : public ::testing::Test {
protected:
    void SetUp() override {
        certs_ = std::make_unique<TempDir>("/tmp", "icbd-certs-");
        make_certs(certs_->path(), {"master", "hub", "leaf1", "leaf2"});
    }
    std::unique_ptr<TempDir> certs_;
};

TEST_F(RelaySystemTest, MasterSendsOneCopyThroughTheRelayAndFeedsItsChildrenWhenTheRelayIsKilled) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    master.set_extra_config(std::string(kFastKeepalive) + kRelayConfig);
    master.start();
    BlockdNode hub(BlockdNode::Role::replica, "hub", certs_->path());
    BlockdNode leaf1(BlockdNode::Role::replica, "leaf1", certs_->path());
    BlockdNode leaf2(BlockdNode::Role::replica, "leaf2", certs_->path());
    for (BlockdNode* r : {&hub, &leaf1, &leaf2}) {
        r->set_master(master);
        r->start();
    }
    // The children have applied their parent (a keepalive told them) before
    // anything is published; until then the master would feed them itself.
    ASSERT_TRUE(eventually([&] {
        for (const char* leaf : {"leaf1", "leaf2"}) {
            json n = node_record(master, leaf);
            if (n.is_null() || n["state"] != "alive" || n["relay"]["parent_applied"] != "hub") return false;
        }
        return node_record(master, "hub")["state"] == "alive";
    }, 30s)) << master.ctl({"node", "list"}).output;
    json tree = master.ctl_ok({"node", "tree"});
    ASSERT_EQ(tree["nodes"].size(), 3u) << tree.dump();
    EXPECT_EQ(tree["nodes"][0]["name"], "hub");
    EXPECT_EQ(tree["nodes"][0]["depth"], 1);
    for (int i : {1, 2}) {
        EXPECT_EQ(tree["nodes"][i]["depth"], 2) << tree.dump();
        EXPECT_EQ(tree["nodes"][i]["parent"], "hub") << tree.dump();
    }
    EXPECT_EQ(node_record(master, "hub")["relay"]["children"], json({"leaf1", "leaf2"}));
    EXPECT_EQ(node_record(master, "leaf1")["relay"]["parent_source"], "config");

    // blockctl refuses a cycle and a parent the master does not know, and changes nothing.
    auto cycle = master.ctl({"node", "relay", "hub", "--via", "leaf1"});
    EXPECT_NE(cycle.exit_code, 0);
    EXPECT_NE(cycle.output.find("relay cycle: 'hub' via 'leaf1' via 'hub'"), std::string::npos) << cycle.output;
    auto unknown = master.ctl({"node", "relay", "leaf2", "--via", "nosuch"});
    EXPECT_NE(unknown.exit_code, 0);
    EXPECT_NE(unknown.output.find("parent 'nosuch' is not registered"), std::string::npos) << unknown.output;
    EXPECT_EQ(node_record(master, "hub")["relay"]["parent"], "");
    EXPECT_EQ(node_record(master, "leaf2")["relay"]["parent"], "hub");

    // Version 1: one copy leaves the master, to the hub; the hub feeds both leaves.
    {
        TempDir src("/var/tmp", "icbd-src-");
        make_disk(src / "disk.raw", kDiskMiB, 11);
        master.ctl_ok({"image", "import", "win10", "--from", (src / "disk.raw").string()});
    }
    ASSERT_TRUE(eventually([&] {
        return newest_on(master, "hub", "win10") == 1 && newest_on(master, "leaf1", "win10") == 1 &&
               newest_on(master, "leaf2", "win10") == 1;
    }, 40s)) << master.ctl({"node", "list"}).output << "\nmaster log:\n" << master.log();
    // The leaves' history rows come with the keepalive that confirmed them.
    ASSERT_TRUE(eventually([&] { return pushes_of(master, 1).size() == 3; }, 10s))
        << master.ctl({"push", "list"}).output;
    auto v1 = pushes_of(master, 1);
    const uint64_t payload = uint64_t(kDiskMiB) << 20;
    EXPECT_TRUE(v1["hub"]["ok"].get<bool>()) << v1["hub"].dump();
    EXPECT_GE(v1["hub"]["wire_bytes"].get<uint64_t>(), payload * 9 / 10) << v1["hub"].dump();
    uint64_t total_wire = 0;
    for (const auto& [replica, p] : v1) total_wire += p["wire_bytes"].get<uint64_t>();
    EXPECT_LT(total_wire, payload * 6 / 5) << "the master sent more than one copy of version 1";
    for (const char* leaf : {"leaf1", "leaf2"}) {
        EXPECT_TRUE(v1[leaf]["ok"].get<bool>()) << v1[leaf].dump();
        EXPECT_EQ(v1[leaf]["wire_bytes"].get<uint64_t>(), 0u) << v1[leaf].dump();
        EXPECT_EQ(v1[leaf]["message"], "relayed by 'hub'") << v1[leaf].dump();
    }
    const std::string d1 = sha256_of(master.version_file("win10", 1));
    for (BlockdNode* r : {&hub, &leaf1, &leaf2}) EXPECT_EQ(sha256_of(r->version_file("win10", 1)), d1) << r->name();
    json hub_status = hub.ctl_ok({"status"});
    ASSERT_EQ(hub_status["relay"]["children"].size(), 2u) << hub_status.dump();
    EXPECT_EQ(leaf1.ctl_ok({"status"})["relay"]["parent"], "hub");
    // The leaves received from the hub, not from the master.
    EXPECT_NE(leaf1.log().find("received from hub"), std::string::npos) << leaf1.log();
    // A node that is neither the master nor the parent cannot push to a leaf
    // (its certificate is valid: only the name is wrong).
    {
        repl::PushOptions po;
        po.root = master.repository();
        po.image = "win10";
        po.version = 1;
        po.targets = {repl::HostPort{"127.0.0.1", static_cast<uint16_t>(leaf1.replication_port())}};
        po.tls.ca_file = (certs_->path() / "ca.crt").string();
        po.tls.cert_file = (certs_->path() / "leaf2.crt").string();
        po.tls.key_file = (certs_->path() / "leaf2.key").string();
        po.tls.allowed_peer_names = {"leaf1"};
        po.node_name = "leaf2";
        auto rogue = repl::push(po);
        ASSERT_TRUE(rogue) << rogue.status().message();
        EXPECT_FALSE(rogue->replicas.at(0).ok());
        EXPECT_TRUE(eventually([&] {
            return leaf1.log().find("refused connection from leaf2") != std::string::npos;
        }, 5s)) << leaf1.log();
    }

    // The relay dies; version 2 still reaches its children, from the master.
    hub.kill9();
    json co = master.ctl_ok({"image", "checkout", "win10"});
    {
        std::fstream f(fs::path(co["path"].get<std::string>()) / "disk.raw", std::ios::binary | std::ios::in | std::ios::out);
        std::string mib(4 << 20, 'y');
        f.seekp(7ll << 20);
        f.write(mib.data(), mib.size());
    }
    master.ctl_ok({"image", "commit", "win10", "--message", "update"});
    ASSERT_TRUE(eventually([&] {
        return newest_on(master, "leaf1", "win10") == 2 && newest_on(master, "leaf2", "win10") == 2;
    }, 30s)) << master.ctl({"node", "list"}).output << "\nmaster log:\n" << master.log();
    auto v2 = pushes_of(master, 2);
    for (const char* leaf : {"leaf1", "leaf2"}) {
        ASSERT_TRUE(v2.count(leaf)) << master.ctl({"push", "list"}).output;
        EXPECT_TRUE(v2[leaf]["ok"].get<bool>()) << v2[leaf].dump();
        EXPECT_GT(v2[leaf]["wire_bytes"].get<uint64_t>(), 0u) << "not pushed by the master: " << v2[leaf].dump();
    }
    const std::string d2 = sha256_of(master.version_file("win10", 2));
    EXPECT_NE(d2, d1);
    for (BlockdNode* r : {&leaf1, &leaf2}) EXPECT_EQ(sha256_of(r->version_file("win10", 2)), d2) << r->name();
    EXPECT_EQ(newest_on(master, "hub", "win10"), 1u);
    EXPECT_NE(leaf1.log().find("image 'win10' version 2: received from master"), std::string::npos) << leaf1.log();
    if (std::getenv("ICBD_TEST_VERBOSE")) std::cerr << "---- master log:\n" << master.log() << "---- leaf1 log:\n" << leaf1.log();
}

// The tree set with blockctl (which also makes the replicas learn it at
// once) is used; the relay killed just before a commit, long before its next
// keepalive, does not hold its child back: the master pushes to it at once.
TEST_F(RelaySystemTest, RelaySetWithBlockctlIsUsedAndARelayKilledJustBeforeACommitIsRoutedAround) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    master.set_extra_config("[membership]\nkeepalive_interval = \"30s\"\n");
    master.start();
    BlockdNode hub(BlockdNode::Role::replica, "hub", certs_->path());
    BlockdNode leaf1(BlockdNode::Role::replica, "leaf1", certs_->path());
    for (BlockdNode* r : {&hub, &leaf1}) {
        r->set_master(master);
        r->start();
    }
    ASSERT_TRUE(eventually([&] { return !node_record(master, "hub").is_null() && !node_record(master, "leaf1").is_null(); },
                           30s));
    json set = master.ctl_ok({"node", "relay", "leaf1", "--via", "hub"});
    EXPECT_EQ(set["parent"], "hub");
    ASSERT_TRUE(eventually([&] { return node_record(master, "leaf1")["relay"]["parent_applied"] == "hub"; }, 10s))
        << master.ctl({"node", "list"}).output;
    EXPECT_EQ(node_record(master, "leaf1")["relay"]["parent_source"], "blockctl");
    {
        TempDir src("/var/tmp", "icbd-src-");
        make_disk(src / "disk.raw", 8, 5);
        master.ctl_ok({"image", "import", "win10", "--from", (src / "disk.raw").string()});
    }
    ASSERT_TRUE(eventually([&] { return pushes_of(master, 1).size() == 2; }, 30s)) << master.ctl({"push", "list"}).output;
    EXPECT_EQ(pushes_of(master, 1)["leaf1"]["message"], "relayed by 'hub'");

    hub.kill9();
    json co = master.ctl_ok({"image", "checkout", "win10"});
    {
        std::fstream f(fs::path(co["path"].get<std::string>()) / "disk.raw", std::ios::binary | std::ios::in | std::ios::out);
        std::string block(1 << 20, 'z');
        f.write(block.data(), block.size());
    }
    master.ctl_ok({"image", "commit", "win10"});
    // Well within one keepalive interval: the master did not wait to learn that the hub is gone.
    ASSERT_TRUE(eventually([&] { return newest_on(master, "leaf1", "win10") == 2; }, 15s))
        << master.ctl({"push", "list"}).output << "\nmaster log:\n" << master.log();
    // Which of the two noticed first, the commit's keepalive (the hub is
    // suspect: not routed through) or the push (the hub cannot be told its
    // children), races; either way the leaf is pushed directly at once.
    const std::string mlog = master.log();
    EXPECT_TRUE(mlog.find("relay 'hub' cannot be told its children") != std::string::npos ||
                mlog.find("replica 'hub' is suspect") != std::string::npos)
        << mlog;
    EXPECT_EQ(sha256_of(leaf1.version_file("win10", 2)), sha256_of(master.version_file("win10", 2)));
    EXPECT_NE(leaf1.log().find("image 'win10' version 2: received from master"), std::string::npos) << leaf1.log();
}

// A cycle in the master's file stops blockd at load, naming the replicas.
TEST_F(RelaySystemTest, CycleInTheConfigurationIsRefusedAtLoad) {
    TempDir dir("/tmp", "icbd-relay-cfg-");
    fs::create_directories(dir.path() / "repo");
    const fs::path cfg = dir.path() / "blockd.toml";
    std::ofstream(cfg) << "role = \"master\"\nname = \"master\"\n"
                       << "[repository]\nroot = \"" << (dir.path() / "repo").string() << "\"\n"
                       << "[tls]\nca = \"" << (certs_->path() / "ca.crt").string() << "\"\ncert = \""
                       << (certs_->path() / "master.crt").string() << "\"\nkey = \""
                       << (certs_->path() / "master.key").string() << "\"\n"
                       << "[relay.via]\nleaf1 = \"hub\"\nhub = \"leaf2\"\nleaf2 = \"leaf1\"\n";
    auto r = run_command({blockd_bin().string(), "--config", cfg.string(), "--check-config"}, {}, 30s);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("relay.via: relay cycle: 'hub' via 'leaf2' via 'leaf1' via 'hub'"), std::string::npos)
        << r.output;
    // The master as a parent (a replica it feeds needs no entry) is refused too.
    std::ofstream(cfg) << "role = \"master\"\nname = \"master\"\n"
                       << "[repository]\nroot = \"" << (dir.path() / "repo").string() << "\"\n"
                       << "[tls]\nca = \"" << (certs_->path() / "ca.crt").string() << "\"\ncert = \""
                       << (certs_->path() / "master.crt").string() << "\"\nkey = \""
                       << (certs_->path() / "master.key").string() << "\"\n"
                       << "[relay.via]\nleaf1 = \"master\"\n";
    r = run_command({blockd_bin().string(), "--config", cfg.string(), "--check-config"}, {}, 30s);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("parent 'master' is the master"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace icbd::test
