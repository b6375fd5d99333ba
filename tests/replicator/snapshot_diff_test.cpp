// The snapshot diff on real filesystems: versions made the way an administrator
// makes them (writable snapshot, reflink copies, dd conv=notrunc, snapshot -r),
// the diff applied to a copy of the parent as a receiver would, and the result
// compared with the child file by file (sha256, attributes, holes).
#include "icbd/replicator/snapshot_diff.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <openssl/evp.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <map>
#include <set>

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

// ---- the receiver's side of the contract, as the test's ground truth ----------

void set_attrs(int parent_fd, const std::string& leaf, const EntryAttrs& a) {
    if (a.type != EntryType::symlink) {
        ASSERT_EQ(::fchmodat(parent_fd, leaf.c_str(), a.mode, 0), 0) << leaf << ": " << strerror(errno);
    }
    ASSERT_EQ(::fchownat(parent_fd, leaf.c_str(), a.uid, a.gid, AT_SYMLINK_NOFOLLOW), 0) << leaf;
    timespec ts[2] = {{0, UTIME_OMIT}, {a.mtime_sec, static_cast<long>(a.mtime_nsec)}};
    ASSERT_EQ(::utimensat(parent_fd, leaf.c_str(), ts, AT_SYMLINK_NOFOLLOW), 0) << leaf;
}

