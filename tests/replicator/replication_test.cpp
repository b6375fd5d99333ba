// Replication end to end: a master repository on real BTRFS pushes versions over
// mutual TLS on 127.0.0.1 to replicas on BTRFS and ext4 (receivers in-process,
// and the icbd-replicate tool as a child): full, incremental, catch-up,
// already-there, reads of unchanged data, fan-out, resume after cuts, bad input
// from a hand-made sender, a foreign CA, and a full replica disk.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "../integration/integration_test.hpp"
#include "icbd/replicator/receiver.hpp"
#include "icbd/replicator/repository.hpp"
#include "icbd/replicator/sender.hpp"
#include "icbd/replicator/transport.hpp"
#include "digests.hpp"
#include "frame_codec.hpp"
#include "messages.hpp"
#include "loop_fs.hpp"
#include "replication_fixture.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"

namespace icbd::repl {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::LoopFs;
using test::run_checked;
using test::TempDir;

using namespace fixture;  // trees, Proxy, ToolServer (replication_fixture.hpp)

uint64_t free_bytes(const fs::path& p) {
    struct statvfs v {};
    ::statvfs(p.c_str(), &v);
    return uint64_t(v.f_bavail) * v.f_frsize;
}

uint64_t proc_read_bytes() {
    std::ifstream in("/proc/self/io");
    std::string k;
    uint64_t v = 0;
    while (in >> k >> v)
        if (k == "read_bytes:") return v;
    return 0;
}

void drop_caches() {
    ::sync();
    std::ofstream("/proc/sys/vm/drop_caches") << "3\n";
}

Repository open_repo(const fs::path& root) {
    fs::create_directories(root);
    auto r = Repository::open(root);
    if (!r) throw std::runtime_error(r.status().message());
    return std::move(r.value());
}

// ---- certificates (one CA for the cluster, one stranger) ----

struct Certs {
    TempDir dir{"/tmp", "icbd-repl-certs-"};
    Certs() {
        const std::string script = std::string(ICBD_SOURCE_DIR) + "/scripts/make-certs.sh";
        run_checked({script, (dir.path() / "good").string(), "master", "replica1", "replica2", "replica3"});
        run_checked({script, (dir.path() / "rogue").string(), "intruder"});
    }
    TlsConfig config(const std::string& ca, const std::string& name) const {
        TlsConfig t;
        t.ca_file = (dir.path() / ca / "ca.crt").string();
        t.cert_file = (dir.path() / ca / (name + ".crt")).string();
        t.key_file = (dir.path() / ca / (name + ".key")).string();
        t.io_timeout = 20s;
        return t;
    }
};

// ---- an in-process replica ----

class ReplicaServer {
public:
    ReplicaServer(const fs::path& root, const TlsConfig& tls, const std::string& name,
                  uint32_t capabilities = kCapLz4 | kCapZstd) {
        fs::create_directories(root);
        auto l = Listener::bind("127.0.0.1", 0, tls);
        if (!l) throw std::runtime_error(l.status().message());
        listener_ = std::move(l.value());
        ReceiverOptions o;
        o.root = root;
        o.node_name = name;
        o.capabilities = capabilities;
        rx_ = std::make_unique<Receiver>(o);
        thread_ = std::jthread([this] { (void)rx_->serve(listener_); });
    }
    ~ReplicaServer() {
        rx_->stop();
        thread_.join();
    }
    uint16_t port() const { return listener_.port(); }
    HostPort target() const { return HostPort{"127.0.0.1", port()}; }
    Receiver& rx() { return *rx_; }
    // Waits until the receiver has reported `n` offers in all.
    std::vector<ReceiveReport> wait_reports(size_t n, std::chrono::milliseconds timeout = 20s) {
        auto until = std::chrono::steady_clock::now() + timeout;
        while (rx_->reports().size() < n && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(10ms);
        return rx_->reports();
    }

private:
    Listener listener_;
    std::unique_ptr<Receiver> rx_;
    std::jthread thread_;
};

// ---- the fixture ----

void build_v1(const fs::path& w);  // the small test image, below

class ReplicationTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (::geteuid() == 0 && test::have_program("openssl")) certs_ = std::make_unique<Certs>();
    }
    static void TearDownTestSuite() { certs_.reset(); }

    void SetUp() override {
        ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::btrfs));
        ICBD_REQUIRE(LoopFs::unavailable(LoopFs::Type::ext4));
        if (!certs_) {
            if (test::skips_forbidden()) FAIL() << "openssl is missing";
            GTEST_SKIP() << "openssl is missing";
        }
    }

    // A master on BTRFS with a writable subvolume "work" to build versions in.
    void make_master(uint64_t size = 768 * MiB) {
        master_fs_ = std::make_unique<LoopFs>(LoopFs::Type::btrfs, size);
        master_fs_->create_subvolume("work");
        master_root_ = *master_fs_ / "repo";
        master_ = std::make_unique<Repository>(open_repo(master_root_));
    }
    fs::path work() const { return *master_fs_ / "work"; }
    void commit(uint64_t v) {
        Status s = master_->commit("vm", v, work());
        ASSERT_TRUE(s) << s.message();
    }
    fs::path master_version(uint64_t v) const { return master_root_ / "images/vm" / std::to_string(v); }

    PushOptions options(std::vector<HostPort> to, uint64_t version) const {
        PushOptions o;
        o.root = master_root_;
        o.image = "vm";
        o.version = version;
        o.targets = std::move(to);
        o.tls = master_tls();
        o.node_name = "master";
        return o;
    }
    PushReport push_ok(const PushOptions& o) {
        auto r = push(o);
        EXPECT_TRUE(r) << r.status().message();
        if (!r) return {};
        for (const auto& rep : r->replicas) EXPECT_TRUE(rep.ok()) << rep.status.message();
        return std::move(r.value());
    }
    TlsConfig replica_tls(int n) const { return certs_->config("good", "replica" + std::to_string(n)); }
    TlsConfig master_tls() const { return certs_->config("good", "master"); }
    // A master holding version 1 of the small test image.
    void master_with_v1() {
        make_master(256 * MiB);
        build_v1(work());
        commit(1);
    }

    static std::unique_ptr<Certs> certs_;
    std::unique_ptr<LoopFs> master_fs_;
    fs::path master_root_;
    std::unique_ptr<Repository> master_;
};
std::unique_ptr<Certs> ReplicationTest::certs_;

