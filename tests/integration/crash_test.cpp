// crash_test: kill -9 tgtd in the middle of a write load, restart it over the
// same backing file, and check the durability contract of the module:
//   every write acknowledged with FUA, or acknowledged before a SYNCHRONIZE
//   CACHE that then completed, reads back (that write, or a later write to the
//   same block), and no block holds data that was never written.
// The writer keeps ~24 writes in flight through libiscsi's asynchronous API;
// each 512-byte sector of a write carries (magic, LBA, write number, payload,
// checksum), so every sector read back is identified exactly or shown to be
// garbage. Several short iterations per run, with a random kill moment; the
// seed is printed (set ICBD_CRASH_SEED to replay one).
// kill -9 alone leaves the page cache intact, so the "power cut" modes also
// drop everything the filesystem had not written yet: the backing files live
// on an ext4 loop filesystem that is shut down without flushing (the xfstests
// "godown" way) right after the kill, then mounted again (journal replay).
// Those modes run 50 iterations (20 for direct=1, direct=writes and
// engine=aio); kill9_btrfs puts the file on a BTRFS loop filesystem, where
// LUNs write O_DIRECT by default (BTRFS has no shutdown ioctl to cut power
// with). ICBD_CRASH_ITERATIONS sets another count (scripts/crash-soak.sh runs
// 1000). Every iteration must see a SYNCHRONIZE CACHE complete and the check
// must find blocks that only a SYNC made durable: a load whose SYNCs stopped
// (FUA alone would keep the contract) proves nothing about SYNC.
// The control (integration.crash_test.durability_control, docs/testing.md)
// runs a power-cut mode against a module built with SYNCHRONIZE CACHE and FUA
// as no-ops and passes only when this test reports a lost durable write.
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>

#include "integration_test.hpp"
#include "iscsi_client.hpp"
#include "loop_fs.hpp"
#include "temp_dir.hpp"
#include "tgtd_instance.hpp"

namespace icbd::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kSector = 512;
constexpr uint32_t kUnit = 4096;  // the block the model tracks: 8 sectors
constexpr uint32_t kSectorsPerUnit = kUnit / kSector;
constexpr uint64_t kUnits = 2048;  // working set: 8 MiB, so blocks get rewritten often
constexpr uint64_t kLunBytes = 64ull << 20;
constexpr unsigned kDepth = 24;
constexpr uint64_t kMagic = 0x4843525344424349ull;  // "ICBDSRCH"

uint64_t fnv1a(const uint8_t* p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}
void put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint64_t get64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

// One sector of write `seq` at `lba`: header, payload from (lba, seq), checksum.
void make_sector(uint8_t* s, uint64_t lba, uint64_t seq) {
    put64(s, kMagic);
    put64(s + 8, lba);
    put64(s + 16, seq);
    uint64_t x = lba * 0x9e3779b97f4a7c15ull ^ seq * 0xc2b2ae3d27d4eb4full;
    for (size_t o = 24; o < 504; o += 8) {
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 29;
        put64(s + o, x);
    }
    put64(s + 504, fnv1a(s, 504));
}

// What a sector read back holds: 0 = never written (the initial content:
// zeros, or on an overlay LUN the golden file's sector, which is "write #0"),
// the write number, or nullopt for anything that is not a sector we wrote at
// this LBA.
std::optional<uint64_t> identify(const uint8_t* s, uint64_t lba, bool zeros_initial) {
    if (all_zero({s, kSector})) return zeros_initial ? std::optional<uint64_t>(0) : std::nullopt;
    if (get64(s) != kMagic || get64(s + 8) != lba || get64(s + 504) != fnv1a(s, 504)) return std::nullopt;
    const uint64_t seq = get64(s + 16);
    uint8_t expect[kSector];
    make_sector(expect, lba, seq);
    if (std::memcmp(expect, s, kSector) != 0) return std::nullopt;
    return seq;
}

