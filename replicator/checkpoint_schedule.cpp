// The checkpoint schedule: every 1/16 of the stream (1..64 MiB) unless the
// options fix an interval, not sooner than min_gap, not later than max_gap.
#include "checkpoint_schedule.hpp"

#include <algorithm>

namespace icbd::repl {

CheckpointSchedule checkpoint_schedule(const PushOptions& o, uint64_t stream_bytes) {
    CheckpointSchedule s;
    s.every_bytes = o.checkpoint_interval ? o.checkpoint_interval
                                          : std::clamp<uint64_t>(stream_bytes / 16, 1u << 20, 64u << 20);
    s.min_gap = o.checkpoint_min_period;
    s.max_gap = o.checkpoint_max_period;
    return s;
}

bool checkpoint_due(const CheckpointSchedule& s, uint64_t bytes_since, std::chrono::nanoseconds since) {
    if (bytes_since == 0) return false;
    if (bytes_since >= s.every_bytes && (since >= s.min_gap || bytes_since >= 16 * s.every_bytes)) return true;
    // A slow link: about max_gap of transfer at most, but not for a few bytes.
    return s.max_gap.count() > 0 && since >= s.max_gap && bytes_since >= std::min<uint64_t>(s.every_bytes, 64u << 10);
}

}  // namespace icbd::repl
