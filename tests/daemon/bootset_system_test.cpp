// Boot sets through blockd, as an operator runs it (docs/boot-set.md,
// "Shipping" and "Prefetch"): a set recorded on one cache server reaches the
// master, a cache server that never booted the version gets it when the
// version is pushed and has the set's chunks in its page cache; a newer
// version gets a prediction; blockctl image prefetch answers per file; a
// corrupt set on the master is logged and nothing crashes.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include "blockd_cluster.hpp"
#include "icbd/boot_set.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr uint64_t kDiskMiB = 48;

void make_disk(const fs::path& file, unsigned mib, unsigned seed) {
    std::ofstream out(file, std::ios::binary);
    std::mt19937_64 rng(seed);
    std::vector<uint64_t> buf(1 << 17);  // 1 MiB
    for (unsigned i = 0; i < mib; ++i) {
        for (auto& w : buf) w = rng();
        out.write(reinterpret_cast<const char*>(buf.data()), buf.size() * 8);
    }
}

uint64_t newest_on(const BlockdNode& master, const std::string& replica, const std::string& image) {
    for (const json& n : master.ctl_ok({"node", "list"})) {
        if (n["name"] == replica && n["images"].contains(image)) return n["images"][image]["newest"].get<uint64_t>();
    }
    return 0;
}

// What a desktop's boot touched: scattered runs, as the module would record them.
BootSet boot_trace() {
    auto set = BootSet::create(kDiskMiB << 20);
    if (!set) throw std::runtime_error(set.status().message());
    set->mark(0, 1 << 20);
    set->mark(9ull << 20, 3 << 20);
    set->mark(21ull << 20, 4096);
    set->mark(40ull << 20, 512 << 10);
    set->boots = 1;
    set->version = 1;
    return std::move(*set);
}

// Page-cache residency of each 4 KiB page of `file`.
std::vector<unsigned char> resident_pages(const fs::path& file) {
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("open " + file.string());
    size_t size = fs::file_size(file);
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (map == MAP_FAILED) throw std::runtime_error("mmap " + file.string());
    std::vector<unsigned char> v((size + 4095) / 4096);
    int rc = ::mincore(map, size, v.data());
    ::munmap(map, size);
    if (rc != 0) throw std::runtime_error("mincore " + file.string());
    return v;
}

// Chunks of `set` whose every page is resident, and chunks outside it with any page resident.
std::pair<uint64_t, uint64_t> residency(const fs::path& file, const BootSet& set) {
    auto pages = resident_pages(file);
    const uint64_t per_chunk = set.chunk_size() / 4096;
    uint64_t in_set_resident = 0, outside_resident = 0;
    for (uint64_t c = 0; c < set.chunks(); ++c) {
        bool all = true, any = false;
        for (uint64_t p = c * per_chunk; p < (c + 1) * per_chunk && p < pages.size(); ++p) {
            all = all && (pages[p] & 1);
            any = any || (pages[p] & 1);
        }
        if (set.has_chunk(c) && all) ++in_set_resident;
        if (!set.has_chunk(c) && any) ++outside_resident;
    }
    return {in_set_resident, outside_resident};
}

void evict(const fs::path& file) {
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ::fdatasync(fd);
    EXPECT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    ::close(fd);
}

bool log_has(const BlockdNode& n, const std::string& needle) { return n.log().find(needle) != std::string::npos; }

class BootSetSystemTest : public ::testing::Test {
protected:
    void SetUp() override {
        certs_ = std::make_unique<TempDir>("/tmp", "icbd-certs-");
        make_certs(certs_->path(), {"master", "r1", "r2"});
    }
    std::unique_ptr<TempDir> certs_;
};

