// RateLimiter: a token-bucket bandwidth limit in bytes per second, shared by all
// the threads (one per replica) of one push; a sender calls acquire() before writing.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>

#include "time_source.hpp"

namespace icbd::repl {

class RateLimiter {
public:
    // `bytes_per_second` 0 means unlimited. `burst_bytes` is how much may go
    // out at once after an idle period; 0 picks max(64 KiB, 50 ms of the rate).
    // `time`: where it reads the clock and sleeps (a test's clock in tests).
    explicit RateLimiter(uint64_t bytes_per_second = 0, uint64_t burst_bytes = 0,
                         TimeSource& time = TimeSource::steady());
    RateLimiter(const RateLimiter&) = delete;
    RateLimiter& operator=(const RateLimiter&) = delete;

    // Blocks until `bytes` may be sent. Thread-safe; callers are served in the
    // order they asked. A request larger than the burst is allowed, it just
    // waits the corresponding time. Returns how long it waited.
    std::chrono::nanoseconds acquire(uint64_t bytes);

    // Thread-safe; applies to the following acquire() calls.
    void set_rate(uint64_t bytes_per_second, uint64_t burst_bytes = 0);
    uint64_t rate() const;
    bool unlimited() const { return rate() == 0; }

private:
    using Clock = TimeSource::Clock;
    TimeSource& time_;
    mutable std::mutex mu_;
    uint64_t rate_ = 0;
    uint64_t burst_ = 0;
    // Virtual time at which everything reserved so far has been paid for
    // (GCRA form of the token bucket: no refill thread, one timestamp).
    Clock::time_point paid_until_{};
};

}  // namespace icbd::repl
