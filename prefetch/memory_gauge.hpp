// MemoryGauge: is there room in memory for what a prefetch has left to read?
// Asks /proc/meminfo and the memory cgroups the process is charged in.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "icbd/status.hpp"

namespace icbd::prefetch_detail {

class MemoryGauge {
public:
    // `meminfo`: MemTotal and MemAvailable; the process's memory cgroups (v2
    // and v1, the cgroup and its ancestors) are found once, here.
    MemoryGauge(std::filesystem::path meminfo, double min_available_fraction, uint64_t reserve_bytes);

    // nullopt when there is room for `left_to_read` more bytes of page cache,
    // else why not (the limit, its numbers). Fails when meminfo cannot be read.
    Result<std::optional<std::string>> pressure(uint64_t left_to_read) const;

    // A memory limit of a cgroup: the files read at each check.
    struct Limit {
        std::filesystem::path limit_file;  // memory.max / memory.limit_in_bytes
        std::filesystem::path usage_file;  // memory.current / memory.usage_in_bytes
    };
    const std::vector<Limit>& limits() const { return limits_; }

private:
    std::optional<std::string> check(const std::string& what, uint64_t available, uint64_t total,
                                     uint64_t left_to_read) const;

    std::filesystem::path meminfo_;
    double fraction_;
    uint64_t reserve_;
    std::vector<Limit> limits_;
};

// The memory limit files of the cgroups the calling process is in, innermost
// first (only those that exist; a cgroup without a limit is skipped at check
// time). Reads /proc/self/cgroup and /proc/self/mountinfo.
std::vector<MemoryGauge::Limit> find_memory_limits();

}  // namespace icbd::prefetch_detail