TEST_F(BootSetSystemTest, ReplicaBootSetReachesTheMasterAndIsPrefetchedOnAReplicaThatNeverBooted) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    master.set_extra_config(kFastKeepalive);
    master.start();
    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    r1.set_master(master);
    r1.start();
    {
        TempDir src("/var/tmp", "icbd-src-");
        make_disk(src / "disk.raw", kDiskMiB, 7);
        master.ctl_ok({"image", "import", "win10", "--from", (src / "disk.raw").string()});
    }
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r1", "win10") == 1; }, 60s)) << master.ctl({"node", "list"}).output;

    // A desktop booted version 1 on r1: the module merges what it read into the sidecar.
    const BootSet trace = boot_trace();
    ASSERT_TRUE(merge_into_boot_set(boot_set_path(r1.repository(), "win10", 1, "disk.raw"), trace));
    const fs::path on_master = boot_set_path(master.repository(), "win10", 1, "disk.raw");
    ASSERT_TRUE(eventually([&] { return load_boot_set(on_master).is_ok(); }, 20s)) << "r1 log:\n" << r1.log();
    auto m = load_boot_set(on_master);
    ASSERT_TRUE(m) << m.status().message();
    EXPECT_EQ(m->boots, 1u);
    EXPECT_EQ(m->runs(), trace.runs());
    // Keepalives go on; the same boot is not counted again.
    std::this_thread::sleep_for(3s);
    EXPECT_EQ(load_boot_set(on_master)->boots, 1u);

    // r2 never booted anything; version 1 is pushed to it when it registers.
    BlockdNode r2(BlockdNode::Role::replica, "r2", certs_->path());
    r2.set_master(master);
    r2.start();
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r2", "win10") == 1; }, 60s)) << master.ctl({"node", "list"}).output;
    ASSERT_TRUE(eventually([&] { return log_has(r2, "version 1: prefetch done"); }, 30s)) << "r2 log:\n" << r2.log();
    // The file's summary line: "... file 'disk.raw' (boot set from ...): N MiB read of ...: complete".
    {
        std::istringstream lines(r2.log());
        bool complete = false;
        for (std::string l; std::getline(lines, l);)
            complete |= l.find("image 'win10' version 1 file 'disk.raw' (boot set from") != std::string::npos &&
                        l.ends_with(": complete");
        EXPECT_TRUE(complete) << r2.log();
    }
    auto saved = load_boot_set(boot_set_path(r2.repository(), "win10", 1, "disk.raw"));
    ASSERT_TRUE(saved) << saved.status().message();
    EXPECT_EQ(saved->boots, 1u);
    EXPECT_EQ(saved->runs(), trace.runs());
    const fs::path golden = r2.version_file("win10", 1);
    EXPECT_EQ(residency(golden, trace).first, trace.bytes() / trace.chunk_size());

    // On demand: evicted first, so only the prefetch can bring the chunks back.
    evict(golden);
    auto before = residency(golden, trace);
    ASSERT_LT(before.first, trace.bytes() / trace.chunk_size()) << "eviction did not work: the check below could not fail";
    auto human = run_command({blockctl_bin().string(), "--socket", r2.socket().string(), "image", "prefetch", "win10", "1"},
                             {}, 60s);
    ASSERT_EQ(human.exit_code, 0) << human.output;
    if (std::getenv("ICBD_TEST_VERBOSE")) std::cerr << human.output << "---- r2 log:\n" << r2.log();
    EXPECT_NE(human.output.find("disk.raw: "), std::string::npos) << human.output;
    EXPECT_NE(human.output.find("image 'win10' version 1: "), std::string::npos) << human.output;
    EXPECT_NE(human.output.find("MiB/s"), std::string::npos) << human.output;
    auto after = residency(golden, trace);
    EXPECT_EQ(after.first, trace.bytes() / trace.chunk_size());
    EXPECT_LT(after.second, trace.chunks() / 4) << "the prefetch read much more than the boot set";

    json j = r2.ctl_ok({"image", "prefetch", "win10", "1"});
    EXPECT_EQ(j["image"], "win10");
    EXPECT_EQ(j["version"], 1);
    ASSERT_EQ(j["files"].size(), 1u) << j.dump();
    EXPECT_EQ(j["files"][0]["file"], "disk.raw");
    EXPECT_EQ(j["files"][0]["from"], "local");  // r2 keeps what the master sent
    EXPECT_EQ(j["files"][0]["end"], "complete");
    EXPECT_EQ(j["files"][0]["total_bytes"].get<uint64_t>(), trace.bytes());
    EXPECT_EQ(j["total_bytes"].get<uint64_t>(), trace.bytes());
    EXPECT_TRUE(j["seconds"].is_number());

    // Version 2 was never booted anywhere: r2 gets version 1's set as a prediction.
    json co = master.ctl_ok({"image", "checkout", "win10"});
    {
        std::fstream f(fs::path(co["path"].get<std::string>()) / "disk.raw", std::ios::binary | std::ios::in | std::ios::out);
        std::string mib(1 << 20, 'x');
        f.seekp(30ll << 20);
        f.write(mib.data(), mib.size());
    }
    master.ctl_ok({"image", "commit", "win10", "--message", "update"});
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r2", "win10") == 2; }, 60s)) << master.ctl({"node", "list"}).output;
    ASSERT_TRUE(eventually([&] { return log_has(r2, "version 2: prefetch done"); }, 30s)) << "r2 log:\n" << r2.log();
    EXPECT_TRUE(log_has(r2, "predicted from version 1")) << r2.log();
    auto predicted = load_boot_set(boot_set_path(r2.repository(), "win10", 2, "disk.raw"));
    ASSERT_TRUE(predicted) << predicted.status().message();
    EXPECT_EQ(predicted->boots, 0u);
    EXPECT_EQ(predicted->version, 1u);
    EXPECT_EQ(residency(r2.version_file("win10", 2), trace).first, trace.bytes() / trace.chunk_size());
    // Neither r2's copy of version 1's set nor its prediction went back to the master.
    std::this_thread::sleep_for(2s);
    EXPECT_EQ(load_boot_set(on_master)->boots, 1u);
    EXPECT_FALSE(fs::exists(boot_set_path(master.repository(), "win10", 2, "disk.raw")));
}