// v1: sparse 64 MiB disk with data islands, small config files, a symlink, an
// empty directory. Then versions 2..4, each changing a few things.
void build_v1(const fs::path& w) {
    sh("cd " + w.string() + R"(
        truncate -s 64M disk.raw
        dd if=/dev/urandom of=disk.raw bs=1M seek=2 count=3 conv=notrunc status=none
        dd if=/dev/urandom of=disk.raw bs=64K seek=400 count=5 conv=notrunc status=none
        dd if=/dev/urandom of=disk.raw bs=1M seek=60 count=2 conv=notrunc status=none
        echo 'displayName = "demo"' > vm.vmx && chmod 640 vm.vmx
        mkdir -p conf/sub empty && echo a=1 > conf/a.cfg && echo b > conf/sub/b.cfg
        ln -s conf/a.cfg link && ln -s ../a.cfg conf/sub/up
        seq 1 20000 > notes.txt
    )");
}
void build_v2(const fs::path& w) {  // data changes, a hole punched, a file added, one deleted
    sh("cd " + w.string() + R"(
        dd if=/dev/urandom of=disk.raw bs=4K seek=700 count=100 conv=notrunc status=none
        fallocate -p -o 61M -l 1M disk.raw
        echo new > conf/new.cfg
        rm conf/sub/b.cfg
        chmod 600 conf/a.cfg
    )");
}
void build_v3(const fs::path& w) {  // type changes, grow and shrink, a tree removed
    sh("cd " + w.string() + R"(
        rm -r conf/sub && echo now-a-file > conf/sub
        rm link && mkdir link && echo x > link/inside
        truncate -s 80M disk.raw && dd if=/dev/urandom of=disk.raw bs=1M seek=75 count=1 conv=notrunc status=none
        truncate -s 1000 notes.txt
        rmdir empty
    )");
}
void build_v4(const fs::path& w) {
    sh("cd " + w.string() + R"(
        dd if=/dev/urandom of=disk.raw bs=1M seek=10 count=2 conv=notrunc status=none
        mkdir -p deep/a/b/c && echo deep > deep/a/b/c/file && ln -s ../../../vm.vmx deep/a/b/vmx
        touch -d '2001-02-03 04:05:06.789' vm.vmx
    )");
}

TEST_F(ReplicationTest, FullIncrementalCatchUpAndAlreadyThereToBtrfsAndExt4) {
    make_master();
    build_v1(work());
    commit(1);
    build_v2(work());
    commit(2);
    build_v3(work());
    commit(3);
    build_v4(work());
    commit(4);

    LoopFs btrfs(LoopFs::Type::btrfs, 512 * MiB), ext4(LoopFs::Type::ext4, 512 * MiB);
    ReplicaServer r1(btrfs / "repo", replica_tls(1), "replica1");
    ReplicaServer r2(ext4 / "repo", replica_tls(2), "replica2");

    // Full copies of v1 to both, in one push.
    auto rep = push_ok(options({r1.target(), r2.target()}, 1));
    ASSERT_EQ(rep.replicas.size(), 2u);
    for (const auto& r : rep.replicas) {
        EXPECT_EQ(r.kind, NeedKind::full);
        EXPECT_EQ(r.base, 0u);
    }
    EXPECT_TRUE(same_tree(btrfs / "repo/images/vm/1", master_version(1)));
    EXPECT_TRUE(same_tree(ext4 / "repo/images/vm/1", master_version(1)));
    EXPECT_EQ(rep.replicas[0].peer.rfind("replica1 (127.0.0.1:", 0), 0u) << rep.replicas[0].peer;

    // v2 to the BTRFS replica only: an incremental from 1.
    rep = push_ok(options({r1.target()}, 2));
    EXPECT_EQ(rep.replicas[0].kind, NeedKind::incremental);
    EXPECT_EQ(rep.replicas[0].base, 1u);
    EXPECT_LT(rep.replicas[0].payload_bytes, 2 * MiB);  // 400 KiB changed + small files
    EXPECT_TRUE(same_tree(btrfs / "repo/images/vm/2", master_version(2)));

    // v4 to both: the BTRFS replica catches up 2 -> 4, the ext4 one 1 -> 4, each in one diff.
    rep = push_ok(options({r1.target(), r2.target()}, 4));
    EXPECT_EQ(rep.replicas[0].kind, NeedKind::incremental);
    EXPECT_EQ(rep.replicas[0].base, 2u);
    EXPECT_EQ(rep.replicas[1].kind, NeedKind::incremental);
    EXPECT_EQ(rep.replicas[1].base, 1u);
    EXPECT_TRUE(same_tree(btrfs / "repo/images/vm/4", master_version(4)));
    EXPECT_TRUE(same_tree(ext4 / "repo/images/vm/4", master_version(4)));
    auto versions = open_repo(ext4 / "repo").list_versions("vm");
    EXPECT_EQ(*versions, (std::vector<uint64_t>{1, 4}));
    EXPECT_TRUE(open_repo(btrfs / "repo").list_staging()->empty());
    EXPECT_TRUE(open_repo(ext4 / "repo").list_staging()->empty());

    // Already there: nothing is sent.
    rep = push_ok(options({r1.target(), r2.target()}, 4));
    for (const auto& r : rep.replicas) {
        EXPECT_EQ(r.kind, NeedKind::nothing);
        EXPECT_EQ(r.changes_sent, 0u);
        EXPECT_EQ(r.payload_bytes, 0u);
        EXPECT_LT(r.wire_bytes_sent, 16u * 1024);  // the TLS handshake, HELLO and OFFER
    }
    EXPECT_EQ(rep.source_bytes_read, 0u);

    // An older version than the replica publishes: refused, nothing changes.
    auto old = push(options({r1.target()}, 3));
    ASSERT_TRUE(old);
    EXPECT_FALSE(old->replicas[0].ok());
    EXPECT_EQ(old->replicas[0].code, ErrorCode::not_newer);
    EXPECT_NE(old->replicas[0].status.message().find("version 3"), std::string::npos) << old->replicas[0].status.message();
    EXPECT_NE(old->replicas[0].status.message().find("replica1"), std::string::npos) << old->replicas[0].status.message();
    EXPECT_TRUE(same_tree(btrfs / "repo/images/vm/4", master_version(4)));
}

