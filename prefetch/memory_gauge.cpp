// MemoryGauge: MemAvailable/MemTotal from /proc/meminfo and the limits of the
// process's memory cgroups (docs/boot-set.md, "Prefetch").
#include "memory_gauge.hpp"

#include <cerrno>
#include <fstream>
#include <sstream>
#include <utility>

namespace icbd::prefetch_detail {

namespace {

namespace fs = std::filesystem;

std::string mib(uint64_t bytes) {
    std::ostringstream o;
    o.setf(std::ios::fixed);
    o.precision(1);
    o << double(bytes) / 1048576.0 << " MiB";
    return o.str();
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::string cur;
    std::istringstream in(s);
    while (std::getline(in, cur, sep)) out.push_back(cur);
    return out;
}

// A cgroup hierarchy as mounted: its root inside the hierarchy and where.
struct CgroupMount {
    std::string root;
    fs::path mount_point;
};

// The first line of a small file (cgroup attributes), or nullopt.
std::optional<std::string> first_line(const fs::path& p) {
    std::ifstream in(p);
    std::string line;
    if (!in || !std::getline(in, line)) return std::nullopt;
    return line;
}

// The cgroup directory of `path` (as /proc/self/cgroup says it) under `m`.
std::optional<fs::path> cgroup_dir(const CgroupMount& m, const std::string& path) {
    if (m.root != "/" && path.compare(0, m.root.size(), m.root) != 0) return std::nullopt;
    std::string rel = m.root == "/" ? path : path.substr(m.root.size());
    while (!rel.empty() && rel.front() == '/') rel.erase(0, 1);
    return rel.empty() ? m.mount_point : m.mount_point / rel;
}

// The cgroup and its ancestors up to the mount point, innermost first.
void add_chain(std::vector<MemoryGauge::Limit>& out, fs::path dir, const fs::path& top, const char* limit,
               const char* usage) {
    for (;;) {
        if (fs::exists(dir / limit) && fs::exists(dir / usage)) out.push_back({dir / limit, dir / usage});
        if (dir == top || !dir.has_parent_path() || dir.parent_path() == dir) break;
        dir = dir.parent_path();
    }
}

}  // namespace

std::vector<MemoryGauge::Limit> find_memory_limits() {
    std::optional<CgroupMount> v2, v1;
    std::ifstream mi("/proc/self/mountinfo");
    for (std::string line; std::getline(mi, line);) {
        // id parent maj:min root mount-point options [optional...] - fstype source super-options
        const auto dash = line.find(" - ");
        if (dash == std::string::npos) continue;
        const auto left = split(line.substr(0, dash), ' ');
        const auto right = split(line.substr(dash + 3), ' ');
        if (left.size() < 5 || right.size() < 3) continue;
        if (right[0] == "cgroup2" && !v2) v2 = CgroupMount{left[3], left[4]};
        if (right[0] == "cgroup" && !v1)
            for (const auto& o : split(right[2], ','))
                if (o == "memory") v1 = CgroupMount{left[3], left[4]};
    }
    std::vector<MemoryGauge::Limit> out;
    std::ifstream cg("/proc/self/cgroup");
    for (std::string line; std::getline(cg, line);) {
        // hierarchy-id:controllers:path ("0::/path" is the v2 hierarchy)
        const auto a = line.find(':');
        const auto b = line.find(':', a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        const std::string controllers = line.substr(a + 1, b - a - 1);
        const std::string path = line.substr(b + 1);
        if (line.compare(0, a, "0") == 0 && controllers.empty() && v2) {
            if (auto dir = cgroup_dir(*v2, path)) add_chain(out, *dir, v2->mount_point, "memory.max", "memory.current");
        } else if (v1) {
            for (const auto& c : split(controllers, ','))
                if (c == "memory")
                    if (auto dir = cgroup_dir(*v1, path))
                        add_chain(out, *dir, v1->mount_point, "memory.limit_in_bytes", "memory.usage_in_bytes");
        }
    }
    return out;
}

MemoryGauge::MemoryGauge(fs::path meminfo, double min_available_fraction, uint64_t reserve_bytes)
    : meminfo_(std::move(meminfo)),
      fraction_(min_available_fraction),
      reserve_(reserve_bytes),
      limits_(find_memory_limits()) {}

std::optional<std::string> MemoryGauge::check(const std::string& what, uint64_t available, uint64_t total,
                                              uint64_t left_to_read) const {
    if (double(available) < fraction_ * double(total))
        return what + ": " + mib(available) + " available of " + mib(total) + ", below " +
               std::to_string(int(fraction_ * 100 + 0.5)) + " %";
    if (available < left_to_read + reserve_)
        return what + ": " + mib(available) + " available, below the " + mib(left_to_read) +
               " left to read plus a reserve of " + mib(reserve_);
    return std::nullopt;
}

Result<std::optional<std::string>> MemoryGauge::pressure(uint64_t left_to_read) const {
    std::ifstream in(meminfo_);
    if (!in) return Status::from_errno(errno ? errno : ENOENT, "memory gauge: cannot read '" + meminfo_.string() + "'");
    uint64_t total = 0, available = 0;
    bool have_total = false, have_available = false;
    for (std::string line; std::getline(in, line);) {
        std::istringstream f(line);
        std::string key;
        uint64_t kib = 0;
        if (!(f >> key >> kib)) continue;
        if (key == "MemTotal:") total = kib * 1024, have_total = true;
        if (key == "MemAvailable:") available = kib * 1024, have_available = true;
    }
    if (!have_total || !have_available)
        return Status::error(EINVAL, "memory gauge: '" + meminfo_.string() + "' has no MemTotal or MemAvailable");
    if (auto why = check("MemAvailable in " + meminfo_.string(), available, total, left_to_read)) return why;
    for (const Limit& l : limits_) {
        auto limit_text = first_line(l.limit_file);
        auto usage_text = first_line(l.usage_file);
        if (!limit_text || !usage_text || *limit_text == "max") continue;  // gone meanwhile, or no limit
        uint64_t limit = 0, usage = 0;
        try {
            limit = std::stoull(*limit_text);
            usage = std::stoull(*usage_text);
        } catch (const std::exception&) {
            continue;
        }
        if (limit >= (uint64_t(1) << 60)) continue;  // v1's "no limit" (PAGE_COUNTER_MAX pages)
        const uint64_t free_below = limit > usage ? limit - usage : 0;
        if (auto why = check("cgroup limit " + l.limit_file.string() + " (usage " + mib(usage) + ")", free_below, limit,
                             left_to_read))
            return why;
    }
    return std::optional<std::string>{};
}

}  // namespace icbd::prefetch_detail