TEST_F(BootSetSystemTest, CorruptBootSetOnTheMasterIsLoggedAndNothingIsPrefetched) {
    REQUIRE_SYSTEM();
    BlockdNode master(BlockdNode::Role::master, "master", certs_->path());
    master.set_extra_config(kFastKeepalive);
    master.start();
    {
        TempDir src("/var/tmp", "icbd-src-");
        make_disk(src / "disk.raw", 8, 3);
        master.ctl_ok({"image", "import", "linux", "--from", (src / "disk.raw").string()});
    }
    const fs::path bad = boot_set_path(master.repository(), "linux", 1, "disk.raw");
    std::vector<uint8_t> bytes = boot_trace().encode();
    bytes[50] ^= 0xff;
    fs::create_directories(bad.parent_path());
    std::ofstream(bad, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());

    BlockdNode r1(BlockdNode::Role::replica, "r1", certs_->path());
    r1.set_master(master);
    r1.start();
    ASSERT_TRUE(eventually([&] { return newest_on(master, "r1", "linux") == 1; }, 60s)) << master.ctl({"node", "list"}).output;
    ASSERT_TRUE(eventually([&] { return log_has(r1, "version 1: prefetch done"); }, 30s)) << "r1 log:\n" << r1.log();
    EXPECT_TRUE(log_has(master, "boot set ignored")) << master.log();
    EXPECT_TRUE(log_has(r1, "no boot set here or on the master")) << r1.log();
    EXPECT_FALSE(fs::exists(boot_set_path(r1.repository(), "linux", 1, "disk.raw")));

    json j = r1.ctl_ok({"image", "prefetch", "linux", "1"});
    ASSERT_EQ(j["files"].size(), 1u) << j.dump();
    EXPECT_EQ(j["files"][0]["from"], "none");
    EXPECT_EQ(j["read_bytes"], 0);
    // A version this node does not hold is a clear error.
    auto missing = r1.ctl({"image", "prefetch", "linux", "9"});
    EXPECT_NE(missing.exit_code, 0);
    EXPECT_NE(missing.output.find("image 'linux' version 9: not on this node"), std::string::npos) << missing.output;
    EXPECT_TRUE(master.running());
    EXPECT_TRUE(r1.running());

    // At start blockd prefetches the versions its desktops would get (here the
    // production version 1; the master still has no usable set for it).
    r1.stop();
    r1.start();
    auto count = [&](const std::string& needle) {
        const std::string log = r1.log();
        size_t n = 0;
        for (size_t at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1)) ++n;
        return n;
    };
    EXPECT_TRUE(eventually([&] { return count("image 'linux' version 1: prefetch done") >= 2; }, 20s)) << r1.log();
}

}  // namespace
}  // namespace icbd::test