// `icbd-replicate serve --once` (the fixture's ToolServer).
struct OnceServer : ToolServer {
    OnceServer(const fs::path& root, const TlsConfig& tls, std::vector<std::string> extra = {})
        : ToolServer(root, tls, with_once(std::move(extra))) {}
    static std::vector<std::string> with_once(std::vector<std::string> extra) {
        extra.insert(extra.begin(), "--once");
        return extra;
    }
};

// `icbd-replicate push` of image 'vm' version 1 from `root` to 127.0.0.1:`port`
// as the cluster's master, then `extra`.
std::vector<std::string> tool_push(const fs::path& root, uint16_t port, const TlsConfig& tls,
                                   std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {ToolServer::tool().string(), "push", "--root", root.string(), "--image", "vm",
                                     "--version", "1", "--to", "127.0.0.1:" + std::to_string(port), "--ca",
                                     tls.ca_file, "--cert", tls.cert_file, "--key", tls.key_file};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
}

TEST_F(ReplicationTest, IncrementalPushReadsOnlyTheChangedData) {
    make_master(1024 * MiB);
    sh("cd " + work().string() + " && dd if=/dev/urandom of=disk.raw bs=1M count=256 status=none && echo x > vm.vmx");
    commit(1);
    // About 4 MiB changed, scattered: 16 pieces of 256 KiB.
    std::string script = "cd " + work().string();
    for (int i = 0; i < 16; ++i)
        script += " && dd if=/dev/urandom of=disk.raw bs=256K count=1 seek=" + std::to_string(i * 61 + 3) +
                  " conv=notrunc status=none";
    sh(script);
    commit(2);
    const uint64_t changed = 16 * 256 * 1024;

    LoopFs replica(LoopFs::Type::btrfs, 1024 * MiB);
    {  // v1 in full (through the tool, which exits after one connection)
        OnceServer srv(replica / "repo", replica_tls(1));
        push_ok(options({HostPort{"127.0.0.1", srv.port}}, 1));
        EXPECT_EQ(srv.wait(), 0) << srv.stderr_text();
    }
    OnceServer srv(replica / "repo", replica_tls(1));
    drop_caches();
    uint64_t before = proc_read_bytes();
    auto rep = push_ok(options({HostPort{"127.0.0.1", srv.port}}, 2));
    uint64_t io_read = proc_read_bytes() - before;
    EXPECT_EQ(srv.wait(), 0) << srv.stderr_text();
    ASSERT_EQ(rep.replicas.size(), 1u);
    EXPECT_EQ(rep.replicas[0].kind, NeedKind::incremental);
    std::cout << "[ measured ] incremental of " << changed << " changed bytes in a 256 MiB image: source bytes read "
              << rep.source_bytes_read << ", /proc/self/io read_bytes " << io_read << ", payload "
              << rep.replicas[0].payload_bytes << ", wire " << rep.replicas[0].wire_bytes_sent << "\n";
    EXPECT_EQ(rep.source_bytes_read, changed);
    EXPECT_EQ(rep.replicas[0].payload_bytes, changed);
    EXPECT_LT(io_read, changed + 8 * MiB);  // the changed data plus some metadata, far from 256 MiB
    EXPECT_TRUE(same_tree(replica / "repo/images/vm/2", master_version(2)));
}

TEST_F(ReplicationTest, FanOutToThreeFilesystemsReadsTheSourceOnce) {
    make_master();
    build_v1(work());
    commit(1);
    build_v2(work());
    commit(2);
    LoopFs a(LoopFs::Type::btrfs, 256 * MiB), b(LoopFs::Type::ext4, 256 * MiB), c(LoopFs::Type::ext4, 256 * MiB);
    ReplicaServer r1(a / "repo", replica_tls(1), "replica1");
    ReplicaServer r2(b / "repo", replica_tls(2), "replica2");
    ReplicaServer r3(c / "repo", replica_tls(3), "replica3");
    for (uint64_t v : {1, 2}) {
        auto rep = push_ok(options({r1.target(), r2.target(), r3.target()}, v));
        ASSERT_EQ(rep.replicas.size(), 3u);
        const uint64_t one = rep.replicas[0].payload_bytes;
        std::cout << "[ measured ] fan-out v" << v << " to 3 replicas: source bytes read " << rep.source_bytes_read
                  << ", payload per replica " << one << "\n";
        EXPECT_GT(one, 0u);
        EXPECT_EQ(rep.source_bytes_read, one);
        for (const auto& r : rep.replicas) {
            EXPECT_EQ(r.payload_bytes, one);
            EXPECT_EQ(r.replicas_sharing_read, 3u);
            EXPECT_EQ(r.kind, v == 1 ? NeedKind::full : NeedKind::incremental);
        }
        for (const LoopFs* f : {&a, &b, &c})
            EXPECT_TRUE(same_tree(*f / ("repo/images/vm/" + std::to_string(v)), master_version(v)));
    }
}

TEST_F(ReplicationTest, ASlowReplicaIsDroppedAndTheOthersFinish) {
    make_master();
    sh("cd " + work().string() + " && dd if=/dev/urandom of=disk.raw bs=1M count=48 status=none");
    commit(1);
    LoopFs a(LoopFs::Type::ext4, 256 * MiB), b(LoopFs::Type::ext4, 256 * MiB);
    ReplicaServer r1(a / "repo", replica_tls(1), "replica1");
    ReplicaServer r2(b / "repo", replica_tls(2), "replica2");
    Proxy stuck(r2.port());
    stuck.arm(2 * MiB, /*stall=*/true);
    auto o = options({r1.target(), stuck.target()}, 1);
    o.window_bytes = 4 * MiB;
    o.max_stall = 3000ms;
    o.compression = Compression::none;
    auto rep = push(o);
    ASSERT_TRUE(rep) << rep.status().message();
    EXPECT_TRUE(rep->replicas[0].ok()) << rep->replicas[0].status.message();
    EXPECT_FALSE(rep->replicas[1].ok());
    EXPECT_TRUE(rep->replicas[1].dropped);
    EXPECT_NE(rep->replicas[1].status.message().find("dropped"), std::string::npos) << rep->replicas[1].status.message();
    EXPECT_TRUE(same_tree(a / "repo/images/vm/1", master_version(1)));
    EXPECT_FALSE(fs::exists(b / "repo/images/vm/1"));
}