// Applies `d` (computed against the tree `target` holds) so that `target`
// becomes `child`, reading data from `child` with ChildFileReader.
void apply_diff(const SnapshotDiff& d, const fs::path& child, const fs::path& target, uint64_t* data_read = nullptr) {
    UniqueFd root(::open(target.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(root.valid());
    std::vector<const FileChange*> dirs;
    for (const FileChange& c : d.changes) {
        SCOPED_TRACE(c.path);
        auto pl = open_parent_beneath(root.get(), c.path);
        ASSERT_TRUE(pl) << pl.status().message();
        int pfd = pl->dir.get();
        const std::string& leaf = pl->leaf;
        if (c.kind == ChangeKind::deleted) {
            int flags = c.attrs.type == EntryType::directory ? AT_REMOVEDIR : 0;
            ASSERT_EQ(::unlinkat(pfd, leaf.c_str(), flags), 0) << strerror(errno);
            continue;
        }
        switch (c.attrs.type) {
            case EntryType::directory:
                if (c.kind == ChangeKind::added) {
                    ASSERT_EQ(::mkdirat(pfd, leaf.c_str(), 0700), 0);
                }
                dirs.push_back(&c);
                continue;
            case EntryType::symlink:
                if (c.kind == ChangeKind::modified) {
                    ASSERT_EQ(::unlinkat(pfd, leaf.c_str(), 0), 0);
                }
                ASSERT_EQ(::symlinkat(c.attrs.symlink_target.c_str(), pfd, leaf.c_str()), 0);
                break;
            case EntryType::regular: {
                int flags = O_WRONLY | O_NOFOLLOW | O_CLOEXEC | (c.kind == ChangeKind::added ? O_CREAT | O_EXCL : 0);
                UniqueFd f(::openat(pfd, leaf.c_str(), flags, 0600));
                ASSERT_TRUE(f.valid()) << strerror(errno);
                ASSERT_EQ(::ftruncate(f.get(), static_cast<off_t>(c.attrs.size)), 0);
                for (const auto& h : c.holes)
                    ASSERT_EQ(::fallocate(f.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                          static_cast<off_t>(h.offset), static_cast<off_t>(h.length)),
                              0);
                auto reader = ChildFileReader::open(child, c.path);
                ASSERT_TRUE(reader) << reader.status().message();
                Status s = reader->for_each_chunk(c.data, 1 * MiB, [&](uint64_t off, std::span<const uint8_t> b) {
                    if (::pwrite(f.get(), b.data(), b.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(b.size()))
                        return Status::from_errno(errno, "pwrite");
                    return Status::ok();
                });
                ASSERT_TRUE(s) << s.message();
                if (data_read) *data_read += reader->bytes_read();
                break;
            }
        }
        set_attrs(pfd, leaf, c.attrs);
    }
    // Directory times last, deepest first: applying children changed them.
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
        auto pl = open_parent_beneath(root.get(), (*it)->path);
        ASSERT_TRUE(pl);
        set_attrs(pl->dir.get(), pl->leaf, (*it)->attrs);
    }
}

std::string sha256_of(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
    std::vector<char> buf(1 * MiB);
    while (in) {
        in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
        EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
    }
    unsigned char md[32];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx.get(), md, &len);
    std::string hex;
    for (unsigned i = 0; i < len; ++i) {
        char b[3];
        snprintf(b, sizeof b, "%02x", md[i]);
        hex += b;
    }
    return hex;
}

// Data segments of a file (SEEK_DATA/SEEK_HOLE).
std::vector<ByteRange> data_of(const fs::path& p) {
    std::vector<ByteRange> out;
    UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st;
    ::fstat(fd.get(), &st);
    off_t off = 0;
    while (off < st.st_size) {
        off_t d = ::lseek(fd.get(), off, SEEK_DATA);
        if (d < 0) break;
        off_t h = ::lseek(fd.get(), d, SEEK_HOLE);
        out.push_back({uint64_t(d), uint64_t(h - d)});
        off = h;
    }
    return out;
}

bool covered(const ByteRange& r, const std::vector<ByteRange>& set) {
    for (const auto& s : set)
        if (s.offset <= r.offset && r.end() <= s.end()) return true;
    return false;
}

// Every entry of `want` exists in `got` with the same type, attributes and
// sha256; no extra entries; data of `got` only where `want` has data (holes
// stay holes).
void expect_same_tree(const fs::path& want, const fs::path& got) {
    std::map<std::string, fs::path> a, b;
    for (auto& e : fs::recursive_directory_iterator(want)) a[fs::relative(e.path(), want).string()] = e.path();
    for (auto& e : fs::recursive_directory_iterator(got)) b[fs::relative(e.path(), got).string()] = e.path();
    std::set<std::string> ka, kb;
    for (auto& [k, v] : a) ka.insert(k);
    for (auto& [k, v] : b) kb.insert(k);
    ASSERT_EQ(ka, kb) << "entries differ";
    for (auto& [k, p] : a) {
        SCOPED_TRACE(k);
        struct stat sa, sb;
        ASSERT_EQ(::lstat(p.c_str(), &sa), 0);
        ASSERT_EQ(::lstat(b[k].c_str(), &sb), 0);
        EXPECT_EQ(sa.st_mode, sb.st_mode);
        EXPECT_EQ(sa.st_uid, sb.st_uid);
        EXPECT_EQ(sa.st_gid, sb.st_gid);
        EXPECT_EQ(sa.st_mtim.tv_sec, sb.st_mtim.tv_sec);
        EXPECT_EQ(sa.st_mtim.tv_nsec, sb.st_mtim.tv_nsec);
        if (S_ISLNK(sa.st_mode)) {
            EXPECT_EQ(fs::read_symlink(p), fs::read_symlink(b[k]));
        }
        if (S_ISREG(sa.st_mode)) {
            EXPECT_EQ(sa.st_size, sb.st_size);
            EXPECT_EQ(sha256_of(p), sha256_of(b[k]));
            auto want_data = data_of(p);
            for (const auto& r : data_of(b[k])) {
                EXPECT_TRUE(covered(r, want_data)) << "data at " << r.offset << "+" << r.length
                                                   << " where the child has a hole";
            }
        }
    }
}

const FileChange* find(const SnapshotDiff& d, const std::string& path, ChangeKind kind) {
    for (const auto& c : d.changes)
        if (c.path == path && c.kind == kind) return &c;
    return nullptr;
}

uint64_t total(const std::vector<ByteRange>& r) {
    uint64_t n = 0;
    for (auto& x : r) n += x.length;
    return n;
}

struct ProcIo {
    uint64_t rchar = 0, read_bytes = 0;
    static ProcIo now() {
        ProcIo io;
        std::ifstream in("/proc/self/io");
        std::string key;
        uint64_t v;
        while (in >> key >> v) {
            if (key == "rchar:") io.rchar = v;
            if (key == "read_bytes:") io.read_bytes = v;
        }
        return io;
    }
};

void drop_caches() {
    ::sync();
    std::ofstream("/proc/sys/vm/drop_caches") << "3\n";
}

void clone_range(const fs::path& src, uint64_t src_off, const fs::path& dst, uint64_t dst_off, uint64_t len) {
    UniqueFd s(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
    UniqueFd d(::open(dst.c_str(), O_WRONLY | O_CLOEXEC));
    file_clone_range r{};
    r.src_fd = s.get();
    r.src_offset = src_off;
    r.src_length = len;
    r.dest_offset = dst_off;
    ASSERT_EQ(::ioctl(d.get(), FICLONERANGE, &r), 0) << strerror(errno);
}

// Two versions on one BTRFS filesystem, v1 and v2, differing in every way the
// diff must see. Built once for the whole suite (the 256 MiB file takes time).
class SnapshotDiffTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (LoopFs::unavailable(LoopFs::Type::btrfs) || LoopFs::unavailable(LoopFs::Type::ext4)) return;
        fs_ = std::make_unique<LoopFs>(LoopFs::Type::btrfs, 768 * MiB);
        LoopFs& b = *fs_;
        b.create_subvolume("work");
        std::string w = (b / "work").string();
        sh("cd " + w + R"(
            dd if=/dev/urandom of=big.raw bs=1M count=64 status=none
            dd if=/dev/urandom of=big.raw bs=1M seek=128 count=128 conv=notrunc status=none
            truncate -s 100M sparse.img
            dd if=/dev/urandom of=sparse.img bs=1M seek=10 count=1 conv=notrunc status=none
            dd if=/dev/urandom of=sparse.img bs=1M seek=50 count=1 conv=notrunc status=none
            echo 'memsize = "4096"' > vm.vmx
            mkdir -p dir/sub olddir/a/b dir2
            echo hello > dir/sub/file.txt; echo bye > dir/todelete.txt; echo x > olddir/a/b/c
            echo in-dir2 > dir2/f
            ln -s vm.vmx link
            dd if=/dev/urandom of=resize.bin bs=1M count=1 status=none
            dd if=/dev/urandom of=grow.bin bs=100K count=1 status=none
            dd if=/dev/urandom of=replaced.bin bs=1M count=2 status=none
            dd if=/dev/urandom of=moved.bin bs=1M count=4 status=none
            dd if=/dev/urandom of=holeme.bin bs=1M count=2 status=none
            echo mode > mode.txt; echo time > mtime.txt; echo file > typechg
            dd if=/dev/urandom of=moded.bin bs=64K count=1 status=none
            mkdir z; btrfs property set z compression zstd
            yes 'compressible line of an image config' | head -c 4M > z/compressed.bin
            sync
        )");
        b.snapshot_readonly("work", "v1");
        run_checked({"btrfs", "subvolume", "snapshot", (b / "v1").string(), (b / "work2").string()});
        std::string w2 = (b / "work2").string();
        sh("cd " + w2 + R"(
            cp --reflink=always big.raw big.raw.new && mv big.raw.new big.raw
            dd if=/dev/urandom of=big.raw bs=1M seek=10 count=1 conv=notrunc status=none
            dd if=/dev/urandom of=big.raw bs=4K seek=25600 count=1 conv=notrunc status=none
            dd if=/dev/urandom of=big.raw bs=1M seek=200 count=2 conv=notrunc status=none
            fallocate -p -o 10M -l 1M sparse.img
            truncate -s 120M sparse.img
            truncate -s 300K resize.bin
            head -c 100K /dev/urandom >> grow.bin
            dd if=replaced.bin of=replaced.tmp bs=64K status=none && mv replaced.tmp replaced.bin
            fallocate -p -o 512K -l 512K holeme.bin
            chmod 600 mode.txt
            chmod 640 moded.bin
            touch -d '2020-01-02 03:04:05.123456789' mtime.txt
            rm link && ln -s dir/sub/file.txt link
            rm dir/todelete.txt && rm -r olddir
            echo new > dir/sub/new.txt
            truncate -s 50M newsparse.img
            dd if=/dev/urandom of=newsparse.img bs=4K seek=5120 count=1 conv=notrunc status=none
            rm typechg && mkdir typechg && echo inside > typechg/f
            rm -r dir2 && echo now-a-file > dir2
            dd if=/dev/urandom of=z/compressed.bin bs=128K seek=8 count=1 conv=notrunc status=none
            sync
        )");
        // moved.bin: its first MiB cloned to offset 2 MiB, and 1 MiB of
        // big.raw cloned in at 1 MiB: same physical data, other offsets.
        clone_range(b / "work2/moved.bin", 0, b / "work2/moved.bin", 2 * MiB, 1 * MiB);
        clone_range(b / "work2/big.raw", 0, b / "work2/moved.bin", 1 * MiB, 1 * MiB);
        sh("sync");
        b.snapshot_readonly("work2", "v2");
        // v3 for catch-up: a replica still at v1 gets v1 -> v3 in one diff.
        run_checked({"btrfs", "subvolume", "snapshot", (b / "v2").string(), (b / "work3").string()});
        sh("cd " + (b / "work3").string() + R"(
            dd if=/dev/urandom of=big.raw bs=1M seek=50 count=1 conv=notrunc status=none
            dd if=/dev/urandom of=big.raw bs=1M seek=10 count=1 conv=notrunc status=none
            rm -r typechg && echo back > typechg
            echo small > vm.vmx
            sync
        )");
        b.snapshot_readonly("work3", "v3");
    }
    static void TearDownTestSuite() { fs_.reset(); }

    void SetUp() override {
        ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
        ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
        ASSERT_TRUE(fs_);
    }

    fs::path v1() const { return *fs_ / "v1"; }
    fs::path v2() const { return *fs_ / "v2"; }

    // A plain (non-reflinked) copy of `src` at `dst`, holes kept.
    static void copy_tree(const fs::path& src, const fs::path& dst) {
        run_checked({"cp", "-a", "--reflink=never", "--sparse=always", src.string(), dst.string()}, {},
                    std::chrono::seconds(120));
    }

    static inline std::unique_ptr<LoopFs> fs_;
};

