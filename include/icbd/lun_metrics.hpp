// Per-LUN metrics files (docs/metrics.md): the versioned shared-memory layout
// bs_icbd writes and the reader blockd's exporter uses.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "icbd/status.hpp"

namespace icbd::metrics {

inline constexpr uint64_t lun_magic = 0x4d4e554c44424349ull;  // "ICBDLUNM" little-endian
inline constexpr uint32_t lun_layout_version = 1;
inline constexpr uint32_t header_bytes = 4096;
inline constexpr uint32_t file_bytes = 8192;
inline constexpr uint32_t latency_buckets = 32;  // bucket i: <= 2^i us; the last is +Inf
inline constexpr uint32_t sense_keys = 16;
inline constexpr const char* default_dir = "/run/icbd/luns";
inline constexpr const char* dir_env = "ICBD_METRICS_DIR";
inline constexpr const char* file_suffix = ".lunm";

enum Dir : unsigned { dir_read = 0, dir_write = 1, dir_other = 2, dir_count = 3 };
const char* dir_name(unsigned d);  // "read", "write", "other"
const char* sense_key_name(unsigned key);  // "medium_error", ...

inline constexpr uint32_t flag_overlay = 1, flag_cache = 2, flag_readonly = 4;

struct LunHeader {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint32_t file_size;
    uint32_t latency_buckets;
    uint32_t sense_keys;
    uint32_t flags;
    uint64_t lun;
    int32_t tid;
    uint32_t writer_pid;
    uint64_t created_ns;
    uint64_t writer_start;
    char name[64];
    char backing_path[1024];
    char overlay_path[1024];
    char cache_path[1024];
    uint8_t reserved[896];
};
static_assert(sizeof(LunHeader) == header_bytes);
static_assert(offsetof(LunHeader, lun) == 32 && offsetof(LunHeader, writer_start) == 56);
static_assert(offsetof(LunHeader, name) == 64 && offsetof(LunHeader, backing_path) == 128);
static_assert(offsetof(LunHeader, overlay_path) == 1152 && offsetof(LunHeader, cache_path) == 2176);

struct DirCounters {
    uint64_t commands;
    uint64_t bytes;
    uint64_t latency_sum_ns;
    uint64_t reserved;
    uint64_t buckets[latency_buckets];  // not cumulative
};
static_assert(sizeof(DirCounters) == 288);

struct LunCounters {
    DirCounters dir[dir_count];
    uint64_t errors_by_sense_key[sense_keys];
    uint64_t queue_depth;
    uint64_t cache_blocks_total;
    uint64_t cache_blocks_used;
    uint64_t cache_blocks_dirty;
    uint64_t cache_flush_bytes;
    uint64_t cache_commits;
    uint64_t overlay_blocks_written;
    uint64_t block_size;
    uint64_t reserved[380];
};
static_assert(sizeof(LunCounters) == file_bytes - header_bytes);
static_assert(header_bytes + offsetof(LunCounters, errors_by_sense_key) == 4960);
static_assert(header_bytes + offsetof(LunCounters, queue_depth) == 5088);
static_assert(header_bytes + offsetof(LunCounters, block_size) == 5144);

// Upper bound of bucket i in seconds (i < latency_buckets - 1).
inline double bucket_upper_seconds(unsigned i) { return 1e-6 * static_cast<double>(1ull << i); }

// Bucket of a latency: the smallest i with latency <= 2^i us, capped at +Inf.
inline unsigned latency_bucket(uint64_t ns) {
    uint64_t us = (ns + 999) / 1000;
    if (us <= 1) return 0;
    unsigned i = 64u - static_cast<unsigned>(__builtin_clzll(us - 1));
    return i < latency_buckets - 1 ? i : latency_buckets - 1;
}

// The single writer's update: no locked instruction, never torn for a reader.
inline void add(uint64_t& field, uint64_t n) {
    std::atomic_ref<uint64_t> a(field);
    a.store(a.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}
inline void set(uint64_t& field, uint64_t v) { std::atomic_ref<uint64_t>(field).store(v, std::memory_order_relaxed); }
inline uint64_t load(const uint64_t& field) {
    return std::atomic_ref<uint64_t>(const_cast<uint64_t&>(field)).load(std::memory_order_relaxed);
}

// File name of a LUN's metrics file for its identity (overlay path, else backing file).
std::string file_name_for(const std::string& identity);

// One reading of a LUN's file: the header's identity and a copy of every
// counter, each loaded once, atomically (docs/metrics.md, "Consistency").
struct LunSnapshot {
    std::filesystem::path file;
    std::string name, backing_path, overlay_path, cache_path;
    uint32_t flags = 0;
    int32_t tid = -1;
    uint64_t lun = UINT64_MAX;
    uint32_t writer_pid = 0;
    uint64_t writer_start = 0;
    uint64_t created_ns = 0;
    LunCounters counters{};
    std::string identity() const { return overlay_path.empty() ? backing_path : overlay_path; }
};

// Reads one file; refuses (EPROTO) another layout version or sizes, naming the
// file, the field and both values. ENOENT when the file is gone.
Result<LunSnapshot> read_lun_file(const std::filesystem::path& file);
// Validates a header image (the first bytes of a file); `size` is the file's size.
Status check_header(const LunHeader& h, uint64_t size, const std::string& file);
// Whether the process that wrote the file still runs (PID and its start time).
bool writer_alive(const LunSnapshot& s);
// Start time of a process (field 22 of /proc/PID/stat), 0 when unknown.
uint64_t process_start_time(uint32_t pid);

struct DirReading {
    std::vector<LunSnapshot> luns;     // live LUNs, sorted by file name
    std::vector<std::string> refused;  // one message per refused file
    size_t stale = 0;                  // files of dead writers, skipped
};
// Reads every *.lunm file of `dir`; files vanishing meanwhile are skipped. A
// missing directory reads as empty.
DirReading read_lun_dir(const std::filesystem::path& dir);

}  // namespace icbd::metrics
