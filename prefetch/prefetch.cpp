// prefetch_file: reads a golden file's boot set into the page cache in offset
// order, at idle I/O priority, bounded in size, rate and memory, giving way
// to others on the same disk (docs/boot-set.md, "Prefetch").
//
// Why threads with pread and not io_uring: a buffered read that misses the
// page cache goes to the disk in the context of the task that reads, and the
// block layer gives those bios that task's I/O priority. sqe->ioprio only
// reaches direct I/O, and io_uring hands buffered misses to io-wq workers, so
// a ring would not put the disk reads in the idle class; `in_flight` threads,
// each with ioprio_set(IOPRIO_CLASS_IDLE) on itself, do. The copy into a
// private buffer costs about 0.1 ms of CPU per MiB, small beside the disk.
#include "icbd/prefetch.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include "disk_activity.hpp"
#include "icbd/unique_fd.hpp"
#include "memory_gauge.hpp"

namespace icbd {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kProgressEvery = 64ull << 20;
constexpr uint64_t kIdentityEveryBytes = 64ull << 20;
constexpr auto kIdentityEvery = std::chrono::seconds(1);
// How long a waiting reading thread sleeps at most before it looks at *cancel again.
constexpr auto kWaitSlice = std::chrono::milliseconds(50);

// ioprio_set(2) has no glibc wrapper; the values are the kernel's ABI.
constexpr int kIoprioWhoProcess = 1;
constexpr int kIoprioClassIdle = 3;
constexpr int kIoprioClassShift = 13;

void set_idle_io_priority() {
    // WHO_PROCESS with 0 is the calling thread. A refusal (seccomp, an old
    // kernel) leaves the default class: the prefetch still works, only less politely.
    (void)::syscall(SYS_ioprio_set, kIoprioWhoProcess, 0, kIoprioClassIdle << kIoprioClassShift);
}

// 'path', built by appending: GCC 12 at -O3 warns falsely (-Wrestrict) on
// "literal" + std::string.
std::string quoted(const fs::path& p) {
    std::string s(1, '\'');
    s.append(p.string()).push_back('\'');
    return s;
}

struct Range {
    uint64_t offset = 0;
    uint64_t length = 0;
};

// A read-only mapping of a file range, for mincore only (never touched, so
// nothing is faulted in).
class Mapping {
public:
    Mapping(int fd, uint64_t offset, uint64_t length) : length_(length) {
        void* p = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
        addr_ = p == MAP_FAILED ? nullptr : p;
    }
    ~Mapping() {
        if (addr_) ::munmap(addr_, length_);
    }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    void* addr() const { return addr_; }

private:
    void* addr_ = nullptr;
    uint64_t length_;
};

// The parts of `r` that are not in the page cache, as reads; `cached` gets the
// bytes that are. Where residency cannot be asked, everything is read.
std::vector<Range> missing_parts(int fd, const Range& r, uint64_t page, uint64_t& cached) {
    cached = 0;
    Mapping m(fd, r.offset, r.length);
    const uint64_t pages = (r.length + page - 1) / page;
    std::vector<unsigned char> resident(pages);
    if (!m.addr() || ::mincore(m.addr(), r.length, resident.data()) != 0) return {r};
    std::vector<Range> out;
    for (uint64_t i = 0; i < pages; ++i) {
        const uint64_t off = r.offset + i * page;
        const uint64_t len = std::min(page, r.offset + r.length - off);
        if (resident[i] & 1) {
            cached += len;
        } else if (!out.empty() && out.back().offset + out.back().length == off) {
            out.back().length += len;
        } else {
            out.push_back({off, len});
        }
    }
    return out;
}

class Prefetcher {
public:
    Prefetcher(const fs::path& file, const PrefetchOptions& o, int fd, const struct stat& st, std::vector<Range> runs,
               uint64_t total)
        : file_(file),
          o_(o),
          fd_(fd),
          dev_(st.st_dev),
          ino_(st.st_ino),
          runs_(std::move(runs)),
          total_(total),
          gauge_(o.meminfo, o.min_available_fraction, o.reserve_bytes),
          page_(static_cast<uint64_t>(::sysconf(_SC_PAGESIZE))) {
        if (o_.adaptive) {
            PacerConfig c = o_.pacer;
            c.max_in_flight = o_.in_flight;
            c.max_request = o_.max_request;
            pacer_.emplace(c, start_);
            std::string why;
            disk_ = prefetch_detail::DiskActivity::for_file(file_, dev_, why);
            pacing_.adaptive = true;
            if (disk_) {
                pacing_.device = disk_->name();
                last_device_bytes_ = disk_->bytes().value_or(0);
            } else {
                pacing_.device_note = why;
            }
        }
    }

