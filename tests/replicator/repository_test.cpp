// The image repository on real BTRFS (and ext4 for the fallback): versions are
// read-only and listed in order, a staged version is invisible until publish
// makes it appear at once, staging survives a cut for resume with its
// checkpoint, abort gives the space back, and bad names or symlinks lead nowhere.
#include "icbd/replicator/repository.hpp"

#include <btrfsutil.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "../integration/integration_test.hpp"
#include "icbd/replicator/image_path.hpp"
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

void put(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

uint64_t free_bytes(const fs::path& p) {
    struct statvfs v;
    ::statvfs(p.c_str(), &v);
    return uint64_t(v.f_bavail) * v.f_frsize;
}

// Files of one tree, path -> content (symlinks as "-> target").
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

bool writable(const fs::path& dir) {
    int fd = ::open((dir / "probe").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    ::close(fd);
    ::unlink((dir / "probe").c_str());
    return true;
}

class RepositoryTest : public ::testing::Test {
protected:
    void SetUp() override {
        ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
        fs_ = std::make_unique<LoopFs>(LoopFs::Type::btrfs, 512 * MiB);
        fs::create_directory(*fs_ / "repo");
        fs_->create_subvolume("work");
        sh("cd " + (*fs_ / "work").string() + R"(
            echo 'displayName = "demo"' > vm.vmx
            truncate -s 64M disk.raw
            dd if=/dev/urandom of=disk.raw bs=1M seek=8 count=2 conv=notrunc status=none
            mkdir -p conf && echo a=1 > conf/a.cfg && ln -s conf/a.cfg link
        )");
        auto r = Repository::open(*fs_ / "repo");
        ASSERT_TRUE(r) << r.status().message();
        repo_ = std::make_unique<Repository>(std::move(r.value()));
        ASSERT_TRUE(repo_->is_btrfs());
        Status s = repo_->commit("img", 1, *fs_ / "work");
        ASSERT_TRUE(s) << s.message();
    }
    void TearDown() override {
        repo_.reset();
        fs_.reset();
    }
    fs::path image_dir() const { return *fs_ / "repo/images/img"; }

    std::unique_ptr<LoopFs> fs_;
    std::unique_ptr<Repository> repo_;
};

TEST_F(RepositoryTest, CommittedVersionIsAReadOnlySubvolumeWithTheFiles) {
    auto v = repo_->version_path("img", 1);
    ASSERT_TRUE(v) << v.status().message();
    EXPECT_EQ(*v, image_dir() / "1");
    EXPECT_EQ(btrfs_util_is_subvolume(v->c_str()), BTRFS_UTIL_OK);
    bool ro = false;
    ASSERT_EQ(btrfs_util_get_subvolume_read_only(v->c_str(), &ro), BTRFS_UTIL_OK);
    EXPECT_TRUE(ro);
    EXPECT_FALSE(writable(*v));
    EXPECT_EQ(contents(*v), contents(*fs_ / "work"));
    EXPECT_TRUE(test::is_hole(*v / "disk.raw", 0, 8 * MiB));
    EXPECT_EQ(repo_->newest_version("img")->value(), 1u);
}

TEST_F(RepositoryTest, ListingsAreSortedAndIgnoreStagingAndMalformedNames) {
    ASSERT_TRUE(repo_->commit("img", 10, *fs_ / "work"));
    ASSERT_TRUE(repo_->commit("img", 2, *fs_ / "work").code() == ESTALE);
    ASSERT_TRUE(repo_->commit("alpha", 3, *fs_ / "work"));
    auto st = repo_->begin_staging("img", 11, 10);
    ASSERT_TRUE(st) << st.status().message();
    for (const char* junk : {"007", "0", "x", "12.tmp"}) fs::create_directory(image_dir() / junk);
    fs::create_directory(*fs_ / "repo/images/.hidden");
    fs::create_directory(*fs_ / "repo/images/bad name");
    fs::create_directory_symlink(image_dir() / "10", image_dir() / "99");  // a symlink is not a version

    auto images = repo_->list_images();
    ASSERT_TRUE(images);
    EXPECT_EQ(*images, (std::vector<std::string>{"alpha", "img"}));
    auto versions = repo_->list_versions("img");
    ASSERT_TRUE(versions);
    EXPECT_EQ(*versions, (std::vector<uint64_t>{1, 10}));
    EXPECT_EQ(repo_->newest_version("img")->value(), 10u);
    EXPECT_FALSE(repo_->newest_version("none")->has_value());
    auto staging = repo_->list_staging();
    ASSERT_TRUE(staging);
    ASSERT_EQ(staging->size(), 1u);
    EXPECT_EQ((*staging)[0].image, "img");
    EXPECT_EQ((*staging)[0].version, 11u);
    EXPECT_EQ((*staging)[0].base, 10u);
}

TEST_F(RepositoryTest, StagedVersionIsInvisibleUntilPublishedAtOnce) {
    auto st = repo_->begin_staging("img", 2, 1);
    ASSERT_TRUE(st) << st.status().message();
    Staging& s = st.value();
    EXPECT_FALSE(s.resumed());
    EXPECT_TRUE(s.checkpoint().empty());
    // A writable snapshot of the base.
    EXPECT_EQ(contents(s.tree_path()), contents(image_dir() / "1"));
    EXPECT_TRUE(writable(s.tree_path()));
    // Hidden: a dot name is never a version.
    EXPECT_EQ(s.tree_path().parent_path(), image_dir());
    EXPECT_EQ(s.tree_path().filename().string().front(), '.');

    auto f = open_beneath(s.tree_fd(), "conf/b.cfg", O_WRONLY | O_CREAT | O_EXCL, 0644);
    ASSERT_TRUE(f) << f.status().message();
    ASSERT_EQ(::write(f->get(), "b=2\n", 4), 4);
    ASSERT_EQ(::unlinkat(s.tree_fd(), "vm.vmx", 0), 0);
    ASSERT_TRUE(s.write_checkpoint(std::vector<uint8_t>{1, 2, 3}));
    EXPECT_FALSE(fs::exists(image_dir() / "2"));
    EXPECT_EQ(*repo_->list_versions("img"), (std::vector<uint64_t>{1}));

    Status p = s.publish();
    ASSERT_TRUE(p) << p.message();
    EXPECT_EQ(*repo_->list_versions("img"), (std::vector<uint64_t>{1, 2}));
    EXPECT_EQ(slurp(image_dir() / "2/conf/b.cfg"), "b=2\n");
    EXPECT_FALSE(fs::exists(image_dir() / "2/vm.vmx"));
    EXPECT_TRUE(fs::exists(image_dir() / "1/vm.vmx"));  // the base is untouched
    bool ro = false;
    ASSERT_EQ(btrfs_util_get_subvolume_read_only((image_dir() / "2").c_str(), &ro), BTRFS_UTIL_OK);
    EXPECT_TRUE(ro);
    EXPECT_TRUE(repo_->list_staging("img")->empty());
    EXPECT_TRUE(fs::is_empty(image_dir() / ".staging"));
    EXPECT_FALSE(s.write_checkpoint(std::vector<uint8_t>{4}));  // spent
}

TEST_F(RepositoryTest, VersionThatIsNotNewerIsRefused) {
    ASSERT_TRUE(repo_->commit("img", 5, *fs_ / "work"));
    EXPECT_EQ(repo_->commit("img", 5, *fs_ / "work").code(), EEXIST);
    EXPECT_EQ(repo_->commit("img", 3, *fs_ / "work").code(), ESTALE);
    auto a = repo_->begin_staging("img", 5, 1);
    EXPECT_EQ(a.status().code(), EEXIST);
    auto b = repo_->begin_staging("img", 4, 1);
    ASSERT_FALSE(b);
    EXPECT_EQ(b.status().code(), ESTALE);
    EXPECT_NE(b.status().message().find("image 'img' version 4"), std::string::npos) << b.status().message();
    EXPECT_EQ(repo_->begin_staging("img", 6, 2).status().code(), ENOENT);  // base not here
    EXPECT_EQ(repo_->begin_staging("img", 0, 0).status().code(), EINVAL);

    // A newer version published while a staging area was open: its publish
    // is refused and the published versions stay as they are.
    auto st = repo_->begin_staging("img", 6, 5);
    ASSERT_TRUE(st);
    ASSERT_TRUE(repo_->commit("img", 7, *fs_ / "work"));
    Status p = st->publish();
    EXPECT_EQ(p.code(), ESTALE) << p.message();
    EXPECT_EQ(*repo_->list_versions("img"), (std::vector<uint64_t>{1, 5, 7}));
    EXPECT_TRUE(st->abort());
}

TEST_F(RepositoryTest, StagingResumesWithItsCheckpointAfterACut) {
    {
        auto st = repo_->begin_staging("img", 2, 1);
        ASSERT_TRUE(st);
        put(st->tree_path() / "half", "written before the cut");
        ASSERT_TRUE(st->write_checkpoint(std::vector<uint8_t>{'o', 'l', 'd'}));
        ASSERT_TRUE(st->write_checkpoint(std::vector<uint8_t>{'a', 'b', 'c'}));
        ASSERT_TRUE(st->sync());
        // The receiver goes away here without publish or abort.
    }
    EXPECT_FALSE(fs::exists(image_dir() / "2"));
    EXPECT_EQ(repo_->begin_staging("img", 2, 1).status().code(), EEXIST);
    EXPECT_EQ(repo_->resume_staging("img", 2, 3).status().code(), EINVAL);  // a base must be older
    EXPECT_EQ(repo_->resume_staging("img", 3, 1).status().code(), ENOENT);

    EXPECT_TRUE(fs::exists(image_dir() / ".tree-2-from-1"));
    std::string raw = slurp(image_dir() / ".staging/2-from-1/checkpoint");
    ASSERT_EQ(raw.size(), 16u + 3 + 4);
    EXPECT_EQ(raw.substr(0, 8), "ICBDCKPT");

    auto st = repo_->resume_staging("img", 2, 1);
    ASSERT_TRUE(st) << st.status().message();
    EXPECT_TRUE(st->resumed());
    EXPECT_EQ(st->checkpoint(), (std::vector<uint8_t>{'a', 'b', 'c'}));
    EXPECT_EQ(slurp(st->tree_path() / "half"), "written before the cut");
    // One receiver at a time.
    auto other = repo_->resume_staging("img", 2, 1);
    ASSERT_FALSE(other);
    EXPECT_EQ(other.status().code(), EBUSY);
    EXPECT_EQ(repo_->discard_staging("img", 2, 1).code(), EBUSY);

    ASSERT_TRUE(st->publish());
    EXPECT_EQ(slurp(image_dir() / "2/half"), "written before the cut");
}

TEST_F(RepositoryTest, CorruptCheckpointIsReportedNotTrusted) {
    {
        auto st = repo_->begin_staging("img", 2, 1);
        ASSERT_TRUE(st);
        ASSERT_TRUE(st->write_checkpoint(std::vector<uint8_t>(100, 7)));
    }
    fs::path cp = image_dir() / ".staging/2-from-1/checkpoint";
    std::string raw = slurp(cp);
    raw[50] ^= 1;
    put(cp, raw);
    auto st = repo_->resume_staging("img", 2, 1);
    ASSERT_FALSE(st);
    EXPECT_EQ(st.status().code(), EBADMSG) << st.status().message();
    ASSERT_TRUE(repo_->discard_staging("img", 2, 1));
    EXPECT_TRUE(repo_->list_staging("img")->empty());
    EXPECT_TRUE(repo_->begin_staging("img", 2, 1));
}

TEST_F(RepositoryTest, AbortRemovesTheStagingAreaAndGivesTheSpaceBack) {
    // Commit first: the cleaner of the tree the fixture's commit deleted runs
    // at a transaction commit, and `subvolume sync` alone waited for the
    // periodic one (30 s).
    run_checked({"btrfs", "filesystem", "sync", fs_->mount_point().string()});
    run_checked({"btrfs", "subvolume", "sync", fs_->mount_point().string()});
    ::sync();
    uint64_t before = free_bytes(fs_->mount_point());
    auto st = repo_->begin_staging("img", 2, 1);
    ASSERT_TRUE(st);
    sh("dd if=/dev/urandom of=" + (st->tree_path() / "big").string() + " bs=1M count=100 status=none");
    ASSERT_TRUE(st->sync());
    uint64_t during = free_bytes(fs_->mount_point());
    EXPECT_LT(during + 90 * MiB, before);
    fs::path tree = st->tree_path();
    ASSERT_TRUE(st->abort());
    EXPECT_FALSE(fs::exists(tree));
    EXPECT_FALSE(fs::exists(image_dir() / ".staging/2-from-1"));
    EXPECT_FALSE(fs::exists(image_dir() / "2"));
    auto list = run_checked({"btrfs", "subvolume", "list", fs_->mount_point().string()});
    EXPECT_EQ(list.output.find(".staging"), std::string::npos) << list.output;
    // The BTRFS cleaner frees a deleted subvolume's extents in the background,
    // woken by a transaction commit.
    run_checked({"btrfs", "filesystem", "sync", fs_->mount_point().string()});
    run_checked({"btrfs", "subvolume", "sync", fs_->mount_point().string()});
    ::sync();
    EXPECT_GT(free_bytes(fs_->mount_point()) + 10 * MiB, before);
    EXPECT_EQ(*repo_->list_versions("img"), (std::vector<uint64_t>{1}));
}

TEST_F(RepositoryTest, BadNamesAreRefused) {
    for (const char* bad : {"../escape", ".staging", "a/b", "", "x y"}) {
        EXPECT_EQ(repo_->commit(bad, 9, *fs_ / "work").code(), EINVAL) << bad;
        EXPECT_EQ(repo_->begin_staging(bad, 9, 0).status().code(), EINVAL) << bad;
        EXPECT_EQ(repo_->list_versions(bad).status().code(), EINVAL) << bad;
    }
    EXPECT_FALSE(fs::exists(*fs_ / "repo/escape"));
    EXPECT_FALSE(fs::exists(*fs_ / "escape"));
}

TEST_F(RepositoryTest, SymlinksInTheRepositoryLeadNowhere) {
    test::TempDir outside;
    // An image directory that is a symlink to elsewhere is not an image and
    // nothing is staged or committed through it.
    fs::create_directory_symlink(outside.path(), *fs_ / "repo/images/evil");
    EXPECT_EQ(*repo_->list_images(), (std::vector<std::string>{"img"}));
    EXPECT_FALSE(repo_->begin_staging("evil", 1, 0));
    EXPECT_FALSE(repo_->commit("evil", 1, *fs_ / "work"));
    EXPECT_TRUE(fs::is_empty(outside.path()));
    // A .staging that points elsewhere is refused too.
    fs::create_directory(*fs_ / "repo/images/img2");
    fs::create_directory_symlink(outside.path(), *fs_ / "repo/images/img2/.staging");
    EXPECT_FALSE(repo_->begin_staging("img2", 1, 0));
    EXPECT_TRUE(fs::is_empty(outside.path()));
    // Inside a staging tree, a planted symlink does not let a receiver write out.
    auto st = repo_->begin_staging("img", 2, 1);
    ASSERT_TRUE(st);
    fs::create_directory_symlink(outside.path(), st->tree_path() / "out");
    auto f = open_beneath(st->tree_fd(), "out/x", O_WRONLY | O_CREAT, 0600);
    EXPECT_FALSE(f);
    EXPECT_TRUE(fs::is_empty(outside.path()));
}

TEST_F(RepositoryTest, SupersededStagingAreasAreReclaimed) {
    {
        auto st = repo_->begin_staging("img", 2, 1);
        ASSERT_TRUE(st);
        ASSERT_TRUE(st->write_checkpoint(std::vector<uint8_t>{1}));
    }  // left for a resume that will never come: version 3 goes first
    ASSERT_TRUE(repo_->commit("img", 3, *fs_ / "work"));
    auto st = repo_->begin_staging("img", 4, 3);
    ASSERT_TRUE(st) << st.status().message();
    auto areas = repo_->list_staging("img");
    ASSERT_TRUE(areas);
    ASSERT_EQ(areas->size(), 1u);
    EXPECT_EQ((*areas)[0].version, 4u);
    EXPECT_FALSE(fs::exists(image_dir() / ".tree-2-from-1"));
    EXPECT_EQ(repo_->resume_staging("img", 2, 1).status().code(), ESTALE);
}

TEST_F(RepositoryTest, RemoveVersionDeletesTheSubvolume) {
    ASSERT_TRUE(repo_->commit("img", 2, *fs_ / "work"));
    // Boot sets live beside their version (docs/boot-set.md) and go with it.
    fs::create_directories(image_dir() / ".bootsets/1/sub");
    fs::create_directories(image_dir() / ".bootsets/2");
    std::ofstream(image_dir() / ".bootsets/1/sub/disk.raw.bset") << "x";
    ASSERT_TRUE(repo_->remove_version("img", 1));
    EXPECT_FALSE(fs::exists(image_dir() / ".bootsets/1"));
    EXPECT_TRUE(fs::exists(image_dir() / ".bootsets/2"));
    EXPECT_EQ(*repo_->list_versions("img"), (std::vector<uint64_t>{2}));
    EXPECT_EQ(repo_->remove_version("img", 1).code(), ENOENT);
}

// Without BTRFS: plain directories, the base copied with holes kept.
TEST(RepositoryExt4, StagingCopiesTheBaseSparselyAndPublishes) {
    ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
    LoopFs ext(LoopFs::Type::ext4, 256 * MiB);
    fs::create_directory(ext / "work");
    fs::create_directory(ext / "repo");
    sh("cd " + (ext / "work").string() + R"(
        truncate -s 64M disk.raw
        dd if=/dev/urandom of=disk.raw bs=1M seek=8 count=2 conv=notrunc status=none
        mkdir conf && echo a=1 > conf/a.cfg && chmod 640 conf/a.cfg && ln -s conf/a.cfg link
        touch -d '2021-05-06 07:08:09' conf/a.cfg
    )");
    auto r = Repository::open(ext / "repo");
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_FALSE(r->is_btrfs());
    Status c = r->commit("img", 1, ext / "work");
    ASSERT_TRUE(c) << c.message();
    fs::path v1 = ext / "repo/images/img/1";
    EXPECT_EQ(contents(v1), contents(ext / "work"));
    EXPECT_TRUE(test::is_hole(v1 / "disk.raw", 0, 8 * MiB));
    EXPECT_TRUE(test::is_hole(v1 / "disk.raw", 10 * MiB, 54 * MiB));

    auto st = r->begin_staging("img", 2, 1);
    ASSERT_TRUE(st) << st.status().message();
    EXPECT_EQ(contents(st->tree_path()), contents(v1));
    struct stat a, b;
    ASSERT_EQ(::stat((v1 / "conf/a.cfg").c_str(), &a), 0);
    ASSERT_EQ(::stat((st->tree_path() / "conf/a.cfg").c_str(), &b), 0);
    EXPECT_EQ(a.st_mode, b.st_mode);
    EXPECT_EQ(a.st_mtim.tv_sec, b.st_mtim.tv_sec);
    EXPECT_EQ(a.st_mtim.tv_nsec, b.st_mtim.tv_nsec);
    EXPECT_LT(test::allocated_bytes(st->tree_path() / "disk.raw"), 3 * MiB);
    EXPECT_FALSE(fs::exists(ext / "repo/images/img/2"));
    put(st->tree_path() / "new", "n");
    ASSERT_TRUE(st->publish());
    EXPECT_EQ(slurp(ext / "repo/images/img/2/new"), "n");
    EXPECT_EQ(*r->list_versions("img"), (std::vector<uint64_t>{1, 2}));

    auto ab = r->begin_staging("img", 3, 2);
    ASSERT_TRUE(ab);
    ASSERT_TRUE(ab->abort());
    EXPECT_TRUE(r->list_staging("img")->empty());
}

// Disk full while staging: a clear ENOSPC, nothing published, the space back.
TEST(RepositoryExt4, DiskFullIsReportedAndNothingIsLeft) {
    ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
    LoopFs ext(LoopFs::Type::ext4, 48 * MiB);
    fs::create_directory(ext / "work");
    fs::create_directory(ext / "repo");
    sh("dd if=/dev/urandom of=" + (ext / "work/disk.raw").string() + " bs=1M count=28 status=none");
    uint64_t before = free_bytes(ext.mount_point());
    auto r = Repository::open(ext / "repo");
    ASSERT_TRUE(r);
    Status c = r->commit("img", 1, ext / "work");
    ASSERT_FALSE(c);
    EXPECT_EQ(c.code(), ENOSPC);
    EXPECT_NE(c.message().find("no space left on device"), std::string::npos) << c.message();
    EXPECT_NE(c.message().find("image 'img' version 1"), std::string::npos) << c.message();
    EXPECT_TRUE(r->list_versions("img")->empty());
    EXPECT_TRUE(r->list_staging("img")->empty());
    EXPECT_GT(free_bytes(ext.mount_point()) + 1 * MiB, before);
}

TEST(RepositoryOpen, MissingRootIsNamed) {
    auto r = Repository::open("/nonexistent/icbd-repo");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), ENOENT);
    EXPECT_NE(r.status().message().find("/nonexistent/icbd-repo"), std::string::npos);
}

}  // namespace
}  // namespace icbd::repl