TEST_F(ReplicationTest, ResumesAfterTwentyCutsWithLittleResent) {
    make_master();
    sh("cd " + work().string() + " && dd if=/dev/urandom of=disk.raw bs=1M count=128 status=none && "
       "truncate -s 160M disk.raw && echo cfg > vm.vmx");
    commit(1);
    LoopFs replica(LoopFs::Type::btrfs, 1024 * MiB);
    ReplicaServer server(replica / "repo", replica_tls(1), "replica1");
    ReplicaServer baseline_server(replica / "baseline", replica_tls(2), "replica2");

    Proxy base_proxy(baseline_server.port());
    auto o = options({base_proxy.target()}, 1);
    o.checkpoint_interval = 256 * 1024;
    o.checkpoint_min_period = std::chrono::milliseconds(0);
    o.compression = Compression::none;
    push_ok(o);
    const uint64_t one_push = base_proxy.bytes_up();

    Proxy proxy(server.port());
    std::random_device rd;
    const unsigned seed = rd();
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<uint64_t> cut(1, one_push / 25);
    int cuts = 0, attempts = 0;
    uint64_t max_resume = 0;
    o.targets = {proxy.target()};
    while (cuts < 20 && attempts < 60) {
        ++attempts;
        proxy.arm(cut(rng));
        auto r = push(o);
        ASSERT_TRUE(r) << r.status().message();
        if (r->replicas[0].ok()) break;  // the cut came after the end
        ++cuts;
        max_resume = std::max(max_resume, r->replicas[0].resume_seq);
        EXPECT_FALSE(fs::exists(replica / "repo/images/vm/1")) << "published before the end";
    }
    ASSERT_GE(cuts, 20) << "seed " << seed;
    proxy.arm(UINT64_MAX);
    auto final_rep = push_ok(o);
    const uint64_t total = proxy.bytes_up();
    std::cout << "[ measured ] resume: " << cuts << " cuts (seed " << seed << "), bytes over all attempts " << total
              << ", one uninterrupted push " << one_push << ", ratio " << double(total) / one_push
              << ", last resume after change " << final_rep.replicas[0].resume_seq << "\n";
    EXPECT_GT(max_resume, 0u) << "no attempt resumed";
    EXPECT_GT(final_rep.replicas[0].resume_seq, 0u);
    EXPECT_LE(double(total), 1.2 * double(one_push));
    EXPECT_TRUE(same_tree(replica / "repo/images/vm/1", master_version(1)));
    EXPECT_TRUE(open_repo(replica / "repo").list_staging()->empty());
}

// Text that compresses about 3:1 at zstd 3, `mib` MiB, into work()/disk.raw.
void write_text(const fs::path& dir, int mib) {
    sh("cd " + dir.string() + " && seq 1 4000000 | awk '{print ($1 * 7919) % 100003, \"block\", $1 % 977}' | head -c " +
       std::to_string(mib) + "M > disk.raw");
}

uint64_t frame_bytes_of(const ReplicaReport& r) {
    uint64_t n = 0;
    for (const auto& u : r.codecs) n += u.frame_bytes;
    return n;
}

TEST_F(ReplicationTest, AutoCompressionOnALimitedLinkSendsNoMoreThanZstd3) {
    make_master(256 * MiB);
    write_text(work(), 24);
    commit(1);
    LoopFs a(LoopFs::Type::btrfs, 256 * MiB), b(LoopFs::Type::btrfs, 256 * MiB);
    ReplicaServer r1(a / "repo", replica_tls(1), "replica1");
    ReplicaServer r2(b / "repo", replica_tls(2), "replica2");
    auto pinned = options({r1.target()}, 1);
    pinned.bandwidth_limit = 4 * MiB;  // about 32 Mbit/s: the link is the bottleneck
    auto adaptive = pinned;
    adaptive.targets = {r2.target()};
    adaptive.compress_auto = true;
    auto z3 = push_ok(pinned);
    auto au = push_ok(adaptive);
    ASSERT_EQ(z3.replicas.size(), 1u);
    ASSERT_EQ(au.replicas.size(), 1u);
    const auto& zr = z3.replicas[0];
    const auto& ar = au.replicas[0];
    ASSERT_EQ(zr.codecs.size(), 1u);
    EXPECT_EQ(zr.codecs[0].setting, "zstd:3");
    EXPECT_EQ(zr.codecs[0].raw_bytes, zr.payload_bytes);
    std::cout << "[ measured ] 24 MiB of text over 4 MiB/s: zstd 3 " << frame_bytes_of(zr) << " bytes in " << zr.seconds
              << " s, auto " << frame_bytes_of(ar) << " bytes in " << ar.seconds << " s:";
    uint64_t raw = 0;
    for (const auto& u : ar.codecs) {
        std::cout << " " << u.setting << " x" << u.chunks;
        raw += u.raw_bytes;
        // On a limited link the writer never starves: never cheaper than the start.
        EXPECT_NE(u.setting, "none");
        EXPECT_NE(u.setting, "lz4");
    }
    for (const auto& d : ar.codec_decisions) std::cout << " [" << d << "]";
    std::cout << "\n";
    EXPECT_EQ(raw, ar.payload_bytes);
    EXPECT_FALSE(ar.codec_decisions.empty()) << "auto never moved from its start on a limited link";
    EXPECT_LE(double(frame_bytes_of(ar)), 1.03 * double(frame_bytes_of(zr)));
    EXPECT_TRUE(same_tree(b / "repo/images/vm/1", master_version(1)));
}

