// PrefetchPacer: the controller that makes a prefetch give way to anyone else
// using the disk (docs/boot-set.md, "Giving way to clients"). Pure logic: the
// time and the measurements come in as arguments, so tests drive it with a
// clock of their own.
//
// One number, the level, says how much of the disk the prefetch may take:
//   level >= 1: floor(level) requests of max_request in flight, no pause;
//   level <  1: one request in flight, of max_request * level bytes (at least
//               min_request), and a pause after each request so that the
//               prefetch reads at most level x the fastest rate it has seen
//               (its own bytes per window: what the disk gives it), and,
//               below min_request / max_request, holds the disk for at most
//               that fraction of the time. The rate matters where latency
//               lies: a throttle lets small reads through at once while its
//               budget lasts, so a pause in proportion to their latency
//               would still take the budget clients need.
// It starts at 1 and changes once per window (at least `window` long, closed
// at a moment when none of the prefetch's reads is in flight, so that what the
// device counted and what the prefetch read can be subtracted exactly):
// multiplied by decrease_factor when the window was busy (others read bytes
// on the device) or slow (the fastest read that was alone in flight took
// latency_factor x the baseline of its size: the lower quartile of the first
// 16 lone reads of that size, not the fastest, since a throttle or a disk
// cache lets the first reads after idle through at burst speed) for the
// second window in a row (one slow window alone is as often a hiccup of
// the machine as someone else); otherwise doubled until
// the first busy or slow window (so alone it reaches max_in_flight in two
// windows), and after that raised by increase_per_s x the window's length
// (AIMD: give way at once, come back slowly).
#pragma once

#include <array>
#include <chrono>
#include <vector>
#include <cstdint>
#include <optional>
#include <vector>

namespace icbd {

struct PacerConfig {
    unsigned max_in_flight = 4;
    uint64_t max_request = 1u << 20;
    uint64_t min_request = 64u << 10;  // a boot set's chunk: smaller reads cost the disk a seek each
    double min_level = 1.0 / 64;       // at min_request, a pause 3x each read: the prefetch holds the disk <= 25 % of the time
    double increase_per_s = 1.0;       // +0.1 a quiet window: back from min_level to 4 in about 4 s of quiet
    double decrease_factor = 0.25;     // 1 -> 1/4 -> 1/16 -> 1/64: the floor three windows after a client starts
    double initial_level = 1.0;        // one read of max_request: full speed on a disk that serves one at a time
    std::chrono::nanoseconds window{std::chrono::milliseconds(100)};
    // The longest time between two moments with none of the prefetch's reads
    // in flight: past it, reads are held back until the ones in flight end.
    std::chrono::nanoseconds drain_every{std::chrono::milliseconds(100)};
    // Others' bytes per second on the device from which a window is busy
    // (a lone metadata block of the filesystem stays under it).
    uint64_t others_bytes_per_s = 64u << 10;
    double latency_factor = 3.0;
};

// What the controller decided, for the summary and for tests.
struct PacerStats {
    uint64_t windows = 0;
    uint64_t busy_windows = 0;  // others read bytes from the device
    uint64_t slow_windows = 0;  // the prefetch's lone reads took latency_factor x their baseline (acted on from the second in a row)
    double min_level = 0;       // lowest level reached
    double backed_off_seconds = 0;  // time in windows that began below max_in_flight, after the first busy or slow one
    uint64_t others_bytes = 0;  // others' bytes the device counted during the prefetch
    double fastest_bytes_per_s = 0;  // the prefetch's own best window
};

class PrefetchPacer {
public:
    using Clock = std::chrono::steady_clock;

    struct Decision {
        Clock::time_point at;
        double level = 0;  // after the decision
        bool busy = false;
        bool slow = false;  // this window's lone reads were slow (acted on when the previous one's were too)
    };

    PrefetchPacer(const PacerConfig& config, Clock::time_point start);

    double level() const { return level_; }
    unsigned in_flight_limit() const;
    uint64_t request_bytes() const;  // a multiple of 4 KiB
    // The pause after a read of `bytes` that took `latency`, before the next one leaves.
    std::chrono::nanoseconds gap_after(std::chrono::nanoseconds latency, uint64_t bytes) const;
    // True when reads should wait for the ones in flight to end (a window can
    // only close with none in flight).
    bool drain_due(Clock::time_point now) const { return now - last_quiescent_ >= config_.drain_every; }

    // A read of `bytes` ended after `latency`; `alone`: none other of the
    // prefetch's was in flight when it left.
    void on_complete(uint64_t bytes, std::chrono::nanoseconds latency, bool alone);
    // None of the prefetch's reads is in flight. `others_bytes`: what the
    // device moved since the previous call beyond the prefetch's own reads;
    // nullopt when the device is not watched. Returns the decision when a
    // window closed.
    std::optional<Decision> on_quiescent(Clock::time_point now, std::optional<uint64_t> others_bytes);

    const PacerStats& stats() const { return stats_; }
    const std::vector<Decision>& decisions() const { return decisions_; }  // the first 10,000
    const PacerConfig& config() const { return config_; }

private:
    static constexpr size_t kSizeClasses = 24;  // log2 of the request size
    static size_t size_class(uint64_t bytes);

    PacerConfig config_;
    double level_;
    bool slow_start_ = true;  // no busy or slow window yet
    bool last_slow_ = false;  // the previous window was slow
    Clock::time_point window_start_;
    Clock::time_point last_quiescent_;
    uint64_t window_others_ = 0;
    uint64_t window_own_ = 0;  // bytes the prefetch read in this window
    static constexpr size_t kBaselineSamples = 16;
    // Per size class: the first lone reads' latencies in ns, sorted.
    std::array<std::vector<int64_t>, kSizeClasses> samples_;
    // The smallest ratio latency / baseline of the window's lone reads.
    std::optional<double> window_ratio_;
    PacerStats stats_;
    std::vector<Decision> decisions_;
};

}  // namespace icbd