    Result<PrefetchSummary> run() {
        uint64_t max_requests = 0;
        for (const Range& r : runs_) max_requests += (r.length + o_.max_request - 1) / o_.max_request;
        const unsigned n = static_cast<unsigned>(std::max<uint64_t>(1, std::min<uint64_t>(o_.in_flight, max_requests)));
        {
            std::vector<std::jthread> threads;
            try {
                for (unsigned i = 0; i < n; ++i) threads.emplace_back([this] { worker(); });
            } catch (const std::system_error& e) {
                // Out of threads: those that started do the work, more slowly.
                if (threads.empty())
                    return Status::error(e.code().value() ? e.code().value() : EAGAIN,
                                         "prefetch of " + quoted(file_) + ": cannot start a reading thread: " + e.what());
            }
        }
        if (!error_.is_ok()) return error_;
        if (!stopped_) {
            // Deleted after the last look: the pages read belong to a file nobody will open.
            std::lock_guard lk(dispatch_mu_);
            check_identity(true);
        }
        PrefetchSummary s;
        s.file = file_.string();
        s.total_bytes = total_;
        s.read_bytes = read_bytes_;
        s.cached_bytes = cached_bytes_;
        s.requests = requests_;
        s.end = stopped_ ? *stopped_ : PrefetchEnd::complete;
        s.detail = detail_;
        if (pacer_) {
            pacing_.stats = pacer_->stats();
            pacing_.final_level = pacer_->level();
        }
        s.pacing = pacing_;
        s.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
        if (o_.progress) o_.progress({read_bytes_ + cached_bytes_, total_});
        return s;
    }

private:
    // One plan per request: what to read of it (its uncached parts).
    struct Plan {
        Range request;
        std::vector<Range> reads;
        bool alone = false;  // none other of ours in flight when it left
    };

    void worker() {
        if (o_.idle_priority) set_idle_io_priority();
        std::vector<uint8_t> buf(o_.max_request);
        for (;;) {
            auto plan = next_plan();
            if (!plan) return;
            const auto t0 = Clock::now();
            uint64_t got = 0;
            bool failed = false;
            for (const Range& r : plan->reads) {
                auto n = read_range(r, buf);
                if (!n) {
                    failed = true;
                    break;
                }
                got += *n;
                if (*n < r.length) break;  // the file ends here now
            }
            completed(*plan, got, Clock::now() - t0);
            if (failed) return;
            account(plan->reads.size(), got, plan->request.length);
        }
    }

    // A read left the disk: the controller learns its latency, the next one may leave.
    void completed(const Plan& plan, uint64_t got, Clock::duration latency) {
        {
            std::lock_guard lk(dispatch_mu_);
            --in_flight_;
            own_disk_bytes_ += got;
            if (pacer_ && got) {
                pacer_->on_complete(got, latency, plan.alone);
                gap_until_ = Clock::now() + pacer_->gap_after(latency, got);
            }
        }
        cv_.notify_all();
    }

    // With none of ours in flight, what the device moved beyond our reads is
    // someone else's: exact, since a read is counted by the device before it
    // returns to us.
    void observe_quiescent(Clock::time_point now) {
        std::optional<uint64_t> others;
        if (disk_) {
            if (auto b = disk_->bytes()) {
                const uint64_t device = *b - std::min(*b, last_device_bytes_);
                const uint64_t own = own_disk_bytes_ - last_own_bytes_;
                others = device > own ? device - own : 0;
                last_device_bytes_ = *b;
                last_own_bytes_ = own_disk_bytes_;
            }
        }
        pacer_->on_quiescent(now, others);
    }