TEST_F(SnapshotDiffTest, IncrementalOnBtrfsMatchesTheChildWhenApplied) {
    auto d = diff_versions(v1(), v2());
    ASSERT_TRUE(d) << d.status().message();
    EXPECT_EQ(d->method, DiffMethod::fiemap);
    EXPECT_EQ(d->stats.bytes_hashed, 0u);
    EXPECT_GT(d->stats.files_compared, 10u);

    fs::path target = *fs_ / "apply";
    copy_tree(v1(), target);
    uint64_t read = 0;
    apply_diff(*d, v2(), target, &read);
    expect_same_tree(v2(), target);
    EXPECT_EQ(read, d->stats.data_bytes);  // each range read once, nothing else
    fs::remove_all(target);
}

TEST_F(SnapshotDiffTest, CatchUpOverASkippedVersionInOneDiff) {
    auto d = diff_versions(v1(), *fs_ / "v3");
    ASSERT_TRUE(d) << d.status().message();
    EXPECT_EQ(d->method, DiffMethod::fiemap);
    const FileChange* big = find(*d, "big.raw", ChangeKind::modified);
    ASSERT_TRUE(big);
    std::vector<ByteRange> want = {{10 * MiB, 1 * MiB}, {50 * MiB, 1 * MiB}, {100 * MiB, 4096}, {200 * MiB, 2 * MiB}};
    EXPECT_EQ(big->data, want);
    EXPECT_TRUE(find(*d, "typechg", ChangeKind::modified));  // a file again: content and times
    fs::path target = *fs_ / "apply-v3";
    copy_tree(v1(), target);
    apply_diff(*d, *fs_ / "v3", target);
    expect_same_tree(*fs_ / "v3", target);
    fs::remove_all(target);
}

