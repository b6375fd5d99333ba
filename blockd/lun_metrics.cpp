// Per-LUN metrics files: creation and removal (writer, in tgtd) and reading
// (blockd's exporter, tests). Layout and rules: docs/metrics.md.
#include "lun_metrics.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "icbd/log.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd {
namespace metrics {

const char* dir_name(unsigned d) {
    switch (d) {
        case dir_read: return "read";
        case dir_write: return "write";
        default: return "other";
    }
}

const char* sense_key_name(unsigned key) {
    static const char* const names[16] = {
        "no_sense",        "recovered_error", "not_ready",     "medium_error",
        "hardware_error",  "illegal_request", "unit_attention", "data_protect",
        "blank_check",     "vendor_specific", "copy_aborted",  "aborted_command",
        "reserved_0c",     "volume_overflow", "miscompare",    "completed"};
    return names[key & 15];
}

std::string file_name_for(const std::string& identity) {
    static const char* const hex = "0123456789ABCDEF";
    std::string out;
    size_t i = 0;
    while (i < identity.size() && identity[i] == '/') ++i;
    for (; i < identity.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(identity[i]);
        if (c == '/') out += '-';
        else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_')
            out += static_cast<char>(c);
        else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    if (out.size() > 200) {  // NAME_MAX is 255: keep the name unique with a hash of the whole identity
        uint64_t h = 1469598103934665603ull;  // FNV-1a
        for (unsigned char c : identity) h = (h ^ c) * 1099511628211ull;
        char tail[24];
        std::snprintf(tail, sizeof tail, "~%016" PRIx64, h);
        out.resize(180);
        out += tail;
    }
    return out + file_suffix;
}

uint64_t process_start_time(uint32_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(in, line)) return 0;
    size_t p = line.rfind(')');  // the command name may hold spaces and parentheses
    if (p == std::string::npos) return 0;
    // Fields after the name start at field 3 (state); the start time is field 22.
    const char* s = line.c_str() + p + 1;
    for (int field = 3; field < 22; ++field) {
        while (*s == ' ') ++s;
        while (*s && *s != ' ') ++s;
    }
    return std::strtoull(s, nullptr, 10);
}

Status check_header(const LunHeader& h, uint64_t size, const std::string& file) {
    auto refuse = [&](const std::string& what) {
        return Status::error(EPROTO, "metrics file '" + file + "': " + what);
    };
    if (h.magic != lun_magic) return refuse("bad magic (not an icbd LUN metrics file)");
    if (h.version != lun_layout_version)
        return refuse("layout version " + std::to_string(h.version) + ", this reader knows " +
                      std::to_string(lun_layout_version));
    if (h.header_size != header_bytes)
        return refuse("header_size " + std::to_string(h.header_size) + ", expected " + std::to_string(header_bytes));
    if (h.file_size != file_bytes)
        return refuse("file_size " + std::to_string(h.file_size) + ", expected " + std::to_string(file_bytes));
    if (size < h.file_size)
        return refuse("file is " + std::to_string(size) + " bytes, its header says " + std::to_string(h.file_size));
    if (h.latency_buckets != latency_buckets || h.sense_keys != sense_keys)
        return refuse("latency_buckets " + std::to_string(h.latency_buckets) + " / sense_keys " +
                      std::to_string(h.sense_keys) + ", expected " + std::to_string(latency_buckets) + " / " +
                      std::to_string(sense_keys));
    return Status::ok();
}

namespace {

std::string bounded(const char* s, size_t n) { return std::string(s, strnlen(s, n)); }

}  // namespace

Result<LunSnapshot> read_lun_file(const std::filesystem::path& file) {
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Status::from_errno(errno, "metrics file '" + file.string() + "': open");
    struct stat st {};
    if (::fstat(fd.get(), &st) < 0) return Status::from_errno(errno, "metrics file '" + file.string() + "': fstat");
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size < 16)
        return Status::error(EPROTO, "metrics file '" + file.string() + "': " + std::to_string(size) +
                                         " bytes, too short for a header");
    const size_t map_len = static_cast<size_t>(std::min<uint64_t>(size, file_bytes));
    void* map = ::mmap(nullptr, map_len, PROT_READ, MAP_SHARED, fd.get(), 0);
    if (map == MAP_FAILED) return Status::from_errno(errno, "metrics file '" + file.string() + "': mmap");
    struct Unmap {
        void* p;
        size_t n;
        ~Unmap() { ::munmap(p, n); }
    } unmap{map, map_len};
    // Check magic and version first: a future layout may be smaller than ours.
    LunHeader h{};
    std::memcpy(&h, map, std::min<size_t>(map_len, sizeof h));
    if (map_len < sizeof h && h.magic == lun_magic && h.version == lun_layout_version)
        return Status::error(EPROTO, "metrics file '" + file.string() + "': " + std::to_string(size) +
                                         " bytes, shorter than its header");
    if (Status s = check_header(h, size, file.string()); !s) return s;
    LunSnapshot out;
    out.file = file;
    out.name = bounded(h.name, sizeof h.name);
    out.backing_path = bounded(h.backing_path, sizeof h.backing_path);
    out.overlay_path = bounded(h.overlay_path, sizeof h.overlay_path);
    out.cache_path = bounded(h.cache_path, sizeof h.cache_path);
    out.flags = h.flags;
    out.tid = h.tid;
    out.lun = h.lun;
    out.writer_pid = h.writer_pid;
    out.writer_start = h.writer_start;
    out.created_ns = h.created_ns;
    const auto* live = reinterpret_cast<const uint64_t*>(static_cast<const char*>(map) + header_bytes);
    auto* copy = reinterpret_cast<uint64_t*>(&out.counters);
    for (size_t i = 0; i < sizeof(LunCounters) / 8; ++i) copy[i] = load(live[i]);
    return out;
}

