// The text and JSON of a prefetch summary (include/icbd/prefetch_report.hpp).
#include "icbd/prefetch_report.hpp"

#include <algorithm>
#include <cstdio>

namespace icbd {

namespace {

std::string mib(uint64_t bytes) {
    char out[32];
    std::snprintf(out, sizeof(out), "%.1f MiB", double(bytes) / 1048576.0);
    return out;
}

}  // namespace

std::string prefetch_summary_line(const PrefetchSummary& s) {
    char head[96];
    std::snprintf(head, sizeof(head), " in %.2f s (%.1f MiB/s, %llu requests), ", s.seconds, s.mib_per_s(),
                  static_cast<unsigned long long>(s.requests));
    std::string out = mib(s.read_bytes) + " read of a boot set of " + mib(s.total_bytes) + head + mib(s.cached_bytes) +
                      " already cached";
    const PacerStats& p = s.pacing.stats;
    if (s.pacing.adaptive && (p.busy_windows || p.slow_windows)) {
        char tail[192];
        std::snprintf(tail, sizeof(tail), "; gave way %.1f s (others on %s in %llu of %llu windows, slow in %llu; lowest level %.2f)",
                      p.backed_off_seconds, s.pacing.device.empty() ? "the disk" : s.pacing.device.c_str(),
                      static_cast<unsigned long long>(p.busy_windows), static_cast<unsigned long long>(p.windows),
                      static_cast<unsigned long long>(p.slow_windows), p.min_level);
        out += tail;
    }
    return out;
}

nlohmann::json prefetch_summary_json(const PrefetchSummary& s) {
    const PacerStats& p = s.pacing.stats;
    nlohmann::json pacing = {{"adaptive", s.pacing.adaptive},
                             {"device", s.pacing.device},
                             {"device_note", s.pacing.device_note},
                             {"windows", p.windows},
                             {"busy_windows", p.busy_windows},
                             {"slow_windows", p.slow_windows},
                             {"min_level", p.min_level},
                             {"final_level", s.pacing.final_level},
                             {"backed_off_seconds", p.backed_off_seconds},
                             {"others_bytes", p.others_bytes}};
    return {{"total_bytes", s.total_bytes}, {"read_bytes", s.read_bytes},
            {"cached_bytes", s.cached_bytes}, {"requests", s.requests},
            {"seconds", s.seconds},         {"mib_per_s", s.mib_per_s()},
            {"end", prefetch_end_name(s.end)}, {"detail", s.detail},
            {"pacing", std::move(pacing)}};
}

void add_prefetch_summary(PrefetchSummary& a, const PrefetchSummary& b) {
    const bool first_paced = !a.pacing.adaptive && b.pacing.adaptive;
    a.total_bytes += b.total_bytes;
    a.read_bytes += b.read_bytes;
    a.cached_bytes += b.cached_bytes;
    a.requests += b.requests;
    a.seconds += b.seconds;
    if (!b.pacing.adaptive) return;
    PacerStats& x = a.pacing.stats;
    const PacerStats& y = b.pacing.stats;
    x.min_level = first_paced ? y.min_level : std::min(x.min_level, y.min_level);
    x.windows += y.windows;
    x.busy_windows += y.busy_windows;
    x.slow_windows += y.slow_windows;
    x.backed_off_seconds += y.backed_off_seconds;
    x.others_bytes += y.others_bytes;
    a.pacing.adaptive = true;
    a.pacing.final_level = b.pacing.final_level;
    if (a.pacing.device.empty()) a.pacing.device = b.pacing.device;
}

}  // namespace icbd
