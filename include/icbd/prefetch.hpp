// Prefetch: reads a golden file's boot set into the page cache before the
// desktops ask, at idle I/O priority, stopping under memory pressure
// (docs/boot-set.md, "Prefetch"). Used by icbd-prefetch and by blockd.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "icbd/boot_set.hpp"
#include "icbd/prefetch_pacer.hpp"
#include "icbd/status.hpp"

namespace icbd {

struct PrefetchProgress {
    uint64_t done_bytes = 0;   // read or found in memory so far
    uint64_t total_bytes = 0;  // the boot set's bytes in this file
};

struct PrefetchOptions {
    uint64_t max_request = 1u << 20;  // bytes per read, at most
    unsigned in_flight = 4;           // reads outstanding at once
    bool idle_priority = true;        // ioprio_set(IOPRIO_CLASS_IDLE) for the reads
    uint64_t max_rate = 0;            // bytes/s, 0: unlimited
    // Give way to anyone else using the disk under the file (docs/boot-set.md,
    // "Giving way to clients"): fewer, smaller, paced reads while the device
    // moves bytes that are not the prefetch's or its lone reads slow down.
    // false: always in_flight reads of max_request (full speed).
    bool adaptive = true;
    // The controller's settings; its max_in_flight and max_request are
    // in_flight and max_request above.
    PacerConfig pacer;
    // Memory pressure: stop before a read when MemAvailable is below this
    // fraction of MemTotal, or below what is left to read plus `reserve_bytes`.
    double min_available_fraction = 0.05;
    uint64_t reserve_bytes = 256ull << 20;
    // Where MemAvailable/MemTotal are read (tests point it at a fake file).
    std::filesystem::path meminfo = "/proc/meminfo";
    // About once per 64 MiB and once at the end; called from a reading thread
    // (never two calls at once), the last one from the caller's thread.
    std::function<void(const PrefetchProgress&)> progress;
    const std::atomic<bool>* cancel = nullptr;              // set: stop before the next read
};

enum class PrefetchEnd {
    complete,         // every run of the boot set is in the page cache
    memory_pressure,  // stopped: MemAvailable too low (see PrefetchOptions)
    file_gone,        // the file (its version) was deleted meanwhile
    cancelled,        // *cancel was set
};
const char* prefetch_end_name(PrefetchEnd e);  // "complete", "memory pressure", "file removed", "cancelled"

// How the prefetch gave way to others (adaptive only).
struct PrefetchPacing {
    bool adaptive = false;
    std::string device;       // the block device watched ("loop3"); empty: none, see `device_note`
    std::string device_note;  // why no device is watched (only the latency signal is used then)
    PacerStats stats;
    double final_level = 0;
};

struct PrefetchSummary {
    std::string file;
    uint64_t total_bytes = 0;    // the boot set's bytes
    uint64_t read_bytes = 0;     // read from the disk by this prefetch
    uint64_t cached_bytes = 0;   // already in the page cache before (mincore), not read again
    uint64_t requests = 0;       // reads issued
    double seconds = 0;
    PrefetchEnd end = PrefetchEnd::complete;
    // Why it stopped early, in words for the log line (which limit, which
    // path); empty when complete.
    std::string detail;
    PrefetchPacing pacing;
    double mib_per_s() const { return seconds > 0 ? read_bytes / seconds / 1048576.0 : 0; }
};

// Reads `set`'s runs of `file` in offset order. Errors other than the ends
// above (EIO, a file shorter than the set says: read up to its end) are a
// failed Result naming the file and the offset.
// Memory pressure also counts the limit of the caller's memory cgroup (v2
// memory.max/memory.current, or v1 memory.limit_in_bytes/usage_in_bytes, of
// its cgroup and every ancestor): the page cache a prefetch fills is charged
// there, which /proc/meminfo does not show. The reads run on `in_flight`
// threads of their own (the caller's I/O priority is left alone).
Result<PrefetchSummary> prefetch_file(const std::filesystem::path& file, const BootSet& set,
                                      const PrefetchOptions& options);

}  // namespace icbd