TEST_F(SnapshotDiffTest, SendsOnlyTheChangedExtents) {
    auto d = diff_versions(v1(), v2());
    ASSERT_TRUE(d) << d.status().message();

    // big.raw is a reflink copy with 3 MiB + 4 KiB rewritten in place: exactly
    // those ranges, whatever the 256 MiB size.
    const FileChange* big = find(*d, "big.raw", ChangeKind::modified);
    ASSERT_TRUE(big);
    std::vector<ByteRange> want = {{10 * MiB, 1 * MiB}, {100 * MiB, 4096}, {200 * MiB, 2 * MiB}};
    EXPECT_EQ(big->data, want);
    EXPECT_TRUE(big->holes.empty());

    // A hole punched where v1 had data is a hole to punch, not data to send.
    const FileChange* sparse = find(*d, "sparse.img", ChangeKind::modified);
    ASSERT_TRUE(sparse);
    EXPECT_EQ(sparse->holes, (std::vector<ByteRange>{{10 * MiB, 1 * MiB}}));
    EXPECT_TRUE(sparse->data.empty());
    EXPECT_EQ(sparse->attrs.size, 120 * MiB);
    EXPECT_TRUE(sparse->changed & kChangedSize);
    const FileChange* holeme = find(*d, "holeme.bin", ChangeKind::modified);
    ASSERT_TRUE(holeme);
    EXPECT_EQ(holeme->holes, (std::vector<ByteRange>{{512 * 1024, 512 * 1024}}));

    // Same bytes in new extents: sent in full (correct, if not minimal).
    const FileChange* replaced = find(*d, "replaced.bin", ChangeKind::modified);
    ASSERT_TRUE(replaced);
    EXPECT_EQ(replaced->data, (std::vector<ByteRange>{{0, 2 * MiB}}));

    // Extents that moved to another offset are changed data there.
    const FileChange* moved = find(*d, "moved.bin", ChangeKind::modified);
    ASSERT_TRUE(moved);
    EXPECT_EQ(moved->data, (std::vector<ByteRange>{{1 * MiB, 2 * MiB}}));

    // A compressed file with one 128 KiB block rewritten: not the whole file.
    auto frag = run_checked({"filefrag", "-v", (v2() / "z/compressed.bin").string()});
    EXPECT_NE(frag.output.find("encoded"), std::string::npos) << "not compressed? " << frag.output;
    const FileChange* z = find(*d, "z/compressed.bin", ChangeKind::modified);
    ASSERT_TRUE(z);
    EXPECT_GE(total(z->data), 128u * 1024);
    EXPECT_LE(total(z->data), 512u * 1024);

    // An added sparse file: only its data, the rest is a hole.
    const FileChange* ns = find(*d, "newsparse.img", ChangeKind::added);
    ASSERT_TRUE(ns);
    EXPECT_EQ(ns->data, (std::vector<ByteRange>{{20 * MiB, 4096}}));

    const FileChange* mode = find(*d, "mode.txt", ChangeKind::modified);
    ASSERT_TRUE(mode);
    EXPECT_EQ(mode->changed & kChangedMode, kChangedMode);
    // A mode change of a file with real extents sends no data. (A small file
    // kept inline in metadata is resent whole when its inode changed: a few bytes.)
    const FileChange* moded = find(*d, "moded.bin", ChangeKind::modified);
    ASSERT_TRUE(moded);
    EXPECT_EQ(moded->changed, kChangedMode);
    EXPECT_TRUE(moded->data.empty());
    const FileChange* mt = find(*d, "mtime.txt", ChangeKind::modified);
    ASSERT_TRUE(mt);
    EXPECT_TRUE(mt->changed & kChangedMtime);
    EXPECT_EQ(mt->attrs.mtime_sec, 1577934245);
    const FileChange* link = find(*d, "link", ChangeKind::modified);
    ASSERT_TRUE(link);
    EXPECT_EQ(link->attrs.symlink_target, "dir/sub/file.txt");
    EXPECT_TRUE(find(*d, "dir/todelete.txt", ChangeKind::deleted));
    EXPECT_TRUE(find(*d, "olddir/a/b/c", ChangeKind::deleted));
    EXPECT_TRUE(find(*d, "typechg", ChangeKind::deleted) && find(*d, "typechg", ChangeKind::added));
    EXPECT_FALSE(find(*d, "vm.vmx", ChangeKind::modified));  // untouched files are not listed
    EXPECT_FALSE(find(*d, "dir/sub/file.txt", ChangeKind::modified));

    // Everything to send is a few MiB out of > 400 MiB of files.
    EXPECT_LT(d->stats.data_bytes, 12 * MiB) << d->stats.data_bytes;
}

