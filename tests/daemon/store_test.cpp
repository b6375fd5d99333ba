// The node's SQLite store: every record comes back as it was written, survives a
// reopen and a kill -9 of the writer (every acknowledged write is there), and a
// database from a newer blockd is refused with a message naming the file.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <thread>

#include "store.hpp"
#include "temp_dir.hpp"

namespace icbd::node {
namespace {

namespace fs = std::filesystem;

class StoreTest : public ::testing::Test {
protected:
    void SetUp() override { reopen(); }
    void reopen() {
        store_.reset();
        auto s = open_sqlite_store(db());
        ASSERT_TRUE(s) << s.status().message();
        store_ = std::move(s.value());
    }
    fs::path db() const { return dir_ / "state.db"; }

    test::TempDir dir_;
    std::unique_ptr<NodeStore> store_;
};

ReplicaRecord sample_replica(const std::string& name) {
    ReplicaRecord r;
    r.name = name;
    r.peer_address = "127.0.0.1:7001";
    r.replication_address = "127.0.0.1:7002";
    r.subscribe = {"win10", "win11"};
    r.registered_ms = 1000;
    r.last_seen_ms = 2000;
    r.versions = {{"win10", {1, 2, 3}}, {"win11", {7}}};
    return r;
}

ClientRecord sample_client(const std::string& name, int tid) {
    ClientRecord c;
    c.name = name;
    c.image = "win10";
    c.channel = "test";
    c.initiator = "iqn.2026-01.org.example:" + name;
    c.chap_user = "user";
    c.chap_secret = "s3cret-with-'quote";
    c.persistent = true;
    c.tid = tid;
    c.bound_version = 0xfffffffffffffff0ull;  // u64 values beyond int64 survive
    c.overlay_path = "/srv/clients/" + name + ".ovl";
    c.cache_path = "/ssd/" + name + ".cache";
    c.state = ClientState::ready;
    c.created_ms = 123456789;
    return c;
}

std::string key_name(int64_t id) {
    std::string name = "k";
    name += std::to_string(id);
    return name;
}

void expect_same(const ClientRecord& a, const ClientRecord& b) {
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.image, b.image);
    EXPECT_EQ(a.channel, b.channel);
    EXPECT_EQ(a.initiator, b.initiator);
    EXPECT_EQ(a.chap_user, b.chap_user);
    EXPECT_EQ(a.chap_secret, b.chap_secret);
    EXPECT_EQ(a.persistent, b.persistent);
    EXPECT_EQ(a.tid, b.tid);
    EXPECT_EQ(a.bound_version, b.bound_version);
    EXPECT_EQ(a.overlay_path, b.overlay_path);
    EXPECT_EQ(a.cache_path, b.cache_path);
    EXPECT_EQ(a.state, b.state);
    EXPECT_EQ(a.created_ms, b.created_ms);
}

TEST(StoreNames, LivenessClientStateAndSubscriptions) {
    EXPECT_STREQ(liveness_name(Liveness::alive), "alive");
    EXPECT_STREQ(liveness_name(Liveness::suspect), "suspect");
    EXPECT_STREQ(liveness_name(Liveness::dead), "dead");
    EXPECT_STREQ(client_state_name(ClientState::creating), "creating");
    EXPECT_STREQ(client_state_name(ClientState::ready), "ready");
    EXPECT_STREQ(client_state_name(ClientState::removing), "removing");
    ReplicaRecord r;
    r.subscribe = {"win10"};
    EXPECT_TRUE(r.wants("win10"));
    EXPECT_FALSE(r.wants("win11"));
    r.subscribe = {"*"};
    EXPECT_TRUE(r.wants("anything"));
    r.subscribe = {};
    EXPECT_FALSE(r.wants("win10"));
    int64_t t = now_ms();
    EXPECT_GT(t, 1700000000000);  // unix ms, not seconds or a monotonic clock
}

// The database holds CHAP secrets in clear: nobody but its owner may read it,
// including a database an older blockd created 0644.
TEST_F(StoreTest, TheDatabaseHoldingChapSecretsIsReadableByItsOwnerOnly) {
    ASSERT_TRUE(store_->put_client(sample_client("desk1", 1)));
    struct stat st{};
    ASSERT_EQ(::stat(db().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    store_.reset();
    ASSERT_EQ(::chmod(db().c_str(), 0644), 0);
    reopen();
    ASSERT_EQ(::stat(db().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    for (const char* side : {"-wal", "-shm"}) {
        if (::stat((db().string() + side).c_str(), &st) == 0) {
            EXPECT_EQ(st.st_mode & 0077, 0u) << side;
        }
    }
}

TEST_F(StoreTest, ReplicaRoundTripAndReregistrationKeepsLiveness) {
    ASSERT_TRUE(store_->upsert_replica(sample_replica("cache02")));
    ASSERT_TRUE(store_->upsert_replica(sample_replica("cache01")));
    auto one = store_->replica("cache01");
    ASSERT_TRUE(one) << one.status().message();
    ASSERT_TRUE(one->has_value());
    const ReplicaRecord& r = **one;
    EXPECT_EQ(r.peer_address, "127.0.0.1:7001");
    EXPECT_EQ(r.replication_address, "127.0.0.1:7002");
    EXPECT_EQ(r.subscribe, (std::vector<std::string>{"win10", "win11"}));
    EXPECT_EQ(r.state, Liveness::alive);
    EXPECT_EQ(r.registered_ms, 1000);
    EXPECT_EQ(r.last_seen_ms, 2000);
    EXPECT_EQ(r.missed, 0u);
    EXPECT_EQ(r.versions, sample_replica("x").versions);

    ASSERT_TRUE(store_->set_liveness("cache01", Liveness::suspect, 5000, 2));
    ReplicaRecord again = sample_replica("cache01");
    again.peer_address = "127.0.0.2:7001";
    again.subscribe = {"*"};
    again.versions = {{"win10", {4}}};
    ASSERT_TRUE(store_->upsert_replica(again));
    auto after = store_->replica("cache01");
    ASSERT_TRUE(after && after->has_value());
    EXPECT_EQ((*after)->peer_address, "127.0.0.2:7001");
    EXPECT_EQ((*after)->subscribe, std::vector<std::string>{"*"});
    EXPECT_EQ((*after)->versions, again.versions);
    EXPECT_EQ((*after)->state, Liveness::suspect);  // keepalive's verdict, not the registration's
    EXPECT_EQ((*after)->missed, 2u);
    EXPECT_EQ((*after)->last_seen_ms, 5000);

    ASSERT_TRUE(store_->set_replica_versions("cache01", {{"win11", {8, 9}}}));
    EXPECT_EQ((*store_->replica("cache01"))->versions, (std::map<std::string, std::vector<uint64_t>>{{"win11", {8, 9}}}));

    auto all = store_->replicas();
    ASSERT_TRUE(all);
    ASSERT_EQ(all->size(), 2u);
    EXPECT_EQ((*all)[0].name, "cache01");
    EXPECT_EQ((*all)[1].name, "cache02");

    ASSERT_TRUE(store_->remove_replica("cache02"));
    EXPECT_FALSE(store_->replica("cache02")->has_value());
    Status s = store_->remove_replica("cache02");
    EXPECT_EQ(s.code(), ENOENT);
    EXPECT_NE(s.message().find("cache02"), std::string::npos) << s.message();
    EXPECT_EQ(store_->set_liveness("ghost", Liveness::dead, 1, 3).code(), ENOENT);
    EXPECT_EQ(store_->set_replica_versions("ghost", {}).code(), ENOENT);
}

TEST_F(StoreTest, NewReplicaWithoutTimesGetsNow) {
    ReplicaRecord r = sample_replica("fresh");
    r.registered_ms = r.last_seen_ms = 0;
    int64_t before = now_ms();
    ASSERT_TRUE(store_->upsert_replica(r));
    auto got = store_->replica("fresh");
    ASSERT_TRUE(got && got->has_value());
    EXPECT_GE((*got)->registered_ms, before);
    EXPECT_GE((*got)->last_seen_ms, before);
}

TEST_F(StoreTest, VersionsChannelsAndImages) {
    EXPECT_TRUE(store_->images()->empty());
    auto none = store_->channels("win10");
    ASSERT_TRUE(none);
    EXPECT_EQ(none->image, "win10");
    EXPECT_EQ(none->production, 0u);
    EXPECT_EQ(none->test, 0u);
    EXPECT_EQ(none->previous_production, 0u);

    ASSERT_TRUE(store_->put_version({"win10", 2, "second", 20, 2000, 200}));
    ASSERT_TRUE(store_->put_version({"win10", 1, "first \"quoted\"", 10, 1000, 1000}));
    ASSERT_TRUE(store_->put_version({"alpha", 5, "", 50, 1, 1}));
    ASSERT_TRUE(store_->put_version({"win10", 2, "second, replaced", 21, 2001, 201}));
    auto v = store_->versions("win10");
    ASSERT_TRUE(v) << v.status().message();
    ASSERT_EQ(v->size(), 2u);
    EXPECT_EQ((*v)[0].version, 1u);
    EXPECT_EQ((*v)[0].message, "first \"quoted\"");
    EXPECT_EQ((*v)[0].created_ms, 10);
    EXPECT_EQ((*v)[0].size_bytes, 1000u);
    EXPECT_EQ((*v)[0].delta_bytes, 1000u);
    EXPECT_EQ((*v)[1].message, "second, replaced");
    EXPECT_EQ((*v)[1].created_ms, 21);
    EXPECT_EQ((*v)[1].size_bytes, 2001u);
    EXPECT_EQ((*v)[1].delta_bytes, 201u);
    EXPECT_EQ(*store_->images(), (std::vector<std::string>{"alpha", "win10"}));

    ASSERT_TRUE(store_->delete_version("win10", 1));
    ASSERT_TRUE(store_->delete_version("win10", 1));  // idempotent: recovery replays it
    ASSERT_EQ(store_->versions("win10")->size(), 1u);
    EXPECT_TRUE(store_->versions("nothing")->empty());

    ASSERT_TRUE(store_->set_channels({"win10", 2, 3, 1}));
    auto c = store_->channels("win10");
    ASSERT_TRUE(c);
    EXPECT_EQ(c->production, 2u);
    EXPECT_EQ(c->test, 3u);
    EXPECT_EQ(c->previous_production, 1u);
    ASSERT_TRUE(store_->set_channels({"win10", 3, 3, 2}));
    EXPECT_EQ(store_->channels("win10")->production, 3u);
}

TEST_F(StoreTest, ClientsRoundTripAndFreeTargetIds) {
    EXPECT_EQ(*store_->free_tid(), 1);
    ASSERT_TRUE(store_->put_client(sample_client("pc02", 1)));
    ASSERT_TRUE(store_->put_client(sample_client("pc01", 2)));
    ASSERT_TRUE(store_->put_client(sample_client("pc04", 4)));
    EXPECT_EQ(*store_->free_tid(), 3);
    auto c = store_->client("pc01");
    ASSERT_TRUE(c && c->has_value());
    expect_same(**c, sample_client("pc01", 2));

    ClientRecord changed = sample_client("pc01", 2);
    changed.state = ClientState::removing;
    changed.chap_user.clear();
    changed.chap_secret.clear();
    changed.cache_path.clear();
    changed.persistent = false;
    changed.channel = "production";
    ASSERT_TRUE(store_->put_client(changed));
    expect_same(**store_->client("pc01"), changed);

    auto all = store_->clients();
    ASSERT_TRUE(all);
    ASSERT_EQ(all->size(), 3u);
    EXPECT_EQ((*all)[0].name, "pc01");
    EXPECT_EQ((*all)[1].name, "pc02");
    EXPECT_EQ((*all)[2].name, "pc04");

    ASSERT_TRUE(store_->delete_client("pc02"));
    EXPECT_EQ(*store_->free_tid(), 1);
    EXPECT_FALSE(store_->client("pc02")->has_value());
    Status s = store_->delete_client("pc02");
    EXPECT_EQ(s.code(), ENOENT);
    EXPECT_NE(s.message().find("client 'pc02'"), std::string::npos) << s.message();
}

TEST_F(StoreTest, PushHistoryNewestFirst) {
    std::vector<int64_t> ids;
    for (int i = 0; i < 3; ++i) {
        auto id = store_->push_started({0, "win10", uint64_t(i + 1), "cache01", 100 + i, 0, false, 0, 0, ""});
        ASSERT_TRUE(id) << id.status().message();
        ids.push_back(*id);
    }
    EXPECT_LT(ids[0], ids[1]);
    EXPECT_LT(ids[1], ids[2]);
    ASSERT_TRUE(store_->push_finished({ids[0], "win10", 1, "cache01", 100, 900, true, 4096, 8192, ""}));
    ASSERT_TRUE(store_->push_finished({ids[1], "win10", 2, "cache01", 101, 950, false, 10, 20, "cache01: connection reset"}));
    auto p = store_->pushes(10);
    ASSERT_TRUE(p);
    ASSERT_EQ(p->size(), 3u);
    EXPECT_EQ((*p)[0].id, ids[2]);
    EXPECT_EQ((*p)[0].finished_ms, 0);  // still in flight
    EXPECT_EQ((*p)[0].started_ms, 102);
    EXPECT_EQ((*p)[1].id, ids[1]);
    EXPECT_FALSE((*p)[1].ok);
    EXPECT_EQ((*p)[1].message, "cache01: connection reset");
    EXPECT_EQ((*p)[2].id, ids[0]);
    EXPECT_TRUE((*p)[2].ok);
    EXPECT_EQ((*p)[2].image, "win10");
    EXPECT_EQ((*p)[2].version, 1u);
    EXPECT_EQ((*p)[2].replica, "cache01");
    EXPECT_EQ((*p)[2].finished_ms, 900);
    EXPECT_EQ((*p)[2].wire_bytes, 4096u);
    EXPECT_EQ((*p)[2].payload_bytes, 8192u);
    EXPECT_EQ(store_->pushes(1)->size(), 1u);
    EXPECT_EQ(store_->push_finished({9999, "", 0, "", 0, 1, true, 0, 0, ""}).code(), ENOENT);
}

TEST_F(StoreTest, IntentsOldestFirstAndSettings) {
    auto a = store_->add_intent("commit", R"({"image":"win10","version":3})");
    auto b = store_->add_intent("client_add", R"({"name":"pc01"})");
    ASSERT_TRUE(a && b);
    auto in = store_->intents();
    ASSERT_TRUE(in);
    ASSERT_EQ(in->size(), 2u);
    EXPECT_EQ((*in)[0].id, *a);
    EXPECT_EQ((*in)[0].kind, "commit");
    EXPECT_EQ((*in)[0].args, R"({"image":"win10","version":3})");
    EXPECT_GT((*in)[0].created_ms, 0);
    EXPECT_EQ((*in)[1].kind, "client_add");
    ASSERT_TRUE(store_->clear_intent(*a));
    ASSERT_EQ(store_->intents()->size(), 1u);
    EXPECT_EQ(store_->intents()->front().id, *b);

    EXPECT_FALSE(store_->setting("catalog")->has_value());
    ASSERT_TRUE(store_->put_setting("catalog", "{\"a\":1}"));
    ASSERT_TRUE(store_->put_setting("catalog", "{\"a\":2}"));
    EXPECT_EQ(**store_->setting("catalog"), "{\"a\":2}");
}

TEST_F(StoreTest, EverythingSurvivesAReopen) {
    ASSERT_TRUE(store_->upsert_replica(sample_replica("cache01")));
    ASSERT_TRUE(store_->set_liveness("cache01", Liveness::dead, 777, 3));
    ASSERT_TRUE(store_->put_version({"win10", 1, "first", 10, 1000, 1000}));
    ASSERT_TRUE(store_->set_channels({"win10", 1, 1, 0}));
    ASSERT_TRUE(store_->put_client(sample_client("pc01", 1)));
    auto push = store_->push_started({0, "win10", 1, "cache01", 5, 0, false, 0, 0, ""});
    ASSERT_TRUE(push);
    auto intent = store_->add_intent("commit", "{}");
    ASSERT_TRUE(intent);
    ASSERT_TRUE(store_->put_setting("k", "v"));
    reopen();

    auto r = store_->replica("cache01");
    ASSERT_TRUE(r && r->has_value());
    EXPECT_EQ((*r)->state, Liveness::dead);
    EXPECT_EQ((*r)->missed, 3u);
    EXPECT_EQ((*r)->last_seen_ms, 777);
    EXPECT_EQ((*r)->versions, sample_replica("x").versions);
    ASSERT_EQ(store_->versions("win10")->size(), 1u);
    EXPECT_EQ(store_->versions("win10")->front().message, "first");
    EXPECT_EQ(store_->channels("win10")->production, 1u);
    expect_same(**store_->client("pc01"), sample_client("pc01", 1));
    ASSERT_EQ(store_->pushes(5)->size(), 1u);
    EXPECT_EQ(store_->pushes(5)->front().id, *push);
    ASSERT_EQ(store_->intents()->size(), 1u);
    EXPECT_EQ(store_->intents()->front().id, *intent);
    EXPECT_EQ(**store_->setting("k"), "v");
    // Ids are never reused after a restart: a stale id cannot clear a new intent.
    auto next = store_->add_intent("commit", "{}");
    ASSERT_TRUE(next);
    EXPECT_GT(*next, *intent);
}

TEST_F(StoreTest, ConcurrentWritersFromThreads) {
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            for (int i = 0; i < 50; ++i) {
                Status s = store_->put_client(sample_client(key_name(t * 100 + i), t * 100 + i + 1));
                ASSERT_TRUE(s) << s.message();
            }
        });
    for (auto& th : threads) th.join();
    EXPECT_EQ(store_->clients()->size(), 200u);
}

// A writer killed at a random moment: every write it had been told was done
// (the call returned ok and it reported the id) is in the database afterwards.
TEST_F(StoreTest, KillNineLosesNothingAcknowledged) {
    store_.reset();  // the child opens its own connection; none crosses the fork
    for (int round = 0; round < 3; ++round) {
        int p[2];
        ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            ::close(p[0]);
            auto s = open_sqlite_store(db());
            if (!s) ::_exit(2);
            for (int64_t i = 0;; ++i) {
                int64_t id = round * 1000000 + i;
                std::string name = key_name(id);
                if (!s.value()->put_client(sample_client(name, int(id % 100000) + 1))) ::_exit(3);
                if (!s.value()->add_intent("commit", name)) ::_exit(4);
                if (::write(p[1], &id, sizeof id) != sizeof id) ::_exit(5);
            }
        }
        ::close(p[1]);
        std::vector<int64_t> acked;
        int64_t id;
        // Let it get going, then kill it in the middle of whatever it does.
        while (acked.size() < size_t(50 + round * 37) && ::read(p[0], &id, sizeof id) == sizeof id) acked.push_back(id);
        ::kill(pid, SIGKILL);
        while (::read(p[0], &id, sizeof id) == sizeof id) acked.push_back(id);  // acknowledged before the kill
        ::close(p[0]);
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFSIGNALED(status)) << "the writer stopped by itself with " << WEXITSTATUS(status);
        ASSERT_FALSE(acked.empty());

        auto s = open_sqlite_store(db());
        ASSERT_TRUE(s) << s.status().message();
        std::set<std::string> intents;
        auto listed = s.value()->intents();
        ASSERT_TRUE(listed) << listed.status().message();
        for (auto& in : *listed) intents.insert(in.args);
        for (int64_t a : acked) {
            std::string name = key_name(a);
            auto c = s.value()->client(name);
            ASSERT_TRUE(c) << c.status().message();
            EXPECT_TRUE(c->has_value()) << "acknowledged client " << name << " lost";
            EXPECT_TRUE(intents.count(name)) << "acknowledged intent " << name << " lost";
        }
    }
}

TEST_F(StoreTest, NewerSchemaIsRefusedNamingTheFile) {
    store_.reset();
    {
        sqlite3* raw = nullptr;
        ASSERT_EQ(sqlite3_open(db().c_str(), &raw), SQLITE_OK);
        ASSERT_EQ(sqlite3_exec(raw, "UPDATE schema_version SET version = 99", nullptr, nullptr, nullptr), SQLITE_OK);
        sqlite3_close(raw);
    }
    auto s = open_sqlite_store(db());
    ASSERT_FALSE(s);
    EXPECT_EQ(s.status().code(), ENOTSUP);
    EXPECT_NE(s.status().message().find(db().string()), std::string::npos) << s.status().message();
    EXPECT_NE(s.status().message().find("99"), std::string::npos) << s.status().message();
    EXPECT_NE(s.status().message().find("newer"), std::string::npos) << s.status().message();
}

TEST_F(StoreTest, NotADatabaseOrMissingDirectoryIsRefusedNamingTheFile) {
    fs::path junk = dir_ / "junk.db";
    std::ofstream(junk) << std::string(8192, 'x');
    auto s = open_sqlite_store(junk);
    ASSERT_FALSE(s);
    EXPECT_NE(s.status().message().find(junk.string()), std::string::npos) << s.status().message();

    fs::path nowhere = dir_ / "no/such/dir/state.db";
    auto m = open_sqlite_store(nowhere);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.status().code(), ENOENT);
    EXPECT_NE(m.status().message().find(nowhere.string()), std::string::npos) << m.status().message();
}

}  // namespace
}  // namespace icbd::node