// The writer and its model of what may be on the disk.
class CrashWriter {
public:
    // `zeros_initial`: a never-written block reads as zeros (else as write #0).
    CrashWriter(uint64_t seed, bool zeros_initial) : rng_(seed), units_(kUnits), zeros_initial_(zeros_initial) {}

    struct Stats {
        uint64_t issued = 0, acked = 0, acked_fua = 0, syncs_done = 0, durable_writes = 0;
        uint64_t synced_writes = 0;  // of durable_writes: made durable by a SYNCHRONIZE CACHE
    };

    // Writes until `kill_at`, then calls kill() and processes what tgtd had
    // already answered; returns when the session is gone.
    void run(IscsiClient& c, Clock::time_point kill_at, const std::function<void()>& kill) {
        // A fresh session: no SYNC of it is in flight yet, and callbacks of an
        // earlier session (one libiscsi cancels late) change nothing.
        ++session_;
        sync_in_flight_ = false;
        since_sync_ = 0;
        const uint64_t syncs_before = stats_.syncs_done;
        // The kill waits for this session's first completed SYNCHRONIZE CACHE
        // (a slow start, such as aio on a fresh filesystem, may take longer
        // than kill_at): every crash has writes only a SYNC made durable.
        const auto latest_kill = kill_at + 10s;
        bool killed = false;
        Clock::time_point give_up;
        for (;;) {
            const auto now = Clock::now();
            if (!killed && now >= kill_at && (stats_.syncs_done > syncs_before || now >= latest_kill)) {
                kill();
                killed = true;
                give_up = now + 5s;
            }
            while (!killed && c.in_flight() < kDepth && submit(c)) {
            }
            if (!c.service(10ms)) break;  // connection gone: tgtd is dead
            if (killed && (c.in_flight() == 0 || now > give_up)) break;
        }
        // Whatever is still in flight was cut off by the crash: not acknowledged.
        busy_.clear();
        // Acknowledged writes no SYNCHRONIZE CACHE covered before the crash are
        // on the disk or not, for good: a sync after the restart does not make
        // them durable (regression: with a power cut, the checker called such
        // lost writes "durable" once the next iteration synced).
        acked_.clear();
        synced_ = 0;
        sync_in_flight_ = false;
        since_sync_ = 0;
        syncs_last_run_ = stats_.syncs_done - syncs_before;
    }

    // SYNCHRONIZE CACHE commands that completed GOOD in the last run().
    uint64_t syncs_last_run() const { return syncs_last_run_; }

    // Checks the working set as read back after the restart; returns the
    // failures (empty = the contract held) and fills the counters.
    // `sync_checked`: sectors whose newest durable write a SYNC (not FUA) made durable.
    std::vector<std::string> verify(const std::vector<uint8_t>& disk, uint64_t* torn_units, uint64_t* volatile_lost,
                                    uint64_t* sync_checked = nullptr) {
        std::vector<std::string> failures;
        *torn_units = *volatile_lost = 0;
        if (sync_checked) *sync_checked = 0;
        for (uint64_t u = 0; u < kUnits; ++u) {
            const Unit& m = units_[u];
            std::set<uint64_t> seen;
            for (uint32_t s = 0; s < kSectorsPerUnit; ++s) {
                const uint64_t lba = u * kSectorsPerUnit + s;
                auto seq = identify(&disk[lba * kSector], lba, zeros_initial_);
                std::ostringstream where;
                where << "LBA " << lba << " (block " << u << ", sector " << s << ")";
                if (!seq) {
                    failures.push_back(where.str() +
                                       ": holds data that was never written (bad header/checksum/payload)");
                    continue;
                }
                if (*seq != 0 && !m.issued.count(*seq)) {
                    failures.push_back(where.str() + ": holds write #" + std::to_string(*seq) +
                                       ", which was never sent to this block");
                    continue;
                }
                if (*seq < m.durable) {
                    failures.push_back(where.str() + ": LOST DURABLE WRITE: holds " +
                                       (*seq ? "write #" + std::to_string(*seq) : std::string("its initial content")) +
                                       ", but write #" + std::to_string(m.durable) + " was acknowledged durable (" +
                                       m.durable_how + ")");
                }
                if (*seq < m.acked) ++*volatile_lost;
                if (sync_checked && m.durable && m.durable_how == kBySync) ++*sync_checked;
                seen.insert(*seq);
            }
            if (seen.size() > 1) ++*torn_units;
        }
        return failures;
    }

