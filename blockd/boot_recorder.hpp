// Records which chunks of a LUN's golden file clients read while they boot and
// merges them into the version's boot set sidecar (docs/boot-set.md).
#pragma once

#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <thread>

#include "icbd/boot_set.hpp"
#include "icbd/status.hpp"

namespace icbd {

class BootRecorder {
public:
    // `sidecar`: where the boot set is merged; `file_size`: the golden file's
    // bytes (the LUN's size); `window_s`: seconds from the first READ; `what`
    // names the LUN in log lines.
    static Result<std::unique_ptr<BootRecorder>> create(std::string sidecar, uint64_t file_size, uint32_t window_s,
                                                        std::string what);
    ~BootRecorder();  // merges what a window still open saw, and waits for the merge
    BootRecorder(const BootRecorder&) = delete;
    BootRecorder& operator=(const BootRecorder&) = delete;

    // A READ of [offset, offset + length): the first one opens the window; the
    // first one after it closed hands the set to the merge thread. A few bit
    // sets and a vDSO clock read: no system call, no lock, no allocation.
    void on_read(uint64_t offset, uint64_t length) noexcept {
        if (state_ == State::done) return;
        const int64_t now = now_ms();
        if (state_ == State::idle) {
            state_ = State::recording;
            deadline_ms_ = now + static_cast<int64_t>(window_s_) * 1000;
        } else if (now >= deadline_ms_) {
            finish();
            return;
        }
        set_.mark(offset, length);
    }
    bool recording() const noexcept { return state_ == State::recording; }
    bool done() const noexcept { return state_ == State::done; }
    // The version the sidecar belongs to, from its path (.bootsets/<v>/...); 0 if none.
    static uint64_t version_of(const std::string& sidecar);

    struct Key {  // only create() constructs one (it may fail)
    private:
        friend class BootRecorder;
        Key() = default;
    };
    BootRecorder(Key, std::string sidecar, BootSet set, uint32_t window_s, std::string what);

private:
    enum class State { idle, recording, done };
    static int64_t now_ms() noexcept {
        timespec ts{};
        ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
    }
    void finish() noexcept;  // starts the merge thread once

    std::string sidecar_;
    BootSet set_;
    uint32_t window_s_;
    std::string what_;
    State state_ = State::idle;
    int64_t deadline_ms_ = 0;
    std::jthread writer_;
};

}  // namespace icbd
