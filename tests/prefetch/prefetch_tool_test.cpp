// icbd-prefetch as an operator runs it, on a repository on a real ext4 (loop
// device): sidecars found from a file's place, --repo with a prediction from an
// older version, corrupt sidecars skipped, --json, exit codes, and a real
// memory cgroup whose limit stops it.
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "icbd/prefetch.hpp"
#include "prefetch_fixture.hpp"
#include "run_command.hpp"

namespace icbd::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'')
            out.append("'\\''");
        else
            out.push_back(c);
    }
    return out + "'";
}

std::string read_text(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// The tool's stdout in `out`, its stderr in `err` (files, so that --json stays parseable).
struct ToolRun {
    int exit_code = -1;
    std::string out, err;
};

class PrefetchToolTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (LoopFs::unavailable(LoopFs::Type::ext4)) return;
        fs_ = std::make_unique<LoopFs>(LoopFs::Type::ext4, 512 * kMiB);
        const fs::path img = *fs_ / "repo/images/img";
        fs::create_directories(img / "1/sub");
        fs::create_directories(img / "2/sub");
        fs::create_directories(img / "3");
        write_golden(img / "1/disk.raw", kSize);
        write_golden(img / "1/sub/d2.raw", 8 * kMiB);  // no boot set
        write_golden(img / "2/disk.raw", kSize);       // no boot set of its own
        write_golden(img / "2/sub/d2.raw", 8 * kMiB);
        write_golden(img / "3/disk.raw", kSize);
        set_ = std::make_unique<BootSet>(scattered_set(kSize, 24 * kMiB, 21));
        auto st = save_boot_set(boot_set_path(*fs_ / "repo", "img", 1, "disk.raw"), *set_);
        if (!st) throw std::runtime_error(st.message());
    }
    static void TearDownTestSuite() {
        set_.reset();
        fs_.reset();
    }
    void SetUp() override {
        PREFETCH_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
        ASSERT_NE(fs_, nullptr);
        const char* b = std::getenv("ICBD_BUILD");
        ASSERT_NE(b, nullptr) << "ICBD_BUILD (the build directory) is not set";
        tool_ = fs::path(b) / "prefetch/icbd-prefetch";
        ASSERT_TRUE(fs::exists(tool_)) << tool_;
        repo_ = *fs_ / "repo";
        for (int v = 1; v <= 3; ++v) drop_cache(repo_ / "images/img" / std::to_string(v) / "disk.raw");
    }

    // Runs `prefix` + the tool with `args` through sh (`prefix` may move it
    // into a cgroup first).
    ToolRun run(const std::vector<std::string>& args, const std::string& prefix = "") {
        const fs::path out = *fs_ / "tool.out", err = *fs_ / "tool.err";
        std::string cmd = prefix + "exec " + quote(tool_.string());
        for (const auto& a : args) cmd.append(" ").append(quote(a));
        cmd += " >" + quote(out.string()) + " 2>" + quote(err.string());
        auto r = run_command({"sh", "-c", cmd}, {}, std::chrono::seconds(30));
        return {r.exit_code, read_text(out), read_text(err)};
    }
    static json parse(const ToolRun& r) {
        try {
            return json::parse(r.out);
        } catch (const json::exception& e) {
            ADD_FAILURE() << "--json output does not parse (" << e.what() << "): " << r.out << "\nstderr: " << r.err;
            return json::object();
        }
    }

    static constexpr uint64_t kSize = 128 * kMiB;
    static std::unique_ptr<LoopFs> fs_;
    static std::unique_ptr<BootSet> set_;
    fs::path tool_, repo_;
};
std::unique_ptr<LoopFs> PrefetchToolTest::fs_;
std::unique_ptr<BootSet> PrefetchToolTest::set_;

