// The system as an operator runs it: a master and replicas, each its own
// blockd process with its own BTRFS repository, ports and tgtd, driven only
// through blockctl. Replication on commit, catch-up after a crash, membership
// states, client LUNs served to a real libiscsi initiator.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <random>

#include "blockd_cluster.hpp"
#include "iscsi_client.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;


// A raw disk of `mib` MiB with pseudo-random content (incompressible enough
// that replication moves real bytes) and a hole in the middle.
void make_disk(const fs::path& file, unsigned mib, unsigned seed) {
    std::ofstream out(file, std::ios::binary);
    std::mt19937_64 rng(seed);
    std::vector<uint64_t> buf(1 << 17);  // 1 MiB
    for (unsigned i = 0; i < mib; ++i) {
        if (i == mib / 2) {
            out.seekp(1 << 20, std::ios::cur);
            continue;
        }
        for (auto& w : buf) w = rng();
        out.write(reinterpret_cast<const char*>(buf.data()), buf.size() * 8);
    }
    out.flush();
    fs::resize_file(file, uint64_t(mib) << 20);
}

// Overwrites 1 MiB at `offset_mib` of the checkout's disk.raw with `byte`.
void edit_disk(const fs::path& checkout, unsigned offset_mib, char byte) {
    std::fstream f(checkout / "disk.raw", std::ios::binary | std::ios::in | std::ios::out);
    std::string mib(1 << 20, byte);
    f.seekp(std::streamoff(offset_mib) << 20);
    f.write(mib.data(), mib.size());
}

uint64_t newest_on(const BlockdNode& master, const std::string& replica, const std::string& image) {
    for (const json& n : master.ctl_ok({"node", "list"})) {
        if (n["name"] == replica && n["images"].contains(image)) return n["images"][image]["newest"].get<uint64_t>();
    }
    return 0;
}

std::string state_of(const BlockdNode& master, const std::string& replica) {
    for (const json& n : master.ctl_ok({"node", "list"})) {
        if (n["name"] == replica) return n["state"].get<std::string>();
    }
    return "";
}

uint64_t commit_edit(const BlockdNode& master, const std::string& image, unsigned offset_mib, char byte) {
    json co = master.ctl_ok({"image", "checkout", image});
    edit_disk(co["path"].get<std::string>(), offset_mib, byte);
    json v = master.ctl_ok({"image", "commit", image, "--message", "edit at " + std::to_string(offset_mib) + " MiB"});
    return v["version"].get<uint64_t>();
}

// Image `image` version 1 (a `mib` MiB disk) imported on the master and
// waited for on the replica.
void import_and_wait(const BlockdNode& master, const BlockdNode& replica, const std::string& image, unsigned mib,
                     unsigned seed) {
    TempDir src("/var/tmp", "icbd-src-");
    make_disk(src / "disk.raw", mib, seed);
    master.ctl_ok({"image", "import", image, "--from", (src / "disk.raw").string()});
    ASSERT_TRUE(eventually([&] { return newest_on(master, replica.name(), image) == 1; }, std::chrono::seconds(60)))
        << master.ctl({"node", "list"}).output;
}

// The usual pair: a master with a fast keepalive and a replica registered with it.
void start_pair(BlockdNode& master, BlockdNode& replica) {
    master.set_extra_config(kFastKeepalive);
    master.start();
    replica.set_master(master);
    replica.start();
}

// The initiator name this test process logs in with (IscsiClient's).
std::string own_initiator() { return "iqn.2026-01.org.icbd:test-initiator-" + std::to_string(getpid()); }

// A desktop whose initiator is this process, once the replica has the image.
void add_own_client(const BlockdNode& replica, const std::string& name, const std::string& image) {
    ASSERT_TRUE(eventually(
        [&] {
            return replica.ctl({"client", "add", name, "--image", image, "--initiator", own_initiator()}).exit_code ==
                   0;
        },
        std::chrono::seconds(20)))
        << replica.ctl({"client", "list"}).output;
}