    // The next request, after the checks that may stop the prefetch; under
    // dispatch_mu_ so that requests leave in offset order and the rate holds.
    std::optional<Plan> next_plan() {
        std::unique_lock lk(dispatch_mu_);
        for (;;) {
            if (stopped_ || !error_.is_ok() || run_ == runs_.size()) return std::nullopt;
            if (o_.cancel && o_.cancel->load()) return stop(PrefetchEnd::cancelled, "cancelled");
            if (!pacer_) break;
            // The controller's limits: reads in flight, the pause after a read,
            // and a moment with none in flight now and then to measure.
            const auto now = Clock::now();
            if (in_flight_ == 0) observe_quiescent(now);
            if (now < gap_until_) {
                cv_.wait_until(lk, std::min(gap_until_, now + kWaitSlice));
                continue;
            }
            if (in_flight_ >= pacer_->in_flight_limit() || (in_flight_ > 0 && pacer_->drain_due(now))) {
                cv_.wait_for(lk, kWaitSlice);
                continue;
            }
            break;
        }
        auto pressure = gauge_.pressure(total_ - dispatched_);
        if (!pressure) return fail(pressure.status());
        if (*pressure) return stop(PrefetchEnd::memory_pressure, **pressure);
        if (!check_identity(false)) return std::nullopt;
        Plan p;
        const Range& run = runs_[run_];
        const uint64_t size = pacer_ ? pacer_->request_bytes() : o_.max_request;
        p.request = {run.offset + run_done_, std::min(size, run.length - run_done_)};
        p.alone = in_flight_ == 0;
        uint64_t cached = 0;
        p.reads = missing_parts(fd_, p.request, page_, cached);
        uint64_t to_read = 0;
        for (const Range& r : p.reads) to_read += r.length;
        {
            std::lock_guard sl(stats_mu_);
            cached_bytes_ += cached;
        }
        if (o_.max_rate && to_read) {
            charged_ += to_read;
            const auto due = start_ + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(double(charged_) / double(o_.max_rate)));
            // In slices, so that a cancel is seen during a long wait.
            while (Clock::now() < due) {
                if (o_.cancel && o_.cancel->load()) return stop(PrefetchEnd::cancelled, "cancelled");
                std::this_thread::sleep_for(std::min<Clock::duration>(due - Clock::now(), kWaitSlice));
            }
        }
        run_done_ += p.request.length;
        if (run_done_ == run.length) {
            ++run_;
            run_done_ = 0;
        }
        dispatched_ += p.request.length;
        ++in_flight_;
        return p;
    }

    // Does the path still name the file we opened? A version deleted
    // meanwhile (its subvolume gone, the file unlinked) still reads through
    // our fd. Looked at every 64 MiB or second; `now` forces a look.
    bool check_identity(bool now) {
        const auto t = Clock::now();
        if (!now && dispatched_ - identity_bytes_ < kIdentityEveryBytes && t - identity_time_ < kIdentityEvery)
            return true;
        identity_bytes_ = dispatched_;
        identity_time_ = t;
        struct stat st{};
        if (::stat(file_.c_str(), &st) != 0) {
            const int e = errno;
            if (e == ENOENT || e == ESTALE || e == ENOTDIR) {
                stop(PrefetchEnd::file_gone, quoted(file_) + " was removed");
                return false;
            }
            fail(Status::from_errno(e, "prefetch of " + quoted(file_) + ": stat"));
            return false;
        }
        if (st.st_dev != dev_ || st.st_ino != ino_) {
            stop(PrefetchEnd::file_gone, quoted(file_) + " names another file now");
            return false;
        }
        return true;
    }

