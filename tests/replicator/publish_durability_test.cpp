// Publish on real BTRFS without the syncs it used to make: the version is on
// disk (in the last committed state, as a power cut would find it) the moment
// publish() returns; the tree it was published from is kept as the next
// staging tree only when it is exactly that version, and whatever a crash
// leaves beside the versions is swept. The crash image is a copy of the loop
// device read with O_DIRECT and opened by `btrfs restore`, which reads the
// committed trees only (no log replay, no page cache).
#include <btrfsutil.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "../integration/integration_test.hpp"
#include "icbd/replicator/repository.hpp"
#include "loop_fs.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"

namespace icbd::repl {
namespace {

namespace fs = std::filesystem;
using test::LoopFs;
using test::run_checked;

constexpr uint64_t MiB = 1024 * 1024;

void sh(const std::string& script) { run_checked({"sh", "-ec", script}, {}, std::chrono::seconds(120)); }

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Files of one tree, path -> what they hold: a regular file's size and a hash
// of its bytes (readable when they differ), "-> target" of a symlink, "<dir>".
std::map<std::string, std::string> contents(const fs::path& root) {
    std::map<std::string, std::string> out;
    for (auto& e : fs::recursive_directory_iterator(root)) {
        std::string rel = e.path().lexically_relative(root).string();  // never through a symlink
        if (e.is_symlink()) {
            out[rel] = "-> " + fs::read_symlink(e.path()).string();
        } else if (e.is_regular_file()) {
            const std::string bytes = slurp(e.path());
            out[rel] = std::to_string(bytes.size()) + " bytes, hash " + std::to_string(std::hash<std::string>{}(bytes));
        } else {
            out[rel] = "<dir>";
        }
    }
    return out;
}

struct Uuids {
    std::string uuid, parent;
};
Uuids uuids(const fs::path& p) {
    struct btrfs_util_subvolume_info info {};
    EXPECT_EQ(btrfs_util_subvolume_info(p.c_str(), 0, &info), BTRFS_UTIL_OK) << p;
    return {std::string(reinterpret_cast<const char*>(info.uuid), 16),
            std::string(reinterpret_cast<const char*>(info.parent_uuid), 16)};
}

bool read_only(const fs::path& p) {
    bool ro = false;
    EXPECT_EQ(btrfs_util_get_subvolume_read_only(p.c_str(), &ro), BTRFS_UTIL_OK) << p;
    return ro;
}

class PublishDurabilityTest : public ::testing::Test {
protected:
    void SetUp() override {
        ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
        fs_ = std::make_unique<LoopFs>(LoopFs::Type::btrfs, 256 * MiB);
        fs::create_directory(*fs_ / "repo");
        fs_->create_subvolume("work");
        sh("cd " + (*fs_ / "work").string() + R"(
            truncate -s 32M disk.raw
            dd if=/dev/urandom of=disk.raw bs=1M seek=4 count=2 conv=notrunc status=none
            mkdir -p conf && echo a=1 > conf/a.cfg && echo gone > old.txt && ln -s conf/a.cfg link
        )");
        auto r = Repository::open(*fs_ / "repo");
        ASSERT_TRUE(r) << r.status().message();
        repo_ = std::make_unique<Repository>(std::move(r.value()));
        ASSERT_TRUE(repo_->is_btrfs());
        Status s = repo_->commit("img", 1, *fs_ / "work");
        ASSERT_TRUE(s) << s.message();
        ::sync();
    }
    void TearDown() override {
        repo_.reset();
        fs_.reset();
    }
    fs::path image_dir() const { return *fs_ / "repo/images/img"; }

    // What a power cut now would leave of images/img/<version>: the loop
    // device copied with O_DIRECT (what reached it, no page cache), then that
    // version's files restored from the copy's last committed trees.
    std::map<std::string, std::string> after_power_cut(uint64_t version) {
        fs::path image = crash_.path() / "device.img";
        fs::path out = crash_.path() / ("restored-" + std::to_string(version));
        fs::remove_all(out);
        fs::create_directories(out);
        run_checked({"dd", "if=" + fs_->device(), "of=" + image.string(), "bs=4M", "iflag=direct", "conv=sparse",
                     "status=none"});
        const std::string v = std::to_string(version);
        run_checked({"btrfs", "restore", "-s", "-x", "-S", "--path-regex",
                     "^/(|repo(|/images(|/img(|/" + v + "(|/.*)))))$", image.string(), out.string()});
        fs::path got = out / "repo/images/img" / v;
        if (!fs::exists(got)) return {};
        return contents(got);
    }

