// Where the sender's pacing pieces (FrameWindow, RateLimiter) get the time and
// wait: the steady clock in a push, a clock a test moves by hand otherwise, so
// that their timing rules are tested without measuring wall-clock time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace icbd::repl {

class TimeSource {
public:
    using Clock = std::chrono::steady_clock;
    virtual ~TimeSource() = default;

    virtual Clock::time_point now() = 0;
    // Returns at `t` or later (RateLimiter, outside its lock).
    virtual void sleep_until(Clock::time_point t) = 0;
    // Waits on `cv` (whose mutex `lock` holds) until notified, or until `t` has
    // passed; may return early (the caller re-checks its condition and the time).
    virtual void wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Clock::time_point t) = 0;

    // The steady clock and real waits (one shared instance; stateless).
    static TimeSource& steady();
};

}  // namespace icbd::repl
