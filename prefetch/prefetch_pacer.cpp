// PrefetchPacer: AIMD on one level from two signals, others' bytes on the
// device and the latency of the prefetch's own lone reads (the header says
// what the level means; docs/boot-set.md, "Giving way to clients", why).
#include "icbd/prefetch_pacer.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace icbd {

namespace {
constexpr uint64_t kPage = 4096;
constexpr size_t kMaxDecisions = 10'000;
}  // namespace

PrefetchPacer::PrefetchPacer(const PacerConfig& config, Clock::time_point start)
    : config_(config), window_start_(start), last_quiescent_(start) {
    config_.max_in_flight = std::max(1u, config_.max_in_flight);
    config_.max_request = std::max(kPage, config_.max_request / kPage * kPage);
    config_.min_request = std::clamp(config_.min_request / kPage * kPage, kPage, config_.max_request);
    config_.min_level = std::clamp(config_.min_level, 1e-4, 1.0);
    config_.decrease_factor = std::clamp(config_.decrease_factor, 0.01, 0.99);
    // One read at a time at first: a client already reading sees at most one
    // of ours ahead of it until the first window (100 ms) tells; alone, two
    // windows of doubling reach max_in_flight.
    level_ = std::clamp<double>(config_.initial_level, config_.min_level, config_.max_in_flight);
    stats_.min_level = level_;
}

unsigned PrefetchPacer::in_flight_limit() const {
    return level_ >= 1 ? static_cast<unsigned>(std::floor(level_)) : 1u;
}

uint64_t PrefetchPacer::request_bytes() const {
    if (level_ >= 1) return config_.max_request;
    const auto want = static_cast<uint64_t>(double(config_.max_request) * level_);
    return std::clamp(want / kPage * kPage, config_.min_request, config_.max_request);
}

std::chrono::nanoseconds PrefetchPacer::gap_after(std::chrono::nanoseconds latency, uint64_t bytes) const {
    if (level_ >= 1) return std::chrono::nanoseconds(0);
    // The fraction of the time the prefetch may hold the disk, with reads of
    // request_bytes(): level x max_request bytes per read-time.
    const double duty = level_ * double(config_.max_request) / double(request_bytes());
    double gap = duty < 1 ? double(latency.count()) * (1 / duty - 1) : 0;
    // At most level x the fastest rate seen: from the start of this read to the next.
    if (stats_.fastest_bytes_per_s > 0)
        gap = std::max(gap, double(bytes) / (level_ * stats_.fastest_bytes_per_s) * 1e9 - double(latency.count()));
    return std::chrono::nanoseconds(static_cast<int64_t>(std::max(0.0, gap)));
}

size_t PrefetchPacer::size_class(uint64_t bytes) {
    const auto c = static_cast<size_t>(std::bit_width(std::max<uint64_t>(bytes, 1)) - 1);
    return std::min(c, kSizeClasses - 1);
}

void PrefetchPacer::on_complete(uint64_t bytes, std::chrono::nanoseconds latency, bool alone) {
    window_own_ += bytes;
    if (!alone || bytes == 0) return;
    // Only reads that had the disk to themselves as far as the prefetch goes:
    // a read queued behind the prefetch's own others says nothing of clients.
    std::vector<int64_t>& s = samples_[size_class(bytes)];
    const int64_t ns = std::max<int64_t>(1, latency.count());
    if (s.size() < kBaselineSamples) s.insert(std::upper_bound(s.begin(), s.end(), ns), ns);
    const int64_t base = s[s.size() / 4];
    const double ratio = double(ns) / double(base);
    window_ratio_ = window_ratio_ ? std::min(*window_ratio_, ratio) : ratio;
}

std::optional<PrefetchPacer::Decision> PrefetchPacer::on_quiescent(Clock::time_point now,
                                                                   std::optional<uint64_t> others_bytes) {
    last_quiescent_ = now;
    if (others_bytes) {
        window_others_ += *others_bytes;
        stats_.others_bytes += *others_bytes;
    }
    const auto length = now - window_start_;
    if (length < config_.window) return std::nullopt;

    const double seconds = std::chrono::duration<double>(length).count();
    Decision d;
    d.at = now;
    d.busy = others_bytes.has_value() && double(window_others_) >= double(config_.others_bytes_per_s) * seconds;
    // The fastest lone read of the window, so one slow read (a seek across
    // the disk, a preempted thread) does not count as someone else.
    d.slow = window_ratio_ && *window_ratio_ >= config_.latency_factor;
    if (!slow_start_ && level_ < config_.max_in_flight) stats_.backed_off_seconds += seconds;
    stats_.fastest_bytes_per_s = std::max(stats_.fastest_bytes_per_s, double(window_own_) / seconds);
    const bool slow_again = d.slow && last_slow_;
    last_slow_ = d.slow;
    if (d.busy || slow_again) {
        level_ = std::max(config_.min_level, level_ * config_.decrease_factor);
        slow_start_ = false;
    } else if (slow_start_) {
        level_ = std::min<double>(config_.max_in_flight, level_ * 2);
    } else {
        level_ = std::min<double>(config_.max_in_flight, level_ + config_.increase_per_s * seconds);
    }
    d.level = level_;

    ++stats_.windows;
    if (d.busy) ++stats_.busy_windows;
    if (d.slow) ++stats_.slow_windows;
    stats_.min_level = std::min(stats_.min_level, level_);
    if (decisions_.size() < kMaxDecisions) decisions_.push_back(d);
    window_start_ = now;
    window_others_ = 0;
    window_own_ = 0;
    window_ratio_.reset();
    return d;
}

}  // namespace icbd