TEST_F(ReplicationTest, AutoCompressionUsesOnlyWhatTheReplicaCanDecompress) {
    make_master(256 * MiB);
    write_text(work(), 8);
    commit(1);
    LoopFs a(LoopFs::Type::btrfs, 256 * MiB);
    ReplicaServer r1(a / "repo", replica_tls(1), "replica1", kCapLz4);
    auto o = options({r1.target()}, 1);
    o.compress_auto = true;
    o.bandwidth_limit = 16 * MiB;  // link-bound: it would like zstd
    auto rep = push_ok(o);
    ASSERT_EQ(rep.replicas.size(), 1u);
    ASSERT_FALSE(rep.replicas[0].codecs.empty());
    for (const auto& u : rep.replicas[0].codecs) EXPECT_TRUE(u.setting == "lz4" || u.setting == "none") << u.setting;
    EXPECT_TRUE(same_tree(a / "repo/images/vm/1", master_version(1)));
}

TEST_F(ReplicationTest, CutsAtDefaultCheckpointsResumeFromACheckpoint) {
    // Defaults (no checkpoint interval given): a cut a quarter to half of the
    // way into a push no longer restarts it from zero.
    make_master();
    sh("cd " + work().string() + " && dd if=/dev/urandom of=disk.raw bs=1M count=48 status=none");
    commit(1);
    LoopFs replica(LoopFs::Type::btrfs, 512 * MiB);
    ReplicaServer server(replica / "repo", replica_tls(1), "replica1");
    ReplicaServer baseline_server(replica / "baseline", replica_tls(2), "replica2");
    Proxy base_proxy(baseline_server.port());
    auto o = options({base_proxy.target()}, 1);
    o.compression = Compression::none;
    o.bandwidth_limit = 48 * MiB;  // about a second per push, whatever the machine
    push_ok(o);
    const uint64_t one_push = base_proxy.bytes_up();

    Proxy proxy(server.port());
    o.targets = {proxy.target()};
    const unsigned seed = std::random_device{}();
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<uint64_t> cut(one_push / 4, one_push / 2);
    int cuts = 0;
    uint64_t resumed = 0;
    std::optional<ReplicaReport> done;
    for (int i = 0; i < 8 && !done; ++i) {
        proxy.arm(cuts < 3 ? cut(rng) : UINT64_MAX);  // three cuts, then let it finish
        auto r = push(o);
        ASSERT_TRUE(r) << r.status().message();
        if (i > 0 && r->replicas[0].resume_seq > 0) ++resumed;
        if (r->replicas[0].ok()) {
            done = r->replicas[0];
            break;
        }
        ++cuts;
        EXPECT_FALSE(fs::exists(replica / "repo/images/vm/1")) << "published before the end";
    }
    ASSERT_TRUE(done) << "seed " << seed;
    const uint64_t total = proxy.bytes_up();
    std::cout << "[ measured ] default checkpoints: " << cuts << " cuts (seed " << seed << "), bytes over all attempts "
              << total << ", one push " << one_push << ", ratio " << double(total) / one_push << "\n";
    EXPECT_GE(cuts, 2) << "seed " << seed;
    EXPECT_EQ(resumed, static_cast<uint64_t>(cuts)) << "every attempt after a cut resumed from a checkpoint";
    EXPECT_GT(done->resume_seq, 0u);
    // From zero every time this would be 1 + 3 x (1/4 .. 1/2) of a push.
    EXPECT_LE(double(total), 1.5 * double(one_push));
    EXPECT_TRUE(same_tree(replica / "repo/images/vm/1", master_version(1)));
}

TEST_F(ReplicationTest, FullReplicaDiskFailsCleanlyAndGivesTheSpaceBack) {
    make_master();
    sh("cd " + work().string() + " && dd if=/dev/urandom of=disk.raw bs=1M count=96 status=none");
    commit(1);
    LoopFs small(LoopFs::Type::ext4, 64 * MiB);
    ReplicaServer server(small / "repo", replica_tls(1), "replica1");
    ::sync();
    const uint64_t free_before = free_bytes(small.mount_point());
    auto r = push(options({server.target()}, 1));
    ASSERT_TRUE(r) << r.status().message();
    const auto& rep = r->replicas[0];
    EXPECT_FALSE(rep.ok());
    EXPECT_EQ(rep.code, ErrorCode::no_space) << rep.status.message();
    EXPECT_NE(rep.status.message().find("image 'vm' version 1"), std::string::npos) << rep.status.message();
    auto reports = server.wait_reports(1);
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_EQ(reports[0].code, ErrorCode::no_space);
    EXPECT_FALSE(reports[0].staging_kept);
    auto repo = open_repo(small / "repo");
    EXPECT_TRUE(repo.list_versions("vm")->empty());
    EXPECT_TRUE(repo.list_staging()->empty());
    ::sync();
    EXPECT_GE(free_bytes(small.mount_point()) + 1 * MiB, free_before);
}

// ---- bad input from a hand-made sender ----

