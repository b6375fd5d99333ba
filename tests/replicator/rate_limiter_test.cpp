// RateLimiter (--bwlimit): the burst goes at once, then the rate holds; idle
// time earns no more than the burst; several threads share one limit. Timed on
// a clock the test moves (ManualTime), so every wait is exact.
#include "rate_limiter.hpp"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "manual_time.hpp"

namespace icbd::repl {
namespace {

using namespace std::chrono_literals;
using testing::ManualTime;

constexpr uint64_t kMiB = 1u << 20;
constexpr uint64_t kBurst = 64u << 10;  // 62.5 ms at 1 MiB/s

TEST(RateLimiter, UnlimitedNeverWaits) {
    ManualTime time;
    RateLimiter limiter(0, 0, time);
    EXPECT_TRUE(limiter.unlimited());
    EXPECT_EQ(limiter.acquire(1u << 30), 0ns);
    EXPECT_EQ(time.slept(), 0ns);
}

TEST(RateLimiter, TheBurstGoesAtOnceThenTheRateHolds) {
    ManualTime time;
    RateLimiter limiter(kMiB, kBurst, time);
    EXPECT_EQ(limiter.acquire(kBurst), 0ns);
    EXPECT_EQ(limiter.acquire(kMiB), 1s);  // 1 MiB at 1 MiB/s, the burst already spent
    EXPECT_EQ(limiter.acquire(kMiB / 2), 500ms);
    EXPECT_EQ(time.slept(), 1500ms);
}

TEST(RateLimiter, IdleTimeEarnsNoMoreThanTheBurst) {
    ManualTime time;
    RateLimiter limiter(kMiB, kBurst, time);
    EXPECT_EQ(limiter.acquire(kBurst), 0ns);
    time.advance(10s);  // idle: the bucket fills to the burst, not to 10 s of the rate
    EXPECT_EQ(limiter.acquire(kMiB + kBurst), 1s);
}

TEST(RateLimiter, DefaultBurstIsFiftyMillisecondsOfTheRateOrSixtyFourKiB) {
    ManualTime time;
    RateLimiter fast(100 * kMiB, 0, time);  // burst 5 MiB
    EXPECT_EQ(fast.acquire(5 * kMiB), 0ns);
    EXPECT_EQ(fast.acquire(10 * kMiB), 100ms);
    RateLimiter slow(kMiB, 0, time);  // 50 ms would be 51 KiB: 64 KiB instead
    EXPECT_EQ(slow.acquire(kBurst), 0ns);
    EXPECT_EQ(slow.acquire(kMiB), 1s);
}

TEST(RateLimiter, ThreadsShareOneLimit) {
    ManualTime time;
    constexpr uint64_t rate = 4 * kMiB;
    RateLimiter limiter(rate, kBurst, time);
    const auto t0 = time.now();
    constexpr int threads = 4, chunks = 32;
    constexpr uint64_t chunk = 32u << 10;  // 4 x 32 x 32 KiB = 4 MiB: one second at 4 MiB/s
    std::vector<std::thread> senders;
    for (int i = 0; i < threads; ++i)
        senders.emplace_back([&] {
            for (int k = 0; k < chunks; ++k) limiter.acquire(chunk);
        });
    for (auto& t : senders) t.join();
    // Every byte paid for at the shared rate, less the burst that went at once
    // (15.625 ms at 4 MiB/s), whatever the threads' interleaving.
    EXPECT_EQ(time.now() - t0, 1s - 15625us);
}

TEST(RateLimiter, SetRateAppliesToTheFollowingRequests) {
    ManualTime time;
    RateLimiter limiter(kMiB, kBurst, time);
    EXPECT_EQ(limiter.acquire(kBurst), 0ns);
    limiter.set_rate(0);
    EXPECT_TRUE(limiter.unlimited());
    EXPECT_EQ(limiter.acquire(100 * kMiB), 0ns);
    limiter.set_rate(2 * kMiB, kBurst);
    EXPECT_EQ(limiter.rate(), 2 * kMiB);
    time.advance(1s);
    EXPECT_EQ(limiter.acquire(2 * kMiB + kBurst), 1s);
}

}  // namespace
}  // namespace icbd::repl