TEST_F(SnapshotDiffTest, OrderIsDeletionsDeepestFirstThenAscending) {
    auto d = diff_versions(v1(), v2());
    ASSERT_TRUE(d);
    size_t i = 0;
    for (; i < d->changes.size() && d->changes[i].kind == ChangeKind::deleted; ++i) {
        if (i) {
            EXPECT_GT(d->changes[i - 1].path, d->changes[i].path);
        }
    }
    for (size_t j = i; j < d->changes.size(); ++j) {
        EXPECT_NE(d->changes[j].kind, ChangeKind::deleted) << d->changes[j].path;
        if (j > i) {
            EXPECT_LT(d->changes[j - 1].path, d->changes[j].path);
        }
    }
    auto again = diff_versions(v1(), v2());
    ASSERT_TRUE(again);
    EXPECT_EQ(d->changes, again->changes);  // deterministic
}

TEST_F(SnapshotDiffTest, ReadsNoFileDataOnBtrfs) {
    drop_caches();
    ProcIo before = ProcIo::now();
    auto d = diff_versions(v1(), v2());
    ProcIo after = ProcIo::now();
    ASSERT_TRUE(d) << d.status().message();
    std::cout << "diff v1 -> v2: " << d->stats.data_bytes << " bytes to send, read_bytes "
              << after.read_bytes - before.read_bytes << ", rchar " << after.rchar - before.rchar << "\n";
    // Only metadata (directories, inodes, extent items) is read: far below the
    // 3 MiB changed in big.raw alone, let alone the 400+ MiB of file data.
    EXPECT_LT(after.read_bytes - before.read_bytes, 2 * MiB)
        << "read_bytes " << after.read_bytes - before.read_bytes;
    EXPECT_LT(after.rchar - before.rchar, 64 * 1024) << "rchar " << after.rchar - before.rchar;
}