// Logs in as an initiator would while an export comes back: retrying for a
// while. Null if it never succeeds.
std::unique_ptr<IscsiClient> login_eventually(const std::string& url) {
    std::unique_ptr<IscsiClient> session;
    eventually(
        [&] {
            try {
                session = std::make_unique<IscsiClient>(url);
                return true;
            } catch (const std::exception&) {
                return false;
            }
        },
        std::chrono::seconds(20));
    return session;
}

class SystemTest : public ::testing::Test {
protected:
    void SetUp() override {
        certs_ = std::make_unique<TempDir>("/tmp", "icbd-certs-");
        make_certs(certs_->path(), {"master", "r1", "r2", "r3"});
    }
    std::unique_ptr<TempDir> certs_;
};

// A master and three replicas: import and two commits reach all three byte
// for byte; a replica killed -9 is seen suspect then dead, misses two commits,
// and when it comes back catches up with one incremental push.
TEST_F(SystemTest, ThreeReplicasReplicateAndOneCatchesUpAfterKill9) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    master.set_extra_config(kFastKeepalive);
    master.start();
    std::vector<std::unique_ptr<BlockdNode>> replicas;
    for (const char* name : {"r1", "r2", "r3"}) {
        replicas.push_back(std::make_unique<BlockdNode>(BlockdNode::Role::replica, name, certs_->path()));
        replicas.back()->set_master(master);
        replicas.back()->start();
    }
    ASSERT_TRUE(eventually([&] { return master.ctl_ok({"node", "list"}).size() == 3; }, std::chrono::seconds(20)))
        << master.ctl({"node", "list"}).output;

    TempDir src("/var/tmp", "icbd-src-");
    make_disk(src / "disk.raw", 48, 1);
    json v1 = master.ctl_ok({"image", "import", "win10", "--from", (src / "disk.raw").string()});
    EXPECT_EQ(v1["version"], 1);
    for (auto& r : replicas) {
        ASSERT_TRUE(eventually([&] { return newest_on(master, r->name(), "win10") == 1; }, std::chrono::seconds(60)))
            << r->name() << ": " << master.ctl({"node", "list"}).output << "\nreplica log:\n" << r->log();
        EXPECT_EQ(sha256_of(r->version_file("win10", 1)), sha256_of(master.version_file("win10", 1)));
    }

    // r3 dies without a word.
    replicas[2]->kill9();
    ASSERT_TRUE(eventually([&] { return state_of(master, "r3") == "suspect"; }, std::chrono::seconds(15)));
    ASSERT_TRUE(eventually([&] { return state_of(master, "r3") == "dead"; }, std::chrono::seconds(20)));
    EXPECT_EQ(state_of(master, "r1"), "alive");

    EXPECT_EQ(commit_edit(master, "win10", 3, 'a'), 2u);
    EXPECT_EQ(commit_edit(master, "win10", 30, 'b'), 3u);
    for (int i : {0, 1}) {
        auto& r = replicas[i];
        ASSERT_TRUE(eventually([&] { return newest_on(master, r->name(), "win10") == 3; }, std::chrono::seconds(60)))
            << master.ctl({"node", "list"}).output;
        EXPECT_EQ(sha256_of(r->version_file("win10", 3)), sha256_of(master.version_file("win10", 3)));
    }
    // Still dead, still listed, behind by two versions.
    json r3 = master.ctl_ok({"node", "show", "r3"});
    EXPECT_EQ(r3["state"], "dead");
    EXPECT_EQ(r3["images"]["win10"]["lag_versions"], 2);
    EXPECT_GT(r3["images"]["win10"]["lag_bytes"].get<uint64_t>(), 0u);

    replicas[2]->start();
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r3", "win10") == 3; }, std::chrono::seconds(60)))
        << master.ctl({"node", "list"}).output << "\nr3 log:\n" << replicas[2]->log();
    EXPECT_EQ(state_of(master, "r3"), "alive");
    EXPECT_EQ(sha256_of(replicas[2]->version_file("win10", 3)), sha256_of(master.version_file("win10", 3)));
    // One incremental: version 2 was skipped, 3 came from 1 (only the changes).
    EXPECT_FALSE(fs::exists(replicas[2]->version_file("win10", 2)));
    uint64_t r3_bytes = 0;
    int r3_pushes_after_restart = 0;
    for (const json& p : master.ctl_ok({"push", "list", "--limit", "100"})) {
        if (p["replica"] == "r3" && p["version"] == 3 && p["ok"] == true) {
            ++r3_pushes_after_restart;
            r3_bytes = p["payload_bytes"].get<uint64_t>();
        }
    }
    EXPECT_EQ(r3_pushes_after_restart, 1);
    EXPECT_LE(r3_bytes, 4ull << 20) << "catch-up should send the changed extents only";
}

