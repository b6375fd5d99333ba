// Names a peer sends us (image names, versions, paths inside a version) are
// checked, and opening them beneath a version never leaves it: not by "..",
// not by an absolute path, not through a symlink planted in the tree.
#include "icbd/replicator/image_path.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "temp_dir.hpp"

namespace icbd::repl {
namespace {

namespace fs = std::filesystem;

TEST(ImageName, AcceptsTheDocumentedAlphabet) {
    for (const std::string& n : std::vector<std::string>{"win11", "a", "A-b_c.1", "ubuntu-24.04", std::string(64, 'x')})
        EXPECT_TRUE(validate_image_name(n)) << n;
}

TEST(ImageName, RefusesEverythingElseWithAReason) {
    for (std::string n : {std::string(), std::string(".hidden"), std::string(".."), std::string(".staging"),
                          std::string("a/b"), std::string("a b"), std::string(65, 'x'), std::string("caf\xc3\xa9"),
                          std::string("a\0b", 3), std::string("x\n")}) {
        Status s = validate_image_name(n);
        EXPECT_FALSE(s) << n;
        EXPECT_EQ(s.code(), EINVAL);
        EXPECT_NE(s.message().find("image name"), std::string::npos) << s.message();
    }
}

TEST(RelativePath, AcceptsPlainRelativePaths) {
    std::string longest = std::string(255, 'a');
    while (longest.size() + 256 <= kMaxRelativePathLength) longest += "/" + std::string(255, 'b');
    for (const std::string& p : std::vector<std::string>{"a", "disk.raw", "dir/sub/file.vmdk", "dir/.hidden", "a..b", "...", longest})
        EXPECT_TRUE(validate_relative_path(p)) << p.substr(0, 40);
}

TEST(RelativePath, RefusesEscapesAndNonCanonicalForms) {
    for (std::string p : {std::string(), std::string("/etc/passwd"), std::string("a//b"), std::string("a/"),
                          std::string("./a"), std::string("a/./b"), std::string(".."), std::string("../x"),
                          std::string("a/../../b"), std::string("a\0b", 3), std::string(4097, 'a'),
                          std::string(256, 'c')}) {
        Status s = validate_relative_path(p);
        EXPECT_FALSE(s) << p.substr(0, 40);
        EXPECT_EQ(s.code(), EINVAL);
    }
}

TEST(VersionName, OnlyCanonicalDecimalFromOne) {
    EXPECT_EQ(parse_version("1"), 1u);
    EXPECT_EQ(parse_version("42"), 42u);
    EXPECT_EQ(parse_version("18446744073709551615"), UINT64_MAX);
    for (const char* bad : {"", "0", "01", "+1", "-1", "1a", " 1", "18446744073709551616", "1.0", ".staging"})
        EXPECT_FALSE(parse_version(bad)) << bad;
    EXPECT_EQ(version_name(7), "7");
    EXPECT_EQ(parse_version(version_name(UINT64_MAX)), UINT64_MAX);
}

// A version tree with the traps a hostile image (or a later local change)
// could hold: symlinks out of the tree, to a file inside, to a directory.
class OpenBeneath : public ::testing::TestWithParam<ResolveMethod> {
protected:
    void SetUp() override {
        fs::create_directories(dir_ / "v/sub");
        std::ofstream(dir_ / "v/sub/file") << "inside";
        std::ofstream(dir_ / "outside") << "secret";
        fs::create_symlink("../outside", dir_ / "v/sub/up");
        fs::create_symlink("/etc/passwd", dir_ / "v/abs");
        fs::create_symlink("file", dir_ / "v/sub/same-dir");
        fs::create_symlink("..", dir_ / "v/sub/dotdot");
        fs::create_symlink("/etc", dir_ / "v/etc");
        root_.reset(::open((dir_ / "v").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        ASSERT_TRUE(root_.valid());
    }
    test::TempDir dir_;
    UniqueFd root_;
};

TEST_P(OpenBeneath, OpensFilesAndDirectoriesInside) {
    auto f = open_beneath(root_.get(), "sub/file", O_RDONLY, 0, GetParam());
    ASSERT_TRUE(f) << f.status().message();
    char buf[16] = {};
    EXPECT_EQ(::read(f->get(), buf, sizeof buf), 6);
    EXPECT_STREQ(buf, "inside");
    auto d = open_beneath(root_.get(), "sub", O_RDONLY | O_DIRECTORY, 0, GetParam());
    ASSERT_TRUE(d) << d.status().message();
    auto c = open_beneath(root_.get(), "sub/new", O_WRONLY | O_CREAT | O_EXCL, 0640, GetParam());
    ASSERT_TRUE(c) << c.status().message();
    struct stat st;
    ASSERT_EQ(::stat((dir_ / "v/sub/new").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0640u);
}

TEST_P(OpenBeneath, NeverFollowsASymlink) {
    for (const char* p : {"sub/up", "abs", "sub/same-dir", "etc/passwd", "sub/dotdot/sub/file", "etc"}) {
        auto f = open_beneath(root_.get(), p, O_RDONLY, 0, GetParam(), "image 'x' version 2");
        ASSERT_FALSE(f) << p << " was opened";
        EXPECT_EQ(f.status().code(), ELOOP) << p << ": " << f.status().message();
        EXPECT_NE(f.status().message().find("image 'x' version 2"), std::string::npos) << f.status().message();
        EXPECT_NE(f.status().message().find(p), std::string::npos) << f.status().message();
    }
    // Creating through a symlinked directory would write outside: refused, nothing made.
    auto c = open_beneath(root_.get(), "etc/icbd-should-not-exist", O_WRONLY | O_CREAT, 0600, GetParam());
    EXPECT_FALSE(c);
    EXPECT_FALSE(fs::exists("/etc/icbd-should-not-exist"));
    // And O_CREAT on a dangling-or-not symlink leaf does not create its target.
    auto t = open_beneath(root_.get(), "sub/up", O_WRONLY | O_CREAT | O_TRUNC, 0600, GetParam());
    EXPECT_FALSE(t);
    std::ifstream in(dir_ / "outside");
    std::string s;
    in >> s;
    EXPECT_EQ(s, "secret");
}

TEST_P(OpenBeneath, RefusesDotDotAndAbsolutePathsBeforeTouchingTheDisk) {
    for (const char* p : {"../outside", "/etc/passwd", "sub/../../outside", "", "sub//file"}) {
        auto f = open_beneath(root_.get(), p, O_RDONLY, 0, GetParam());
        ASSERT_FALSE(f) << p;
        EXPECT_EQ(f.status().code(), EINVAL) << p;
    }
}

TEST_P(OpenBeneath, ParentAndLeafLetsTheCallerHandleTheEntryItself) {
    auto pl = open_parent_beneath(root_.get(), "sub/up", GetParam());
    ASSERT_TRUE(pl) << pl.status().message();
    EXPECT_EQ(pl->leaf, "up");
    // The symlink itself is removed, its target is untouched.
    ASSERT_EQ(::unlinkat(pl->dir.get(), pl->leaf.c_str(), 0), 0);
    EXPECT_TRUE(fs::exists(dir_ / "outside"));
    auto top = open_parent_beneath(root_.get(), "abs", GetParam());
    ASSERT_TRUE(top);
    EXPECT_EQ(top->leaf, "abs");
    // A parent reached through a symlink is refused.
    auto bad = open_parent_beneath(root_.get(), "etc/passwd", GetParam());
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.status().code(), ELOOP);
}

// openat2 itself only where the kernel has it; `automatic` and `walk` always.
std::vector<ResolveMethod> methods() {
    std::vector<ResolveMethod> m = {ResolveMethod::automatic, ResolveMethod::walk};
    if (openat2_available()) m.push_back(ResolveMethod::openat2);
    return m;
}

TEST(OpenBeneathFallback, ExplicitOpenat2WithoutKernelSupportSaysSo) {
    test::TempDir dir;
    std::ofstream(dir / "f") << "x";
    UniqueFd root(::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    auto f = open_beneath(root.get(), "f", O_RDONLY, 0, ResolveMethod::openat2);
    if (openat2_available()) {
        EXPECT_TRUE(f) << f.status().message();
    } else {
        ASSERT_FALSE(f);
        EXPECT_EQ(f.status().code(), ENOSYS);
    }
}

INSTANTIATE_TEST_SUITE_P(Methods, OpenBeneath, ::testing::ValuesIn(methods()),
                         [](const auto& info) {
                             switch (info.param) {
                                 case ResolveMethod::automatic: return std::string("automatic");
                                 case ResolveMethod::openat2: return std::string("openat2");
                                 case ResolveMethod::walk: return std::string("walk");
                             }
                             return std::string("unknown");
                         });

}  // namespace
}  // namespace icbd::repl