    const Stats& stats() const { return stats_; }
    // A block with a durable write on it, for the checker's self-test.
    std::optional<uint64_t> some_durable_unit() const {
        for (uint64_t u = 0; u < kUnits; ++u)
            if (units_[u].durable) return u;
        return std::nullopt;
    }

private:
    struct Unit {
        std::set<uint64_t> issued;  // every write number ever sent here
        uint64_t durable = 0;       // newest write acknowledged durable
        uint64_t acked = 0;         // newest write acknowledged at all
        std::string durable_how;
    };
    struct Acked {
        uint64_t seq, first_unit, units;
    };

    bool submit(IscsiClient& c) {
        // Now and then a SYNCHRONIZE CACHE: it makes every write acknowledged
        // before it was sent durable once it completes.
        if (!sync_in_flight_ && ++since_sync_ >= 40) {
            since_sync_ = 0;
            sync_in_flight_ = true;
            const size_t covers = acked_.size();
            const uint64_t session = session_;
            return c.async_sync_cache16([this, covers, session](const ScsiResult& r) {
                if (session != session_) return;  // an earlier session's, cancelled late
                sync_in_flight_ = false;
                if (r.transport_failed()) return;  // cut off by the crash
                EXPECT_TRUE(r.good()) << r;
                if (!r.good()) return;
                ++stats_.syncs_done;
                for (size_t i = synced_; i < covers; ++i) {
                    mark_durable(acked_[i], kBySync);
                    ++stats_.synced_writes;
                }
                synced_ = std::max(synced_, covers);
            });
        }
        // A write of 1, 2 or 4 blocks where nothing is in flight: two writes to
        // one block in flight at once could land in either order.
        const uint64_t n = uint64_t(1) << (rng_() % 3);
        uint64_t first = 0;
        bool found = false;
        for (int tries = 0; tries < 16 && !found; ++tries) {
            first = rng_() % (kUnits - n + 1);
            found = true;
            for (uint64_t u = first; u < first + n; ++u)
                if (busy_.count(u)) found = false;
        }
        if (!found) return false;
        const uint64_t seq = ++next_seq_;
        const bool fua = rng_() % 5 == 0;
        std::vector<uint8_t> data(n * kUnit);
        for (uint64_t s = 0; s < n * kSectorsPerUnit; ++s)
            make_sector(&data[s * kSector], first * kSectorsPerUnit + s, seq);
        for (uint64_t u = first; u < first + n; ++u) {
            units_[u].issued.insert(seq);
            busy_.insert(u);
        }
        const uint64_t session = session_;
        if (!c.async_write16(first * kSectorsPerUnit, std::move(data), fua, [=, this](const ScsiResult& r) {
                if (session == session_) on_write_done(r, seq, first, n, fua);
            })) {
            for (uint64_t u = first; u < first + n; ++u) {
                units_[u].issued.erase(seq);
                busy_.erase(u);
            }
            return false;
        }
        ++stats_.issued;
        return true;
    }

    void on_write_done(const ScsiResult& r, uint64_t seq, uint64_t first, uint64_t n, bool fua) {
        for (uint64_t u = first; u < first + n; ++u) busy_.erase(u);
        if (r.transport_failed()) return;  // cut off by the crash: never acknowledged
        EXPECT_TRUE(r.good()) << "a write failed while tgtd was running: " << r;
        if (!r.good()) return;
        ++stats_.acked;
        for (uint64_t u = first; u < first + n; ++u) units_[u].acked = std::max(units_[u].acked, seq);
        if (fua) {
            ++stats_.acked_fua;
            mark_durable({seq, first, n}, "acknowledged with FUA");
        } else {
            acked_.push_back({seq, first, n});
        }
    }