    // Bytes read of `r` (fewer at the file's end), or nullopt when stopped.
    std::optional<uint64_t> read_range(const Range& r, std::vector<uint8_t>& buf) {
        uint64_t done = 0;
        while (done < r.length) {
            const ssize_t n = ::pread(fd_, buf.data(), r.length - done, static_cast<off_t>(r.offset + done));
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                const int e = errno;
                std::lock_guard lk(dispatch_mu_);
                if (e == ESTALE || e == ENOENT)
                    stop(PrefetchEnd::file_gone, quoted(file_) + " was removed (read: " + std::strerror(e) + ")");
                else
                    fail(Status::from_errno(e, "prefetch of " + quoted(file_) + ": read of " +
                                                   std::to_string(r.length - done) + " bytes at offset " +
                                                   std::to_string(r.offset + done)));
                return std::nullopt;
            }
            if (n == 0) break;
            done += static_cast<uint64_t>(n);
        }
        return done;
    }

    void account(uint64_t reads, uint64_t got, uint64_t request_bytes) {
        std::lock_guard lk(stats_mu_);
        requests_ += reads;
        read_bytes_ += got;
        done_ += request_bytes;
        if (o_.progress && done_ >= next_progress_ && done_ < total_) {
            next_progress_ = (done_ / kProgressEvery + 1) * kProgressEvery;
            o_.progress({read_bytes_ + cached_bytes_, total_});
        }
    }

    // Under dispatch_mu_ (or a reading thread that took it): the first end wins.
    std::nullopt_t stop(PrefetchEnd end, const std::string& why) {
        if (!stopped_ && error_.is_ok()) {
            stopped_ = end;
            detail_ = why;
        }
        return std::nullopt;
    }
    std::nullopt_t fail(Status s) {
        if (error_.is_ok()) error_ = std::move(s);
        return std::nullopt;
    }

    const fs::path file_;
    const PrefetchOptions& o_;
    const int fd_;
    const dev_t dev_;
    const ino_t ino_;
    const std::vector<Range> runs_;
    const uint64_t total_;
    const prefetch_detail::MemoryGauge gauge_;
    const uint64_t page_;
    const Clock::time_point start_ = Clock::now();

    std::optional<PrefetchPacer> pacer_;  // adaptive only
    std::optional<prefetch_detail::DiskActivity> disk_;
    PrefetchPacing pacing_;

    std::mutex dispatch_mu_;  // what follows up to stats_mu_
    std::condition_variable cv_;  // a read ended
    size_t run_ = 0;          // the run being dispatched
    uint64_t run_done_ = 0;   // its bytes dispatched
    unsigned in_flight_ = 0;
    uint64_t own_disk_bytes_ = 0;  // read from the disk by completed reads
    uint64_t last_device_bytes_ = 0, last_own_bytes_ = 0;
    Clock::time_point gap_until_{};
    uint64_t dispatched_ = 0;
    uint64_t charged_ = 0;  // bytes to read so far, for max_rate
    uint64_t identity_bytes_ = 0;
    Clock::time_point identity_time_ = start_;
    std::optional<PrefetchEnd> stopped_;
    std::string detail_;
    Status error_;

    std::mutex stats_mu_;  // what follows
    uint64_t read_bytes_ = 0;
    uint64_t cached_bytes_ = 0;
    uint64_t requests_ = 0;
    uint64_t done_ = 0;
    uint64_t next_progress_ = kProgressEvery;
};

}  // namespace

const char* prefetch_end_name(PrefetchEnd e) {
    switch (e) {
        case PrefetchEnd::complete: return "complete";
        case PrefetchEnd::memory_pressure: return "memory pressure";
        case PrefetchEnd::file_gone: return "file removed";
        case PrefetchEnd::cancelled: return "cancelled";
    }
    return "unknown";
}

Result<PrefetchSummary> prefetch_file(const fs::path& file, const BootSet& set, const PrefetchOptions& options) {
    const auto start = Clock::now();
    const std::string what = "prefetch of " + quoted(file);
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
        const int e = errno;
        if (e == ENOENT || e == ESTALE || e == ENOTDIR) {
            PrefetchSummary s;
            s.file = file.string();
            s.total_bytes = set.bytes();
            s.end = PrefetchEnd::file_gone;
            s.detail = quoted(file) + " was removed (open: " + std::strerror(e) + ")";
            s.seconds = std::chrono::duration<double>(Clock::now() - start).count();
            return s;
        }
        return Status::from_errno(e, what + ": open");
    }
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0) return Status::from_errno(errno, what + ": fstat");
    if (!S_ISREG(st.st_mode)) return Status::error(EINVAL, what + ": not a regular file");
    if (options.in_flight == 0) return Status::error(EINVAL, what + ": in_flight is 0");

    // Runs cut into requests of at most max_request (whole pages: runs start
    // on chunk boundaries, so every request starts on a page) as they leave,
    // the file's end clamping.
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t max_request = std::max(page, options.max_request / page * page);
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    std::vector<Range> runs;
    uint64_t total = 0;
    for (const BootSet::Run& run : set.runs()) {
        if (run.offset >= size) break;
        const uint64_t end = std::min(size, run.offset + run.length);
        runs.push_back({run.offset, end - run.offset});
        total += end - run.offset;
    }
    // Only what the set names: without this the kernel's readahead would read
    // past each request into chunks no client asked for.
    (void)::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_RANDOM);
    PrefetchOptions o = options;
    o.max_request = max_request;
    Prefetcher p(file, o, fd.get(), st, std::move(runs), total);
    return p.run();
}

}  // namespace icbd