// The master killed -9 in the middle of a push finishes it after a restart.
TEST_F(SystemTest, MasterKilledMidPushFinishesAfterRestart) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    // 4 MiB/s over a 40 MiB image: the push takes ~10 s.
    master.set_extra_config(std::string(kFastKeepalive) +
                            "[replication]\nbandwidth_limit = \"4M\"\ncheckpoint_interval = \"1M\"\n");
    master.start();
    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    r1.set_master(master);
    r1.start();
    ASSERT_TRUE(eventually([&] { return master.ctl_ok({"node", "list"}).size() == 1; }, std::chrono::seconds(20)));

    TempDir src("/var/tmp", "icbd-src-");
    make_disk(src / "disk.raw", 40, 2);
    master.ctl_ok({"image", "import", "img", "--from", (src / "disk.raw").string()});
    ASSERT_TRUE(eventually(
        [&] {
            for (const json& n : master.ctl_ok({"node", "list"}))
                if (!n["push"].is_null() && n["push"]["payload_sent"].get<uint64_t>() > (4u << 20)) return true;
            return false;
        },
        std::chrono::seconds(30)))
        << master.ctl({"node", "list"}).output;
    master.kill9();
    EXPECT_FALSE(fs::exists(r1.version_file("img", 1))) << "nothing may be visible before publish";
    master.start();
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r1", "img") == 1; }, std::chrono::seconds(90)))
        << master.ctl({"node", "list"}).output << "\nr1 log:\n" << r1.log();
    EXPECT_EQ(sha256_of(r1.version_file("img", 1)), sha256_of(master.version_file("img", 1)));
}