class Evil {
public:
    Evil(uint16_t port, const TlsConfig& cfg) {
        auto s = connect("127.0.0.1", port, cfg);
        if (!s) throw std::runtime_error(s.status().message());
        s_ = std::move(s.value());
    }
    void raw(const Bytes& b) { ASSERT_TRUE(s_.write_all(b)); }
    template <typename M>
    void send(const M& m) {
        auto f = make_frame(m);
        ASSERT_TRUE(f) << f.status().message();
        raw(*f);
    }
    // The next frame, or nullopt when the stream ended.
    std::optional<Frame> read() {
        std::array<uint8_t, 4096> buf;
        for (;;) {
            auto f = d_.next();
            if (!f || f->has_value()) return f ? std::move(*f) : std::nullopt;
            auto n = s_.read_some(buf);
            if (!n || *n == 0) return std::nullopt;
            d_.feed(std::span<const uint8_t>(buf.data(), *n));
        }
    }
    // HELLO, OFFER of `version` of `image`; returns the NEED (or the ERROR frame's code as a NEED-less result).
    std::variant<Need, Error> open(const std::string& image, uint64_t version, std::vector<uint64_t> held = {}) {
        Hello h;
        h.node_name = "evil";
        send(h);
        auto hf = read();
        EXPECT_TRUE(hf && hf->type == FrameType::hello);
        Offer o;
        o.version = version;
        o.image = image;
        o.held = std::move(held);
        Bytes payload;
        o.encode_payload(payload);  // unvalidated: the image name may be bad on purpose
        auto frame = FrameHeader::for_payload(FrameType::offer, payload).encode();
        Bytes all(frame.begin(), frame.end());
        all.insert(all.end(), payload.begin(), payload.end());
        raw(all);
        return answer();
    }
    std::variant<Need, Error> answer() {
        auto f = read();
        if (!f) return Error{ErrorCode::internal, "connection closed"};
        if (f->type == FrameType::need) return *Need::decode(f->payload);
        if (f->type == FrameType::error) return *Error::decode(f->payload);
        return Error{ErrorCode::internal, std::string("unexpected ") + frame_type_name(f->type)};
    }
    void shutdown() { (void)s_.shutdown(); }
    void close() { s_.close(); }

private:
    Stream s_;
    FrameDecoder d_;
};

ErrorCode code_of(const std::variant<Need, Error>& v) {
    return std::holds_alternative<Error>(v) ? std::get<Error>(v).code : ErrorCode::ok;
}
std::string message_of(const std::variant<Need, Error>& v) {
    return std::holds_alternative<Error>(v) ? std::get<Error>(v).message : "(no error)";
}

TEST_F(ReplicationTest, BadInputStopsWithAClearErrorAndLeavesPublishedVersionsAlone) {
    LoopFs fsys(LoopFs::Type::btrfs, 256 * MiB);
    const fs::path root = fsys / "repo";
    fs::create_directories(fsys / "src");
    sh("cd " + (fsys / "src").string() + " && echo keep > kept.txt && mkdir d && echo x > d/y");
    auto repo = open_repo(root);
    ASSERT_TRUE(repo.commit("img", 1, fsys / "src"));
    TlsConfig plain;
    plain.insecure_plaintext = true;
    plain.io_timeout = 10s;
    ReplicaServer server(root, plain, "replica1");
    size_t reports = 0;
    auto last_report = [&] {
        auto r = server.wait_reports(++reports);
        EXPECT_EQ(r.size(), reports);
        return r.empty() ? ReceiveReport{} : r.back();
    };
    auto staged = [&] { return repo.list_staging("img")->size(); };
    // Streams version 2 up to the point where `bad` is sent.
    auto start_v2 = [&](Evil& e) {
        auto need = e.open("img", 2, {1});
        EXPECT_EQ(code_of(need), ErrorCode::ok) << message_of(need);
        Truncate t{1, 8192, "new.bin"};
        e.send(t);
    };
    auto expect_error = [&](Evil& e, ErrorCode code, const std::string& what) {
        auto ans = e.answer();
        EXPECT_EQ(code_of(ans), code) << what << ": " << message_of(ans);
        e.close();
        auto rep = last_report();
        EXPECT_EQ(rep.code, code) << what << ": " << rep.status.message();
        EXPECT_NE(rep.status.message().find("image 'img'"), std::string::npos) << rep.status.message();
        return rep;
    };

    {  // a DATA frame whose payload checksum is wrong: protocol error, staging kept for resume
        Evil e(server.port(), plain);
        start_v2(e);
        Bytes chunk(4096, 7);
        Data d;
        d.seq = 2;
        d.length = 4096;
        d.path = "new.bin";
        d.bytes = chunk;
        auto f = make_frame(d);
        (*f)[kFrameHeaderSize + 30] ^= 1;
        e.raw(*f);
        auto rep = expect_error(e, ErrorCode::protocol, "bad checksum");
        EXPECT_TRUE(rep.staging_kept);
        EXPECT_EQ(staged(), 1u);
    }
    {  // a truncated frame (the sender vanishes in the middle): staging kept, and the next offer resumes it
        Evil e(server.port(), plain);
        auto need = e.open("img", 2, {1});
        ASSERT_EQ(code_of(need), ErrorCode::ok) << message_of(need);
        EXPECT_EQ(std::get<Need>(need).base, 1u);
        auto f = make_frame(Truncate{1, 8192, "new.bin"});
        e.raw(Bytes(f->begin(), f->begin() + 30));
        e.shutdown();
        auto rep = last_report();
        EXPECT_NE(rep.status.message().find("truncated"), std::string::npos) << rep.status.message();
        EXPECT_TRUE(rep.staging_kept);
        e.close();
    }
    {  // oversized frame
        Evil e(server.port(), plain);
        start_v2(e);
        FrameHeader h;
        h.type = FrameType::data;
        h.payload_length = kMaxPayload + 1;
        auto hb = h.encode();
        e.raw(Bytes(hb.begin(), hb.end()));
        expect_error(e, ErrorCode::protocol, "oversized");
    }
    {  // unknown frame type
        Evil e(server.port(), plain);
        start_v2(e);
        Bytes payload(8, 0);
        auto hb = FrameHeader::for_payload(static_cast<FrameType>(0x55), payload).encode();
        Bytes all(hb.begin(), hb.end());
        all.insert(all.end(), payload.begin(), payload.end());
        e.raw(all);
        expect_error(e, ErrorCode::protocol, "unknown type");
    }
    {  // a path with ".." in a FILE frame: bad_name, staging removed
        Evil e(server.port(), plain);
        start_v2(e);
        Bytes payload;
        FileEntry fe{2, "d/../../escape", EntryAttrs{EntryType::regular, 0644, 0, 0, 0, 0, 0, {}}};
        fe.encode_payload(payload);
        auto hb = FrameHeader::for_payload(FrameType::file, payload).encode();
        Bytes all(hb.begin(), hb.end());
        all.insert(all.end(), payload.begin(), payload.end());
        e.raw(all);
        auto rep = expect_error(e, ErrorCode::bad_name, "path with ..");
        EXPECT_FALSE(rep.staging_kept);
        EXPECT_EQ(staged(), 0u);
        EXPECT_FALSE(fs::exists(fsys / "escape"));
    }
    {  // a symlink planted in the tree does not lead a later write outside
        Evil e(server.port(), plain);
        start_v2(e);
        e.send(FileEntry{2, "lnk", EntryAttrs{EntryType::symlink, 0, 0, 0, 0, 0, 0, "d"}});
        e.send(Truncate{3, 100, "lnk/z"});
        expect_error(e, ErrorCode::protocol, "write through a symlink");
        EXPECT_FALSE(fs::exists(root / "images/img/1/d/z"));
    }
    {  // a version that is not newer
        Evil e(server.port(), plain);
        auto ans = e.open("img", 1, {});
        EXPECT_EQ(code_of(ans), ErrorCode::ok) << "version 1 is published: NEED nothing";
        EXPECT_EQ(std::get<Need>(ans).kind, NeedKind::nothing);
        e.close();
        last_report();
    }
    {  // a bad image name
        Evil e(server.port(), plain);
        auto ans = e.open("../etc", 5, {});
        EXPECT_EQ(code_of(ans), ErrorCode::bad_name) << message_of(ans);
        e.close();
        last_report();
    }
    {  // a DATA frame with a corrupt zstd chunk: protocol error
        Evil e(server.port(), plain);
        start_v2(e);
        Bytes junk(100, 0xAB);
        Data d;
        d.seq = 2;
        d.length = 4096;
        d.path = "new.bin";
        d.compression = Compression::zstd;
        d.bytes = junk;
        e.send(d);
        expect_error(e, ErrorCode::protocol, "corrupt zstd");
    }
    {  // a wrong digest at END: digest_mismatch, nothing published, staging removed
        Evil e(server.port(), plain);
        start_v2(e);
        e.send(FileEntry{2, "new.bin", EntryAttrs{EntryType::regular, 0644, 0, 0, 5, 0, 8192, {}}});
        e.send(End{2, 0, 1, 2, 3});
        auto f = e.read();
        ASSERT_TRUE(f && f->type == FrameType::result);
        auto res = PushResult::decode(f->payload);
        EXPECT_EQ(res->code, ErrorCode::digest_mismatch) << res->message;
        EXPECT_NE(res->message.find("digest mismatch"), std::string::npos) << res->message;
        e.close();
        last_report();
        EXPECT_EQ(staged(), 0u);
    }
    // After all that: only version 1, untouched.
    EXPECT_EQ(*repo.list_versions("img"), std::vector<uint64_t>{1});
    EXPECT_TRUE(same_tree(root / "images/img/1", fsys / "src"));
}

