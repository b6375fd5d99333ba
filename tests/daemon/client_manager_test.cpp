// ClientManager on a real private tgtd with bs_icbd and the real SQLite store:
// a desktop reads its golden version through libiscsi, writes, stays on its
// version while its session is open, moves (overlay reset) when it closes; a
// persistent desktop stays pinned; a tgtd restart is healed by reconcile; bad
// input and busy desktops are refused with nothing changed.
#include "client_manager.hpp"
#include "icbd/boot_set.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>

#include "../integration/integration_test.hpp"
#include "iscsi_client.hpp"
#include "temp_dir.hpp"
#include "tgt_env.hpp"
#include "tgtd_instance.hpp"

namespace icbd::node {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::IscsiClient;
using test::TgtdInstance;

constexpr uint64_t kImage = 16ull << 20;
constexpr uint32_t kBlocks = 128;  // 64 KiB of 512-byte blocks per check

std::string test_initiator() { return "iqn.2026-01.org.icbd:test-initiator-" + std::to_string(getpid()); }

std::vector<uint8_t> slice(const std::vector<uint8_t>& v, uint64_t lba, uint32_t blocks) {
    return {v.begin() + static_cast<ptrdiff_t>(lba * 512), v.begin() + static_cast<ptrdiff_t>((lba + blocks) * 512)};
}

class ClientManagerTest : public ::testing::Test {
protected:
    void SetUp() override {
        ICBD_REQUIRE(TgtdInstance::unavailable());
        golden_[1] = test::pattern(kImage, 1);
        golden_[2] = test::pattern(kImage, 2);
        for (auto& [v, data] : golden_) {
            fs::create_directories(golden_path(v).parent_path());
            std::ofstream(golden_path(v), std::ios::binary).write(reinterpret_cast<const char*>(data.data()), data.size());
        }
        fs::create_directories(dir_ / "overlays");
        fs::create_directories(dir_ / "caches");
        auto store = open_sqlite_store(dir_ / "node.db");
        ASSERT_TRUE(store) << store.status().message();
        store_ = std::move(*store);
        tgtd_ = std::make_unique<TgtdInstance>();
        test::use_tgtd_socket_of(*tgtd_);
        adm_ = std::make_unique<TgtAdmin>(tgtd_->control_port());
        set_catalog(1, 1);
        manager_ = make_manager();
    }
    void TearDown() override {
        if (HasFailure() && tgtd_) std::cerr << "---- tgtd log (tail) ----\n" << tgtd_->log_tail(40) << "\n";
        manager_.reset();
        tgtd_.reset();
    }

    std::unique_ptr<ClientManager> make_manager(std::function<std::vector<uint64_t>(const std::string&)> local = {}) {
        ClientManager::Options o;
        o.iqn_prefix = prefix_;
        o.overlay_dir = dir_ / "overlays";
        o.cache_dir = dir_ / "caches";
        o.cache_size = 8ull << 20;
        return std::make_unique<ClientManager>(
            o, *store_, *adm_,
            [this](const std::string& image, uint64_t v) -> Result<fs::path> {
                fs::path p = dir_ / "images" / image / std::to_string(v) / "disk.raw";
                if (!fs::exists(p)) return Status::error(ENOENT, "image '" + image + "' version " + std::to_string(v) +
                                                                     ": not on this node");
                return p;
            },
            [this] {
                std::lock_guard lk(catalog_mu_);
                return catalog_;
            },
            std::move(local));
    }
    fs::path golden_path(uint64_t v) const { return dir_ / "images/win10" / std::to_string(v) / "disk.raw"; }
    void set_catalog(uint64_t production, uint64_t newest, uint64_t test = 0) {
        std::lock_guard lk(catalog_mu_);
        CatalogImage img;
        for (uint64_t v = 1; v <= newest; ++v) img.versions.push_back(v);
        img.production = production;
        img.test = test;
        img.disk = "disk.raw";
        catalog_["win10"] = img;
    }
    ClientSpec spec(const std::string& name, const std::string& initiator, bool persistent = false) const {
        ClientSpec s;
        s.name = name;
        s.image = "win10";
        s.initiator = initiator;
        s.persistent = persistent;
        return s;
    }
    ClientStatus add(const ClientSpec& s) {
        auto st = manager_->add(s);
        EXPECT_TRUE(st) << st.status().message();
        return st ? *st : ClientStatus{};
    }
    ClientStatus show(const std::string& name) {
        auto st = manager_->show(name);
        EXPECT_TRUE(st) << st.status().message();
        return st ? *st : ClientStatus{};
    }
    std::string url(const std::string& client, const std::string& auth = "") const {
        return "iscsi://" + auth + "127.0.0.1:" + std::to_string(tgtd_->port()) + "/" + prefix_ + ":" + client + "/1";
    }
    // tgtd notices a logout asynchronously.
    void wait_sessions(const std::string& client, int want) {
        for (int i = 0; i < 100; ++i) {
            if (show(client).sessions == want) return;
            std::this_thread::sleep_for(50ms);
        }
        FAIL() << "client " << client << " still has " << show(client).sessions << " sessions, expected " << want;
    }
    void expect_reads(IscsiClient& c, uint64_t lba, const std::vector<uint8_t>& want) {
        ScsiResult r = c.read16(lba, static_cast<uint32_t>(want.size() / 512));
        ASSERT_TRUE(r.good()) << r;
        EXPECT_TRUE(test::same_bytes(r.data, want)) << "LBA " << lba;
    }
    size_t target_count() {
        auto ts = adm_->targets();
        EXPECT_TRUE(ts) << ts.status().message();
        return ts ? ts->size() : 0;
    }
    size_t files_in(const fs::path& d) {
        size_t n = 0;
        for ([[maybe_unused]] const auto& e : fs::directory_iterator(d)) ++n;
        return n;
    }