TEST_F(SnapshotDiffTest, FullCopyRebuildsTheVersionSparse) {
    auto d = diff_versions(std::nullopt, v2());
    ASSERT_TRUE(d) << d.status().message();
    EXPECT_EQ(d->method, DiffMethod::full);
    for (const auto& c : d->changes) EXPECT_EQ(c.kind, ChangeKind::added) << c.path;
    const FileChange* big = find(*d, "big.raw", ChangeKind::added);
    ASSERT_TRUE(big);
    // The 64 MiB hole of big.raw (but for the 4 KiB written into it) is not data.
    EXPECT_LT(total(big->data), 200 * MiB);

    fs::path target = *fs_ / "full";
    ASSERT_EQ(::mkdir(target.c_str(), 0755), 0);
    apply_diff(*d, v2(), target);
    struct stat st;
    ASSERT_EQ(::stat(v2().c_str(), &st), 0);
    timespec ts[2] = {{0, UTIME_OMIT}, st.st_mtim};
    ASSERT_EQ(::chmod(target.c_str(), st.st_mode & 07777), 0);
    ASSERT_EQ(::utimensat(AT_FDCWD, target.c_str(), ts, 0), 0);
    expect_same_tree(v2(), target);
    fs::remove_all(target);
}

// The same two versions on ext4: no extent metadata to trust, block hashes
// instead; applying the diff gives the same tree, and the same entries change.
TEST_F(SnapshotDiffTest, HashFallbackOnExt4GivesTheSameResult) {
    LoopFs ext(LoopFs::Type::ext4, 1024 * MiB);
    copy_tree(v1(), ext / "v1");
    copy_tree(v2(), ext / "v2");
    auto h = diff_versions(ext / "v1", ext / "v2");
    ASSERT_TRUE(h) << h.status().message();
    EXPECT_EQ(h->method, DiffMethod::hash);
    EXPECT_GT(h->stats.bytes_hashed, 0u);

    copy_tree(ext / "v1", ext / "apply");
    apply_diff(*h, ext / "v2", ext / "apply");
    expect_same_tree(ext / "v2", ext / "apply");

    auto f = diff_versions(v1(), v2());
    ASSERT_TRUE(f);
    std::set<std::pair<std::string, int>> hk, fk;
    for (auto& c : h->changes) hk.insert({c.path, int(c.kind)});
    for (auto& c : f->changes) fk.insert({c.path, int(c.kind)});
    EXPECT_EQ(hk, fk);
    const FileChange* big = find(*h, "big.raw", ChangeKind::modified);
    ASSERT_TRUE(big);
    // The same three changes (64 KiB blocks, cut to where the file has data).
    EXPECT_EQ(big->data,
              (std::vector<ByteRange>{{10 * MiB, 1 * MiB}, {100 * MiB, 4096}, {200 * MiB, 2 * MiB}}));
}