// A desktop on a cache server: exported by blockctl, read through libiscsi
// (the version's bytes), written; a new version waits while its session is
// open and is taken (overlay reset) once the session closes; a persistent
// desktop stays pinned; a version in use cannot be deleted.
TEST_F(SystemTest, ClientFollowsItsChannelOnlyBetweenSessions) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    start_pair(master, r1);
    ASSERT_NO_FATAL_FAILURE(import_and_wait(master, r1, "win10", 16, 3));
    ASSERT_NO_FATAL_FAILURE(add_own_client(r1, "pc01", "win10"));
    r1.ctl_ok({"client", "add", "pc02", "--image", "win10", "--initiator", "iqn.2026-01.org.icbd:pc02",
               "--persistent"});
    json pc01 = r1.ctl_ok({"client", "show", "pc01"});
    EXPECT_EQ(pc01["version"], 1);
    std::string url = "iscsi://127.0.0.1:" + std::to_string(r1.tgtd()->port()) + "/" +
                      pc01["target"].get<std::string>() + "/1";

    std::ifstream golden1(master.version_file("win10", 1), std::ios::binary);
    std::vector<uint8_t> first_mib(1 << 20);
    golden1.read(reinterpret_cast<char*>(first_mib.data()), first_mib.size());
    {
        IscsiClient c(url);
        auto r = c.read16(0, 2048);  // 512-byte blocks: 1 MiB
        ASSERT_TRUE(r.good()) << r.error;
        EXPECT_EQ(r.data, first_mib);
        std::vector<uint8_t> mine(4096, 0x5a);
        ASSERT_TRUE(c.write16(0, mine).good());
        // Version 2 is committed and promoted while the session is open.
        EXPECT_EQ(commit_edit(master, "win10", 0, 'z'), 2u);
        master.ctl_ok({"image", "promote", "win10", "2"});
        ASSERT_TRUE(eventually([&] { return newest_on(master, "r1", "win10") == 2; }, std::chrono::seconds(60)));
        ASSERT_TRUE(eventually([&] { return r1.ctl_ok({"client", "show", "pc01"})["desired_version"] == 2; },
                               std::chrono::seconds(20)));
        std::this_thread::sleep_for(std::chrono::seconds(2));  // several reconcile passes
        json now = r1.ctl_ok({"client", "show", "pc01"});
        EXPECT_EQ(now["version"], 1) << "a client with a session must not move";
        EXPECT_EQ(now["sessions"], 1);
        auto again = c.read16(0, 8);
        ASSERT_TRUE(again.good());
        EXPECT_EQ(again.data, mine);
        // On the replica, the version under a session is in use.
        auto del = r1.ctl({"image", "delete", "win10", "1"});
        EXPECT_EQ(del.exit_code, 1);
        EXPECT_NE(del.output.find("pc01"), std::string::npos) << del.output;
    }
    ASSERT_TRUE(eventually([&] { return r1.ctl_ok({"client", "show", "pc01"})["version"] == 2; },
                           std::chrono::seconds(30)))
        << r1.ctl({"client", "show", "pc01"}).output << r1.log();
    {
        // The record changes before the export is back (ACL bound last).
        auto session = login_eventually(url);
        ASSERT_TRUE(session);
        IscsiClient& c = *session;
        auto r = c.read16(0, 2048);
        ASSERT_TRUE(r.good());
        EXPECT_EQ(r.data, std::vector<uint8_t>(1 << 20, 'z')) << "non-persistent overlay reset onto version 2";
    }
    json pc02 = r1.ctl_ok({"client", "show", "pc02"});
    EXPECT_EQ(pc02["version"], 1);
    EXPECT_EQ(pc02["behind"], true);
    auto gone = r1.ctl({"image", "delete", "win10", "1"});
    EXPECT_EQ(gone.exit_code, 1) << "pc02 is pinned to version 1";
    EXPECT_NE(gone.output.find("pc02"), std::string::npos) << gone.output;
    // ...and the master keeps it too: desktops on r1 still use it.
    auto master_del = master.ctl({"image", "delete", "win10", "1"});
    EXPECT_EQ(master_del.exit_code, 1);
    EXPECT_NE(master_del.output.find("desktops on replica 'r1'"), std::string::npos) << master_del.output;

    r1.ctl_ok({"client", "remove", "pc01"});
    r1.ctl_ok({"client", "remove", "pc02"});
    EXPECT_EQ(r1.ctl_ok({"client", "list"}).size(), 0u);
}