    void mark_durable(const Acked& a, const char* how) {
        ++stats_.durable_writes;
        for (uint64_t u = a.first_unit; u < a.first_unit + a.units; ++u) {
            if (a.seq > units_[u].durable) {
                units_[u].durable = a.seq;
                units_[u].durable_how = how;
            }
        }
    }

    static constexpr const char* kBySync = "acknowledged, then SYNCHRONIZE CACHE";

    std::mt19937_64 rng_;
    std::vector<Unit> units_;
    std::set<uint64_t> busy_;
    std::vector<Acked> acked_;  // non-FUA acknowledgements, in order
    size_t synced_ = 0;         // acked_[0, synced_) are durable
    bool sync_in_flight_ = false;
    unsigned since_sync_ = 0;
    uint64_t session_ = 0;  // run() count: callbacks of older sessions are ignored
    uint64_t syncs_last_run_ = 0;
    uint64_t next_seq_ = 0;
    bool zeros_initial_;
    Stats stats_;
};

uint64_t crash_seed() {
    if (const char* s = std::getenv("ICBD_CRASH_SEED"); s && *s) return std::strtoull(s, nullptr, 0);
    return std::random_device{}();
}

struct CrashMode {
    const char* name;
    const char* bsopts;  // "{dir}" stands for the directory of the backing file
    bool power_cut;
    bool overlay;  // the backing file is the golden file: written with "write #0" sectors
    int iterations;
    bool btrfs = false;  // the backing file on a BTRFS loop filesystem (kill -9 only)
    // A power cut must lose some acknowledged unsynced write over the run (or
    // the cut is not real). O_DIRECT writes reach the loop device at once, so
    // with direct=1 / direct=writes only new allocations can be lost: not
    // asserted there.
    bool cut_loses_writes = true;
};

int iterations_for(const CrashMode& m) {
    if (const char* s = std::getenv("ICBD_CRASH_ITERATIONS"); s && *s) return std::atoi(s);
    return m.iterations;
}

std::string expand(std::string s, const std::filesystem::path& dir) {
    for (size_t p; (p = s.find("{dir}")) != std::string::npos;) s.replace(p, 5, dir.string());
    return s;
}

// The backing file, its size and its directory entry on disk before the first
// power cut: the test must not rely on the module's fdatasync to make its own
// set-up durable (the control's module never syncs; the file itself would vanish).
void make_durable(const std::filesystem::path& file) {
    for (const auto& p : {file, file.parent_path()}) {
        UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd.valid() || ::fsync(fd.get()) != 0)
            throw std::runtime_error("fsync " + p.string() + ": " + std::strerror(errno));
    }
}

class CrashTest : public ::testing::TestWithParam<CrashMode> {};

