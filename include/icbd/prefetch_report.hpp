// How a prefetch's summary is shown: one line of text and its JSON fields,
// shared by icbd-prefetch and blockd (blockctl image prefetch, the log) so
// the two say the same thing in the same words.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "icbd/prefetch.hpp"

namespace icbd {

// "256.2 MiB read of a boot set of 256.2 MiB in 0.53 s (486.3 MiB/s, 467
// requests), 0.0 MiB already cached", then, when it gave way to others,
// "; gave way 2.1 s (others on loop3 in 14 of 30 windows, slow in 0; lowest
// level 0.02)".
std::string prefetch_summary_line(const PrefetchSummary& s);

// total_bytes, read_bytes, cached_bytes, requests, seconds, mib_per_s, end,
// detail and "pacing" (adaptive, device, device_note, windows, busy_windows,
// slow_windows, min_level, final_level, backed_off_seconds, others_bytes).
nlohmann::json prefetch_summary_json(const PrefetchSummary& s);

// Adds b's counts to a's (a total over files); the lowest level is kept.
void add_prefetch_summary(PrefetchSummary& a, const PrefetchSummary& b);

}  // namespace icbd
