// Data-path integration test: one private tgtd exporting bs_icbd LUNs over files
// on ext4 and on BTRFS (loop device), each with the default engine (io_uring),
// engine=aio and direct=1, driven by libiscsi. Every SCSI command the module
// executes is checked for its effect on the data (read back through iSCSI and,
// where it matters, in the backing file itself: holes, offsets).
#include <fcntl.h>
#include <sys/vfs.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>

#include "integration_test.hpp"
#include "iscsi_client.hpp"
#include "loop_fs.hpp"
#include "temp_dir.hpp"
#include "tgtd_instance.hpp"

namespace icbd::test {
namespace {

constexpr uint64_t kLunBytes = 64ull << 20;
constexpr uint32_t kBlock = 512;  // tgt's default logical block size
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint32_t kBlocksPerMiB = kMiB / kBlock;

struct Param {
    const char* fs;      // "ext4" or "btrfs"
    const char* bsopts;  // "" = defaults (io_uring)
    const char* name;
};
void PrintTo(const Param& p, std::ostream* os) { *os << p.fs << " bsopts \"" << p.bsopts << "\""; }

// Everything the tests of this program share: one tgtd, one BTRFS, and one LUN
// per (filesystem, bsopts). Built on first use, torn down by the environment
// below (before static destruction, in dependency order).
struct World {
    struct Lun {
        int tid;
        std::filesystem::path file;
        std::string creation_log;  // what tgtd logged while creating it
    };
    std::unique_ptr<TgtdInstance> tgtd;
    std::unique_ptr<TempDir> ext4_dir;
    std::unique_ptr<LoopFs> ext4_loop;  // only if neither /var/tmp nor /tmp is ext4
    std::unique_ptr<LoopFs> btrfs;
    std::map<std::string, Lun> luns;

    std::filesystem::path ext4_path() {
        if (!ext4_dir && !ext4_loop) {
            for (const char* d : {"/var/tmp", "/tmp"}) {
                struct statfs sf {};
                if (statfs(d, &sf) == 0 && sf.f_type == 0xEF53) {  // EXT4_SUPER_MAGIC
                    ext4_dir = std::make_unique<TempDir>(d, "icbd-blockio-");
                    break;
                }
            }
            if (!ext4_dir) ext4_loop = std::make_unique<LoopFs>(LoopFs::Type::ext4, 256 * kMiB);
        }
        return ext4_dir ? ext4_dir->path() : ext4_loop->mount_point();
    }

    const Lun& lun(const Param& p) {
        const std::string key = std::string(p.fs) + "|" + p.bsopts;
        if (auto it = luns.find(key); it != luns.end()) return it->second;
        if (!tgtd) tgtd = std::make_unique<TgtdInstance>();
        std::filesystem::path dir;
        if (std::string(p.fs) == "btrfs") {
            if (!btrfs) btrfs = std::make_unique<LoopFs>(LoopFs::Type::btrfs, 512 * kMiB);
            dir = btrfs->mount_point();
        } else {
            dir = ext4_path();
        }
        const int tid = static_cast<int>(luns.size()) + 1;
        auto file = dir / (std::string(p.name) + ".img");
        make_sparse_file(file, kLunBytes);
        std::string iqn = "iqn.2026-01.org.icbd.test:blockio-" + std::string(p.name);
        std::replace(iqn.begin(), iqn.end(), '_', '-');  // tgtd refuses '_' in IQNs
        tgtd->add_target(tid, iqn);
        // Thin provisioning: the LUN advertises UNMAP, so UNMAP and WRITE SAME
        // with the UNMAP bit deallocate.
        const size_t mark = tgtd->log().size();
        tgtd->add_lun({tid, 1, file, p.bsopts, "thin_provisioning=1"});
        return luns.emplace(key, Lun{tid, file, tgtd->log_since(mark)}).first->second;
    }
};
std::unique_ptr<World> g_world;

class WorldEnvironment : public ::testing::Environment {
public:
    void TearDown() override {
        if (!g_world) return;
        g_world->tgtd.reset();  // stop tgtd first: it holds the backing files
        g_world.reset();
    }
};
const auto* const g_env = ::testing::AddGlobalTestEnvironment(new WorldEnvironment);  // gtest owns it

class BlockIo : public ::testing::TestWithParam<Param> {
protected:
    void SetUp() override {
        ICBD_REQUIRE(TgtdInstance::unavailable());
        if (std::string(GetParam().fs) == "btrfs") ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
        if (!g_world) g_world = std::make_unique<World>();
        const World::Lun& l = g_world->lun(GetParam());
        file_ = l.file;
        creation_log_ = l.creation_log;
        client_ = std::make_unique<IscsiClient>(g_world->tgtd->url(l.tid, 1));
        ASSERT_EQ(client_->block_size(), kBlock);
    }
    void TearDown() override {
        client_.reset();
        if (HasFailure() && g_world && g_world->tgtd)
            std::cerr << "---- tgtd log (tail) ----\n" << g_world->tgtd->log_tail(30) << "\n";
    }

