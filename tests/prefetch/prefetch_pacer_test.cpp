// PrefetchPacer with a clock and measurements of the test's own: when it
// gives way (others' bytes on the device, its own lone reads slowed), how far
// (down to a floor of small, paced reads) and how it comes back.
#include <gtest/gtest.h>

#include <chrono>

#include "icbd/prefetch_pacer.hpp"

namespace icbd {
namespace {

using namespace std::chrono_literals;
using Clock = PrefetchPacer::Clock;
constexpr uint64_t kKiB = 1024, kMiB = 1024 * 1024;

// The defaults: 4 in flight, 1 MiB, 64 KiB floor, level 1/64 to 4 starting
// at 1, x0.25 on a busy window, doubling until then and +1/s after, 100 ms windows.
class PacerTest : public ::testing::Test {
protected:
    // One window of `length` closed with `others` bytes of someone else's.
    std::optional<PrefetchPacer::Decision> window(std::optional<uint64_t> others, std::chrono::milliseconds length = 100ms) {
        t_ += length;
        return pacer_.on_quiescent(t_, others);
    }
    void busy_until_floor() {
        for (int i = 0; i < 30; ++i) window(1 * kMiB);
        ASSERT_DOUBLE_EQ(pacer_.level(), 1.0 / 64);
    }
    Clock::time_point t_ = Clock::time_point() + 1h;
    PrefetchPacer pacer_{PacerConfig{}, t_};
};

TEST_F(PacerTest, StartsWithOneFullSizeRead) {
    EXPECT_EQ(pacer_.in_flight_limit(), 1u);
    EXPECT_EQ(pacer_.request_bytes(), 1 * kMiB);
    EXPECT_EQ(pacer_.gap_after(20ms, 64 * kKiB), 0ns);
}

TEST_F(PacerTest, AloneItReachesFullSpeedInTwoWindowsAndStays) {
    window(0);
    EXPECT_EQ(pacer_.in_flight_limit(), 2u);
    window(0);
    EXPECT_EQ(pacer_.in_flight_limit(), 4u);
    for (int i = 0; i < 50; ++i) {
        auto d = window(0);
        ASSERT_TRUE(d);
        EXPECT_FALSE(d->busy);
        EXPECT_FALSE(d->slow);
    }
    EXPECT_DOUBLE_EQ(pacer_.level(), 4.0);
    EXPECT_EQ(pacer_.stats().windows, 52u);
    EXPECT_EQ(pacer_.stats().busy_windows, 0u);
    EXPECT_DOUBLE_EQ(pacer_.stats().backed_off_seconds, 0.0);
}

TEST_F(PacerTest, OthersBytesCutTheLevelOncePerWindowDownToSmallPacedReads) {
    window(0);
    window(0);
    ASSERT_EQ(pacer_.in_flight_limit(), 4u);
    // Shorter than a window: counted, no decision yet.
    EXPECT_FALSE(window(8 * kKiB, 40ms));
    auto d = window(8 * kKiB, 60ms);  // 16 KiB in 100 ms = 160 KiB/s >= 64 KiB/s
    ASSERT_TRUE(d);
    EXPECT_TRUE(d->busy);
    EXPECT_EQ(pacer_.in_flight_limit(), 1u);
    EXPECT_EQ(pacer_.request_bytes(), 1 * kMiB);
    window(64 * kKiB);  // 1/4: one read of 256 KiB at a time, no pause
    EXPECT_EQ(pacer_.in_flight_limit(), 1u);
    EXPECT_EQ(pacer_.request_bytes(), 256 * kKiB);
    EXPECT_EQ(pacer_.gap_after(10ms, 64 * kKiB), 0ns);
    window(64 * kKiB);  // 1/16: 64 KiB, still no pause
    EXPECT_EQ(pacer_.request_bytes(), 64 * kKiB);
    EXPECT_EQ(pacer_.gap_after(10ms, 64 * kKiB), 0ns);
    window(64 * kKiB);  // 1/64: 64 KiB reads, the disk a quarter of the time
    EXPECT_EQ(pacer_.request_bytes(), 64 * kKiB);
    EXPECT_EQ(pacer_.gap_after(5ms, 64 * kKiB), 15ms);
    EXPECT_EQ(pacer_.stats().busy_windows, 4u);
    EXPECT_EQ(pacer_.stats().others_bytes, 16 * kKiB + 192 * kKiB);
}

TEST_F(PacerTest, BelowOneItReadsAtMostLevelTimesItsFastestRate) {
    pacer_.on_complete(10 * kMiB, 20ms, false);
    window(0);  // 10 MiB in 100 ms: 100 MiB/s
    EXPECT_DOUBLE_EQ(pacer_.stats().fastest_bytes_per_s, 100.0 * kMiB);
    EXPECT_EQ(pacer_.gap_after(1ms, 1 * kMiB), 0ns);  // level 2: no pause
    for (int i = 0; i < 5; ++i) window(1 * kMiB);
    ASSERT_DOUBLE_EQ(pacer_.level(), 1.0 / 64);
    // A throttle let the read through in 1 ms; 64 KiB at 100/64 MiB/s is 40 ms.
    EXPECT_EQ(pacer_.gap_after(1ms, 64 * kKiB), 39ms);
    // A slow read: the duty cycle (3x its time) is the longer pause.
    EXPECT_EQ(pacer_.gap_after(20ms, 64 * kKiB), 60ms);
}

TEST_F(PacerTest, ALoneFilesystemBlockIsNotSomeoneElse) {
    auto d = window(4 * kKiB);  // 40 KiB/s: under 64 KiB/s
    ASSERT_TRUE(d);
    EXPECT_FALSE(d->busy);
    EXPECT_EQ(pacer_.in_flight_limit(), 2u);
}

TEST_F(PacerTest, SustainedOthersKeepItAtTheFloorAndNoLower) {
    busy_until_floor();
    EXPECT_DOUBLE_EQ(pacer_.stats().min_level, 1.0 / 64);
    EXPECT_EQ(pacer_.in_flight_limit(), 1u);
    EXPECT_EQ(pacer_.request_bytes(), 64 * kKiB);
    EXPECT_EQ(pacer_.stats().busy_windows, 30u);
    EXPECT_NEAR(pacer_.stats().backed_off_seconds, 2.9, 1e-9);  // every window after the first busy one
}

TEST_F(PacerTest, QuietAfterOthersComesBackAdditivelyToFullSpeed) {
    busy_until_floor();
    window(0);  // +1/s x 0.1 s, no more doubling once someone was seen
    EXPECT_NEAR(pacer_.level(), 1.0 / 64 + 0.1, 1e-9);
    EXPECT_EQ(pacer_.request_bytes(), (static_cast<uint64_t>((1.0 / 64 + 0.1) * kMiB) / 4096) * 4096);
    for (int i = 0; i < 8; ++i) window(0);
    EXPECT_EQ(pacer_.in_flight_limit(), 1u);  // 0.92
    EXPECT_LT(pacer_.request_bytes(), 1 * kMiB);
    window(0);
    window(0);
    EXPECT_EQ(pacer_.in_flight_limit(), 1u);  // 1.12
    EXPECT_EQ(pacer_.request_bytes(), 1 * kMiB);
    for (int i = 0; i < 100; ++i) window(0);
    EXPECT_DOUBLE_EQ(pacer_.level(), 4.0);  // and never above
    EXPECT_EQ(pacer_.in_flight_limit(), 4u);
}

TEST_F(PacerTest, ALongerQuietWindowRaisesMore) {
    window(1 * kMiB);
    ASSERT_DOUBLE_EQ(pacer_.level(), 0.25);
    window(0, 500ms);
    EXPECT_NEAR(pacer_.level(), 0.75, 1e-9);
}

TEST_F(PacerTest, LoneReadsSlowerThanTheirBaselineAreSomeoneElse) {
    for (int i = 0; i < 8; ++i) pacer_.on_complete(1 * kMiB, 20ms, true);  // the baseline of 1 MiB reads
    auto d = window(std::nullopt);             // device not watched: latency only
    ASSERT_TRUE(d);
    EXPECT_FALSE(d->slow);
    ASSERT_DOUBLE_EQ(pacer_.level(), 2.0);
    pacer_.on_complete(1 * kMiB, 70ms, true);
    pacer_.on_complete(1 * kMiB, 65ms, true);
    d = window(std::nullopt);
    ASSERT_TRUE(d);
    EXPECT_TRUE(d->slow);
    EXPECT_FALSE(d->busy);
    EXPECT_DOUBLE_EQ(pacer_.level(), 4.0);  // one slow window: a hiccup as often as someone else
    pacer_.on_complete(1 * kMiB, 75ms, true);
    d = window(std::nullopt);
    ASSERT_TRUE(d);
    EXPECT_TRUE(d->slow);
    EXPECT_DOUBLE_EQ(pacer_.level(), 1.0);  // the second in a row: x 1/4
    EXPECT_EQ(pacer_.stats().slow_windows, 2u);
    pacer_.on_complete(1 * kMiB, 80ms, true);
    window(std::nullopt);
    EXPECT_DOUBLE_EQ(pacer_.level(), 0.25);  // and every one after it
}

TEST_F(PacerTest, SlowWindowsApartDoNotCut) {
    for (int i = 0; i < 8; ++i) pacer_.on_complete(1 * kMiB, 20ms, true);
    window(0);
    window(0);
    for (int i = 0; i < 5; ++i) {
        pacer_.on_complete(1 * kMiB, 90ms, true);
        window(0);
        window(0);
    }
    EXPECT_EQ(pacer_.stats().slow_windows, 5u);
    EXPECT_DOUBLE_EQ(pacer_.level(), 4.0);
}

TEST_F(PacerTest, OneFastLoneReadInTheWindowClearsIt) {
    pacer_.on_complete(1 * kMiB, 20ms, true);
    window(0);
    pacer_.on_complete(1 * kMiB, 90ms, true);  // a seek across the disk, a preempted thread
    pacer_.on_complete(1 * kMiB, 22ms, true);
    auto d = window(0);
    ASSERT_TRUE(d);
    EXPECT_FALSE(d->slow);
}

TEST_F(PacerTest, ReadsQueuedBehindItsOwnDoNotCount) {
    pacer_.on_complete(1 * kMiB, 20ms, true);
    window(0);
    pacer_.on_complete(1 * kMiB, 80ms, false);  // waited for another of the prefetch's
    auto d = window(0);
    ASSERT_TRUE(d);
    EXPECT_FALSE(d->slow);
    EXPECT_EQ(pacer_.in_flight_limit(), 4u);
}

TEST_F(PacerTest, TheBaselineIsTheLowerQuartileNotABurstOfFastFirstReads) {
    pacer_.on_complete(1 * kMiB, 2ms, true);  // a throttle's burst after idle
    for (int i = 0; i < 7; ++i) pacer_.on_complete(1 * kMiB, 20ms, true);
    window(0);
    pacer_.on_complete(1 * kMiB, 21ms, true);  // 10x the burst, 1x the quartile
    auto d = window(0);
    ASSERT_TRUE(d);
    EXPECT_FALSE(d->slow);
}

TEST_F(PacerTest, EachReadSizeHasItsOwnBaseline) {
    pacer_.on_complete(1 * kMiB, 20ms, true);
    pacer_.on_complete(64 * kKiB, 5ms, true);
    window(0);
    // 6 ms for 64 KiB is slow next to 20 ms per MiB, but not next to 64 KiB reads.
    pacer_.on_complete(64 * kKiB, 6ms, true);
    auto d = window(0);
    ASSERT_TRUE(d);
    EXPECT_FALSE(d->slow);
}

TEST_F(PacerTest, ADrainIsDueAfterDrainEveryWithoutAQuiescentMoment) {
    EXPECT_FALSE(pacer_.drain_due(t_ + 99ms));
    EXPECT_TRUE(pacer_.drain_due(t_ + 100ms));
    pacer_.on_quiescent(t_ + 110ms, 0);
    EXPECT_FALSE(pacer_.drain_due(t_ + 150ms));
    EXPECT_TRUE(pacer_.drain_due(t_ + 210ms));
}

TEST_F(PacerTest, DecisionsAreRecordedInOrder) {
    window(1 * kMiB);
    window(0);
    ASSERT_EQ(pacer_.decisions().size(), 2u);
    EXPECT_TRUE(pacer_.decisions()[0].busy);
    EXPECT_DOUBLE_EQ(pacer_.decisions()[0].level, 0.25);
    EXPECT_FALSE(pacer_.decisions()[1].busy);
    EXPECT_NEAR(pacer_.decisions()[1].level, 0.35, 1e-9);
    EXPECT_LT(pacer_.decisions()[0].at, pacer_.decisions()[1].at);
}

TEST(PacerConfigTest, OneInFlightAndSmallRequestsAreHonoured) {
    PacerConfig c;
    c.max_in_flight = 1;
    c.max_request = 256 * kKiB;
    PrefetchPacer p(c, Clock::time_point());
    EXPECT_EQ(p.in_flight_limit(), 1u);
    EXPECT_EQ(p.request_bytes(), 256 * kKiB);
    p.on_quiescent(Clock::time_point() + 100ms, 0);
    EXPECT_EQ(p.in_flight_limit(), 1u);  // doubling stops at max_in_flight
    p.on_quiescent(Clock::time_point() + 200ms, 1 * kMiB);
    EXPECT_EQ(p.request_bytes(), 64 * kKiB);
}

}  // namespace
}  // namespace icbd
