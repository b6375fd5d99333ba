// ManualTime: a TimeSource that a test moves by hand. sleep_until jumps the
// clock (a sleep takes no real time and its length is exact); waits on a
// condition variable return once the test has moved the clock past their
// deadline, or on a notification.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "time_source.hpp"

namespace icbd::repl::testing {

class ManualTime final : public TimeSource {
public:
    Clock::time_point now() override {
        std::lock_guard lk(mu_);
        return now_;
    }
    void sleep_until(Clock::time_point t) override {
        std::lock_guard lk(mu_);
        if (t > now_) {
            slept_ += t - now_;
            now_ = t;
        }
    }
    void wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Clock::time_point t) override {
        if (now() >= t) return;
        ++waiting_;
        // A short real wait, then the caller looks at this clock again: the
        // waiter notices the test's advance() without the test knowing its cv.
        cv.wait_for(lock, std::chrono::milliseconds(1));
        --waiting_;
        ++wakeups_;
    }

    void advance(Clock::duration d) {
        std::lock_guard lk(mu_);
        now_ += d;
    }
    // Total time sleep_until() jumped over.
    Clock::duration slept() {
        std::lock_guard lk(mu_);
        return slept_;
    }
    // Threads inside wait_until() right now (a producer blocked on a full window).
    int waiting() const { return waiting_.load(); }
    // Returns from wait_until() so far: two more after an advance() mean a
    // waiter has looked at the new time.
    uint64_t wakeups() const { return wakeups_.load(); }

private:
    std::mutex mu_;
    Clock::time_point now_{std::chrono::hours(1000)};  // far from the epoch: no underflow in tests
    Clock::duration slept_{};
    std::atomic<int> waiting_{0};
    std::atomic<uint64_t> wakeups_{0};
};

}  // namespace icbd::repl::testing