// What an operator gets wrong, and peers that must not get in: every refusal
// is a clear message and an exit code, and nothing changes.
TEST_F(SystemTest, RefusesBadInputAndPushesFromReplicas) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    master.set_extra_config(kFastKeepalive);
    // blockctl against a blockd that is not running.
    auto down = master.ctl({"image", "list"});
    EXPECT_EQ(down.exit_code, 1);
    EXPECT_NE(down.output.find("not running"), std::string::npos) << down.output;
    // blockd with a misspelt key refuses to start, naming file and key.
    master.set_extra_config("[tgt]\ncontrl_port = 3\n");
    master.write_config();
    auto bad = run_command({blockd_bin().string(), "--config", master.config_file().string()});
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_NE(bad.output.find(master.config_file().string() + ": tgt.contrl_port: unknown key"), std::string::npos)
        << bad.output;
    master.set_extra_config(kFastKeepalive);
    master.start();

    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    BlockdNode r2(BlockdNode::Role::replica, "r2", certs_->path());
    for (BlockdNode* r : {&r1, &r2}) {
        r->set_master(master);
        r->start();
    }
    TempDir src("/var/tmp", "icbd-src-");
    make_disk(src / "disk.raw", 8, 4);
    EXPECT_EQ(master.ctl({"image", "import", "a/b", "--from", (src / "disk.raw").string()}).exit_code, 1);
    EXPECT_EQ(master.ctl({"image", "import", "..", "--from", (src / "disk.raw").string()}).exit_code, 1);
    EXPECT_EQ(master.ctl({"image", "import", "img", "--from", (src / "nope.raw").string()}).exit_code, 1);
    EXPECT_EQ(master.ctl_ok({"image", "list"}).size(), 0u) << "nothing imported by a refused command";
    auto unknown = master.ctl({"image", "versions", "ghost"});
    EXPECT_EQ(unknown.exit_code, 1);
    EXPECT_NE(unknown.output.find("ghost"), std::string::npos) << unknown.output;
    EXPECT_EQ(master.ctl({"image", "bogus-verb", "x"}).exit_code, 2);
    EXPECT_EQ(master.ctl({"node", "show", "nobody"}).exit_code, 1);

    master.ctl_ok({"image", "import", "img", "--from", (src / "disk.raw").string()});
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r2", "img") == 1; }, std::chrono::seconds(60)));
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r1", "img") == 1; }, std::chrono::seconds(60)));
    r1.ctl_ok({"client", "add", "pc01", "--image", "img", "--initiator", "iqn.2026-01.org.example:pc01"});
    auto dup = r1.ctl({"client", "add", "pc01", "--image", "img", "--initiator", "iqn.2026-01.org.example:pc09"});
    EXPECT_EQ(dup.exit_code, 1);
    EXPECT_NE(dup.output.find("pc01"), std::string::npos) << dup.output;
    EXPECT_EQ(r1.ctl({"client", "add", "pc02", "--image", "img", "--initiator", "not an iqn"}).exit_code, 1);
    EXPECT_EQ(r1.ctl({"client", "add", "../x", "--image", "img", "--initiator", "iqn.2026-01.org.example:x"})
                  .exit_code,
              1);
    EXPECT_EQ(r1.ctl({"client", "add", "pc03", "--image", "ghost", "--initiator", "iqn.2026-01.org.example:x"})
                  .exit_code,
              1);
    EXPECT_EQ(r1.ctl_ok({"client", "list"}).size(), 1u);
    // Images are made on the master only.
    EXPECT_EQ(r1.ctl({"image", "checkout", "img"}).exit_code, 1);

    // A registered replica cannot push to another replica: r2 accepts only
    // the master's certificate on its replication port.
    fs::path c = certs_->path();
    auto push = run_command({(build_dir() / "replicator/icbd-replicate").string(), "push", "--root",
                             r1.repository().string(), "--image", "img", "--version", "1", "--to",
                             "127.0.0.1:" + std::to_string(r2.replication_port()), "--ca", (c / "ca.crt").string(),
                             "--cert", (c / "r1.crt").string(), "--key", (c / "r1.key").string()},
                            {}, std::chrono::seconds(60));
    EXPECT_EQ(push.exit_code, 1) << push.output;
    // ...nor to the master, which has no replication port at all, and its
    // peer port refuses a replica's ping.
    EXPECT_EQ(master.ctl_ok({"node", "list"}).size(), 2u);
}