TEST_F(SnapshotDiffTest, HashMethodCanBeForcedOnBtrfs) {
    DiffOptions o;
    o.method = DiffMethod::hash;
    auto d = diff_versions(v1(), v2(), o);
    ASSERT_TRUE(d) << d.status().message();
    EXPECT_EQ(d->method, DiffMethod::hash);
    fs::path target = *fs_ / "apply-hash";
    copy_tree(v1(), target);
    apply_diff(*d, v2(), target);
    expect_same_tree(v2(), target);
    fs::remove_all(target);
}

TEST_F(SnapshotDiffTest, FiemapAcrossFilesystemsIsRefused) {
    test::TempDir other;
    DiffOptions o;
    o.method = DiffMethod::fiemap;
    auto d = diff_versions(other.path(), v2(), o);
    ASSERT_FALSE(d);
    EXPECT_EQ(d.status().code(), EINVAL);
}

TEST(SnapshotDiffErrors, SpecialFilesAreRefusedByName) {
    test::TempDir dir;
    ASSERT_EQ(::mkfifo((dir / "pipe").c_str(), 0600), 0);
    auto d = diff_versions(std::nullopt, dir.path());
    ASSERT_FALSE(d);
    EXPECT_EQ(d.status().code(), ENOTSUP);
    EXPECT_NE(d.status().message().find("pipe"), std::string::npos) << d.status().message();
}

TEST(SnapshotDiffErrors, MissingVersionIsNamed) {
    auto d = diff_versions(std::nullopt, "/nonexistent/icbd/version");
    ASSERT_FALSE(d);
    EXPECT_EQ(d.status().code(), ENOENT);
    EXPECT_NE(d.status().message().find("/nonexistent/icbd/version"), std::string::npos);
}

TEST(ChildFileReaderTest, ReadsEachRangeOnceInChunks) {
    test::TempDir dir;
    {
        std::ofstream f(dir / "f", std::ios::binary);
        for (int i = 0; i < 100000; ++i) f.put(static_cast<char>(i * 7));
    }
    auto r = ChildFileReader::open(dir.path(), "f");
    ASSERT_TRUE(r) << r.status().message();
    std::vector<ByteRange> ranges = {{10, 5000}, {60000, 40000}};
    std::vector<std::pair<uint64_t, size_t>> seen;
    Status s = r->for_each_chunk(ranges, 4096, [&](uint64_t off, std::span<const uint8_t> b) {
        for (size_t i = 0; i < b.size(); ++i)
            if (b[i] != static_cast<uint8_t>((off + i) * 7)) return Status::error(EIO, "wrong byte");
        seen.push_back({off, b.size()});
        return Status::ok();
    });
    ASSERT_TRUE(s) << s.message();
    EXPECT_EQ(r->bytes_read(), 45000u);
    EXPECT_EQ(seen.front(), (std::pair<uint64_t, size_t>{10, 4096}));
    EXPECT_EQ(seen.back().first + seen.back().second, 100000u);
    // Past EOF: the version changed under the sender.
    std::vector<ByteRange> beyond = {{99000, 2000}};
    s = r->for_each_chunk(beyond, 4096, [](uint64_t, std::span<const uint8_t>) { return Status::ok(); });
    EXPECT_EQ(s.code(), EIO);
    // A symlink is never followed.
    fs::create_symlink("/etc/passwd", dir / "l");
    auto l = ChildFileReader::open(dir.path(), "l");
    EXPECT_FALSE(l);
}

}  // namespace
}  // namespace icbd::repl
