// FrameWindow: a bounded multi-consumer queue of encoded frames, with the
// stall rule that keeps one slow replica from holding back the others.
#include "frame_window.hpp"

#include <algorithm>

namespace icbd::repl {

bool FrameWindow::put(ChangePtr item, std::chrono::milliseconds max_stall, const std::function<void(size_t)>& drop,
                      Clock::duration* waited) {
    std::unique_lock lk(mu_);
    const auto wait_start = time_.now();
    auto stall_start = wait_start;
    struct Waited {
        TimeSource& time;
        Clock::duration* out;
        Clock::time_point start;
        ~Waited() {
            if (out) *out += time.now() - start;
        }
    } note{time_, waited, wait_start};
    for (;;) {
        if (active_count() == 0) return false;
        if (items_.empty() || (bytes_ + item->frame.size() <= limit_ &&
                               (lead_limit_ == 0 || lead_bytes() + item->frame.size() <= lead_limit_)))
            break;
        const auto deadline = stall_start + max_stall;
        time_.wait_until(cv_, lk, deadline);
        if (time_.now() >= deadline) {
            uint64_t slowest = UINT64_MAX;
            for (const auto& c : cons_)
                if (c.active) slowest = std::min(slowest, c.next);
            for (size_t i = 0; i < cons_.size(); ++i) {
                if (cons_[i].active && cons_[i].next == slowest) {
                    cons_[i].active = false;
                    cons_[i].dropped = true;
                    drop(i);
                }
            }
            trim();
            cv_.notify_all();
            stall_start = time_.now();
        }
    }
    bytes_ += item->frame.size();
    starts_.push_back(produced_);
    produced_ += item->frame.size();
    items_.push_back(std::move(item));
    cv_.notify_all();
    return true;
}

void FrameWindow::finish(Status reader_status) {
    std::lock_guard lk(mu_);
    finished_ = true;
    reader_status_ = std::move(reader_status);
    cv_.notify_all();
}

ChangePtr FrameWindow::get(size_t c, uint64_t index, Clock::duration* waited) {
    std::unique_lock lk(mu_);
    cons_[c].next = index;
    trim();
    cv_.notify_all();
    auto ready = [&] { return !cons_[c].active || finished_ || index < first_ + items_.size(); };
    if (!ready()) {
        const auto t0 = time_.now();
        cv_.wait(lk, ready);
        if (waited) *waited += time_.now() - t0;
    }
    // An index already trimmed (not held) cannot be served: the end for `c`.
    if (!cons_[c].active || index < first_ || index >= first_ + items_.size()) return nullptr;
    return items_[index - first_];
}

void FrameWindow::leave(size_t c) {
    std::lock_guard lk(mu_);
    cons_[c].active = false;
    trim();
    cv_.notify_all();
}

void FrameWindow::hold(size_t c, uint64_t index) {
    std::lock_guard lk(mu_);
    cons_[c].held = index;
    trim();
    cv_.notify_all();
}

bool FrameWindow::dropped(size_t c) {
    std::lock_guard lk(mu_);
    return cons_[c].dropped;
}

Status FrameWindow::reader_status() {
    std::lock_guard lk(mu_);
    return reader_status_;
}

size_t FrameWindow::active_count() const {
    return static_cast<size_t>(std::count_if(cons_.begin(), cons_.end(), [](const Consumer& c) { return c.active; }));
}

void FrameWindow::trim() {
    uint64_t keep_from = UINT64_MAX;
    for (const auto& c : cons_)
        if (c.active) keep_from = std::min({keep_from, c.next, c.held});
    while (!items_.empty() && first_ < keep_from) {
        bytes_ -= items_.front()->frame.size();
        items_.pop_front();
        starts_.pop_front();
        ++first_;
    }
}

uint64_t FrameWindow::lead_bytes() const {
    uint64_t ahead = 0;
    for (const auto& c : cons_)
        if (c.active) ahead = std::max(ahead, c.next);
    if (ahead < first_) return bytes_;
    if (ahead >= first_ + items_.size()) return 0;
    return produced_ - starts_[ahead - first_];
}

}  // namespace icbd::repl