// A cache directory without room for another write-back cache: the new
// desktop is refused with the directory and the sizes named, and the desktop
// already there keeps being served.
TEST_F(SystemTest, FullCacheDirectoryRefusesANewDesktopAndKeepsServingTheOthers) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    master.set_extra_config(kFastKeepalive);
    master.start();
    LoopFs small(LoopFs::Type::ext4, 40ull << 20);  // room for one 16 MiB cache, not two
    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    r1.set_master(master);
    r1.set_cache_dir(small.mount_point());
    r1.start();
    ASSERT_NO_FATAL_FAILURE(import_and_wait(master, r1, "img", 8, 5));
    ASSERT_NO_FATAL_FAILURE(add_own_client(r1, "pc01", "img"));
    auto refused = r1.ctl({"client", "add", "pc02", "--image", "img", "--initiator", "iqn.2026-01.org.example:pc02"});
    EXPECT_EQ(refused.exit_code, 1);
    EXPECT_NE(refused.output.find("cache directory '" + small.mount_point().string() + "'"), std::string::npos)
        << refused.output;
    EXPECT_NE(refused.output.find("free"), std::string::npos) << refused.output;
    EXPECT_EQ(r1.ctl_ok({"client", "list"}).size(), 1u) << "nothing of pc02 recorded";
    json pc01 = r1.ctl_ok({"client", "show", "pc01"});
    IscsiClient c("iscsi://127.0.0.1:" + std::to_string(r1.tgtd()->port()) + "/" + pc01["target"].get<std::string>() +
                  "/1");
    // `blockctl top` sees this desktop's reads as a rate.
    CtlResult top;
    std::thread sampler([&] { top = r1.ctl({"top", "--interval", "2"}); });  // --json: one sample
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    for (int i = 0; i < 50; ++i) {
        auto r = c.read16(uint64_t(i) * 8, 8);
        EXPECT_TRUE(r.good()) << r.error;
    }
    sampler.join();
    ASSERT_EQ(top.exit_code, 0) << top.output;
    double read_iops = 0, p99 = 0;
    for (const json& l : top.json["luns"]) {
        if (l["client"] != "pc01") continue;
        read_iops = l["read_iops"].get<double>();
        p99 = l["p99_ms"].get<double>();
        EXPECT_EQ(l["image"], "img");
        EXPECT_EQ(l["version"], 1);
        EXPECT_GE(p99, l["p50_ms"].get<double>());
    }
    EXPECT_GT(read_iops, 10.0) << top.output;
    EXPECT_GT(p99, 0.0) << top.output;
    r1.ctl_ok({"client", "remove", "pc01", "--force"});
}

// blockd killed -9 at any point of `client add`: after a restart the desktop
// is either fully exported or not there at all, and tgtd holds no target
// that no client owns.
TEST_F(SystemTest, Kill9DuringClientAddLeavesAllOrNothing) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    start_pair(master, r1);
    ASSERT_NO_FATAL_FAILURE(import_and_wait(master, r1, "img", 8, 6));
    ASSERT_TRUE(eventually([&] { return r1.ctl_ok({"image", "list"}).size() == 1; }, std::chrono::seconds(20)));
    int present = 0, absent = 0;
    for (int i = 0; i < 6; ++i) {
        std::string name = "pc" + std::to_string(10 + i);
        std::thread adder([&] {
            r1.ctl({"client", "add", name, "--image", "img", "--initiator", "iqn.2026-01.org.example:" + name});
        });
        std::this_thread::sleep_for(std::chrono::milliseconds(8 * i));
        r1.kill9();
        adder.join();
        r1.start();
        // Reconciliation finishes what was recorded; give it a few passes.
        ASSERT_TRUE(eventually(
            [&] {
                json list = r1.ctl_ok({"client", "list"});
                for (const json& c : list)
                    if (c["name"] == name) return c["state"] == "ready" && c["exported"] == true;
                return true;
            },
            std::chrono::seconds(20)))
            << r1.ctl({"client", "list"}).output;
        json list = r1.ctl_ok({"client", "list"});
        bool there = std::any_of(list.begin(), list.end(), [&](const json& c) { return c["name"] == name; });
        (there ? present : absent)++;
        // tgtd: exactly one target per client, none left over.
        auto show = r1.tgtd()->adm({"--op", "show", "--mode", "target"});
        size_t targets = 0;
        for (size_t pos = 0; (pos = show.output.find("\nTarget ", pos)) != std::string::npos; ++pos) ++targets;
        if (show.output.rfind("Target ", 0) == 0) ++targets;
        EXPECT_EQ(targets, list.size()) << show.output;
    }
    std::printf("kill -9 during client add: %d added completely, %d not at all\n", present, absent);
}

