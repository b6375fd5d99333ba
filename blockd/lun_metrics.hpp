// The writer side of a LUN's metrics file (docs/metrics.md): created when the
// LUN opens, updated by the LUN's thread only, unlinked when it closes.
#pragma once

#include <time.h>

#include <cstdint>
#include <memory>
#include <string>

#include "icbd/lun_metrics.hpp"

namespace icbd {

struct LunMetricsIdentity {
    std::string dir;  // "" = metrics off
    std::string name;  // "tgt 1 lun 2" (tid and LUN are parsed from it)
    std::string backing_path, overlay_path, cache_path;
    bool readonly = false;
};

class LunMetrics {
public:
    // Creates and publishes the file; nullptr (with one log line) when the
    // directory or file cannot be made: the LUN then runs without metrics.
    static std::unique_ptr<LunMetrics> create(const LunMetricsIdentity& id);
    ~LunMetrics();  // unmaps, and unlinks the file if the name is still ours
    LunMetrics(const LunMetrics&) = delete;
    LunMetrics& operator=(const LunMetrics&) = delete;

    metrics::LunCounters& counters() { return *counters_; }
    const std::string& path() const { return path_; }

    // One host command completed: called by the LUN's thread.
    void record(unsigned dir, uint64_t bytes, uint64_t latency_ns, uint8_t status, uint8_t sense_key) {
        metrics::DirCounters& d = counters_->dir[dir];
        metrics::add(d.buckets[metrics::latency_bucket(latency_ns)], 1);
        metrics::add(d.latency_sum_ns, latency_ns);
        if (status == 0) metrics::add(d.bytes, bytes);
        else metrics::add(counters_->errors_by_sense_key[sense_key & 15], 1);
        metrics::add(d.commands, 1);
    }

    // CLOCK_MONOTONIC: served by the vDSO, no system call.
    static uint64_t now_ns() {
        timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
    }

    // The directory a LUN uses: bsopts metrics_dir, else $ICBD_METRICS_DIR, else the default.
    static std::string resolve_dir(const std::string& bsopt_dir);

private:
    LunMetrics(void* map, std::string path, uint64_t dev, uint64_t ino);
    void* map_;
    metrics::LunCounters* counters_;
    std::string path_;
    uint64_t dev_, ino_;  // to unlink only our own file
};

}  // namespace icbd