TEST_F(PrefetchToolTest, AFileInARepositoryIsPrefetchedFromItsSidecarAndJsonParses) {
    const fs::path file = repo_ / "images/img/1/disk.raw";
    ToolRun r, again;
    Residency res;
    for (int attempt = 1;; ++attempt) {
        drop_cache(file);
        const uint64_t drops = global_cache_drops();
        r = run({"--json", file.string()});
        res = residency(file, *set_);
        again = run({file.string()});  // in words: nothing to read, all of it already cached
        if (global_cache_drops() == drops || attempt == kAttemptsAgainstDrops) break;
        std::cerr << "another process dropped the page cache meanwhile (drop_caches): again\n";
    }
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const json j = parse(r);
    ASSERT_EQ(j["files"].size(), 1u) << r.out;
    const json& f = j["files"][0];
    EXPECT_EQ(f["end"], "complete");
    EXPECT_EQ(f["read_bytes"].get<uint64_t>(), set_->bytes());
    EXPECT_EQ(f["total_bytes"].get<uint64_t>(), set_->bytes());
    EXPECT_EQ(f["cached_bytes"].get<uint64_t>(), 0u);
    EXPECT_GT(f["mib_per_s"].get<double>(), 0.0);
    EXPECT_TRUE(f["predicted_from"].is_null());
    EXPECT_EQ(f["bootset"], boot_set_path(repo_, "img", 1, "disk.raw").string());
    EXPECT_EQ(j["total"]["read_bytes"].get<uint64_t>(), set_->bytes());
    EXPECT_TRUE(j["skipped"].empty());
    EXPECT_TRUE(j["errors"].empty());
    EXPECT_EQ(res.in_set_resident, res.in_set);
    EXPECT_LE(res.outside_resident, res.outside / 100);
    ASSERT_EQ(again.exit_code, 0) << again.err;
    EXPECT_NE(again.out.find("0.0 MiB read"), std::string::npos) << again.out;
    EXPECT_NE(again.out.find(std::to_string(set_->bytes() / kMiB)), std::string::npos) << again.out;
    EXPECT_NE(again.out.find("already cached; complete"), std::string::npos) << again.out;
}

TEST_F(PrefetchToolTest, RepoModePredictsFromTheNewestOlderVersionsSidecar) {
    const fs::path file = repo_ / "images/img/2/disk.raw";
    ToolRun r;
    Residency res;
    for (int attempt = 1;; ++attempt) {
        drop_cache(file);
        const uint64_t drops = global_cache_drops();
        r = run({"--json", "--repo", repo_.string(), "img", "2"});
        res = residency(file, *set_);
        if (global_cache_drops() == drops || attempt == kAttemptsAgainstDrops) break;
        std::cerr << "another process dropped the page cache meanwhile (drop_caches): again\n";
    }
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const json j = parse(r);
    // sub/d2.raw has no boot set in any version: not prefetched.
    ASSERT_EQ(j["files"].size(), 1u) << r.out;
    const json& f = j["files"][0];
    EXPECT_EQ(f["file"], (repo_ / "images/img/2/disk.raw").string());
    EXPECT_EQ(f["predicted_from"], 1);
    EXPECT_EQ(f["end"], "complete");
    EXPECT_EQ(f["read_bytes"].get<uint64_t>(), set_->bytes());
    EXPECT_EQ(res.in_set_resident, res.in_set);

    const ToolRun words = run({"--repo", repo_.string(), "img", "2"});
    EXPECT_EQ(words.exit_code, 0) << words.err;
    EXPECT_NE(words.out.find("predicted from version 1"), std::string::npos) << words.out;
}

