// Whether a fresh push is short enough to go without checkpoints: a cut of it
// costs less transfer than issue 15 allows (about a second), while each
// checkpoint stalls the replica for a filesystem sync and two fsyncs
// (docs/replication-protocol.md, 4.4).
#pragma once

#include <chrono>
#include <cstdint>

namespace icbd::repl {

// A push that, at its rate so far, is over within this time gets no checkpoint.
inline constexpr std::chrono::milliseconds kShortPush{500};

// True when `sent` of `sent + left` stream bytes took `elapsed` and the rest,
// at the same rate, ends the push within kShortPush. False before anything
// was sent (no rate yet).
inline bool short_push(uint64_t sent, uint64_t left, std::chrono::nanoseconds elapsed) {
    if (sent == 0 || elapsed <= std::chrono::nanoseconds::zero()) return false;
    const double s = std::chrono::duration<double>(elapsed).count();
    const double total = s + s * static_cast<double>(left) / static_cast<double>(sent);
    return total < std::chrono::duration<double>(kShortPush).count();
}

}  // namespace icbd::repl