    std::unique_ptr<LoopFs> fs_;
    std::unique_ptr<Repository> repo_;
    test::TempDir crash_;
};

// The old publish made the tree durable with a syncfs before anything else;
// the snapshot that publishes now must write the tree's data back and commit
// it itself. Nothing here syncs: the data is in the page cache only when
// publish() starts.
TEST_F(PublishDurabilityTest, PublishedVersionIsOnDiskWhenPublishReturns) {
    auto st = repo_->begin_staging("img", 2, 1);
    ASSERT_TRUE(st) << st.status().message();
    const fs::path tree = st->tree_path();
    sh("cd " + tree.string() + R"(
        dd if=/dev/urandom of=disk.raw bs=1M seek=10 count=3 conv=notrunc status=none
        dd if=/dev/urandom of=new.bin bs=1M count=2 status=none
        echo b=2 > conf/b.cfg && rm old.txt && mkdir -p var/log && echo line > var/log/syslog
    )");
    ASSERT_TRUE(st->write_checkpoint(std::vector<uint8_t>{1}));  // no sync() before it, as a receiver never does
    Status p = st->publish();
    ASSERT_TRUE(p) << p.message();
    const auto want = contents(image_dir() / "2");
    ASSERT_EQ(want.count("new.bin"), 1u);
    ASSERT_EQ(want.count("old.txt"), 0u);
    EXPECT_TRUE(read_only(image_dir() / "2"));
    EXPECT_EQ(after_power_cut(2), want) << "the published version is not (all) on disk yet";
}

// The receiver's sequence since this change: its END sync, then publish.
// The version comes out of the last commit complete, and the version before
// it is untouched.
TEST_F(PublishDurabilityTest, TwoPublishesInARowAreBothOnDisk) {
    for (uint64_t v : {2, 3}) {
        auto st = repo_->begin_staging("img", v, v - 1);
        ASSERT_TRUE(st) << st.status().message();
        sh("cd " + st->tree_path().string() + " && dd if=/dev/urandom of=disk.raw bs=1M seek=" + std::to_string(v * 4) +
           " count=1 conv=notrunc status=none && echo " + std::to_string(v) + " > version.txt");
        ASSERT_TRUE(st->sync());
        ASSERT_TRUE(st->publish());
    }
    EXPECT_EQ(after_power_cut(3), contents(image_dir() / "3"));
    EXPECT_EQ(after_power_cut(2), contents(image_dir() / "2"));
    EXPECT_EQ(slurp(image_dir() / "2/version.txt"), "2\n");
}

// After a receiver's publish the tree stays as .spare-<version>, writable,
// the one the version was snapshotted from; the next staging from that
// version takes it (no snapshot) and the published version stays as it was.
TEST_F(PublishDurabilityTest, TheTreeAVersionWasPublishedFromStagesTheNextOne) {
    auto st = repo_->begin_staging("img", 2, 1);
    ASSERT_TRUE(st);
    sh("echo two > " + (st->tree_path() / "v.txt").string());
    ASSERT_TRUE(st->publish());
    const fs::path spare = image_dir() / ".spare-2";
    ASSERT_TRUE(fs::exists(spare));
    EXPECT_FALSE(read_only(spare));
    EXPECT_EQ(uuids(image_dir() / "2").parent, uuids(spare).uuid);
    EXPECT_EQ(contents(spare), contents(image_dir() / "2"));
    EXPECT_FALSE(fs::exists(image_dir() / ".tree-2-from-1"));
    EXPECT_TRUE(repo_->list_staging("img")->empty());
    EXPECT_EQ(*repo_->list_versions("img"), (std::vector<uint64_t>{1, 2}));

    const std::string spare_uuid = uuids(spare).uuid;
    auto next = repo_->begin_staging("img", 3, 2);
    ASSERT_TRUE(next) << next.status().message();
    EXPECT_FALSE(fs::exists(spare));
    EXPECT_EQ(uuids(next->tree_path()).uuid, spare_uuid) << "the spare was not taken";
    EXPECT_EQ(contents(next->tree_path()), contents(image_dir() / "2"));
    sh("echo three > " + (next->tree_path() / "v.txt").string());
    ASSERT_TRUE(next->publish());
    EXPECT_EQ(slurp(image_dir() / "2/v.txt"), "two\n");
    EXPECT_EQ(slurp(image_dir() / "3/v.txt"), "three\n");
    EXPECT_TRUE(fs::exists(image_dir() / ".spare-3"));
    EXPECT_EQ(after_power_cut(3), contents(image_dir() / "3"));
}

// A spare that is not the tree its version was published from (that version
// was removed and published again from elsewhere, or someone made one) is
// never staged from: it is deleted and the base snapshotted.
TEST_F(PublishDurabilityTest, ASpareThatIsNotTheBasesTreeIsNotUsed) {
    auto st = repo_->begin_staging("img", 2, 1);
    ASSERT_TRUE(st);
    ASSERT_TRUE(st->publish());
    // Version 2 made again by hand from other content: its old spare stays behind.
    ASSERT_EQ(btrfs_util_delete_subvolume((image_dir() / "2").c_str(), 0), BTRFS_UTIL_OK);
    sh("echo other > " + (*fs_ / "work/other.txt").string());
    fs_->snapshot_readonly("work", "repo/images/img/2");
    ASSERT_TRUE(fs::exists(image_dir() / ".spare-2"));
    const std::string stale = uuids(image_dir() / ".spare-2").uuid;

    auto next = repo_->begin_staging("img", 3, 2);
    ASSERT_TRUE(next) << next.status().message();
    EXPECT_NE(uuids(next->tree_path()).uuid, stale);
    EXPECT_EQ(contents(next->tree_path()), contents(image_dir() / "2"));
    EXPECT_EQ(slurp(next->tree_path() / "other.txt"), "other\n");
    EXPECT_FALSE(fs::exists(image_dir() / ".spare-2"));
    ASSERT_TRUE(next->abort());

    // A spare made read-only is not taken either.
    auto again = repo_->begin_staging("img", 3, 2);
    ASSERT_TRUE(again);
    ASSERT_TRUE(again->publish());
    ASSERT_EQ(btrfs_util_set_subvolume_read_only((image_dir() / ".spare-3").c_str(), true), BTRFS_UTIL_OK);
    auto four = repo_->begin_staging("img", 4, 3);
    ASSERT_TRUE(four) << four.status().message();
    EXPECT_FALSE(read_only(four->tree_path()));
    EXPECT_EQ(contents(four->tree_path()), contents(image_dir() / "3"));
}

// A commit (the master's path) keeps no spare; removing a version removes its
// spare; trees whose staging area is gone and spares of older versions are
// swept when the next staging begins.
TEST_F(PublishDurabilityTest, CommitKeepsNoSpareAndLeftoversAreSwept) {
    ASSERT_TRUE(repo_->commit("img", 2, *fs_ / "work"));
    EXPECT_FALSE(fs::exists(image_dir() / ".spare-2"));
    auto st = repo_->begin_staging("img", 3, 2);
    ASSERT_TRUE(st);
    ASSERT_TRUE(st->publish());
    ASSERT_TRUE(fs::exists(image_dir() / ".spare-3"));
    ASSERT_TRUE(repo_->remove_version("img", 3));
    EXPECT_FALSE(fs::exists(image_dir() / ".spare-3"));

    // What a crash can leave: a tree whose area is gone, an older spare.
    ASSERT_EQ(btrfs_util_create_snapshot((image_dir() / "2").c_str(), (image_dir() / ".tree-2-from-1").c_str(), 0,
                                         nullptr, nullptr),
              BTRFS_UTIL_OK);
    ASSERT_EQ(btrfs_util_create_snapshot((image_dir() / "1").c_str(), (image_dir() / ".spare-1").c_str(), 0, nullptr,
                                         nullptr),
              BTRFS_UTIL_OK);
    auto next = repo_->begin_staging("img", 4, 2);
    ASSERT_TRUE(next) << next.status().message();
    EXPECT_FALSE(fs::exists(image_dir() / ".tree-2-from-1"));
    EXPECT_FALSE(fs::exists(image_dir() / ".spare-1"));
    EXPECT_TRUE(fs::exists(next->tree_path()));
    EXPECT_EQ(*repo_->list_versions("img"), (std::vector<uint64_t>{1, 2}));
}

}  // namespace
}  // namespace icbd::repl