    // Writes `data` at `lba` in ≤1 MiB commands and asserts GOOD.
    void fill(uint64_t lba, const std::vector<uint8_t>& data) {
        for (size_t off = 0; off < data.size(); off += kMiB) {
            size_t n = std::min<size_t>(kMiB, data.size() - off);
            ScsiResult r = client_->write16(lba + off / kBlock, std::span(data).subspan(off, n));
            ASSERT_TRUE(r.good()) << r;
        }
    }
    std::vector<uint8_t> read_all(uint64_t lba, uint64_t blocks) {
        std::vector<uint8_t> out;
        for (uint64_t done = 0; done < blocks;) {
            uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(kBlocksPerMiB, blocks - done));
            ScsiResult r = client_->read16(lba + done, n);
            EXPECT_TRUE(r.good()) << r;
            if (!r.good()) return {};
            out.insert(out.end(), r.data.begin(), r.data.end());
            done += n;
        }
        return out;
    }

    std::filesystem::path file_;
    std::string creation_log_;
    std::unique_ptr<IscsiClient> client_;
};

// Which of tgtd's descriptors of the backing file bypass the page cache
// (O_DIRECT in /proc/PID/fdinfo), as "direct,buffered" counts.
std::string descriptor_modes(pid_t pid, const std::filesystem::path& file) {
    int direct = 0, buffered = 0;
    const std::string proc = "/proc/" + std::to_string(pid);
    for (const auto& e : std::filesystem::directory_iterator(proc + "/fd")) {
        std::error_code ec;
        if (std::filesystem::read_symlink(e.path(), ec) != file) continue;
        std::ifstream info(proc + "/fdinfo/" + e.path().filename().string());
        std::string key, flags;
        while (info >> key >> flags && key != "flags:") {}
        (std::stoul(flags, nullptr, 8) & O_DIRECT ? direct : buffered) += 1;
    }
    return std::to_string(direct) + "," + std::to_string(buffered);
}

// direct=auto (no direct= given) sends writes O_DIRECT on BTRFS only, through
// a second descriptor; direct=0 and direct=writes say so explicitly everywhere.
TEST_P(BlockIo, WritesBypassThePageCacheWhereTheModeSays) {
    const std::string o = GetParam().bsopts, fs = GetParam().fs;
    std::string want = "0,1";                                   // buffered
    if (o.find("direct=1") != std::string::npos) want = "1,0";  // everything direct
    else if (o.find("direct=writes") != std::string::npos ||
             (o.find("direct=") == std::string::npos && fs == "btrfs"))
        want = "1,1";  // cached reads, direct writes
    EXPECT_EQ(descriptor_modes(g_world->tgtd->pid(), file_), want) << "bsopts '" << o << "' on " << fs;
    EXPECT_EQ(creation_log_.find("writes go O_DIRECT (direct=auto") != std::string::npos,
              want == "1,1" && o.find("direct=writes") == std::string::npos)
        << creation_log_;
}

// Sizes from one block to 1 MiB, at LBAs aligned to 1 MiB, to 4 KiB and to
// nothing, through WRITE/READ(10) and (16); every result is checked against a
// model of the region, including the blocks right before and after each write
// (no stray bytes), and finally against the backing file itself.
TEST_P(BlockIo, WritesAndReadsAtManySizesAndAlignments) {
    // The parameter says which engine serves: without engine=aio it must be
    // io_uring on this host, i.e. no fallback line when the LUN was created.
    if (std::string(GetParam().bsopts).find("engine=aio") == std::string::npos) {
        EXPECT_EQ(creation_log_.find("io_uring unavailable"), std::string::npos)
            << "io_uring was expected to serve this LUN; tgtd said:\n"
            << creation_log_;
    }

    const uint64_t base = 0, region = 16 * kBlocksPerMiB;  // LBAs [0, 8 MiB)
    std::vector<uint8_t> model = pattern(region * kBlock, 1);
    ASSERT_NO_FATAL_FAILURE(fill(base, model));

    const uint32_t sizes[] = {512, 1024, 4096, 4608, 65536, 128 * 1024 + 512, 1024 * 1024};
    const uint64_t alignments[] = {0, 1, 7, 8, 4095};  // LBA offsets within a 1 MiB slot
    uint64_t seed = 100, slot = 0;
    for (uint32_t bytes : sizes) {
        for (uint64_t misalign : alignments) {
            const uint32_t n = bytes / kBlock;
            // Slots of 2 MiB, cycling through the region; slot 0 starts at LBA 1
            // so that there is always a block before the write to check.
            const uint64_t lba = base + 1 + (slot++ % 7) * 2 * kBlocksPerMiB + misalign;
            ASSERT_LE(lba + n + 1, base + region);
            auto data = pattern(bytes, ++seed);
            const bool use10 = (seed % 2) == 0;
            ScsiResult w = use10 ? client_->write10(static_cast<uint32_t>(lba), data) : client_->write16(lba, data);
            ASSERT_TRUE(w.good()) << w;
            std::copy(data.begin(), data.end(), model.begin() + static_cast<ptrdiff_t>((lba - base) * kBlock));

            ScsiResult r =
                use10 ? client_->read16(lba - 1, n + 2) : client_->read10(static_cast<uint32_t>(lba - 1), n + 2);
            ASSERT_TRUE(r.good()) << r;
            auto want = std::span(model).subspan((lba - 1 - base) * kBlock, (n + 2) * kBlock);
            ASSERT_TRUE(same_bytes(r.data, want))
                << bytes << " bytes at LBA " << lba << " (read back with guard blocks)";
        }
    }
    auto all = read_all(base, region);
    EXPECT_TRUE(same_bytes(all, model)) << "whole region through iSCSI";
    EXPECT_TRUE(same_bytes(read_backing(file_, base * kBlock, model.size()), model)) << "whole region in " << file_;
}

// FUA writes complete GOOD and the data is in the file when they do.
TEST_P(BlockIo, FuaWrites) {
    const uint64_t lba = 16 * kBlocksPerMiB;
    auto a = pattern(64 * 1024, 200), b = pattern(4096, 201);
    ScsiResult w16 = client_->write16(lba, a, /*fua=*/true);
    ASSERT_TRUE(w16.good()) << w16;
    ScsiResult w10 = client_->write10(static_cast<uint32_t>(lba + 200), b, /*fua=*/true);
    ASSERT_TRUE(w10.good()) << w10;
    EXPECT_TRUE(same_bytes(read_backing(file_, lba * kBlock, a.size()), a));
    EXPECT_TRUE(same_bytes(read_backing(file_, (lba + 200) * kBlock, b.size()), b));
    ScsiResult r = client_->read16(lba + 200, 8);
    ASSERT_TRUE(r.good()) << r;
    EXPECT_TRUE(same_bytes(r.data, b));
}

// SYNCHRONIZE CACHE(10) and (16), whole LUN and a range, after buffered writes.
TEST_P(BlockIo, SynchronizeCache) {
    const uint64_t lba = 17 * kBlocksPerMiB;
    auto a = pattern(256 * 1024, 300);
    ASSERT_TRUE(client_->write16(lba, a).good());
    ScsiResult s10 = client_->sync_cache10();
    EXPECT_TRUE(s10.good()) << s10;
    ScsiResult s16 = client_->sync_cache16();
    EXPECT_TRUE(s16.good()) << s16;
    ScsiResult s10r = client_->sync_cache10(static_cast<uint32_t>(lba), 512);
    EXPECT_TRUE(s10r.good()) << s10r;
    ScsiResult s16r = client_->sync_cache16(lba, 512);
    EXPECT_TRUE(s16r.good()) << s16r;
    EXPECT_TRUE(same_bytes(read_backing(file_, lba * kBlock, a.size()), a));
}

// UNMAP on a thin LUN: the blocks read as zeros, the file really has a hole
// there (SEEK_DATA, st_blocks), GET LBA STATUS says deallocated, and the blocks
// between the two descriptors are untouched. A range not aligned to the
// filesystem block still reads back as zeros.
TEST_P(BlockIo, UnmapPunchesHoles) {
    const uint64_t lba = 20 * kBlocksPerMiB, n = 4 * kBlocksPerMiB;  // [10 MiB, 14 MiB)
    auto data = pattern(n * kBlock, 400);
    ASSERT_NO_FATAL_FAILURE(fill(lba, data));
    ASSERT_TRUE(client_->sync_cache16().good());
    ASSERT_FALSE(is_hole(file_, lba * kBlock, n * kBlock)) << "written data not allocated in " << file_;
    const uint64_t allocated_before = allocated_bytes(file_);

    ScsiResult cap = client_->readcapacity16();
    ASSERT_TRUE(cap.good()) << cap;
    EXPECT_TRUE(IscsiClient::parse_capacity(cap).lbpme) << "thin provisioning not advertised (LBPME=0)";

    // Descriptors: first MiB, and the last two MiB.
    ScsiResult u = client_->unmap({{lba, kBlocksPerMiB}, {lba + 2 * kBlocksPerMiB, 2 * kBlocksPerMiB}});
    ASSERT_TRUE(u.good()) << u;

    auto got = read_all(lba, n);
    ASSERT_EQ(got.size(), data.size());
    std::vector<uint8_t> want = data;
    std::fill(want.begin(), want.begin() + kMiB, 0);
    std::fill(want.begin() + 2 * kMiB, want.end(), 0);
    EXPECT_TRUE(same_bytes(got, want)) << "after UNMAP";
    EXPECT_TRUE(is_hole(file_, lba * kBlock, kMiB)) << "UNMAP left data in the first range of " << file_;
    EXPECT_TRUE(is_hole(file_, (lba + 2 * kBlocksPerMiB) * kBlock, 2 * kMiB))
        << "UNMAP left data in the second range of " << file_;
    EXPECT_FALSE(is_hole(file_, (lba + kBlocksPerMiB) * kBlock, kMiB)) << "UNMAP deallocated the range between";
    // st_blocks also counts the filesystem's own extent-tree blocks, which a
    // punch in the middle of an extent may add (seen: one 4 KiB block on ext4).
    EXPECT_LE(allocated_bytes(file_) + 3 * kMiB, allocated_before + 64 * 1024)
        << "st_blocks did not drop by the 3 MiB unmapped";

    ScsiResult st = client_->get_lba_status(lba);
    ASSERT_TRUE(st.good()) << st;
    auto desc = IscsiClient::parse_lba_status(st);
    ASSERT_FALSE(desc.empty());
    EXPECT_EQ(desc[0].lba, lba);
    EXPECT_EQ(desc[0].provisioning, 1) << "GET LBA STATUS: first range not reported deallocated";
    EXPECT_GE(desc[0].blocks, kBlocksPerMiB);

    // Three blocks in the middle of the mapped MiB: not a whole filesystem block.
    const uint64_t odd = lba + kBlocksPerMiB + 9;
    ScsiResult u2 = client_->unmap({{odd, 3}});
    ASSERT_TRUE(u2.good()) << u2;
    ScsiResult r = client_->read16(odd - 1, 5);
    ASSERT_TRUE(r.good()) << r;
    std::vector<uint8_t> w2(5 * kBlock, 0);
    std::copy_n(data.begin() + static_cast<ptrdiff_t>((odd - 1 - lba) * kBlock), kBlock, w2.begin());
    std::copy_n(data.begin() + static_cast<ptrdiff_t>((odd + 3 - lba) * kBlock), kBlock, w2.begin() + 4 * kBlock);
    EXPECT_TRUE(same_bytes(r.data, w2)) << "unaligned UNMAP of 3 blocks at LBA " << odd;
}

// WRITE SAME: a pattern block repeated; with the UNMAP bit and zeros it
// deallocates (hole); with the UNMAP bit and non-zero data it must write.
TEST_P(BlockIo, WriteSame) {
    const uint64_t lba = 32 * kBlocksPerMiB;
    auto block = pattern(kBlock, 500);

    ScsiResult ws = client_->write_same16(lba, 300, block);
    ASSERT_TRUE(ws.good()) << ws;
    ScsiResult r = client_->read16(lba, 301);
    ASSERT_TRUE(r.good()) << r;
    for (uint32_t i = 0; i < 300; ++i)
        ASSERT_TRUE(same_bytes(std::span(r.data).subspan(i * kBlock, kBlock), block)) << "block " << i;
    EXPECT_TRUE(all_zero(std::span(r.data).subspan(300 * kBlock))) << "WRITE SAME wrote past its range";

    // UNMAP bit with zeros over 1 MiB of data: zeros and a hole.
    const uint64_t lba2 = lba + 2 * kBlocksPerMiB;
    ASSERT_NO_FATAL_FAILURE(fill(lba2, pattern(kMiB, 501)));
    ASSERT_TRUE(client_->sync_cache16().good());
    std::vector<uint8_t> zero(kBlock, 0);
    ScsiResult wsu = client_->write_same16(lba2, kBlocksPerMiB, zero, /*unmap=*/true);
    ASSERT_TRUE(wsu.good()) << wsu;
    EXPECT_TRUE(all_zero(read_all(lba2, kBlocksPerMiB)));
    EXPECT_TRUE(is_hole(file_, lba2 * kBlock, kMiB)) << "WRITE SAME with UNMAP and zeros did not deallocate";

    // UNMAP bit with a non-zero block: SBC lets the device server unmap instead
    // of writing, and initiators (libiscsi's WriteSame*.UnmapUntilEnd, tgt's
    // rdwr) expect exactly that: the blocks read as zeros (LBPRZ).
    const uint64_t lba3 = lba + 4 * kBlocksPerMiB;
    ASSERT_NO_FATAL_FAILURE(fill(lba3, pattern(kMiB, 503)));
    ScsiResult wsp = client_->write_same16(lba3, kBlocksPerMiB, block, /*unmap=*/true);
    ASSERT_TRUE(wsp.good()) << wsp;
    EXPECT_TRUE(all_zero(read_all(lba3, kBlocksPerMiB)));
    EXPECT_TRUE(is_hole(file_, lba3 * kBlock, kMiB)) << "WRITE SAME with UNMAP and data did not deallocate";

    // Zeros without the UNMAP bit: a write of zeros; the blocks stay allocated.
    const uint64_t lba4 = lba + 6 * kBlocksPerMiB;
    ASSERT_NO_FATAL_FAILURE(fill(lba4, pattern(kMiB, 502)));
    ScsiResult wsz = client_->write_same16(lba4, kBlocksPerMiB, zero, /*unmap=*/false);
    ASSERT_TRUE(wsz.good()) << wsz;
    ASSERT_TRUE(client_->sync_cache16().good());
    EXPECT_TRUE(all_zero(read_all(lba4, kBlocksPerMiB)));
    EXPECT_FALSE(is_hole(file_, lba4 * kBlock, kMiB)) << "WRITE SAME without UNMAP deallocated";

    // Longer than the module's 1 MiB work unit, with a ragged tail.
    const uint64_t lba5 = lba + 8 * kBlocksPerMiB + 1;
    const uint32_t n5 = 2 * kBlocksPerMiB + 7;
    auto block5 = pattern(kBlock, 503);
    ScsiResult wsl = client_->write_same16(lba5, n5, block5);
    ASSERT_TRUE(wsl.good()) << wsl;
    auto got = read_all(lba5 - 1, n5 + 2);
    ASSERT_EQ(got.size(), (n5 + 2) * kBlock);
    EXPECT_TRUE(all_zero(std::span(got).first(kBlock))) << "WRITE SAME wrote before its range";
    EXPECT_TRUE(all_zero(std::span(got).last(kBlock))) << "WRITE SAME wrote past its range";
    for (uint32_t i = 1; i <= n5; ++i)
        ASSERT_TRUE(same_bytes(std::span(got).subspan(i * kBlock, kBlock), block5)) << "block " << i - 1;
}

// COMPARE AND WRITE: a hit writes; a miss returns MISCOMPARE with the byte
// offset of the first difference in INFORMATION and leaves the data alone.
TEST_P(BlockIo, CompareAndWrite) {
    const uint64_t lba = 44 * kBlocksPerMiB + 3;
    auto old = pattern(2 * kBlock, 600), next = pattern(2 * kBlock, 601);
    ASSERT_TRUE(client_->write16(lba, old).good());

    ScsiResult hit = client_->compare_and_write(lba, old, next);
    ASSERT_TRUE(hit.good()) << hit;
    ScsiResult r = client_->read16(lba, 2);
    ASSERT_TRUE(r.good()) << r;
    EXPECT_TRUE(same_bytes(r.data, next)) << "after a COMPARE AND WRITE hit";

    for (uint32_t at : {700u, 0u, 2 * kBlock - 1}) {
        auto wrong = next;
        wrong[at] ^= 0x5a;
        ScsiResult miss = client_->compare_and_write(lba, wrong, pattern(2 * kBlock, 602 + at));
        EXPECT_TRUE(miss.check_condition(scsi::key::miscompare, scsi::asc::miscompare_during_verify)) << miss;
        EXPECT_TRUE(miss.info_valid) << "no INFORMATION in the sense data: " << miss;
        EXPECT_EQ(miss.info, at) << "INFORMATION must be the offset of the first differing byte";
        ScsiResult after = client_->read16(lba, 2);
        ASSERT_TRUE(after.good()) << after;
        EXPECT_TRUE(same_bytes(after.data, next)) << "a miscompare at byte " << at << " changed the data";
    }
}

// ORWRITE(16): the medium becomes old | new.
TEST_P(BlockIo, OrWrite) {
    const uint64_t lba = 45 * kBlocksPerMiB + 1;
    auto a = pattern(8 * kBlock, 700), b = pattern(8 * kBlock, 701);
    ASSERT_TRUE(client_->write16(lba, a).good());
    ScsiResult o = client_->orwrite16(lba, b);
    ASSERT_TRUE(o.good()) << o;
    std::vector<uint8_t> want(a.size());
    for (size_t i = 0; i < a.size(); ++i) want[i] = a[i] | b[i];
    ScsiResult r = client_->read16(lba, 8);
    ASSERT_TRUE(r.good()) << r;
    EXPECT_TRUE(same_bytes(r.data, want));
}

// WRITE AND VERIFY(16) with BYTCHK: GOOD, and the data is there.
TEST_P(BlockIo, WriteAndVerify) {
    const uint64_t lba = 46 * kBlocksPerMiB + 5;
    auto a = pattern(64 * kBlock, 800);
    ScsiResult w = client_->write_verify16(lba, a);
    ASSERT_TRUE(w.good()) << w;
    ScsiResult r = client_->read16(lba, 64);
    ASSERT_TRUE(r.good()) << r;
    EXPECT_TRUE(same_bytes(r.data, a));
    EXPECT_TRUE(same_bytes(read_backing(file_, lba * kBlock, a.size()), a));
}

// VERIFY(16) BYTCHK=1: match is GOOD, mismatch is MISCOMPARE at the byte offset;
// BYTCHK=0 (medium check only) is GOOD.
TEST_P(BlockIo, Verify) {
    const uint64_t lba = 47 * kBlocksPerMiB;
    auto a = pattern(16 * kBlock, 900);
    ASSERT_TRUE(client_->write16(lba, a).good());
    ScsiResult ok = client_->verify16(lba, 16, a);
    EXPECT_TRUE(ok.good()) << ok;
    auto b = a;
    b[1234] ^= 1;
    ScsiResult bad = client_->verify16(lba, 16, b);
    EXPECT_TRUE(bad.check_condition(scsi::key::miscompare, scsi::asc::miscompare_during_verify)) << bad;
    EXPECT_TRUE(bad.info_valid) << bad;
    EXPECT_EQ(bad.info, 1234u);
    ScsiResult medium = client_->verify16(lba, 16, {});
    EXPECT_TRUE(medium.good()) << medium;

    // Longer than the module's 1 MiB work unit: the offset counts from the
    // start of the command, not of the chunk.
    const uint64_t lba2 = lba + kBlocksPerMiB;
    auto big = pattern(3 * kMiB, 901);
    ASSERT_NO_FATAL_FAILURE(fill(lba2, big));
    ScsiResult bok = client_->verify16(lba2, 3 * kBlocksPerMiB, big);
    EXPECT_TRUE(bok.good()) << bok;
    const uint64_t at = 2 * kMiB + kMiB / 2 + 17;
    big[at] ^= 0x80;
    ScsiResult bbad = client_->verify16(lba2, 3 * kBlocksPerMiB, big);
    EXPECT_TRUE(bbad.check_condition(scsi::key::miscompare, scsi::asc::miscompare_during_verify)) << bbad;
    EXPECT_TRUE(bbad.info_valid) << bbad;
    EXPECT_EQ(bbad.info, at);
}

// PRE-FETCH(16): GOOD, or CONDITION MET (the range fits in the cache).
TEST_P(BlockIo, PreFetch) {
    const uint64_t lba = 48 * kBlocksPerMiB;
    ASSERT_TRUE(client_->write16(lba, pattern(128 * kBlock, 950)).good());
    ScsiResult p = client_->prefetch16(lba, 128);
    EXPECT_TRUE(p.status == scsi::good || p.status == 0x04) << p;
    ScsiResult r = client_->read16(lba, 128);
    ASSERT_TRUE(r.good()) << r;
    EXPECT_TRUE(same_bytes(r.data, pattern(128 * kBlock, 950)));
}

// Every command past the last LBA: ILLEGAL REQUEST, LBA OUT OF RANGE; nothing
// written, tgtd still fine.
TEST_P(BlockIo, OutOfRangeLbas) {
    const uint64_t end = kLunBytes / kBlock;
    ASSERT_EQ(client_->blocks(), end);
    auto one = pattern(kBlock, 1000), two = pattern(2 * kBlock, 1001);
    auto expect_oor = [](const ScsiResult& r) {
        EXPECT_TRUE(r.check_condition(scsi::key::illegal_request, scsi::asc::lba_out_of_range)) << r;
    };
    expect_oor(client_->read16(end, 1));
    expect_oor(client_->read16(end - 1, 2));
    expect_oor(client_->read16(1ull << 62, 1));
    expect_oor(client_->read10(static_cast<uint32_t>(end), 1));
    expect_oor(client_->write16(end, one));
    expect_oor(client_->write16(end - 1, two));
    expect_oor(client_->write10(static_cast<uint32_t>(end), one));
    expect_oor(client_->write_same16(end - 1, 2, one));
    expect_oor(client_->compare_and_write(end, one, one));
    expect_oor(client_->orwrite16(end, one));
    expect_oor(client_->write_verify16(end, one));
    expect_oor(client_->verify16(end, 1, one));
    expect_oor(client_->unmap({{end - 1, 2}}));
    expect_oor(client_->prefetch16(end, 1));
    // The last block itself is fine.
    ScsiResult w = client_->write16(end - 1, one);
    ASSERT_TRUE(w.good()) << w;
    ScsiResult r = client_->read16(end - 1, 1);
    ASSERT_TRUE(r.good()) << r;
    EXPECT_TRUE(same_bytes(r.data, one));
    EXPECT_EQ(std::filesystem::file_size(file_), kLunBytes) << "an out-of-range write grew the backing file";
}

// The other CDB sizes tgt's rdwr backend also executes: READ/WRITE(6) and (12),
// WRITE AND VERIFY(10)/(12), VERIFY(10)/(12), PRE-FETCH(10), WRITE SAME(10).
TEST_P(BlockIo, OtherCdbSizes) {
    auto be = [](uint8_t* p, uint64_t v, int n) {
        for (int i = n - 1; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
    };
    auto cdb10 = [&](uint8_t op, uint8_t b1, uint32_t lba, uint16_t n) {
        std::vector<uint8_t> c(10, 0);
        c[0] = op, c[1] = b1;
        be(&c[2], lba, 4);
        be(&c[7], n, 2);
        return c;
    };
    auto cdb12 = [&](uint8_t op, uint8_t b1, uint32_t lba, uint32_t n) {
        std::vector<uint8_t> c(12, 0);
        c[0] = op, c[1] = b1;
        be(&c[2], lba, 4);
        be(&c[6], n, 4);
        return c;
    };
    auto cdb6 = [&](uint8_t op, uint32_t lba, uint8_t n) {
        std::vector<uint8_t> c(6, 0);
        c[0] = op;
        be(&c[1], lba & 0x1fffff, 3);
        c[4] = n;
        return c;
    };
    const uint32_t lba = 50 * kBlocksPerMiB + 3;  // fits READ(6)'s 21 bits
    auto a = pattern(8 * kBlock, 1100), b = pattern(8 * kBlock, 1101), c = pattern(8 * kBlock, 1102);

    ScsiResult w6 = client_->raw(cdb6(0x0a, lba, 8), a, 0, "WRITE(6)");
    ASSERT_TRUE(w6.good()) << w6;
    ScsiResult r12 = client_->raw(cdb12(0xa8, 0, lba, 8), {}, 8 * kBlock, "READ(12)");
    ASSERT_TRUE(r12.good()) << r12;
    EXPECT_TRUE(same_bytes(r12.data, a)) << "WRITE(6) then READ(12)";

    ScsiResult w12 = client_->raw(cdb12(0xaa, 0x08, lba, 8), b, 0, "WRITE(12) FUA");
    ASSERT_TRUE(w12.good()) << w12;
    ScsiResult r6 = client_->raw(cdb6(0x08, lba, 8), {}, 8 * kBlock, "READ(6)");
    ASSERT_TRUE(r6.good()) << r6;
    EXPECT_TRUE(same_bytes(r6.data, b)) << "WRITE(12) then READ(6)";

    ScsiResult wv10 = client_->raw(cdb10(0x2e, 0x02, lba, 8), c, 0, "WRITE AND VERIFY(10)");
    ASSERT_TRUE(wv10.good()) << wv10;
    ScsiResult wv12 = client_->raw(cdb12(0xae, 0x02, lba + 8, 8), a, 0, "WRITE AND VERIFY(12)");
    ASSERT_TRUE(wv12.good()) << wv12;
    ScsiResult r = client_->read16(lba, 16);
    ASSERT_TRUE(r.good()) << r;
    EXPECT_TRUE(same_bytes(std::span(r.data).first(8 * kBlock), c)) << "WRITE AND VERIFY(10)";
    EXPECT_TRUE(same_bytes(std::span(r.data).last(8 * kBlock), a)) << "WRITE AND VERIFY(12)";

    ScsiResult v10 = client_->raw(cdb10(0x2f, 0x02, lba, 8), c, 0, "VERIFY(10) BYTCHK=1");
    EXPECT_TRUE(v10.good()) << v10;
    auto c2 = c;
    c2[3000] ^= 4;
    ScsiResult v10bad = client_->raw(cdb10(0x2f, 0x02, lba, 8), c2, 0, "VERIFY(10) BYTCHK=1, wrong data");
    EXPECT_TRUE(v10bad.check_condition(scsi::key::miscompare, scsi::asc::miscompare_during_verify)) << v10bad;
    EXPECT_EQ(v10bad.info, 3000u) << v10bad;
    ScsiResult v12 = client_->raw(cdb12(0xaf, 0x02, lba + 8, 8), a, 0, "VERIFY(12) BYTCHK=1");
    EXPECT_TRUE(v12.good()) << v12;

    ScsiResult p10 = client_->raw(cdb10(0x34, 0, lba, 16), {}, 0, "PRE-FETCH(10)");
    EXPECT_TRUE(p10.status == scsi::good || p10.status == 0x04) << p10;

    auto blk = pattern(kBlock, 1103);
    ScsiResult ws10 = client_->raw(cdb10(0x41, 0, lba + 16, 40), blk, 0, "WRITE SAME(10)");
    ASSERT_TRUE(ws10.good()) << ws10;
    ScsiResult rs = client_->read16(lba + 16, 40);
    ASSERT_TRUE(rs.good()) << rs;
    for (uint32_t i = 0; i < 40; ++i)
        EXPECT_TRUE(same_bytes(std::span(rs.data).subspan(i * kBlock, kBlock), blk)) << "WRITE SAME(10) block " << i;
}

INSTANTIATE_TEST_SUITE_P(Backends, BlockIo,
                         ::testing::Values(Param{"ext4", "", "ext4_default"}, Param{"ext4", "engine=aio", "ext4_aio"},
                                           Param{"ext4", "direct=1", "ext4_direct"},
                                           Param{"ext4", "direct=writes", "ext4_direct_writes"},
                                           Param{"btrfs", "", "btrfs_default"},
                                           Param{"btrfs", "engine=aio", "btrfs_aio"},
                                           Param{"btrfs", "direct=1", "btrfs_direct"},
                                           Param{"btrfs", "direct=writes", "btrfs_direct_writes"},
                                           Param{"btrfs", "direct=0", "btrfs_buffered"}),
                         [](const ::testing::TestParamInfo<Param>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace icbd::test