    using ScsiResult = test::ScsiResult;
    const std::string prefix_ = "iqn.2026-12.org.icbd.test";
    test::TempDir dir_;
    std::map<uint64_t, std::vector<uint8_t>> golden_;
    std::unique_ptr<NodeStore> store_;
    std::unique_ptr<TgtdInstance> tgtd_;
    std::unique_ptr<TgtAdmin> adm_;
    std::mutex catalog_mu_;
    Catalog catalog_;
    std::unique_ptr<ClientManager> manager_;
};

TEST_F(ClientManagerTest, DesktopReadsItsVersionAndMovesOnlyBetweenSessions) {
    ClientStatus st = add(spec("pc01", test_initiator()));
    EXPECT_EQ(st.target, prefix_ + ":pc01");
    EXPECT_EQ(st.record.bound_version, 1u);
    EXPECT_EQ(st.record.state, ClientState::ready);
    EXPECT_TRUE(st.exported);
    EXPECT_FALSE(st.behind);
    EXPECT_EQ(st.record.overlay_path, (dir_ / "overlays/pc01.ovl").string());
    EXPECT_EQ(st.record.cache_path, (dir_ / "caches/pc01.cache").string());
    auto t = adm_->target(st.record.tid);
    ASSERT_TRUE(t && *t);
    EXPECT_EQ((*t)->acl, std::vector<std::string>{test_initiator()}) << "the initiator only, never ALL";
    ASSERT_EQ((*t)->luns.size(), 1u);
    EXPECT_EQ((*t)->luns[0].lun, 1);
    EXPECT_EQ((*t)->luns[0].bstype, "icbd");
    EXPECT_EQ((*t)->luns[0].backing_store, golden_path(1).string());

    const auto mine = test::pattern(8 * 512, 99);
    {
        IscsiClient c(url("pc01"));
        EXPECT_EQ(c.blocks() * c.block_size(), kImage);
        expect_reads(c, 0, slice(golden_[1], 0, kBlocks));
        ScsiResult w = c.write16(100, mine, true);
        ASSERT_TRUE(w.good()) << w;
        expect_reads(c, 100, mine);
        wait_sessions("pc01", 1);

        // Version 2 becomes production while the desktop is running: it stays.
        set_catalog(2, 2);
        Status s = manager_->reconcile();
        EXPECT_TRUE(s) << s.message();
        st = show("pc01");
        EXPECT_EQ(st.record.bound_version, 1u);
        EXPECT_EQ(st.desired_version, 2u);
        EXPECT_TRUE(st.behind);
        EXPECT_EQ(manager_->versions_in_use(), (std::map<std::string, std::vector<uint64_t>>{{"win10", {1}}}));
        expect_reads(c, 100, mine);
        expect_reads(c, 0, slice(golden_[1], 0, 100));
        EXPECT_EQ(manager_->reset("pc01").code(), EBUSY);
    }
    wait_sessions("pc01", 0);
    Status s = manager_->reconcile();
    EXPECT_TRUE(s) << s.message();
    st = show("pc01");
    EXPECT_EQ(st.record.bound_version, 2u);
    EXPECT_FALSE(st.behind);
    EXPECT_TRUE(st.exported);
    EXPECT_EQ(st.overlay_blocks, 0u) << "a non-persistent desktop starts the new version with an empty overlay";
    EXPECT_EQ(st.record.tid, show("pc01").record.tid);
    EXPECT_EQ(manager_->versions_in_use(), (std::map<std::string, std::vector<uint64_t>>{{"win10", {2}}}));

    IscsiClient c(url("pc01"));  // same target name and LUN number as before
    expect_reads(c, 0, slice(golden_[2], 0, kBlocks));
    expect_reads(c, 100, slice(golden_[2], 100, 8));  // the earlier write is gone
}

TEST_F(ClientManagerTest, PersistentDesktopStaysPinnedUntilReset) {
    add(spec("pc02", "iqn.2026-01.com.example:pc02", true));
    add(spec("pc03", "iqn.2026-01.com.example:pc03"));
    set_catalog(2, 2);
    Status s = manager_->reconcile();
    EXPECT_TRUE(s) << s.message();
    ClientStatus p = show("pc02");
    EXPECT_EQ(p.record.bound_version, 1u);
    EXPECT_TRUE(p.behind);
    EXPECT_TRUE(p.exported);
    EXPECT_EQ(show("pc03").record.bound_version, 2u);
    auto list = manager_->list();
    ASSERT_TRUE(list);
    ASSERT_EQ(list->size(), 2u);
    EXPECT_EQ((*list)[0].record.name, "pc02");
    EXPECT_TRUE((*list)[0].behind);
    EXPECT_FALSE((*list)[1].behind);
    EXPECT_EQ(manager_->versions_in_use(), (std::map<std::string, std::vector<uint64_t>>{{"win10", {1, 2}}}));

    s = manager_->reset("pc02");  // the operator's explicit move
    ASSERT_TRUE(s) << s.message();
    p = show("pc02");
    EXPECT_EQ(p.record.bound_version, 2u);
    EXPECT_FALSE(p.behind);
    auto t = adm_->target(p.record.tid);
    ASSERT_TRUE(t && *t);
    ASSERT_EQ((*t)->luns.size(), 1u);
    EXPECT_EQ((*t)->luns[0].backing_store, golden_path(2).string());
    EXPECT_EQ((*t)->initiator_names, std::vector<std::string>{"iqn.2026-01.com.example:pc02"});
}

TEST_F(ClientManagerTest, TestChannelDesktopGetsTheTestVersion) {
    set_catalog(1, 2, 2);
    ClientSpec s = spec("pc04", "iqn.2026-01.com.example:pc04");
    s.channel = "test";
    EXPECT_EQ(add(s).record.bound_version, 2u);
    EXPECT_EQ(add(spec("pc05", "iqn.2026-01.com.example:pc05")).record.bound_version, 1u);
}

TEST_F(ClientManagerTest, TgtdRestartIsHealedWithTheOverlayKept) {
    add(spec("pc01", test_initiator()));
    const auto mine = test::pattern(8 * 512, 7);
    {
        IscsiClient c(url("pc01"));
        ScsiResult w = c.write16(40, mine, true);
        ASSERT_TRUE(w.good()) << w;
    }
    tgtd_->kill9();
    EXPECT_EQ(show("pc01").sessions, -1) << "tgtd is down";
    tgtd_->restart();
    *adm_ = TgtAdmin(tgtd_->control_port());  // restart may have had to take another control port
    EXPECT_FALSE(show("pc01").exported);

    Status s = manager_->reconcile();
    ASSERT_TRUE(s) << s.message();
    ClientStatus st = show("pc01");
    EXPECT_TRUE(st.exported);
    EXPECT_EQ(st.record.bound_version, 1u);
    IscsiClient c(url("pc01"));
    expect_reads(c, 40, mine);  // acknowledged with FUA before the crash
    expect_reads(c, 0, slice(golden_[1], 0, 8));
}

TEST_F(ClientManagerTest, BusyDesktopIsNotRemovedWithoutForce) {
    ClientStatus st = add(spec("pc01", test_initiator()));
    {
        IscsiClient c(url("pc01"));
        wait_sessions("pc01", 1);
        Status s = manager_->remove("pc01");
        EXPECT_EQ(s.code(), EBUSY) << s.message();
        EXPECT_TRUE(show("pc01").exported);
        expect_reads(c, 0, slice(golden_[1], 0, 8));
        EXPECT_TRUE(manager_->reconcile());
        EXPECT_TRUE(show("pc01").exported);
    }
    wait_sessions("pc01", 0);
    Status s = manager_->remove("pc01");
    ASSERT_TRUE(s) << s.message();
    EXPECT_EQ(manager_->remove("pc01").code(), ENOENT);
    EXPECT_EQ(target_count(), 0u);
    EXPECT_FALSE(fs::exists(st.record.overlay_path));
    EXPECT_FALSE(fs::exists(st.record.cache_path));
    auto list = manager_->list();
    ASSERT_TRUE(list);
    EXPECT_TRUE(list->empty());
}

// The desktop's LUN records its boot beside the version (docs/boot-set.md),
// where blockd ships it from and the prefetcher reads it.
TEST_F(ClientManagerTest, ADesktopsBootIsRecordedBesideItsVersion) {
    add(spec("pc01", test_initiator()));
    {
        IscsiClient c(url("pc01"));
        expect_reads(c, 0, slice(golden_[1], 0, 8));
        expect_reads(c, 4096, slice(golden_[1], 4096, kBlocks));  // 2 MiB in: chunk 32
    }
    wait_sessions("pc01", 0);
    ASSERT_TRUE(manager_->remove("pc01"));  // the LUN closes: its boot is merged
    const fs::path sidecar = boot_set_path(dir_.path(), "win10", 1, "disk.raw");
    auto set = load_boot_set(sidecar);
    ASSERT_TRUE(set) << set.status().message() << "\n" << tgtd_->log_tail(20);
    EXPECT_EQ(set->runs(), (std::vector<BootSet::Run>{{0, 64 << 10}, {2 << 20, 64 << 10}}));
    EXPECT_EQ(set->boots, 1u);
    EXPECT_EQ(set->version, 1u);
}

TEST_F(ClientManagerTest, ForcedRemovalEndsTheSession) {
    add(spec("pc01", test_initiator()));
    IscsiClient c(url("pc01"), 5s);
    wait_sessions("pc01", 1);
    Status s = manager_->remove("pc01", true);
    ASSERT_TRUE(s) << s.message();
    EXPECT_EQ(target_count(), 0u);
    EXPECT_EQ(files_in(dir_ / "overlays"), 0u);
}

TEST_F(ClientManagerTest, BadInputIsRefusedAndChangesNothing) {
    add(spec("pc01", "iqn.2026-01.com.example:pc01"));
    auto expect_refused = [&](ClientSpec s, int code) {
        auto r = manager_->add(s);
        ASSERT_FALSE(r) << s.name << " accepted";
        EXPECT_EQ(r.status().code(), code) << r.status().message();
        EXPECT_FALSE(r.status().message().empty());
    };
    expect_refused(spec("pc01", "iqn.2026-01.com.example:other"), EEXIST);
    expect_refused(spec("pc09", "iqn.2026-01.com.example:pc01"), EEXIST);
    expect_refused(spec("pc09", "pc09-initiator"), EINVAL);
    expect_refused(spec("pc09", "iqn.2026-01.com.example:PC09"), EINVAL);
    expect_refused(spec("a/b", "iqn.2026-01.com.example:x1"), EINVAL);
    expect_refused(spec("..", "iqn.2026-01.com.example:x2"), EINVAL);
    expect_refused(spec("PC09", "iqn.2026-01.com.example:x3"), EINVAL);  // not a valid IQN part
    ClientSpec unknown = spec("pc09", "iqn.2026-01.com.example:x4");
    unknown.image = "linux";
    expect_refused(unknown, ENOENT);
    ClientSpec half_chap = spec("pc09", "iqn.2026-01.com.example:x5");
    half_chap.chap_user = "u";
    expect_refused(half_chap, EINVAL);
    ClientSpec bad_channel = spec("pc09", "iqn.2026-01.com.example:x6");
    bad_channel.channel = "staging";
    expect_refused(bad_channel, EINVAL);

    auto list = manager_->list();
    ASSERT_TRUE(list);
    ASSERT_EQ(list->size(), 1u);
    EXPECT_EQ((*list)[0].record.initiator, "iqn.2026-01.com.example:pc01");
    EXPECT_EQ(target_count(), 1u);
    EXPECT_EQ(files_in(dir_ / "overlays"), 1u);
}

TEST_F(ClientManagerTest, VersionComesFromLocalVersionsWhenTheCatalogIsEmpty) {
    {
        std::lock_guard lk(catalog_mu_);
        catalog_.clear();
    }
    auto r = manager_->add(spec("pc01", "iqn.2026-01.com.example:pc01"));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), ENOENT) << r.status().message();
    manager_ = make_manager([](const std::string&) { return std::vector<uint64_t>{1, 2}; });
    ClientStatus st = add(spec("pc01", "iqn.2026-01.com.example:pc01"));
    EXPECT_EQ(st.record.bound_version, 2u);
    EXPECT_EQ(st.desired_version, 0u);
    EXPECT_FALSE(st.behind);
    EXPECT_TRUE(manager_->reconcile());
    EXPECT_EQ(show("pc01").record.bound_version, 2u) << "no catalog: clients stay where they are";
}

