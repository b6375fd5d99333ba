// Lun: the backing file, its I/O engine, the stack of data layers over them
// and the command runner (SCSI semantics) above that stack, for one LUN.
#include "icbd/lun.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "boot_recorder.hpp"
#include "cache_layer.hpp"
#include "command_runner.hpp"
#include "golden_file.hpp"
#include "io_queue.hpp"
#include "lun_metrics.hpp"
#include "overlay_layer.hpp"
#include "overlay_map.hpp"
#include "raw_layer.hpp"
#include "write_back_cache.hpp"
#include "icbd/file_io.hpp"
#include "icbd/log.hpp"

namespace icbd {
namespace {

bool on_btrfs(int fd) {
    struct statfs sf {};
    return ::fstatfs(fd, &sf) == 0 && static_cast<unsigned long>(sf.f_type) == BTRFS_SUPER_MAGIC;
}

}  // namespace

Result<std::unique_ptr<Lun>> Lun::create(const LunOptions& opts, const LunHost& host, const std::string& name,
                                         const LunSeams& seams) {
    std::string why;
    auto engine = seams.make_engine ? seams.make_engine(opts.engine, &why) : make_io_engine(opts.engine, &why);
    if (!engine) return Status::error(engine.status().code(), "I/O engine: " + engine.status().message());
    if (!why.empty())
        log(LogLevel::warning, (name.empty() ? std::string("LUN") : name) + ": io_uring unavailable (" + why +
                                   "); serving this LUN with the libaio engine");
    std::unique_ptr<Lun> lun(new Lun(opts, host, std::move(*engine)));
    lun->name_ = name;
    if (!opts.cache.empty() && opts.cache_idle_ms) {  // only a cache has idle work
        lun->timer_fd_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
        if (!lun->timer_fd_.valid())
            return Status::from_errno(errno, "cache '" + opts.cache + "': idle write-back timer: timerfd_create");
    }
    return lun;
}

Lun::Lun(const LunOptions& opts, const LunHost& host, std::unique_ptr<IoEngine> engine)
    : opts_(opts), host_(host), engine_(std::move(engine)) {}

// A destructor must not throw (that would be std::terminate inside tgtd):
// the C API closes first, under its guard, so this close() normally finds
// nothing left to do.
Lun::~Lun() {
    try {
        close();
    } catch (const std::exception& e) {
        try {
            log(LogLevel::error, (name_.empty() ? std::string("LUN") : name_) + ": closing: " + e.what());
        } catch (...) {
        }
    }
}

Result<uint64_t> Lun::open(const std::string& path, int extra_oflags) {
    close();
    if (!opts_.overlay.empty()) return open_overlay(path);
    const int base = O_LARGEFILE | O_CLOEXEC | extra_oflags | (opts_.direct ? O_DIRECT : 0);
    readonly_ = opts_.readonly;
    int fd = ::open(path.c_str(), base | (readonly_ ? O_RDONLY : O_RDWR));
    if (fd < 0 && !readonly_ && (errno == EACCES || errno == EROFS || errno == EPERM)) {
        // A golden image in a read-only snapshot: serve it read-only, as tgt's rdwr does.
        log(LogLevel::warning, "backing file '" + path + "': not writable (" + std::strerror(errno) +
                                   "); the LUN is read-only");
        readonly_ = true;
        fd = ::open(path.c_str(), base | O_RDONLY);
    }
    if (fd < 0) return Status::from_errno(errno, "backing file '" + path + "': open");
    UniqueFd owned(fd);

    struct stat st {};
    if (fstat(fd, &st) < 0) return Status::from_errno(errno, "backing file '" + path + "': fstat");
    uint64_t size = 0;
    if (S_ISREG(st.st_mode)) {
        size = static_cast<uint64_t>(st.st_size);
    } else if (S_ISBLK(st.st_mode)) {
        if (ioctl(fd, BLKGETSIZE64, &size) < 0)
            return Status::from_errno(errno, "backing file '" + path + "': BLKGETSIZE64");
    } else {
        return Status::error(EINVAL, "backing file '" + path + "': not a regular file or block device");
    }
    if (size == 0) return Status::error(EINVAL, "backing file '" + path + "': is empty (size 0)");

    // direct=writes: a second descriptor, O_DIRECT, for writes only; reads keep
    // the shared page cache (the kernel invalidates cached pages a direct write
    // covers). A filesystem without O_DIRECT keeps buffered writes, said once.
    // direct=auto picks it on BTRFS, where buffered 4 KiB random writes run at
    // half the speed of direct ones (bench/RESULTS.md); on ext4 buffered wins.
    UniqueFd write_fd;
    bool want_direct_writes = opts_.direct_writes && !readonly_;
    if (opts_.direct_auto && opts_.cache.empty() && !readonly_ && on_btrfs(fd)) {
        want_direct_writes = true;
        log(LogLevel::info, "backing file '" + path + "' is on BTRFS: writes go O_DIRECT (direct=auto; direct=0 keeps them buffered)");
    }
    if (want_direct_writes) {
        write_fd.reset(::open(path.c_str(), (base | O_RDWR | O_DIRECT)));
        if (!write_fd.valid())
            log(LogLevel::warning, "backing file '" + path + "': O_DIRECT refused (" + std::strerror(errno) +
                                       "); writes stay buffered");
    }
    fd_ = std::move(owned);
    write_fd_ = std::move(write_fd);
    if (!opts_.cache.empty()) {
        if (Status s = open_cache("raw " + path, size); !s) return s;
    }
    build_stack(path);
    attach_metrics(path);
    attach_recorder(size);
    return size;
}

// Golden file (shared, read-only) + this client's overlay. Buffered only: the
// shared page cache of the golden file is the point.
Result<uint64_t> Lun::open_overlay(const std::string& golden_path) {
    if (opts_.direct || opts_.direct_writes)
        return Status::error(EINVAL, "overlay '" + opts_.overlay + "': direct I/O is not supported with overlays "
                                     "(the golden file's shared page cache is what makes them cheap)");
    auto golden = GoldenFile::open(golden_path);
    if (!golden) return golden.status();
    auto overlay = OverlayMap::attach(opts_.overlay, *golden, true);
    if (!overlay) return overlay.status();
    readonly_ = opts_.readonly;
    overlay_ = std::move(*overlay);
    if (!opts_.cache.empty()) {
        if (Status s = open_cache("overlay " + uuid_to_string(overlay_->info().overlay_uuid), overlay_->size()); !s)
            return s;
    }
    build_stack(opts_.overlay);
    attach_metrics(golden_path);
    attach_recorder(overlay_->size());
    return overlay_->size();
}

Status Lun::open_cache(const std::string& device_id, uint64_t size) {
    if (size % OverlayMap::block_size)
        return Status::error(EINVAL, "cache '" + opts_.cache + "': the LUN size " + std::to_string(size) +
                                         " is not a multiple of 4096 bytes (the cache block)");
    if (readonly_)
        return Status::error(EINVAL, "cache '" + opts_.cache + "': a read-only LUN has nothing to cache");
    auto cache = WriteBackCache::open(opts_.cache, opts_.cache_size, CacheIdentity{size, device_id});
    if (!cache) return cache.status();
    cache_ = std::move(*cache);
    return Status::ok();
}

void Lun::build_stack(const std::string& name) {
    io_ = std::make_unique<IoQueue>(*engine_, host_, name);
    DataLayer* top = nullptr;
    if (overlay_) top = (overlay_layer_ = std::make_unique<OverlayLayer>(*io_, *overlay_)).get();
    else top = (raw_layer_ = std::make_unique<RawLayer>(*io_, fd_.get(), write_fd_.get(), opts_.direct)).get();
    if (cache_) {
        top = (cache_layer_ = std::make_unique<CacheLayer>(*io_, *cache_, *top)).get();
        cache_layer_->flusher().set_idle_timer(timer_fd_.get(), opts_.cache_idle_ms);
    }
    runner_ = std::make_unique<CommandRunner>(*io_, *top, host_);
}

void Lun::attach_metrics(const std::string& backing_path) {
    LunMetricsIdentity id{LunMetrics::resolve_dir(opts_.metrics_dir), name_, backing_path, opts_.overlay, opts_.cache,
                          readonly_};
    metrics_ = LunMetrics::create(id);
    runner_->set_metrics(metrics_.get());
    if (overlay_layer_) overlay_layer_->set_metrics(metrics_.get());
    if (cache_layer_) cache_layer_->set_metrics(metrics_.get());
}

void Lun::attach_recorder(uint64_t size) {
    if (opts_.bootset.empty() || opts_.bootset_window_s == 0) return;
    const std::string what = name_.empty() ? std::string("LUN") : name_;
    auto r = BootRecorder::create(opts_.bootset, size, opts_.bootset_window_s, what);
    if (!r) {
        // Recording is an optimisation: the LUN serves without it.
        log(LogLevel::warning, what + ": not recording a boot set: " + r.status().message());
        return;
    }
    recorder_ = std::move(*r);
    runner_->set_boot_recorder(recorder_.get());
}

// Closing is the SYNCHRONIZE CACHE the initiator did not send: an overlay
// block belongs to the client only once its map bit is on disk, and a bit goes
// there only after its data is durable (docs/overlay-format.md, "Durability
// rules"). Without this, writes acknowledged since the last SYNCHRONIZE CACHE
// read as golden data again after the LUN is removed and added back.
// Everything is drained: plain blocking I/O, once per LUN.
void Lun::persist_overlay_map() {
    const std::string who = "overlay '" + opts_.overlay + "'";
    const int fd = overlay_->fd();
    OverlayMap::Snapshot written = overlay_->snapshot_unsynced();
    if (::fdatasync(fd) != 0) {
        log(LogLevel::error, who + ": fdatasync at close: " + std::strerror(errno) +
                                 "; writes since the last SYNCHRONIZE CACHE may read as before them when the "
                                 "overlay is attached again");
        return;
    }
    overlay_->apply_durable(written);
    if (!overlay_->has_unwritten_pages()) return;
    std::vector<uint8_t> buf;
    for (const OverlayMap::PageWrite& w : overlay_->take_unwritten_pages(buf)) {
        if (Status s = full_pwrite(fd, buf.data() + w.buf_offset, w.len, w.file_offset, who + ": map at close"); !s) {
            log(LogLevel::error, s.message());
            return;
        }
    }
    if (::fdatasync(fd) != 0) log(LogLevel::error, who + ": fdatasync of the map at close: " + std::strerror(errno));
}

int Lun::fd() const { return overlay_ ? overlay_->golden_fd() : fd_.get(); }

void Lun::pump() {
    runner_->submit_batch();
    if (io_->in_flight() > 0) io_->wait();
    runner_->process_completions();
}

void Lun::close() {
    if (runner_) {
        runner_->drain();
        if (cache_layer_) cache_layer_->flusher().drain([this] { pump(); });
    }
    if (overlay_ && !readonly_) persist_overlay_map();
    runner_.reset();
    cache_layer_.reset();
    overlay_layer_.reset();
    raw_layer_.reset();
    io_.reset();
    metrics_.reset();  // unlinks the file: the LUN is gone
    recorder_.reset();  // merges a window still open, waits for the merge
    cache_.reset();
    overlay_.reset();
    write_fd_.reset();
    fd_.reset();
}

void Lun::submit(const LunCommand& cmd) {
    if (cache_layer_) cache_layer_->flusher().note_host_command();  // not idle: no idle write-back yet
    runner_->submit(cmd);
}
void Lun::submit_batch() {
    if (runner_) runner_->submit_batch();
}
void Lun::on_timer() {
    uint64_t expirations;
    if (!timer_fd_.valid() || ::read(timer_fd_.get(), &expirations, sizeof expirations) < 0)
        return;  // no timer, or EAGAIN: not expired
    if (cache_layer_) cache_layer_->flusher().on_idle_timer();
}
void Lun::process_completions() {
    engine_->acknowledge_event();
    if (runner_) runner_->process_completions();
}
size_t Lun::commands_in_flight() const { return runner_ ? runner_->commands_in_flight() : 0; }

}  // namespace icbd