// A replica decides what it wants: it subscribes to image 'a' only and never
// receives 'b'.
TEST_F(SystemTest, ReplicaReceivesOnlyTheImagesItSubscribesTo) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    master.set_extra_config(kFastKeepalive);
    master.start();
    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    r1.set_master(master);
    r1.set_extra_config("[subscribe]\nimages = [\"a\"]\n");
    r1.start();
    TempDir src("/var/tmp", "icbd-src-");
    make_disk(src / "disk.raw", 4, 7);
    master.ctl_ok({"image", "import", "b", "--from", (src / "disk.raw").string()});
    master.ctl_ok({"image", "import", "a", "--from", (src / "disk.raw").string()});
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r1", "a") == 1; }, std::chrono::seconds(60)));
    std::this_thread::sleep_for(std::chrono::seconds(3));  // several scheduler passes
    EXPECT_FALSE(fs::exists(r1.version_file("b", 1)));
    json r = master.ctl_ok({"node", "show", "r1"});
    EXPECT_FALSE(r["images"].contains("b")) << r.dump();
}

// tgtd killed -9 under a cache server and started again: blockd notices the
// missing targets and exports its desktops again, overlays kept.
TEST_F(SystemTest, TgtdRestartedUnderBlockdIsRepaired) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    start_pair(master, r1);
    ASSERT_NO_FATAL_FAILURE(import_and_wait(master, r1, "img", 8, 8));
    ASSERT_NO_FATAL_FAILURE(add_own_client(r1, "pc01", "img"));
    std::string target = r1.ctl_ok({"client", "show", "pc01"})["target"].get<std::string>();
    std::vector<uint8_t> mine(4096, 0x77);
    {
        IscsiClient c("iscsi://127.0.0.1:" + std::to_string(r1.tgtd()->port()) + "/" + target + "/1");
        ASSERT_TRUE(c.write16(64, mine, /*fua=*/true).good());
    }
    int ctl_port = r1.tgtd()->control_port();
    r1.tgtd()->kill9();
    r1.tgtd()->restart();
    ASSERT_EQ(r1.tgtd()->control_port(), ctl_port) << "the test needs tgtd back on its control port";
    ASSERT_TRUE(eventually([&] { return r1.ctl_ok({"client", "show", "pc01"})["exported"] == true; },
                           std::chrono::seconds(20)))
        << r1.log();
    auto session = login_eventually("iscsi://127.0.0.1:" + std::to_string(r1.tgtd()->port()) + "/" + target + "/1");
    ASSERT_TRUE(session);
    auto r = session->read16(64, 8);
    ASSERT_TRUE(r.good()) << r.error;
    EXPECT_EQ(r.data, mine) << "the desktop's overlay survived the tgtd restart";
}