TEST_F(ClientManagerTest, ChapIsRequiredWhenConfigured) {
    ClientSpec s = spec("pc01", test_initiator());
    s.chap_user = "pc01";
    s.chap_secret = "secret-of-pc01";
    add(s);
    EXPECT_THROW(IscsiClient(url("pc01"), 5s), std::runtime_error);
    EXPECT_NO_THROW(IscsiClient(url("pc01", "pc01%secret-of-pc01@"), 5s));
    wait_sessions("pc01", 0);
    ASSERT_TRUE(manager_->remove("pc01"));
    auto users = adm_->accounts();
    ASSERT_TRUE(users);
    EXPECT_TRUE(users->empty()) << "the client's CHAP account goes with it";
}

TEST_F(ClientManagerTest, ReconcileFinishesInterruptedAddAndRemove) {
    // A crash right after the intent was recorded: nothing exists yet.
    ClientRecord r;
    r.name = "pc06";
    r.image = "win10";
    r.initiator = "iqn.2026-01.com.example:pc06";
    r.tid = 6;
    r.bound_version = 1;
    r.overlay_path = (dir_ / "overlays/pc06.ovl").string();
    r.cache_path = (dir_ / "caches/pc06.cache").string();
    r.state = ClientState::creating;
    ASSERT_TRUE(store_->put_client(r));
    // A removal cut short after the record was marked.
    ClientStatus gone = add(spec("pc07", "iqn.2026-01.com.example:pc07"));
    gone.record.state = ClientState::removing;
    ASSERT_TRUE(store_->put_client(gone.record));
    // A target of ours that no record names (its add was undone by a crash).
    ASSERT_TRUE(adm_->create_target(20, prefix_ + ":ghost"));
    ASSERT_TRUE(adm_->create_target(21, "iqn.2026-01.com.example:not-ours"));

    Status s = manager_->reconcile();
    ASSERT_TRUE(s) << s.message();
    ClientStatus st = show("pc06");
    EXPECT_EQ(st.record.state, ClientState::ready);
    EXPECT_TRUE(st.exported);
    EXPECT_TRUE(fs::exists(r.overlay_path));
    EXPECT_EQ(manager_->show("pc07").status().code(), ENOENT);
    EXPECT_FALSE(fs::exists(gone.record.overlay_path));
    auto ts = adm_->targets();
    ASSERT_TRUE(ts);
    std::vector<std::string> iqns;
    for (const auto& t : *ts) iqns.push_back(t.iqn);
    EXPECT_EQ(iqns, (std::vector<std::string>{prefix_ + ":pc06", "iqn.2026-01.com.example:not-ours"}));
}