TEST_F(PrefetchToolTest, ACorruptSidecarIsSkippedWithOneLineAndExitZero) {
    const fs::path sidecar = boot_set_path(repo_, "img", 3, "disk.raw");
    ASSERT_TRUE(save_boot_set(sidecar, *set_));
    {
        std::fstream f(sidecar, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(100);
        f.put('\x5a');  // a bitmap byte: the checksum no longer matches
    }
    const ToolRun r = run({(repo_ / "images/img/3/disk.raw").string()});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find("skipping"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(sidecar.string()), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("checksum"), std::string::npos) << r.err;
    EXPECT_EQ(residency(repo_ / "images/img/3/disk.raw", *set_).in_set_resident, 0u);

    // A foreign file in its place, through --repo and --json.
    std::ofstream(sidecar, std::ios::trunc) << "this is not a boot set, but long enough to have a header of 52 bytes";
    const ToolRun j = run({"--json", "--repo", repo_.string(), "img", "3"});
    EXPECT_EQ(j.exit_code, 0) << j.err;
    const json out = parse(j);
    EXPECT_TRUE(out["files"].empty()) << j.out;
    ASSERT_EQ(out["skipped"].size(), 1u) << j.out;
    EXPECT_NE(out["skipped"][0]["reason"].get<std::string>().find("magic"), std::string::npos) << j.out;
    fs::remove(sidecar);
}

TEST_F(PrefetchToolTest, ExitCodes) {
    EXPECT_EQ(run({}).exit_code, 2);
    EXPECT_EQ(run({"--repo", repo_.string(), "img"}).exit_code, 2);
    EXPECT_EQ(run({"--repo", repo_.string(), "img", "seven"}).exit_code, 2);
    EXPECT_EQ(run({"--max-rate", "fast", "x"}).exit_code, 2);
    EXPECT_EQ(run({"--bootset", "a.bset", "x", "y"}).exit_code, 2);
    EXPECT_EQ(run({"--no-such-option"}).exit_code, 2);
    // Not in a repository and no --bootset: a failure naming the file.
    const fs::path loose = *fs_ / "loose.raw";
    std::ofstream(loose) << "x";
    const ToolRun r = run({loose.string()});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("loose.raw"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("--bootset"), std::string::npos) << r.err;
    // A version that does not exist.
    EXPECT_EQ(run({"--repo", repo_.string(), "img", "9"}).exit_code, 1);
    // The file removed (its version deleted): said, exit 0.
    const ToolRun gone = run({"--json", "--bootset", boot_set_path(repo_, "img", 1, "disk.raw").string(),
                              (*fs_ / "deleted.raw").string()});
    EXPECT_EQ(gone.exit_code, 0) << gone.err;
    EXPECT_EQ(parse(gone)["files"][0]["end"], "file removed") << gone.out;
}

// A memory cgroup of our own at the root of the hierarchy that has the memory
// controller (v2 when it is there, else v1), removed again.
class MemoryCgroup {
public:
    static std::optional<std::string> unavailable() {
        return find().empty() ? std::optional<std::string>("no memory cgroup controller (neither cgroup v2 with "
                                                           "'memory' in cgroup.controllers nor a v1 memory mount)")
                              : std::nullopt;
    }
    explicit MemoryCgroup(uint64_t limit) {
        const fs::path root = find();
        v2_ = fs::exists(root / "cgroup.controllers");
        if (v2_ && read_text(root / "cgroup.subtree_control").find("memory") == std::string::npos)
            std::ofstream(root / "cgroup.subtree_control") << "+memory";
        dir_ = root / ("icbd-prefetch-test." + std::to_string(::getpid()));
        fs::create_directory(dir_);
        std::ofstream(dir_ / (v2_ ? "memory.max" : "memory.limit_in_bytes")) << limit;
    }
    ~MemoryCgroup() {
        if (::rmdir(dir_.c_str()) != 0) ADD_FAILURE() << "cannot remove " << dir_ << ": " << std::strerror(errno);
    }
    MemoryCgroup(const MemoryCgroup&) = delete;
    MemoryCgroup& operator=(const MemoryCgroup&) = delete;
    const fs::path& dir() const { return dir_; }
    bool v2() const { return v2_; }

private:
    static fs::path find() {
        std::ifstream mi("/proc/self/mountinfo");
        fs::path v1;
        for (std::string line; std::getline(mi, line);) {
            std::istringstream f(line);
            std::vector<std::string> w;
            for (std::string x; f >> x;) w.push_back(x);
            const auto dash = std::find(w.begin(), w.end(), "-");
            if (dash == w.end() || dash + 3 > w.end() || w.size() < 5) continue;
            if (dash[1] == "cgroup2" && read_text(fs::path(w[4]) / "cgroup.controllers").find("memory") != std::string::npos)
                return w[4];
            if (dash[1] == "cgroup" && ("," + dash[3] + ",").find(",memory,") != std::string::npos) v1 = w[4];
        }
        return v1;
    }
    bool v2_ = false;
    fs::path dir_;
};

TEST_F(PrefetchToolTest, AMemoryCgroupLimitStopsItWhereMeminfoWouldNot) {
    PREFETCH_REQUIRE(MemoryCgroup::unavailable());
    const fs::path file = repo_ / "images/img/1/disk.raw";
    {
        MemoryCgroup cg(128 * kMiB);  // the 24 MiB set plus the 256 MiB reserve do not fit
        const ToolRun r = run({"--json", file.string()}, "echo $$ > " + quote((cg.dir() / "cgroup.procs").string()) + " && ");
        ASSERT_EQ(r.exit_code, 0) << r.err;
        const json j = parse(r);
        ASSERT_EQ(j["files"].size(), 1u) << r.out;
        EXPECT_EQ(j["files"][0]["end"], "memory pressure") << r.out;
        EXPECT_EQ(j["files"][0]["read_bytes"].get<uint64_t>(), 0u);
        EXPECT_NE(j["files"][0]["detail"].get<std::string>().find(cg.dir().string()), std::string::npos) << r.out;
    }
    // The control: outside that cgroup the same prefetch completes.
    const ToolRun r = run({"--json", file.string()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(parse(r)["files"][0]["end"], "complete") << r.out;
}

}  // namespace
}  // namespace icbd::test