TEST_P(CrashTest, AcknowledgedDurableWritesSurviveKill9) {
    const CrashMode& mode = GetParam();
    ICBD_REQUIRE(TgtdInstance::unavailable());
    if (mode.power_cut) ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
    if (mode.btrfs) ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
    const uint64_t seed = crash_seed();
    const int iterations = iterations_for(mode);
    std::cout << "crash_test seed " << seed << " (ICBD_CRASH_SEED=" << seed << " replays it), mode " << mode.name
              << ", " << iterations << " iterations\n";
    SCOPED_TRACE("ICBD_CRASH_SEED=" + std::to_string(seed));

    TempDir dir("/var/tmp", "icbd-crash-");
    std::unique_ptr<LoopFs> fs;
    std::filesystem::path base = dir.path();
    if (mode.power_cut || mode.btrfs) {
        fs = std::make_unique<LoopFs>(mode.btrfs ? LoopFs::Type::btrfs : LoopFs::Type::ext4,
                                      mode.btrfs ? 512ull << 20 : 256ull << 20);
        base = fs->mount_point();
    }
    const auto file = base / "disk.img";
    make_sparse_file(file, kLunBytes);
    if (mode.overlay) {
        // A golden file whose every sector is identifiable: a block whose
        // overlay bit got to disk without its data would read as zeros, and
        // be reported.
        std::vector<uint8_t> golden(kUnits * kUnit);
        for (uint64_t lba = 0; lba < kUnits * kSectorsPerUnit; ++lba) make_sector(&golden[lba * kSector], lba, 0);
        write_backing(file, 0, golden);
    }
    make_durable(file);
    TgtdInstance tgtd;
    tgtd.add_target(1, "iqn.2026-01.org.icbd.test:crash");
    tgtd.add_lun({1, 1, file, expand(mode.bsopts, base)});
    if (mode.btrfs && !*mode.bsopts) {  // the default on BTRFS: O_DIRECT writes beside cached reads
        ASSERT_NE(tgtd.log().find("writes go O_DIRECT (direct=auto"), std::string::npos) << tgtd.log();
    }
    auto kill = [&] {
        tgtd.kill9();
        if (mode.power_cut) fs->power_cut();
    };

    CrashWriter writer(seed, !mode.overlay);
    uint64_t total_volatile_lost = 0, total_sync_checked = 0;
    std::mt19937_64 timing(seed ^ 0x5bd1e995);
    std::vector<uint8_t> disk;
    for (int it = 1; it <= iterations; ++it) {
        SCOPED_TRACE("iteration " + std::to_string(it));
        const auto kill_after = std::chrono::milliseconds(100 + timing() % 400);
        {
            IscsiClient c(tgtd.url(1, 1));
            writer.run(c, Clock::now() + kill_after, kill);
        }  // the session's leftovers are cancelled here
        ASSERT_FALSE(tgtd.alive());
        if (mode.power_cut) fs->remount();
        tgtd.restart();

        IscsiClient reader(tgtd.url(1, 1));
        disk.clear();
        for (uint64_t lba = 0; lba < kUnits * kSectorsPerUnit; lba += 2048) {
            ScsiResult r = reader.read16(lba, 2048);
            ASSERT_TRUE(r.good()) << "reading back after the restart: " << r;
            disk.insert(disk.end(), r.data.begin(), r.data.end());
        }
        uint64_t torn = 0, volatile_lost = 0, sync_checked = 0;
        auto failures = writer.verify(disk, &torn, &volatile_lost, &sync_checked);
        total_volatile_lost += volatile_lost;
        total_sync_checked += sync_checked;
        const auto& st = writer.stats();
        std::cout << "  iteration " << it << ": kill -9 after " << kill_after.count() << " ms; writes issued "
                  << st.issued << ", acknowledged " << st.acked << " (FUA " << st.acked_fua << "), durable "
                  << st.durable_writes << " (by SYNC " << st.synced_writes << "), syncs " << st.syncs_done
                  << " (this run " << writer.syncs_last_run() << "); sectors checked durable by SYNC "
                  << sync_checked << "; torn blocks " << torn << ", acknowledged non-durable sectors not found "
                  << volatile_lost << "\n";
        for (size_t i = 0; i < failures.size() && i < 20; ++i) ADD_FAILURE() << failures[i];
        ASSERT_TRUE(failures.empty()) << failures.size() << " sectors break the durability contract";
        // Regression: the SYNC state was never reset between crashes, so one
        // SYNC cut off without a callback stopped every later SYNC, and the
        // check went on passing on FUA writes alone.
        EXPECT_GT(writer.syncs_last_run(), 0u) << "no SYNCHRONIZE CACHE completed before this crash";
    }
    EXPECT_GT(writer.stats().durable_writes, 0u) << "the load never got a durable acknowledgement: test proved nothing";
    EXPECT_GT(total_sync_checked, 0u)
        << "no sector read back was durable by SYNCHRONIZE CACHE alone: SYNC durability went untested";
    if (mode.power_cut && mode.cut_loses_writes) {
        EXPECT_GT(total_volatile_lost, 0u) << "no power cut ever lost an unsynced write: the cut is not real";
    }
    if (std::string(mode.bsopts).find("cache=") != std::string::npos) {
        // Recovery must have found committed dirty blocks to keep at least
        // once (else the cache never held anything at a crash), and says how
        // long it took every time.
        const std::string log = tgtd.log();
        std::istringstream lines(log);
        int recoveries = 0, with_dirty = 0;
        double worst_ms = 0;
        for (std::string line; std::getline(lines, line);) {
            auto at = line.find("recovered in ");
            if (at == std::string::npos) continue;
            ++recoveries;
            worst_ms = std::max(worst_ms, std::atof(line.c_str() + at + 13));
            auto k = line.find(" dirty kept");
            auto b = line.rfind(' ', k - 1);
            if (k != std::string::npos && std::atoll(line.c_str() + b + 1) > 0) ++with_dirty;
        }
        std::cout << "  cache recoveries " << recoveries << ", with dirty blocks kept " << with_dirty
                  << ", slowest " << worst_ms << " ms\n";
        EXPECT_GE(recoveries, iterations) << "every restart opens the cache";
        EXPECT_GT(with_dirty, 0) << "no crash ever left committed dirty blocks in the cache: the cache was not tested";
    }

    // The checker itself must not be blind: one flipped byte, and a durable
    // block gone back to zeros, are both reported.
    auto u = writer.some_durable_unit();
    ASSERT_TRUE(u.has_value());
    uint64_t torn = 0, lost = 0;
    auto flipped = disk;
    flipped[*u * kUnit + 100] ^= 1;
    auto f1 = writer.verify(flipped, &torn, &lost);
    ASSERT_EQ(f1.size(), 1u) << "checker missed a flipped byte";
    EXPECT_NE(f1[0].find("never written"), std::string::npos) << f1[0];
    auto zeroed = disk;  // back to its initial content
    std::fill_n(zeroed.begin() + static_cast<ptrdiff_t>(*u * kUnit), kUnit, 0);
    if (mode.overlay)
        for (uint64_t s = 0; s < kSectorsPerUnit; ++s)
            make_sector(&zeroed[*u * kUnit + s * kSector], *u * kSectorsPerUnit + s, 0);
    auto f2 = writer.verify(zeroed, &torn, &lost);
    ASSERT_EQ(f2.size(), kSectorsPerUnit) << "checker missed a lost durable block";
    EXPECT_NE(f2[0].find("LOST DURABLE WRITE"), std::string::npos) << f2[0];
    if (HasFailure()) std::cerr << "---- tgtd log (tail) ----\n" << tgtd.log_tail(30) << "\n";
}

