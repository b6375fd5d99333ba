// The real TimeSource: std::chrono::steady_clock and real waits.
#include "time_source.hpp"

#include <thread>

namespace icbd::repl {

namespace {

class SteadyTime final : public TimeSource {
public:
    Clock::time_point now() override { return Clock::now(); }
    void sleep_until(Clock::time_point t) override { std::this_thread::sleep_until(t); }
    void wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Clock::time_point t) override {
        cv.wait_until(lock, t);
    }
};

}  // namespace

TimeSource& TimeSource::steady() {
    static SteadyTime instance;
    return instance;
}

}  // namespace icbd::repl
