// The push's two policies as pure functions (no clock, no sockets): the
// adaptive compression controller (--compress auto) and the checkpoint schedule.
#include <gtest/gtest.h>

#include <chrono>

#include "checkpoint_schedule.hpp"
#include "icbd/replicator/compression.hpp"
#include "icbd/replicator/sender.hpp"

namespace {

using namespace icbd::repl;
using namespace std::chrono_literals;

constexpr uint64_t MiB = 1u << 20;
constexpr uint32_t kAll = kCapLz4 | kCapZstd;

size_t step_of(const std::string& name) {
    auto l = codec_ladder();
    for (size_t i = 0; i < l.size(); ++i)
        if (l[i].name() == name) return i;
    ADD_FAILURE() << "no ladder step " << name;
    return 0;
}

// A window of 0.1 s at one worker that compressed `raw` input bytes at
// `speed` bytes/s with `ratio`, the writer writing its frames at `link`
// frame bytes/s (0: it never waited on the socket).
CodecObservation window(double speed, double ratio, double link, double starved_frac, double blocked_frac) {
    CodecObservation o;
    o.seconds = 0.1;
    o.workers = 1;
    o.raw_bytes = static_cast<uint64_t>(speed * 0.1 * 0.9);
    o.coded_bytes = static_cast<uint64_t>(o.raw_bytes * ratio);
    o.compress_seconds = 0.09;
    if (link > 0) {
        o.link_seconds = 0.08;
        o.link_bytes = static_cast<uint64_t>(link * 0.08);
        o.link_raw_bytes = static_cast<uint64_t>(o.link_bytes / ratio);
    }
    o.starved_seconds = starved_frac * o.seconds;
    o.producer_blocked_seconds = blocked_frac * o.seconds;
    return o;
}

TEST(CodecLadder, RunsFromNoneToZstd7AndStartsAtZstd1) {
    auto l = codec_ladder();
    ASSERT_EQ(l.size(), 6u);
    EXPECT_EQ(l.front().name(), "none");
    EXPECT_EQ(l[1].name(), "lz4");
    EXPECT_EQ(l.back().name(), "zstd:7");
    EXPECT_EQ(l[kAutoStartStep].name(), "zstd:1");
    CodecControl c;
    EXPECT_EQ(c.step, step_of("zstd:1"));
}

TEST(CodecController, ASlowLinkMakesItCompressHarderAsFarAsTheCompressorsKeepUp) {
    // 100 Mbit/s (12.5 MB/s of frames) against zstd 1 at 200 MB/s: the reader
    // waits on the link half the time. Two steps at most per window.
    CodecControl c;
    auto d = next_codec_step(window(200e6, 0.37, 12.5e6, 0, 0.5), c, kAll);
    EXPECT_EQ(d.step, step_of("zstd:5"));
    EXPECT_STREQ(d.reason, "link-bound");
    EXPECT_EQ(c.step, d.step);
    // At zstd 5 (60 MB/s, ratio 0.333) the link carries more input bytes per
    // second than before (12.5e6 / 0.333 > 12.5e6 / 0.37): zstd 7 next.
    d = next_codec_step(window(80e6, 0.333, 12.5e6, 0, 0.5), c, kAll);
    EXPECT_EQ(d.step, step_of("zstd:7"));
}

TEST(CodecController, DoesNotCompressHarderThanTheWorkersCanFeedTheLink) {
    // A 1 Gbit/s link (117 MB/s) with one worker at zstd 1: zstd 3 at ~115
    // MB/s would make the compressor the bottleneck, so it stays.
    CodecControl c;
    auto d = next_codec_step(window(200e6, 0.37, 117e6, 0, 0.5), c, kAll);
    EXPECT_EQ(d.step, step_of("zstd:1"));
    // Four workers: zstd 3 keeps up (4 x 115 MB/s against 117e6 / 0.345 x 1.2).
    CodecControl c4;
    auto o = window(200e6, 0.37, 117e6, 0, 0.5);
    o.workers = 4;
    o.raw_bytes *= 4;
    o.coded_bytes *= 4;
    o.compress_seconds = 4 * 0.09;
    EXPECT_EQ(next_codec_step(o, c4, kAll).step, step_of("zstd:3"));
}

TEST(CodecController, WhenHarderDoesNotMoveMoreDataItGoesBackAndStaysThere) {
    // The replica's disk is the limit: the link takes 100 MB/s of input at
    // any ratio, so the bytes saved by zstd 3 do not make the push faster.
    const double input_rate = 54e6;
    CodecControl c;
    auto d = next_codec_step(window(200e6, 0.37, input_rate * 0.37, 0, 0.5), c, kAll);
    ASSERT_EQ(d.step, step_of("zstd:3"));
    d = next_codec_step(window(115e6, 0.345, input_rate * 0.345, 0, 0.5), c, kAll);
    EXPECT_EQ(d.step, step_of("zstd:1"));
    EXPECT_STREQ(d.reason, "harder did not pay");
    // Still link-bound: no harder again while the ceiling holds...
    for (int i = 0; i < 19; ++i)
        EXPECT_EQ(next_codec_step(window(200e6, 0.37, input_rate * 0.37, 0, 0.5), c, kAll).step, step_of("zstd:1")) << i;
    // ...which is lifted after 20 windows (the link may have changed).
    EXPECT_GT(next_codec_step(window(200e6, 0.37, input_rate * 0.37, 0, 0.5), c, kAll).step, step_of("zstd:1"));
}

TEST(CodecController, WaitsUntilFramesOfTheNewSettingReachTheSocket) {
    CodecControl c;
    next_codec_step(window(200e6, 0.37, 12.5e6, 0, 0.5), c, kAll);
    const size_t now = c.step;
    // Link-bound, but the writer has only written frames of the old setting:
    // no link figure at this setting yet, nothing changes (not even the memory).
    auto o = window(60e6, 0.333, 0, 0, 0.5);
    EXPECT_EQ(next_codec_step(o, c, kAll).step, now);
    EXPECT_EQ(c.last_step, step_of("zstd:1"));
}

TEST(CodecController, AFastLinkMakesItCompressCheaperOneStepAtATime) {
    // Loopback: the writer starves while the one worker is busy all the time.
    // Each move takes two CPU-bound windows at the setting it leaves.
    CodecControl c;
    auto d = next_codec_step(window(200e6, 0.37, 0, 0.6, 0), c, kAll);
    EXPECT_EQ(d.step, step_of("zstd:1"));
    d = next_codec_step(window(200e6, 0.37, 0, 0.6, 0), c, kAll);
    EXPECT_EQ(d.step, step_of("lz4"));
    EXPECT_STREQ(d.reason, "cpu-bound");
    d = next_codec_step(window(650e6, 0.43, 0, 0.6, 0), c, kAll);
    EXPECT_EQ(d.step, step_of("lz4"));
    d = next_codec_step(window(650e6, 0.43, 0, 0.6, 0), c, kAll);
    EXPECT_EQ(d.step, step_of("none"));
    d = next_codec_step(window(4000e6, 1.0, 0, 0.6, 0), c, kAll);
    EXPECT_EQ(d.step, step_of("none"));
}

TEST(CodecController, OneStarvedWindowIsNotACpuBottleneck) {
    // Regression: under CI load a push on a 4 MiB/s link went from zstd 1 to
    // lz4 in its first window (pipeline filling, compressors preempted) and
    // sent 1.28x the bytes of zstd 3. A window that looks CPU-bound between
    // two that do not moves nothing.
    CodecControl c;
    EXPECT_EQ(next_codec_step(window(200e6, 0.37, 0, 0.6, 0), c, kAll).step, step_of("zstd:1"));
    EXPECT_EQ(next_codec_step(window(200e6, 0.37, 0, 0, 0), c, kAll).step, step_of("zstd:1"));
    EXPECT_EQ(next_codec_step(window(200e6, 0.37, 0, 0.6, 0), c, kAll).step, step_of("zstd:1"));
}

TEST(CodecController, NeverCheaperThanTheBandwidthLimitCanCarry) {
    // The compressors look slow (10 MB/s per core, a loaded machine) and the
    // writer starves, but the bandwidth limit (4 MiB/s of frames) carries at
    // most 11 MB/s of zstd 1's input and 9.8 MB/s of lz4's: lz4 would send
    // more bytes and move no more data.
    CodecControl c;
    for (int i = 0; i < 4; ++i) {
        auto o = window(10e6, 0.37, 0, 0.6, 0);
        o.link_limit = 4 * 1048576.0;
        EXPECT_EQ(next_codec_step(o, c, kAll).step, step_of("zstd:1")) << i;
    }
    // Without the limit the same windows do move it.
    CodecControl u;
    next_codec_step(window(10e6, 0.37, 0, 0.6, 0), u, kAll);
    EXPECT_EQ(next_codec_step(window(10e6, 0.37, 0, 0.6, 0), u, kAll).step, step_of("lz4"));
}

TEST(CodecController, CheaperOnlyWhenItWouldBeFaster) {
    // The writer starves, but the link (measured while writing) is slow
    // enough that lz4's bigger frames would not move more input: stay.
    CodecControl c;
    c.step = step_of("zstd:1");
    auto d = next_codec_step(window(200e6, 0.37, 60e6, 0.3, 0), c, kAll);
    EXPECT_EQ(d.step, step_of("zstd:1"));
}

TEST(CodecController, AReaderBoundPushKeepsItsSetting) {
    // Cold disk: the writer starves but the workers idle too (waiting for
    // reads): cheaper compression would not help.
    CodecControl c;
    auto o = window(200e6, 0.37, 0, 0.7, 0);
    o.compress_seconds = 0.02;
    auto d = next_codec_step(o, c, kAll);
    EXPECT_EQ(d.step, step_of("zstd:1"));
    EXPECT_STREQ(d.reason, "steady");
}

TEST(CodecController, NeverPicksACodecTheReplicasCannotDecompress) {
    CodecControl c;
    c.step = step_of("lz4");
    // Link-bound, but the replica only has lz4: stays at lz4.
    EXPECT_EQ(next_codec_step(window(650e6, 0.43, 12.5e6, 0, 0.5), c, kCapLz4).step, step_of("lz4"));
    // No capabilities at all: from none, nothing harder.
    CodecControl n;
    n.step = step_of("none");
    EXPECT_EQ(next_codec_step(window(4000e6, 1.0, 12.5e6, 0, 0.5), n, 0).step, step_of("none"));
}

TEST(CodecController, AnEmptyWindowChangesNothing) {
    CodecControl c;
    CodecObservation o;
    auto d = next_codec_step(o, c, kAll);
    EXPECT_EQ(d.step, kAutoStartStep);
    EXPECT_STREQ(d.reason, "too little data");
}

TEST(CheckpointSchedule, DefaultIsASixteenthOfTheStreamBetweenOneAnd64MiB) {
    PushOptions o;
    EXPECT_EQ(checkpoint_schedule(o, 100 * MiB).every_bytes, 100 * MiB / 16);
    EXPECT_EQ(checkpoint_schedule(o, 4 * MiB).every_bytes, 1 * MiB);
    EXPECT_EQ(checkpoint_schedule(o, 4096 * MiB).every_bytes, 64 * MiB);
    o.checkpoint_interval = 256 * 1024;
    EXPECT_EQ(checkpoint_schedule(o, 4096 * MiB).every_bytes, 256u * 1024);
}

TEST(CheckpointSchedule, ByBytesButNotTooOftenAndAtLeastEverySecond) {
    PushOptions o;
    auto s = checkpoint_schedule(o, 160 * MiB);  // every 10 MiB, 100 ms .. 1 s apart
    EXPECT_FALSE(checkpoint_due(s, 0, 5s));
    EXPECT_FALSE(checkpoint_due(s, 9 * MiB, 500ms));
    EXPECT_TRUE(checkpoint_due(s, 10 * MiB, 150ms));
    EXPECT_FALSE(checkpoint_due(s, 10 * MiB, 50ms)) << "a fast link: spaced by 100 ms";
    EXPECT_TRUE(checkpoint_due(s, 160 * MiB, 50ms)) << "16 intervals without one";
    EXPECT_TRUE(checkpoint_due(s, 1 * MiB, 1s)) << "a slow link: about a second of transfer";
    EXPECT_FALSE(checkpoint_due(s, 1000, 2s)) << "not for a few bytes";
    // Explicit interval from the tool: bytes only.
    o.checkpoint_interval = 256 * 1024;
    o.checkpoint_min_period = 0ms;
    o.checkpoint_max_period = 0ms;
    s = checkpoint_schedule(o, 160 * MiB);
    EXPECT_TRUE(checkpoint_due(s, 256 * 1024, 0ms));
    EXPECT_FALSE(checkpoint_due(s, 255 * 1024, 10s));
}

}  // namespace
