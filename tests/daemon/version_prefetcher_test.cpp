// Where blockd's prefetch of a version takes each file's boot set from
// (docs/blockd.md, "Boot sets"): this node's recorded set first, then the
// master's answer (saved here), then an older local set as a prediction;
// corrupt answers ignored; a version this node does not hold is ENOENT.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <thread>
#include <fstream>

#include "icbd/boot_set.hpp"
#include "temp_dir.hpp"
#include "version_prefetcher.hpp"

namespace icbd::node {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kFileSize = 4 << 20;

class VersionPrefetcherTest : public ::testing::Test {
protected:
    void SetUp() override {
        for (uint64_t v : {1, 2}) {
            fs::path d = repo_.path() / "images" / "win10" / std::to_string(v);
            fs::create_directories(d);
            std::ofstream out(d / "disk.raw", std::ios::binary);
            std::string mib(1 << 20, char('a' + v));
            for (uint64_t i = 0; i < kFileSize >> 20; ++i) out << mib;
        }
    }
    BootSet set(uint32_t boots, uint64_t version, uint64_t at) {
        auto s = BootSet::create(kFileSize);
        EXPECT_TRUE(s);
        s->mark(at, 128 << 10);
        s->boots = boots;
        s->version = version;
        return *s;
    }
    VersionPrefetcher prefetcher(VersionPrefetcher::AskMaster ask) {
        return VersionPrefetcher(repo_.path(), PrefetchOptions{}, std::move(ask), nullptr);
    }
    // A master that answers with `reply` and counts the questions.
    VersionPrefetcher::AskMaster master(Result<BootSetReply> reply) {
        return [this, reply](const std::string&, uint64_t, const std::string&) {
            ++asked_;
            return reply;
        };
    }
    test::TempDir repo_;
    std::atomic<int> asked_{0};
};

TEST_F(VersionPrefetcherTest, AVersionThisNodeDoesNotHoldIsENOENT) {
    auto p = prefetcher(nullptr);
    auto r = p.run("win10", 9);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), ENOENT);
    EXPECT_EQ(r.status().message(), "image 'win10' version 9: not on this node");
}

TEST_F(VersionPrefetcherTest, TheMastersSetIsSavedHereAndPrefetched) {
    BootSet recorded = set(5, 2, 1 << 20);
    auto p = prefetcher(master(BootSetReply{"win10", 2, "disk.raw", BootSetKind::recorded, 2, recorded.encode()}));
    auto r = p.run("win10", 2);
    ASSERT_TRUE(r) << r.status().message();
    ASSERT_EQ(r->files.size(), 1u);
    const FilePrefetch& f = r->files[0];
    EXPECT_EQ(f.from, "master");
    EXPECT_EQ(f.kind, BootSetKind::recorded);
    EXPECT_EQ(f.boots, 5u);
    ASSERT_TRUE(f.summary);
    EXPECT_EQ(f.summary->total_bytes, recorded.bytes());
    EXPECT_EQ(f.summary->end, PrefetchEnd::complete);
    auto saved = load_boot_set(boot_set_path(repo_.path(), "win10", 2, "disk.raw"));
    ASSERT_TRUE(saved) << saved.status().message();
    EXPECT_EQ(saved->boots, 5u);
    EXPECT_EQ(saved->runs(), recorded.runs());
    EXPECT_EQ(to_json(*r)["files"][0]["from"], "master");
}

TEST_F(VersionPrefetcherTest, ALocalRecordedSetWinsAndTheMasterIsNotAsked) {
    ASSERT_TRUE(save_boot_set(boot_set_path(repo_.path(), "win10", 2, "disk.raw"), set(1, 2, 0)));
    auto p = prefetcher(master(BootSetReply{"win10", 2, "disk.raw", BootSetKind::recorded, 2, set(9, 2, 1 << 20).encode()}));
    auto r = p.run("win10", 2);
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(asked_, 0);
    EXPECT_EQ(r->files[0].from, "local");
    EXPECT_EQ(r->files[0].boots, 1u);
    EXPECT_EQ(load_boot_set(boot_set_path(repo_.path(), "win10", 2, "disk.raw"))->boots, 1u);
}

TEST_F(VersionPrefetcherTest, WithoutTheMasterAnOlderLocalSetIsThePrediction) {
    ASSERT_TRUE(save_boot_set(boot_set_path(repo_.path(), "win10", 1, "disk.raw"), set(3, 1, 2 << 20)));
    auto p = prefetcher(master(Status::error(ECONNREFUSED, "master down")));
    auto r = p.run("win10", 2);
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(asked_, 1);
    EXPECT_EQ(r->files[0].from, "local");
    EXPECT_EQ(r->files[0].kind, BootSetKind::predicted);
    EXPECT_EQ(r->files[0].source, 1u);
    ASSERT_TRUE(r->files[0].summary);
    EXPECT_EQ(r->files[0].summary->total_bytes, 128u << 10);
}

TEST_F(VersionPrefetcherTest, ACorruptAnswerIsIgnoredAndNothingIsSavedOrRead) {
    std::vector<uint8_t> bytes = set(2, 2, 0).encode();
    bytes[49] ^= 0x01;
    auto p = prefetcher(master(BootSetReply{"win10", 2, "disk.raw", BootSetKind::recorded, 2, bytes}));
    auto r = p.run("win10", 2);
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(r->files[0].from, "none");
    EXPECT_FALSE(r->files[0].summary);
    EXPECT_EQ(r->read_bytes(), 0u);
    EXPECT_FALSE(fs::exists(boot_set_path(repo_.path(), "win10", 2, "disk.raw")));
    EXPECT_EQ(to_json(*r)["files"][0]["end"], "no boot set");
}

TEST_F(VersionPrefetcherTest, QueuedVersionsRunOnTheBackgroundThreadOnceEach) {
    auto p = prefetcher(master(BootSetReply{"win10", 1, "disk.raw", BootSetKind::none, 0, {}}));
    p.enqueue("win10", 1);
    p.enqueue("win10", 1);  // already waiting: not queued twice
    p.enqueue("win10", 2);
    EXPECT_FALSE(p.idle());
    p.start();
    for (int i = 0; i < 100 && !p.idle(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(p.idle());
    p.stop();
    EXPECT_EQ(asked_, 2) << "one question per file of each queued version";
}

}  // namespace
}  // namespace icbd::node