INSTANTIATE_TEST_SUITE_P(Modes, CrashTest,
                         ::testing::Values(CrashMode{"kill9", "", false, false, 6},
                                           CrashMode{"kill9_direct", "direct=1", false, false, 6},
                                           CrashMode{"kill9_direct_writes", "direct=writes", false, false, 6},
                                           CrashMode{"kill9_aio", "engine=aio", false, false, 6},
                                           CrashMode{"kill9_btrfs", "", false, false, 6, true},
                                           CrashMode{"power_cut", "", true, false, 50},
                                           CrashMode{"power_cut_direct", "direct=1", true, false, 20, false, false},
                                           CrashMode{"power_cut_direct_writes", "direct=writes", true, false, 20,
                                                     false, false},
                                           CrashMode{"power_cut_aio", "engine=aio", true, false, 20},
                                           CrashMode{"power_cut_overlay", "overlay={dir}/client.ovl", true, true, 50},
                                           // A write-back cache smaller than the working set (8 MiB): the
                                           // flusher writes down while the load runs and the power goes.
                                           CrashMode{"power_cut_cache", "cache={dir}/lun.cache;cache_size=4M", true,
                                                     false, 50},
                                           CrashMode{"power_cut_overlay_cache",
                                                     "overlay={dir}/client.ovl;cache={dir}/lun.cache;cache_size=4M",
                                                     true, true, 50}),
                         [](const ::testing::TestParamInfo<CrashMode>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace icbd::test
