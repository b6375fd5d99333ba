// RateLimiter: token bucket in its GCRA form. Each acquire() reserves its bytes
// on a virtual clock under the mutex and sleeps outside it, so several sender
// threads share one limit without a refill thread or busy waiting.
#include "rate_limiter.hpp"

#include <algorithm>

namespace icbd::repl {

namespace {

uint64_t default_burst(uint64_t rate, uint64_t burst) {
    if (burst) return burst;
    return std::max<uint64_t>(64 * 1024, rate / 20);  // 50 ms of the rate
}

std::chrono::nanoseconds bytes_to_time(uint64_t bytes, uint64_t rate) {
    // 128-bit: a few GiB at a slow rate overflows 64-bit nanoseconds math.
    unsigned __int128 ns = static_cast<unsigned __int128>(bytes) * 1'000'000'000u / rate;
    return std::chrono::nanoseconds(static_cast<int64_t>(std::min<unsigned __int128>(ns, INT64_MAX)));
}

}  // namespace

RateLimiter::RateLimiter(uint64_t bytes_per_second, uint64_t burst_bytes, TimeSource& time)
    : time_(time), rate_(bytes_per_second), burst_(default_burst(bytes_per_second, burst_bytes)) {}

void RateLimiter::set_rate(uint64_t bytes_per_second, uint64_t burst_bytes) {
    std::lock_guard lock(mu_);
    rate_ = bytes_per_second;
    burst_ = default_burst(bytes_per_second, burst_bytes);
}

uint64_t RateLimiter::rate() const {
    std::lock_guard lock(mu_);
    return rate_;
}

std::chrono::nanoseconds RateLimiter::acquire(uint64_t bytes) {
    Clock::time_point wake;
    const Clock::time_point now = time_.now();
    {
        std::lock_guard lock(mu_);
        if (rate_ == 0 || bytes == 0) return std::chrono::nanoseconds(0);
        // Idle time earns credit only up to the burst: the bucket is full.
        const Clock::time_point start = std::max(paid_until_, now);
        paid_until_ = start + bytes_to_time(bytes, rate_);
        wake = paid_until_ - bytes_to_time(burst_, rate_);
    }
    if (wake <= now) return std::chrono::nanoseconds(0);
    time_.sleep_until(wake);
    return wake - now;
}

}  // namespace icbd::repl