bool writer_alive(const LunSnapshot& s) {
    if (s.writer_pid == 0) return false;
    if (::kill(static_cast<pid_t>(s.writer_pid), 0) < 0 && errno == ESRCH) return false;
    // A recycled PID: same number, another process.
    return s.writer_start == 0 || process_start_time(s.writer_pid) == s.writer_start;
}

DirReading read_lun_dir(const std::filesystem::path& dir) {
    DirReading r;
    std::vector<std::string> names;
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* e = ::readdir(d)) {
            std::string n = e->d_name;
            const std::string suffix = file_suffix;
            if (n.size() > suffix.size() && n[0] != '.' && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0)
                names.push_back(std::move(n));
        }
        ::closedir(d);
    }
    std::sort(names.begin(), names.end());
    for (const std::string& n : names) {
        auto s = read_lun_file(dir / n);
        if (!s) {
            if (s.status().code() != ENOENT) r.refused.push_back(s.status().message());
            continue;  // removed between readdir and open: the LUN went away
        }
        if (!writer_alive(*s)) {
            ++r.stale;
            continue;
        }
        r.luns.push_back(std::move(*s));
    }
    return r;
}

}  // namespace metrics

namespace {

void copy_bounded(char* dst, size_t n, const std::string& s) {
    size_t len = std::min(n - 1, s.size());
    std::memcpy(dst, s.data(), len);
    dst[len] = 0;
}

}  // namespace

std::string LunMetrics::resolve_dir(const std::string& bsopt_dir) {
    if (!bsopt_dir.empty()) return bsopt_dir == "off" ? std::string() : bsopt_dir;
    const char* env = std::getenv(metrics::dir_env);
    if (env && *env) return std::string(env) == "off" ? std::string() : std::string(env);
    return metrics::default_dir;
}

std::unique_ptr<LunMetrics> LunMetrics::create(const LunMetricsIdentity& id) {
    using namespace metrics;
    if (id.dir.empty()) return nullptr;
    const std::string who = id.name.empty() ? std::string("LUN") : id.name;
    auto off = [&](const std::string& what, int err) -> std::unique_ptr<LunMetrics> {
        log(LogLevel::warning, who + ": metrics off: " + what + ": " + std::strerror(err));
        return nullptr;
    };
    std::error_code ec;
    std::filesystem::create_directories(id.dir, ec);
    if (ec) return off("metrics directory '" + id.dir + "'", ec.value());
    const std::string identity = id.overlay_path.empty() ? id.backing_path : id.overlay_path;
    const std::string name = file_name_for(identity);
    const std::string path = id.dir + "/" + name;
    const std::string tmp = id.dir + "/." + name + ".tmp." + std::to_string(::getpid());

    UniqueFd fd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd.valid()) return off("metrics file '" + tmp + "'", errno);
    if (::ftruncate(fd.get(), file_bytes) < 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        return off("metrics file '" + tmp + "': ftruncate", e);
    }
    void* map = ::mmap(nullptr, file_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (map == MAP_FAILED) {
        int e = errno;
        ::unlink(tmp.c_str());
        return off("metrics file '" + tmp + "': mmap", e);
    }
    auto* h = static_cast<LunHeader*>(map);
    h->version = lun_layout_version;
    h->header_size = header_bytes;
    h->file_size = file_bytes;
    h->latency_buckets = latency_buckets;
    h->sense_keys = sense_keys;
    h->flags = (id.overlay_path.empty() ? 0 : flag_overlay) | (id.cache_path.empty() ? 0 : flag_cache) |
               (id.readonly ? flag_readonly : 0);
    int tid = -1;
    unsigned long long lun = UINT64_MAX;
    if (std::sscanf(id.name.c_str(), "tgt %d lun %llu", &tid, &lun) != 2) tid = -1, lun = UINT64_MAX;
    h->tid = tid;
    h->lun = lun;
    h->writer_pid = static_cast<uint32_t>(::getpid());
    h->writer_start = process_start_time(h->writer_pid);
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    h->created_ns = static_cast<uint64_t>(now.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(now.tv_nsec);
    copy_bounded(h->name, sizeof h->name, id.name);
    copy_bounded(h->backing_path, sizeof h->backing_path, id.backing_path);
    copy_bounded(h->overlay_path, sizeof h->overlay_path, id.overlay_path);
    copy_bounded(h->cache_path, sizeof h->cache_path, id.cache_path);
    auto* c = reinterpret_cast<LunCounters*>(static_cast<char*>(map) + header_bytes);
    c->block_size = 4096;
    std::atomic_ref<uint64_t>(h->magic).store(lun_magic, std::memory_order_release);

    struct stat st {};
    if (::fstat(fd.get(), &st) < 0 || ::rename(tmp.c_str(), path.c_str()) < 0) {
        int e = errno;
        ::munmap(map, file_bytes);
        ::unlink(tmp.c_str());
        return off("metrics file '" + path + "'", e);
    }
    // The mapping keeps the file's pages; the descriptor is not needed.
    return std::unique_ptr<LunMetrics>(
        new LunMetrics(map, path, static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)));
}

LunMetrics::LunMetrics(void* map, std::string path, uint64_t dev, uint64_t ino)
    : map_(map),
      counters_(reinterpret_cast<metrics::LunCounters*>(static_cast<char*>(map) + metrics::header_bytes)),
      path_(std::move(path)),
      dev_(dev),
      ino_(ino) {}

LunMetrics::~LunMetrics() {
    struct stat st {};
    if (::stat(path_.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_dev) == dev_ &&
        static_cast<uint64_t>(st.st_ino) == ino_)
        ::unlink(path_.c_str());
    ::munmap(map_, metrics::file_bytes);
}

}  // namespace icbd