TEST_F(ClientManagerTest, MoveCutShortAfterTheRecordChangedIsFinished) {
    ClientStatus st = add(spec("pc08", test_initiator()));
    {
        IscsiClient c(url("pc08"));
        ASSERT_TRUE(c.write16(8, test::pattern(4096, 5), true).good());
    }
    // The crash: LUN removed and the record on version 2, overlay still for 1.
    ASSERT_TRUE(adm_->delete_lun(st.record.tid, 1));
    st.record.bound_version = 2;
    ASSERT_TRUE(store_->put_client(st.record));
    set_catalog(2, 2);

    Status s = manager_->reconcile();
    ASSERT_TRUE(s) << s.message();
    ClientStatus now = show("pc08");
    EXPECT_TRUE(now.exported);
    EXPECT_EQ(now.overlay_blocks, 0u);
    IscsiClient c(url("pc08"));
    expect_reads(c, 0, slice(golden_[2], 0, 64));
}

TEST_F(ClientManagerTest, BackgroundReconcileRunsOnTrigger) {
    add(spec("pc03", "iqn.2026-01.com.example:pc03"));
    manager_->start();
    set_catalog(2, 2);
    manager_->trigger();
    bool moved = false;
    for (int i = 0; i < 100 && !moved; ++i) {
        moved = show("pc03").record.bound_version == 2;
        if (!moved) std::this_thread::sleep_for(50ms);
    }
    EXPECT_TRUE(moved);
    manager_->stop();
}

}  // namespace
}  // namespace icbd::node