TEST_F(ReplicationTest, APeerWithoutAValidCertificateIsRefused) {
    make_master(256 * MiB);
    build_v1(work());
    commit(1);
    LoopFs fsys(LoopFs::Type::ext4, 128 * MiB);
    ReplicaServer server(fsys / "repo", replica_tls(1), "replica1");
    // A master whose certificate comes from another CA.
    auto o = options({server.target()}, 1);
    o.tls = certs_->config("rogue", "intruder");
    o.tls.ca_file = (certs_->dir.path() / "good/ca.crt").string();
    auto r = push(o);
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_FALSE(r->replicas[0].ok());
    EXPECT_NE(r->replicas[0].status.message().find("image 'vm' version 1"), std::string::npos)
        << r->replicas[0].status.message();
    std::cout << "[ message ] " << r->replicas[0].status.message() << "\n";
    EXPECT_TRUE(open_repo(fsys / "repo").list_versions("vm")->empty());
    EXPECT_TRUE(server.rx().reports().empty());
    // The same push with the cluster's certificate goes through.
    push_ok(options({server.target()}, 1));
}

TEST_F(ReplicationTest, ToolPushPrintsJsonAndExitCodes) {
    master_with_v1();
    LoopFs fsys(LoopFs::Type::ext4, 128 * MiB);
    OnceServer srv(fsys / "repo", replica_tls(1));
    auto tool = ToolServer::tool().string();
    auto res = test::run_command(tool_push(master_root_, srv.port, master_tls(), {"--json"}));
    EXPECT_EQ(res.exit_code, 0) << res.describe();
    EXPECT_NE(res.output.find("\"kind\":\"full\""), std::string::npos) << res.output;
    EXPECT_NE(res.output.find("\"result\":\"ok\""), std::string::npos) << res.output;
    EXPECT_EQ(res.output.find('\r'), std::string::npos) << "no progress line without a terminal: " << res.output;
    EXPECT_EQ(srv.wait(), 0) << srv.stderr_text();
    EXPECT_TRUE(same_tree(fsys / "repo/images/vm/1", master_version(1)));

    auto bad = test::run_command({tool, "push", "--root", master_root_.string(), "--bogus"});
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.output.find("--bogus"), std::string::npos) << bad.output;
    // Nobody listens there: exit 1, the message names image, version and peer.
    auto down = test::run_command(tool_push(master_root_, 1, master_tls()));
    EXPECT_EQ(down.exit_code, 1) << down.describe();
    EXPECT_NE(down.output.find("image 'vm' version 1 to replica 127.0.0.1:1"), std::string::npos) << down.output;
    auto list = test::run_command({tool, "list", "--root", (fsys / "repo").string(), "--json"});
    EXPECT_EQ(list.exit_code, 0);
    EXPECT_NE(list.output.find("{\"image\":\"vm\",\"versions\":[1]}"), std::string::npos) << list.output;
}