// A replica that dies in the middle of a push: the other replica still gets
// the version; the dead one is marked suspect/dead and, when it is back,
// resumes from its checkpoint instead of starting over.
TEST_F(SystemTest, ReplicaKilledMidPushResumesFromItsCheckpoint) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    // 8 MiB/s for both replicas together over a 32 MiB image: ~8 s per push.
    master.set_extra_config(std::string(kFastKeepalive) +
                            "[replication]\nbandwidth_limit = \"8M\"\ncheckpoint_interval = \"1M\"\n");
    master.start();
    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    BlockdNode r2(BlockdNode::Role::replica, "r2", certs_->path());
    for (BlockdNode* r : {&r1, &r2}) {
        r->set_master(master);
        r->start();
    }
    ASSERT_TRUE(eventually([&] { return master.ctl_ok({"node", "list"}).size() == 2; }, std::chrono::seconds(20)));
    TempDir src("/var/tmp", "icbd-src-");
    make_disk(src / "disk.raw", 32, 9);
    master.ctl_ok({"image", "import", "img", "--from", (src / "disk.raw").string()});
    auto sent_to = [&](const std::string& name) -> uint64_t {
        json n = master.ctl_ok({"node", "show", name});
        return n["push"].is_null() ? 0 : n["push"]["payload_sent"].get<uint64_t>();
    };
    ASSERT_TRUE(eventually([&] { return sent_to("r2") > (12u << 20); }, std::chrono::seconds(30)))
        << master.ctl({"node", "list"}).output;
    r2.kill9();
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r1", "img") == 1; }, std::chrono::seconds(60)))
        << master.ctl({"node", "list"}).output;
    EXPECT_EQ(sha256_of(r1.version_file("img", 1)), sha256_of(master.version_file("img", 1)));
    ASSERT_TRUE(eventually([&] { return state_of(master, "r2") != "alive"; }, std::chrono::seconds(15)));
    EXPECT_FALSE(fs::exists(r2.version_file("img", 1)));
    r2.start();
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r2", "img") == 1; }, std::chrono::seconds(90)))
        << master.ctl({"node", "list"}).output << "\nr2 log:\n" << r2.log();
    EXPECT_EQ(sha256_of(r2.version_file("img", 1)), sha256_of(master.version_file("img", 1)));
    uint64_t resumed_payload = 0;
    for (const json& p : master.ctl_ok({"push", "list"})) {
        if (p["replica"] == "r2" && p["ok"] == true) resumed_payload = p["payload_bytes"].get<uint64_t>();
    }
    EXPECT_GT(resumed_payload, 0u);
    EXPECT_LT(resumed_payload, 28ull << 20) << "the second push must resume after the checkpointed part";
}

// A cache server whose repository is full: the push fails with a clear
// error in the push history, its desktop keeps being served, and once there
// is room again the version arrives by itself.
TEST_F(SystemTest, FullReplicaRepositoryFailsThePushClearlyAndKeepsServing) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    start_pair(master, r1);
    ASSERT_NO_FATAL_FAILURE(import_and_wait(master, r1, "img", 16, 10));
    ASSERT_NO_FATAL_FAILURE(add_own_client(r1, "pc01", "img"));
    std::string url = "iscsi://127.0.0.1:" + std::to_string(r1.tgtd()->port()) + "/" +
                      r1.ctl_ok({"client", "show", "pc01"})["target"].get<std::string>() + "/1";

    // Fill the replica's filesystem to the brim.
    fs::path filler = r1.repository() / "filler";
    run_command({"sync"});
    auto space = fs::space(r1.repository());
    run_checked({"fallocate", "-l", std::to_string(space.available), filler.string()});
    for (int i = 0; i < 64; ++i) {  // BTRFS may still hand out a little; take it
        if (run_command({"fallocate", "-l", "1M", (filler.string() + std::to_string(i))}).exit_code != 0) break;
    }
    EXPECT_EQ(commit_edit(master, "img", 2, 'q'), 2u);
    ASSERT_TRUE(eventually(
        [&] {
            for (const json& p : master.ctl_ok({"push", "list"}))
                if (p["replica"] == "r1" && p["version"] == 2 && p["finished_ms"] != 0 && p["ok"] == false)
                    return true;
            return false;
        },
        std::chrono::seconds(60)))
        << master.ctl({"push", "list"}).output;
    std::string why;
    for (const json& p : master.ctl_ok({"push", "list"}))
        if (p["replica"] == "r1" && p["version"] == 2 && p["ok"] == false) why = p["message"].get<std::string>();
    EXPECT_NE(why.find("space"), std::string::npos) << why;
    EXPECT_NE(why.find("img"), std::string::npos) << why;
    {
        IscsiClient c(url);
        auto r = c.read16(0, 8);
        EXPECT_TRUE(r.good()) << r.error;
    }
    // Room again: the scheduler retries by itself.
    for (const auto& e : fs::directory_iterator(r1.repository()))
        if (e.path().filename().string().rfind("filler", 0) == 0) fs::remove(e.path());
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r1", "img") == 2; }, std::chrono::seconds(90)))
        << master.ctl({"push", "list"}).output;
}

}  // namespace
}  // namespace icbd::test
