// The image service on real BTRFS (and on a plain directory, by copies): import
// keeps a sparse disk sparse, checkout/commit make read-only versions with the
// edited bytes, channels follow commits, promote and rollback, a version in use
// is never deleted, bad names change nothing, and a crash (intents left, or a
// kill -9 in the middle of a commit) ends with the commit done or not done.
#include "image_service.hpp"

#include <btrfsutil.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "../integration/integration_test.hpp"
#include "loop_fs.hpp"
#include "temp_dir.hpp"

namespace icbd::node {
namespace {

namespace fs = std::filesystem;
using test::LoopFs;
constexpr uint64_t MiB = 1024 * 1024;

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void put(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// Files of one tree, path -> content (directories as "<dir>").
std::map<std::string, std::string> contents(const fs::path& root) {
    std::map<std::string, std::string> out;
    for (auto& e : fs::recursive_directory_iterator(root)) {
        std::string rel = fs::relative(e.path(), root).string();
        if (e.is_symlink()) out[rel] = "-> " + fs::read_symlink(e.path()).string();
        else if (e.is_regular_file()) out[rel] = slurp(e.path());
        else out[rel] = "<dir>";
    }
    return out;
}

std::string random_bytes(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
}

void write_at(const fs::path& p, uint64_t off, const std::string& data) {
    UniqueFd fd(::open(p.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << p;
    ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), static_cast<off_t>(off)), ssize_t(data.size()));
    ASSERT_EQ(::fsync(fd.get()), 0);
}

// A 24 MiB sparse raw disk with 3 MiB of data: 2 MiB at 8 MiB, 1 MiB at 16 MiB.
constexpr uint64_t kDiskSize = 24 * MiB;
void make_raw_disk(const fs::path& p) {
    test::make_sparse_file(p, kDiskSize);
    write_at(p, 8 * MiB, random_bytes(2 * MiB, 1));
    write_at(p, 16 * MiB, random_bytes(1 * MiB, 2));
}

bool writable(const fs::path& dir) {
    int fd = ::open((dir / "probe").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    ::close(fd);
    ::unlink((dir / "probe").c_str());
    return true;
}

// The common part: a repository at `root`, a store, the users map the node
// would fill from its clients and replicas.
class ServiceHarness {
public:
    void open(const fs::path& root, const fs::path& db) {
        root_ = root;
        db_ = db;
        reopen();
    }
    void reopen() {
        service_.reset();
        store_.reset();
        auto s = open_sqlite_store(db_);
        ASSERT_TRUE(s) << s.status().message();
        store_ = std::move(s.value());
        auto r = repl::Repository::open(root_);
        ASSERT_TRUE(r) << r.status().message();
        service_ = std::make_unique<ImageService>(std::move(r.value()), *store_, [this](const std::string& i, uint64_t v) {
            auto it = users_.find({i, v});
            return it == users_.end() ? std::vector<std::string>{} : it->second;
        });
    }
    void close() {
        service_.reset();
        store_.reset();
    }
    ImageService& svc() { return *service_; }
    NodeStore& store() { return *store_; }

    fs::path root_, db_;
    std::map<std::pair<std::string, uint64_t>, std::vector<std::string>> users_;
    std::unique_ptr<NodeStore> store_;
    std::unique_ptr<ImageService> service_;
};

class ImageServiceTest : public ::testing::Test, public ServiceHarness {
protected:
    void SetUp() override {
        ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
        fs_ = std::make_unique<LoopFs>(LoopFs::Type::btrfs, 512 * MiB);
        fs::create_directory(*fs_ / "repo");
        open(*fs_ / "repo", state_ / "state.db");
        make_raw_disk(src_ / "disk.raw");
    }
    void TearDown() override {
        close();
        fs_.reset();
    }
    fs::path version_dir(uint64_t v) const { return *fs_ / "repo/images/win10" / std::to_string(v); }
    void import_win10() {
        auto v = svc().import("win10", src_ / "disk.raw", "golden");
        ASSERT_TRUE(v) << v.status().message();
    }
    // Checkout, an edit of the disk and a new file, commit: the next version.
    void edit_and_commit(uint32_t seed, const std::string& message = "edit") {
        auto co = svc().checkout("win10");
        ASSERT_TRUE(co) << co.status().message();
        write_at(*co / "disk.raw", 12 * MiB, random_bytes(1 * MiB, seed));
        put(*co / ("note-" + std::to_string(seed)), "seed " + std::to_string(seed));
        auto v = svc().commit("win10", message);
        ASSERT_TRUE(v) << v.status().message();
    }

    test::TempDir state_;
    test::TempDir src_{"/var/tmp"};  // the raw disk comes from another filesystem (ext4)
    std::unique_ptr<LoopFs> fs_;
};

TEST_F(ImageServiceTest, ImportOfARawFileKeepsItSparseAndStartsBothChannels) {
    uint64_t last_done = 0, last_total = 0;
    auto v = svc().import("win10", src_ / "disk.raw", "golden image", [&](uint64_t done, uint64_t total) {
        EXPECT_GE(done, last_done);
        last_done = done;
        last_total = total;
    });
    ASSERT_TRUE(v) << v.status().message();
    EXPECT_EQ(v->image, "win10");
    EXPECT_EQ(v->version, 1u);
    EXPECT_EQ(v->message, "golden image");
    EXPECT_EQ(v->size_bytes, kDiskSize);
    EXPECT_EQ(v->delta_bytes, 3 * MiB);  // a full copy ships the data, not the holes
    EXPECT_EQ(last_total, kDiskSize);
    EXPECT_EQ(last_done, kDiskSize);

    fs::path disk = version_dir(1) / "disk.raw";
    EXPECT_EQ(slurp(disk), slurp(src_ / "disk.raw"));
    EXPECT_LT(test::allocated_bytes(disk), 6 * MiB) << "holes were filled in";
    EXPECT_TRUE(test::is_hole(disk, 0, 8 * MiB));
    EXPECT_TRUE(test::is_hole(disk, 17 * MiB, 7 * MiB));
    bool ro = false;
    ASSERT_EQ(btrfs_util_get_subvolume_read_only(version_dir(1).c_str(), &ro), BTRFS_UTIL_OK);
    EXPECT_TRUE(ro);

    auto c = store().channels("win10");
    EXPECT_EQ(c->production, 1u);
    EXPECT_EQ(c->test, 1u);
    auto recs = store().versions("win10");
    ASSERT_EQ(recs->size(), 1u);
    EXPECT_EQ(recs->front().message, "golden image");
    EXPECT_GT(recs->front().created_ms, 0);
    EXPECT_TRUE(store().intents()->empty());
    EXPECT_EQ(*svc().disk_file("win10", 1), "disk.raw");
    EXPECT_FALSE(fs::exists(*fs_ / "repo/checkouts/win10"));

    auto again = svc().import("win10", src_ / "disk.raw", "twice");
    EXPECT_EQ(again.status().code(), EEXIST);
    EXPECT_NE(again.status().message().find("image 'win10'"), std::string::npos) << again.status().message();
    EXPECT_EQ(svc().import("nothing", src_ / "missing.raw", "").status().code(), ENOENT);
}

TEST_F(ImageServiceTest, ImportOfARawFileFromTheSameFilesystem) {
    fs::create_directory(*fs_ / "incoming");
    make_raw_disk(*fs_ / "incoming/disk.raw");
    auto v = svc().import("win10", *fs_ / "incoming/disk.raw", "");
    ASSERT_TRUE(v) << v.status().message();
    EXPECT_EQ(slurp(version_dir(1) / "disk.raw"), slurp(*fs_ / "incoming/disk.raw"));
    EXPECT_TRUE(test::is_hole(version_dir(1) / "disk.raw", 0, 8 * MiB));
}

TEST_F(ImageServiceTest, CheckoutEditCommitMakesTheNextReadOnlyVersion) {
    import_win10();
    auto co = svc().checkout("win10");
    ASSERT_TRUE(co) << co.status().message();
    EXPECT_EQ(*co, *fs_ / "repo/checkouts/win10");
    EXPECT_EQ(svc().checkout_path("win10"), *co);
    EXPECT_EQ(btrfs_util_is_subvolume(co->c_str()), BTRFS_UTIL_OK) << "a checkout is a snapshot on BTRFS";
    EXPECT_TRUE(writable(*co));
    EXPECT_EQ(contents(*co), contents(version_dir(1)));
    auto twice = svc().checkout("win10");
    EXPECT_EQ(twice.status().code(), EEXIST);
    EXPECT_NE(twice.status().message().find(co->string()), std::string::npos) << twice.status().message();

    auto listed = svc().list();
    ASSERT_TRUE(listed);
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ(listed->front().checkout_base, std::optional<uint64_t>(1));

    write_at(*co / "disk.raw", 12 * MiB, random_bytes(1 * MiB, 3));
    put(*co / "readme.txt", "hello");
    auto edited = contents(*co);
    auto v = svc().commit("win10", "one more MiB");
    ASSERT_TRUE(v) << v.status().message();
    EXPECT_EQ(v->version, 2u);
    EXPECT_EQ(v->message, "one more MiB");
    EXPECT_EQ(v->size_bytes, kDiskSize + 5);
    EXPECT_GE(v->delta_bytes, 1 * MiB);
    EXPECT_LT(v->delta_bytes, 2 * MiB) << "the delta is the changed extents, not the disk";

    EXPECT_EQ(contents(version_dir(2)), edited);
    EXPECT_EQ(contents(version_dir(1))["readme.txt"], "") << "version 1 changed";
    bool ro = false;
    ASSERT_EQ(btrfs_util_get_subvolume_read_only(version_dir(2).c_str(), &ro), BTRFS_UTIL_OK);
    EXPECT_TRUE(ro);
    EXPECT_FALSE(writable(version_dir(2)));
    EXPECT_FALSE(fs::exists(*co)) << "the working copy stays after commit";
    auto c = store().channels("win10");
    EXPECT_EQ(c->test, 2u);
    EXPECT_EQ(c->production, 1u);
    EXPECT_TRUE(store().intents()->empty());

    listed = svc().list();
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ(listed->front().versions, (std::vector<uint64_t>{1, 2}));
    EXPECT_EQ(listed->front().newest, 2u);
    EXPECT_EQ(listed->front().channels.test, 2u);
    EXPECT_FALSE(listed->front().checkout_base.has_value());

    auto none = svc().commit("win10", "");
    EXPECT_EQ(none.status().code(), ENOENT);
    EXPECT_NE(none.status().message().find("image 'win10'"), std::string::npos);
    ASSERT_TRUE(svc().checkout("win10"));
    ASSERT_TRUE(svc().discard_checkout("win10"));
    EXPECT_FALSE(fs::exists(*co));
    EXPECT_EQ(svc().discard_checkout("win10").code(), ENOENT);
    EXPECT_EQ(svc().checkout("nothing").status().code(), ENOENT);
}

TEST_F(ImageServiceTest, VersionsListChannelsAndUsers) {
    import_win10();
    edit_and_commit(3);
    users_[{"win10", 1}] = {"client 'pc01'"};
    auto vs = svc().versions("win10");
    ASSERT_TRUE(vs) << vs.status().message();
    ASSERT_EQ(vs->size(), 2u);
    EXPECT_EQ((*vs)[0].record.message, "golden");
    EXPECT_EQ((*vs)[0].channels, std::vector<std::string>{"production"});
    EXPECT_EQ((*vs)[0].used_by, (std::vector<std::string>{"client 'pc01'", "channel production"}));
    EXPECT_EQ((*vs)[1].record.message, "edit");
    EXPECT_EQ((*vs)[1].channels, std::vector<std::string>{"test"});
    EXPECT_EQ(svc().versions("nothing").status().code(), ENOENT);
}

TEST_F(ImageServiceTest, PromoteAndRollback) {
    import_win10();
    edit_and_commit(3);
    auto c = svc().promote("win10", 2);
    ASSERT_TRUE(c) << c.status().message();
    EXPECT_EQ(c->production, 2u);
    EXPECT_EQ(c->previous_production, 1u);
    EXPECT_EQ(c->test, 2u);
    EXPECT_EQ(store().channels("win10")->production, 2u);

    auto r = svc().rollback("win10");
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(r->production, 1u);
    EXPECT_EQ(r->previous_production, 2u);
    EXPECT_EQ(store().channels("win10")->production, 1u);
    r = svc().rollback("win10");  // and back again
    ASSERT_TRUE(r);
    EXPECT_EQ(r->production, 2u);

    auto bad = svc().promote("win10", 7);
    EXPECT_EQ(bad.status().code(), ENOENT);
    EXPECT_NE(bad.status().message().find("image 'win10' version 7"), std::string::npos) << bad.status().message();
    EXPECT_EQ(svc().rollback("nothing").status().code(), ENOENT);
}

TEST_F(ImageServiceTest, DeleteIsRefusedWhileAClientOrAChannelUsesTheVersion) {
    import_win10();
    edit_and_commit(3);
    edit_and_commit(4);  // production 1, test 3
    users_[{"win10", 1}] = {"client 'pc01'"};
    users_[{"win10", 2}] = {"client 'pc02'", "replica 'cache01' (base of its next update)"};

    Status s = svc().remove("win10", 1);
    EXPECT_EQ(s.code(), EBUSY);
    EXPECT_EQ(s.message(), "image 'win10' version 1: in use by client 'pc01', channel production");
    s = svc().remove("win10", 2);
    EXPECT_EQ(s.code(), EBUSY);
    EXPECT_EQ(s.message(),
              "image 'win10' version 2: in use by client 'pc02', replica 'cache01' (base of its next update)");
    s = svc().remove("win10", 3);
    EXPECT_EQ(s.code(), EBUSY);
    EXPECT_EQ(s.message(), "image 'win10' version 3: in use by channel test");
    EXPECT_TRUE(fs::exists(version_dir(1)) && fs::exists(version_dir(2)) && fs::exists(version_dir(3)));
    EXPECT_EQ(store().versions("win10")->size(), 3u);

    // Boot sets live beside the versions (docs/boot-set.md) and go with them.
    const fs::path sets2 = version_dir(2).parent_path() / ".bootsets" / "2";
    const fs::path sets3 = version_dir(3).parent_path() / ".bootsets" / "3";
    for (const fs::path& d : {sets2, sets3}) {
        fs::create_directories(d);
        std::ofstream(d / "disk.raw.bset") << "set";
    }
    users_.erase({"win10", 2});
    ASSERT_TRUE(svc().remove("win10", 2));
    EXPECT_FALSE(fs::exists(version_dir(2)));
    EXPECT_FALSE(fs::exists(sets2));
    EXPECT_TRUE(fs::exists(sets3 / "disk.raw.bset"));
    EXPECT_EQ(store().versions("win10")->size(), 2u);
    EXPECT_TRUE(store().intents()->empty());
    s = svc().remove("win10", 2);
    EXPECT_EQ(s.code(), ENOENT);
    EXPECT_NE(s.message().find("image 'win10' version 2"), std::string::npos) << s.message();
}

TEST_F(ImageServiceTest, PruneKeepsTheNewestAndSkipsVersionsInUse) {
    import_win10();
    for (uint32_t seed : {3, 4, 5}) edit_and_commit(seed);  // 1..4; production 1, test 4
    users_[{"win10", 2}] = {"client 'pc01'"};
    auto r = svc().prune("win10", 1);
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(r->first, std::vector<uint64_t>{3});
    ASSERT_EQ(r->second.size(), 2u);
    EXPECT_NE(r->second[0].find("version 1: in use by channel production"), std::string::npos) << r->second[0];
    EXPECT_NE(r->second[1].find("version 2: in use by client 'pc01'"), std::string::npos) << r->second[1];
    EXPECT_EQ(*svc().repository().list_versions("win10"), (std::vector<uint64_t>{1, 2, 4}));

    users_.clear();
    ASSERT_TRUE(svc().promote("win10", 4));  // previous production 1 is no user: prune may take it
    r = svc().prune("win10", 1);
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(r->first, (std::vector<uint64_t>{1, 2}));
    EXPECT_TRUE(r->second.empty());
    EXPECT_EQ(*svc().repository().list_versions("win10"), std::vector<uint64_t>{4});
    EXPECT_EQ(store().versions("win10")->size(), 1u);
    auto rb = svc().rollback("win10");
    EXPECT_EQ(rb.status().code(), ENOENT) << "rollback to a pruned version";
    EXPECT_EQ(svc().prune("win10", 0).status().code(), EINVAL);
}

TEST_F(ImageServiceTest, BadNamesAreRefusedAndChangeNothing) {
    import_win10();
    for (const std::string& bad : std::vector<std::string>{"a/b", "..", ".hidden", "-x", "", "win10/../x", std::string(65, 'a'), "sp ace"}) {
        auto imp = svc().import(bad, src_ / "disk.raw", "");
        EXPECT_EQ(imp.status().code(), EINVAL) << bad;
        EXPECT_NE(imp.status().message().find("image name '" + bad + "'"), std::string::npos)
            << imp.status().message();
        EXPECT_EQ(svc().checkout(bad).status().code(), EINVAL) << bad;
        EXPECT_EQ(svc().commit(bad, "").status().code(), EINVAL) << bad;
        EXPECT_EQ(svc().remove(bad, 1).code(), EINVAL) << bad;
        EXPECT_EQ(svc().promote(bad, 1).status().code(), EINVAL) << bad;
        EXPECT_EQ(svc().disk_file(bad, 1).status().code(), EINVAL) << bad;
    }
    EXPECT_EQ(*svc().repository().list_images(), std::vector<std::string>{"win10"});
    EXPECT_FALSE(fs::exists(*fs_ / "repo/checkouts")) << "nothing was checked out";
    EXPECT_FALSE(fs::exists(*fs_ / "repo/x"));
    EXPECT_TRUE(store().intents()->empty());
    EXPECT_EQ(*store().images(), std::vector<std::string>{"win10"});
    Status c = validate_name("client name", "pc/01");
    EXPECT_EQ(c.code(), EINVAL);
    EXPECT_NE(c.message().find("client name 'pc/01'"), std::string::npos) << c.message();
    EXPECT_TRUE(validate_name("client name", "pc-01.lab_2"));
}

TEST_F(ImageServiceTest, ImportOfADirectoryAndTheDiskFileRule) {
    fs::create_directories(src_ / "tree/conf");
    put(src_ / "tree/vm.vmx", "displayName = \"demo\"");
    put(src_ / "tree/conf/a.cfg", "a=1");
    auto v = svc().import("multi", src_ / "tree", "two files");
    ASSERT_TRUE(v) << v.status().message();
    EXPECT_EQ(v->version, 1u);
    EXPECT_EQ(contents(*fs_ / "repo/images/multi/1"), contents(src_ / "tree"));
    EXPECT_EQ(v->size_bytes, 20u + 3u);
    EXPECT_EQ(*svc().disk_file("multi", 1), "vm.vmx");  // the only regular file at the top

    put(src_ / "tree/disk.vmdk", "x");
    ASSERT_TRUE(svc().import("two", src_ / "tree", ""));
    auto df = svc().disk_file("two", 1);
    EXPECT_EQ(df.status().code(), EINVAL);
    EXPECT_NE(df.status().message().find("image 'two' version 1"), std::string::npos) << df.status().message();
    EXPECT_NE(df.status().message().find("'disk.vmdk', 'vm.vmx'"), std::string::npos) << df.status().message();
    EXPECT_EQ(svc().disk_file("two", 9).status().code(), ENOENT);
}

// A crash right after Repository::commit published the version, before the
// tail ran: recover() finishes it.
TEST_F(ImageServiceTest, RecoverFinishesACommitThatWasPublished) {
    import_win10();
    auto co = svc().checkout("win10");
    ASSERT_TRUE(co);
    put(*co / "edited", "yes");
    nlohmann::json args = {{"image", "win10"}, {"version", 2}, {"checkout", co->string()}, {"message", "crashed"}};
    ASSERT_TRUE(store().add_intent("commit", args.dump()));
    ASSERT_TRUE(svc().repository().commit("win10", 2, *co));
    reopen();  // the restart
    Status s = svc().recover();
    ASSERT_TRUE(s) << s.message();
    EXPECT_TRUE(store().intents()->empty());
    EXPECT_FALSE(fs::exists(*co));
    auto recs = store().versions("win10");
    ASSERT_EQ(recs->size(), 2u);
    EXPECT_EQ(recs->back().version, 2u);
    EXPECT_EQ(recs->back().message, "crashed");
    EXPECT_EQ(store().channels("win10")->test, 2u);
    EXPECT_EQ(slurp(version_dir(2) / "edited"), "yes");
}

// A crash before the version was published: recover() undoes the half-built
// staging and keeps the administrator's working copy.
TEST_F(ImageServiceTest, RecoverRollsBackACommitThatWasNotPublished) {
    import_win10();
    auto co = svc().checkout("win10");
    ASSERT_TRUE(co);
    put(*co / "edited", "keep me");
    nlohmann::json args = {{"image", "win10"}, {"version", 2}, {"checkout", co->string()}, {"message", "lost"}};
    ASSERT_TRUE(store().add_intent("commit", args.dump()));
    {
        auto st = svc().repository().begin_staging("win10", 2, 0);  // what Repository::commit had begun
        ASSERT_TRUE(st) << st.status().message();
    }
    ASSERT_EQ(svc().repository().list_staging("win10")->size(), 1u);
    reopen();
    Status s = svc().recover();
    ASSERT_TRUE(s) << s.message();
    EXPECT_TRUE(store().intents()->empty());
    EXPECT_FALSE(*svc().repository().has_version("win10", 2));
    EXPECT_EQ(store().versions("win10")->size(), 1u);
    EXPECT_EQ(slurp(*co / "edited"), "keep me");
    EXPECT_TRUE(svc().repository().list_staging("win10")->empty());
    EXPECT_EQ(store().channels("win10")->test, 1u);
    auto v = svc().commit("win10", "again");  // the commit can simply be run again
    ASSERT_TRUE(v) << v.status().message();
    EXPECT_EQ(v->version, 2u);
}

TEST_F(ImageServiceTest, RecoverRecordsVersionsThatArrivedWithoutMetadata) {
    fs::create_directory(*fs_ / "tree");
    put(*fs_ / "tree/disk.raw", "replicated bytes");
    auto repo = repl::Repository::open(*fs_ / "repo");
    ASSERT_TRUE(repo);
    Status published = repo->commit("other", 3, *fs_ / "tree");  // as a receiver publishes it
    ASSERT_TRUE(published) << published.message();
    ASSERT_TRUE(svc().recover());
    auto recs = store().versions("other");
    ASSERT_EQ(recs->size(), 1u);
    EXPECT_EQ(recs->front().version, 3u);
    EXPECT_EQ(recs->front().message, "replicated");
    EXPECT_EQ(recs->front().size_bytes, 16u);
    EXPECT_EQ(store().channels("other")->production, 0u) << "channels come from the master, not from arrival";
    ASSERT_TRUE(svc().recover());  // idempotent
    EXPECT_EQ(store().versions("other")->size(), 1u);
}

// kill -9 of a process in the middle of commit, at random moments: after
// recover() the commit either happened completely (version, record, no working
// copy) or not at all (no version, no record, the working copy intact).
TEST_F(ImageServiceTest, KillNineDuringCommitLeavesItDoneOrNotDone) {
    import_win10();
    std::mt19937 rng(7);
    int done = 0, undone = 0;
    for (int round = 0; round < 8; ++round) {
        std::string marker = "round " + std::to_string(round);
        fs::path co = svc().checkout_path("win10");
        if (!fs::exists(co)) {
            ASSERT_TRUE(svc().checkout("win10"));
        }
        put(co / "marker", marker);
        uint64_t next = svc().repository().newest_version("win10")->value() + 1;
        close();  // the child opens its own connection; none crosses the fork

        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            auto store = open_sqlite_store(db_);
            if (!store) ::_exit(2);
            auto repo = repl::Repository::open(root_);
            if (!repo) ::_exit(3);
            ImageService svc(std::move(repo.value()), *store.value(), {});
            auto v = svc.commit("win10", marker);
            ::_exit(v ? 0 : 4);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 120000));
        ::kill(pid, SIGKILL);
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        ASSERT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << "commit failed: " << WEXITSTATUS(status);

        reopen();
        Status s = svc().recover();
        ASSERT_TRUE(s) << s.message();
        EXPECT_TRUE(store().intents()->empty());
        EXPECT_TRUE(svc().repository().list_staging("win10")->empty());
        bool published = *svc().repository().has_version("win10", next);
        auto recs = store().versions("win10");
        bool recorded = !recs->empty() && recs->back().version == next;
        if (published) {
            ++done;
            EXPECT_TRUE(recorded) << marker;
            if (recorded) {
                EXPECT_EQ(recs->back().message, marker);
            }
            EXPECT_FALSE(fs::exists(co)) << marker;
            EXPECT_EQ(slurp(version_dir(next) / "marker"), marker);
            EXPECT_EQ(store().channels("win10")->test, next);
        } else {
            ++undone;
            EXPECT_FALSE(recorded) << marker;
            EXPECT_EQ(slurp(co / "marker"), marker) << "the working copy was lost";
            EXPECT_EQ(slurp(co / "disk.raw"), slurp(version_dir(1) / "disk.raw"));
        }
    }
    std::printf("commits completed: %d, undone: %d\n", done, undone);
}

// On a filesystem without snapshots (the plain ext4 of /var/tmp) checkouts and
// versions are copies, and everything else works the same.
TEST(ImageServicePlainDirectory, CheckoutAndCommitWorkByCopying) {
    test::TempDir dir("/var/tmp");
    fs::create_directory(dir / "repo");
    make_raw_disk(dir / "disk.raw");
    ServiceHarness h;
    h.open(dir / "repo", dir / "state.db");
    ASSERT_FALSE(h.svc().repository().is_btrfs());
    auto v1 = h.svc().import("win10", dir / "disk.raw", "plain");
    ASSERT_TRUE(v1) << v1.status().message();
    fs::path disk1 = dir / "repo/images/win10/1/disk.raw";
    EXPECT_EQ(slurp(disk1), slurp(dir / "disk.raw"));
    EXPECT_LT(test::allocated_bytes(disk1), 6 * MiB) << "holes were filled in";

    auto co = h.svc().checkout("win10");
    ASSERT_TRUE(co) << co.status().message();
    EXPECT_TRUE(writable(*co));
    EXPECT_LT(test::allocated_bytes(*co / "disk.raw"), 6 * MiB);
    write_at(*co / "disk.raw", 12 * MiB, random_bytes(1 * MiB, 9));
    put(*co / "readme.txt", "plain");
    auto edited = contents(*co);
    auto v2 = h.svc().commit("win10", "copied");
    ASSERT_TRUE(v2) << v2.status().message();
    EXPECT_EQ(v2->version, 2u);
    EXPECT_GE(v2->delta_bytes, 1 * MiB);
    EXPECT_EQ(contents(dir / "repo/images/win10/2"), edited);
    EXPECT_FALSE(fs::exists(*co));
    EXPECT_EQ(h.store().channels("win10")->test, 2u);

    fs::create_directory(dir / "tree");
    put(dir / "tree/disk.img", "from a directory");
    auto d = h.svc().import("dirimg", dir / "tree", "");
    ASSERT_TRUE(d) << d.status().message();
    EXPECT_EQ(*h.svc().disk_file("dirimg", 1), "disk.img");
    h.close();
}

}  // namespace
}  // namespace icbd::node