// On a terminal, push keeps one line per push up to date: each replica's
// state, bytes sent of the total, rate and ETA (redrawn with \r).
// Regression: `serve --once` exited 0 after a session that failed before any
// offer, and after a failed TLS handshake it did not exit at all (it waited
// for another connection).
TEST_F(ReplicationTest, ServeOnceExitsNonZeroAfterAFailedHandshakeOrSession) {
    master_with_v1();
    LoopFs fsys(LoopFs::Type::ext4, 128 * MiB);
    {  // a master whose certificate another CA signed: the handshake fails
        OnceServer srv(fsys / "repo", replica_tls(1));
        auto o = options({HostPort{"127.0.0.1", srv.port}}, 1);
        o.tls = certs_->config("rogue", "intruder");
        o.tls.ca_file = (certs_->dir.path() / "good/ca.crt").string();
        auto r = push(o);
        ASSERT_TRUE(r) << r.status().message();
        EXPECT_FALSE(r->replicas[0].ok());
        EXPECT_EQ(srv.wait(), 1) << srv.stderr_text();
        EXPECT_NE(srv.stderr_text().find("refused connection"), std::string::npos) << srv.stderr_text();
    }
    {  // a peer that breaks the protocol right after connecting: no offer, no report
        TlsConfig plain;
        plain.insecure_plaintext = true;
        OnceServer srv(fsys / "repo", plain, {"--insecure-plaintext"});
        Evil e(srv.port, plain);
        Hello h;
        h.role = Role::receiver;  // a sender must say it is one
        h.node_name = "evil";
        e.send(h);
        auto answer = e.read();
        ASSERT_TRUE(answer);
        EXPECT_EQ(answer->type, FrameType::error);
        e.close();
        EXPECT_EQ(srv.wait(), 1) << srv.stderr_text();
        EXPECT_NE(srv.stderr_text().find("not a sender"), std::string::npos) << srv.stderr_text();
    }
    {  // the control: a push that goes through
        OnceServer srv(fsys / "repo", replica_tls(1));
        push_ok(options({HostPort{"127.0.0.1", srv.port}}, 1));
        EXPECT_EQ(srv.wait(), 0) << srv.stderr_text();
    }
}

// The tool's command line (CLI11): a usage error exits 2 and names the
// option; a negative compression level is a value, not an option.
TEST_F(ReplicationTest, ToolUsageErrorsExitTwoAndNameTheOption) {
    const std::string tool = ToolServer::tool().string();
    struct Case {
        std::vector<std::string> args;
        std::string says;
    };
    const std::vector<Case> cases = {
        {{tool, "push", "--root", "/nonexistent", "--bogus"}, "--bogus"},
        {{tool, "push", "--image", "vm"}, "--root is required"},
        {{tool, "push", "--root", "/r", "--root", "/s"}, "--root"},
        {{tool, "push", "--root", "/r", "--image", "vm", "--version", "0", "--to", "127.0.0.1:1", "--insecure-plaintext"},
         "--version '0'"},
        {{tool, "push", "--root", "/r", "--image", "vm", "--version", "1", "--insecure-plaintext"}, "--to is required"},
        {{tool, "serve", "--root", "/r", "--listen", "127.0.0.1:0"}, "--ca is required"},
        {{tool, "list", "--json=yes", "extra"}, "extra"},
        {{tool, "frobnicate"}, "frobnicate"},
        {{tool}, "subcommand"},
    };
    for (const auto& c : cases) {
        auto r = test::run_command(c.args);
        EXPECT_EQ(r.exit_code, 2) << r.describe();
        EXPECT_NE(r.output.find(c.says), std::string::npos) << r.describe();
    }
    auto neg = test::run_command({tool, "push", "--root", "/nonexistent", "--image", "vm", "--version", "1", "--to",
                                  "127.0.0.1:1", "--insecure-plaintext", "--compress", "zstd", "--compress-level", "-5"});
    EXPECT_EQ(neg.exit_code, 1) << "past the options, the repository is missing: " << neg.describe();
    EXPECT_NE(neg.output.find("/nonexistent"), std::string::npos) << neg.describe();
    auto help = test::run_command({tool, "help"});
    EXPECT_EQ(help.exit_code, 0) << help.describe();
    EXPECT_NE(help.output.find("icbd-replicate push --root DIR"), std::string::npos) << help.describe();
}

TEST_F(ReplicationTest, ToolPushShowsProgressOnATerminal) {
    master_with_v1();
    LoopFs fsys(LoopFs::Type::ext4, 128 * MiB);
    OnceServer srv(fsys / "repo", replica_tls(1));
    // `script` gives the push a pseudo-terminal as stderr; the bandwidth limit
    // stretches the ~5 MiB push over a few seconds of progress updates. (The
    // paths have no spaces: joined, the words stay words.)
    std::string cmd;
    for (const auto& a : tool_push(master_root_, srv.port, master_tls(), {"--compress", "none", "--bwlimit", "2M"}))
        cmd += (cmd.empty() ? "" : " ") + a;
    auto res = test::run_command({"script", "-qfec", cmd, "/dev/null"});
    EXPECT_EQ(res.exit_code, 0) << res.describe();
    EXPECT_EQ(srv.wait(), 0) << srv.stderr_text();
    std::vector<std::string> lines;
    std::string cur;
    for (char c : res.output) {
        if (c == '\r' || c == '\n') {
            if (!cur.empty()) lines.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    size_t streaming_with_eta = 0;
    for (const auto& l : lines)
        if (l.find("streaming") != std::string::npos && l.find("/s") != std::string::npos &&
            l.find(" ETA ") != std::string::npos)
            ++streaming_with_eta;
    EXPECT_GE(streaming_with_eta, 3u) << "expected several redrawn progress lines with rate and ETA:\n" << res.output;
    // The last state of the line says the push is over, with all bytes sent.
    auto done = std::find_if(lines.rbegin(), lines.rend(), [](const std::string& l) { return l.find(" done ") != std::string::npos; });
    ASSERT_NE(done, lines.rend()) << res.output;
    EXPECT_NE(done->find("127.0.0.1"), std::string::npos) << *done;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(*done, m, std::regex(R"(done (\S+ \S+)/(\S+ \S+) )"))) << *done;
    EXPECT_EQ(m[1].str(), m[2].str()) << *done;
    EXPECT_TRUE(same_tree(fsys / "repo/images/vm/1", master_version(1)));

    // A level zstd does not have is bad usage, refused before connecting.
    auto again = test::run_command(tool_push(master_root_, 1, master_tls(), {"--compress-level", "99"}));
    EXPECT_EQ(again.exit_code, 2) << again.describe();
    EXPECT_NE(again.output.find("--compress-level: zstd level 99"), std::string::npos) << again.output;
}

}  // namespace
}  // namespace icbd::repl
