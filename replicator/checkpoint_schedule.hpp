// When a push's writer sends the next CHECKPOINT (docs/replication-protocol.md,
// 4.4): pure functions of PushOptions and the stream, tested without a clock.
#pragma once

#include <chrono>
#include <cstdint>

#include "icbd/replicator/sender.hpp"

namespace icbd::repl {

struct CheckpointSchedule {
    uint64_t every_bytes = 0;  // stream bytes between two checkpoints
    std::chrono::milliseconds min_gap{0};
    std::chrono::milliseconds max_gap{0};  // 0: none
};
// The schedule of `options` for a stream of `stream_bytes` (uncompressed DATA
// plus the other frames).
CheckpointSchedule checkpoint_schedule(const PushOptions& options, uint64_t stream_bytes);
// Due after `bytes_since` stream bytes and `since` time since the previous one.
bool checkpoint_due(const CheckpointSchedule& s, uint64_t bytes_since, std::chrono::nanoseconds since);

}  // namespace icbd::repl
