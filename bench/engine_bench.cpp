// icbd-engine-bench: Google Benchmark micro-benchmarks of libblockd's hot path,
// without tgtd and without the network:
//   BM_Pread            one pread() of 4 KiB per operation (what tgt's rdwr worker
//                       threads do per command), the synchronous baseline
//   BM_PreadNowait      preadv2(RWF_NOWAIT): a page-cache hit served on the
//                       caller's thread without any risk of blocking
//   BM_EngineRead       IoEngine prepare() x batch, submit(), reap() of 4 KiB reads
//   BM_EngineReadEpoll  the same, but each batch waits for the engine's eventfd
//                       in an epoll set and acknowledges it (a read of the
//                       eventfd) before reaping, as bs_icbd does in tgtd's loop
//   BM_LunRead16        Lun::submit() x batch of READ(16) CDBs, submit_batch(),
//                       process_completions() until every command completed through
//                       a dummy LunHost (the path bs_icbd.so takes per command)
//   BM_LunWrite16       the same with WRITE(16)
//   BM_UnmapPlanWholeDisk  finding the cached blocks of an UNMAP of a whole
//                       100 GiB disk behind a full 1 GiB write-back cache:
//                       per-block lookups (walk=1, the planner before) or
//                       CacheMap::cached_lbas (walk=0); on tgtd's thread
// All on a page-cached file (64 MiB, filled and read once before the runs), at
// random 4 KiB-aligned offsets. items_per_second is operations (commands) per
// second of wall time on one thread.
//
// The file lives in $ICBD_BENCH_DIR (default /var/tmp) and is removed at exit.
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cache_map.hpp"
#include "icbd/io_engine.hpp"
#include "icbd/lun.hpp"
#include "scsi.hpp"

using namespace icbd;

namespace {

constexpr uint64_t kFileSize = 64ull << 20;
constexpr uint32_t kIo = 4096;
constexpr unsigned kBlockShift = 9;
std::string g_path;

void remove_file() {
    if (!g_path.empty()) unlink(g_path.c_str());
}
void on_signal(int sig) {
    remove_file();
    std::signal(sig, SIG_DFL);
    std::raise(sig);
}

bool make_file() {
    const char* dir = std::getenv("ICBD_BENCH_DIR");
    std::string tmpl = std::string(dir && *dir ? dir : "/var/tmp") + "/icbd-engine-bench.XXXXXX";
    std::vector<char> name(tmpl.begin(), tmpl.end());
    name.push_back('\0');
    int fd = mkstemp(name.data());
    if (fd < 0) {
        std::fprintf(stderr, "icbd-engine-bench: cannot create %s: %s\n", tmpl.c_str(), std::strerror(errno));
        return false;
    }
    g_path = name.data();
    std::atexit(remove_file);
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::vector<uint8_t> buf(1 << 20);
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (uint64_t off = 0; off < kFileSize; off += buf.size()) {
        for (size_t i = 0; i < buf.size(); i += 8) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            std::memcpy(&buf[i], &x, 8);
        }
        if (pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(buf.size())) {
            std::fprintf(stderr, "icbd-engine-bench: writing %s: %s\n", g_path.c_str(), std::strerror(errno));
            close(fd);
            return false;
        }
    }
    fsync(fd);
    // Warm the page cache: every benchmark reads cached data.
    for (uint64_t off = 0; off < kFileSize; off += buf.size())
        (void)!pread(fd, buf.data(), buf.size(), static_cast<off_t>(off));
    close(fd);
    return true;
}

struct Rng {
    uint64_t s = 0x9e3779b97f4a7c15ull;
    uint64_t next_offset() {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        return (s % (kFileSize / kIo)) * kIo;
    }
};

int open_file(int flags) {
    int fd = open(g_path.c_str(), flags | O_CLOEXEC);
    return fd;
}

EngineKind kind_of(int64_t arg) { return arg == 0 ? EngineKind::io_uring : EngineKind::aio; }
const char* kind_name(int64_t arg) { return arg == 0 ? "io_uring" : "aio"; }

void BM_Pread(benchmark::State& state) {
    int fd = open_file(O_RDONLY);
    if (fd < 0) return state.SkipWithError("open");
    std::vector<uint8_t> buf(kIo);
    Rng rng;
    for (auto _ : state) {
        if (pread(fd, buf.data(), kIo, static_cast<off_t>(rng.next_offset())) != kIo) {
            state.SkipWithError("pread");
            break;
        }
        benchmark::DoNotOptimize(buf.data());
    }
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * kIo);
    close(fd);
}
BENCHMARK(BM_Pread);

void BM_PreadNowait(benchmark::State& state) {
    int fd = open_file(O_RDONLY);
    if (fd < 0) return state.SkipWithError("open");
    std::vector<uint8_t> buf(kIo);
    Rng rng;
    // A miss (EAGAIN: a page not cached, or one carrying a readahead mark that
    // would need I/O) is what the engines hand to the kernel instead; here it
    // is counted and served with a plain pread.
    int64_t misses = 0;
    for (auto _ : state) {
        iovec iov{buf.data(), kIo};
        off_t off = static_cast<off_t>(rng.next_offset());
        if (preadv2(fd, &iov, 1, off, RWF_NOWAIT) != kIo) {
            ++misses;
            if (pread(fd, buf.data(), kIo, off) != kIo) return state.SkipWithError("pread");
        }
        benchmark::DoNotOptimize(buf.data());
    }
    state.counters["misses"] = static_cast<double>(misses);
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * kIo);
    close(fd);
}
BENCHMARK(BM_PreadNowait);

// Args: {engine (0 io_uring, 1 aio), batch}
void BM_EngineRead(benchmark::State& state) {
    const int64_t batch = state.range(1);
    state.SetLabel(kind_name(state.range(0)));
    auto made = kind_of(state.range(0)) == EngineKind::io_uring ? make_uring_engine(256) : make_aio_engine(256);
    if (!made) return state.SkipWithError(made.status().message().c_str());
    std::unique_ptr<IoEngine> eng = std::move(*made);
    int fd = open_file(O_RDONLY);
    if (fd < 0) return state.SkipWithError("open");
    std::vector<uint8_t> bufs(static_cast<size_t>(batch) * kIo);
    std::vector<IoCompletion> done(static_cast<size_t>(batch));
    Rng rng;
    for (auto _ : state) {
        for (int64_t i = 0; i < batch; ++i)
            eng->prepare({IoOp::read, false, fd, &bufs[static_cast<size_t>(i) * kIo], kIo, rng.next_offset(),
                          static_cast<uint64_t>(i)});
        if (eng->submit() != 0) {
            state.SkipWithError("submit");
            break;
        }
        int64_t got = 0;
        while (got < batch) {
            size_t n = eng->reap(std::span(done).subspan(0, static_cast<size_t>(batch - got)));
            for (size_t i = 0; i < n; ++i)
                if (done[i].res != static_cast<int32_t>(kIo)) state.SkipWithError("short or failed read");
            got += static_cast<int64_t>(n);
            if (got < batch && n == 0) eng->wait();
        }
    }
    state.SetItemsProcessed(state.iterations() * batch);
    state.SetBytesProcessed(state.iterations() * batch * kIo);
    close(fd);
}
BENCHMARK(BM_EngineRead)->ArgNames({"aio", "batch"})->ArgsProduct({{0, 1}, {1, 8, 32}});

// Args: {batch}. Cached reads marked inline_ok on the io_uring engine, as the
// LUN prepares them: a small batch is one preadv2(RWF_NOWAIT) per read, a
// large one a single io_uring_enter (uring_engine.cpp, ring_batch_min). Each
// batch ends as it does in tgtd: reap() right after submit(), then the
// host's acknowledgement of the event fd (a read, whether it was signalled
// or not; the epoll pass around it is not counted here).
void BM_EngineInlineRead(benchmark::State& state) {
    const int64_t batch = state.range(0);
    auto made = make_uring_engine(256);
    if (!made) return state.SkipWithError(made.status().message().c_str());
    std::unique_ptr<IoEngine> eng = std::move(*made);
    int fd = open_file(O_RDONLY);
    if (fd < 0) return state.SkipWithError("open");
    std::vector<uint8_t> bufs(static_cast<size_t>(batch) * kIo);
    std::vector<IoCompletion> done(static_cast<size_t>(batch));
    Rng rng;
    for (auto _ : state) {
        for (int64_t i = 0; i < batch; ++i) {
            IoRequest r{IoOp::read, false, fd, &bufs[static_cast<size_t>(i) * kIo], kIo, rng.next_offset(),
                        static_cast<uint64_t>(i)};
            r.inline_ok = true;
            eng->prepare(r);
        }
        if (eng->submit() != 0) {
            state.SkipWithError("submit");
            break;
        }
        int64_t got = 0;
        while (got < batch) {
            size_t n = eng->reap(std::span(done).subspan(0, static_cast<size_t>(batch - got)));
            for (size_t i = 0; i < n; ++i)
                if (done[i].res != static_cast<int32_t>(kIo)) state.SkipWithError("short or failed read");
            got += static_cast<int64_t>(n);
            if (got < batch && n == 0) eng->wait();
        }
        eng->acknowledge_event();
    }
    state.SetItemsProcessed(state.iterations() * batch);
    state.SetBytesProcessed(state.iterations() * batch * kIo);
    close(fd);
}
BENCHMARK(BM_EngineInlineRead)->ArgName("batch")->Arg(1)->Arg(2)->Arg(3)->Arg(4)->Arg(8)->Arg(32);

// Args: {engine (0 io_uring, 1 aio), batch}. Every batch goes through
// epoll_wait() on the engine's eventfd (level-triggered, as bs_icbd.c registers
// it) and acknowledge_event() before reap(): the cost of the eventfd wake-up
// and of the extra event-loop pass a completion takes in tgtd.
void BM_EngineReadEpoll(benchmark::State& state) {
    const int64_t batch = state.range(1);
    state.SetLabel(kind_name(state.range(0)));
    auto made = kind_of(state.range(0)) == EngineKind::io_uring ? make_uring_engine(256) : make_aio_engine(256);
    if (!made) return state.SkipWithError(made.status().message().c_str());
    std::unique_ptr<IoEngine> eng = std::move(*made);
    int fd = open_file(O_RDONLY);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    if (fd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, eng->event_fd(), &ev) < 0) {
        if (fd >= 0) close(fd);
        if (ep >= 0) close(ep);
        return state.SkipWithError("open/epoll");
    }
    std::vector<uint8_t> bufs(static_cast<size_t>(batch) * kIo);
    std::vector<IoCompletion> done(static_cast<size_t>(batch));
    Rng rng;
    for (auto _ : state) {
        for (int64_t i = 0; i < batch; ++i)
            eng->prepare({IoOp::read, false, fd, &bufs[static_cast<size_t>(i) * kIo], kIo, rng.next_offset(),
                          static_cast<uint64_t>(i)});
        if (eng->submit() != 0) {
            state.SkipWithError("submit");
            break;
        }
        int64_t got = 0;
        while (got < batch) {
            epoll_event out;
            if (epoll_wait(ep, &out, 1, 1000) != 1) {
                state.SkipWithError("no eventfd wake-up within 1 s");
                break;
            }
            eng->acknowledge_event();
            size_t n;
            while ((n = eng->reap(std::span(done).subspan(0, static_cast<size_t>(batch - got)))) > 0) {
                for (size_t i = 0; i < n; ++i)
                    if (done[i].res != static_cast<int32_t>(kIo)) state.SkipWithError("short or failed read");
                got += static_cast<int64_t>(n);
                if (got == batch) break;
            }
        }
    }
    state.SetItemsProcessed(state.iterations() * batch);
    state.SetBytesProcessed(state.iterations() * batch * kIo);
    close(ep);
    close(fd);
}
BENCHMARK(BM_EngineReadEpoll)->ArgNames({"aio", "batch"})->ArgsProduct({{0, 1}, {1, 8, 32}});

struct DummyHost {
    int64_t completed = 0;
    int64_t failed = 0;
    bool kicked = false;
    static void complete(void* ctx, void*, const ScsiResult& r) {
        auto* h = static_cast<DummyHost*>(ctx);
        ++h->completed;
        if (r.status != scsi::status_good) ++h->failed;
    }
    static void kick(void* ctx) { static_cast<DummyHost*>(ctx)->kicked = true; }
};

// Args: {engine (0 io_uring, 1 aio), batch}; `write` selects WRITE(16).
void lun_bench(benchmark::State& state, bool write) {
    const int64_t batch = state.range(1);
    state.SetLabel(kind_name(state.range(0)));
    LunOptions opts;
    opts.engine.kind = kind_of(state.range(0));
    opts.engine.queue_depth = 256;
    DummyHost host;
    auto made = Lun::create(opts, {DummyHost::complete, DummyHost::kick, &host});
    if (!made) return state.SkipWithError(made.status().message().c_str());
    std::unique_ptr<Lun> lun = std::move(*made);
    auto size = lun->open(g_path, 0);
    if (!size) return state.SkipWithError(size.status().message().c_str());

    // One CDB and one data buffer per slot, like tgtd's scsi_cmd.
    const size_t n = static_cast<size_t>(batch);
    std::vector<std::array<uint8_t, 16>> cdbs(n);
    std::vector<uint8_t> bufs(n * kIo, 0x5a);
    std::vector<LunCommand> cmds(n);
    for (size_t i = 0; i < n; ++i) {
        cdbs[i].fill(0);
        cdbs[i][0] = write ? scsi::op::write_16 : scsi::op::read_16;
        store_be(&cdbs[i][10], kIo >> kBlockShift, 4);
        LunCommand& c = cmds[i];
        c.cookie = &cmds[i];
        c.cdb = cdbs[i].data();
        c.tl = kIo;
        (write ? c.out_buf : c.in_buf) = &bufs[i * kIo];
        (write ? c.out_len : c.in_len) = kIo;
        c.lun_size = *size;
        c.blk_shift = kBlockShift;
    }
    const int efd = lun->event_fd();
    Rng rng;
    for (auto _ : state) {
        const int64_t target = host.completed + batch;
        for (size_t i = 0; i < n; ++i) {
            uint64_t off = rng.next_offset();
            store_be(&cdbs[i][2], off >> kBlockShift, 8);
            cmds[i].offset = off;
            lun->submit(cmds[i]);
        }
        if (host.kicked) {
            host.kicked = false;
            lun->submit_batch();
        }
        while (host.completed < target) {
            lun->process_completions();
            if (host.kicked) {
                host.kicked = false;
                lun->submit_batch();
            }
            if (host.completed >= target) break;
            // Level-triggered, like tgtd: process_completions() acknowledges
            // the eventfd before it drains the engine.
            pollfd p{efd, POLLIN, 0};
            if (poll(&p, 1, 1000) <= 0) {
                state.SkipWithError("no completion within 1 s");
                break;
            }
        }
    }
    if (host.failed) state.SkipWithError("a command failed");
    state.SetItemsProcessed(state.iterations() * batch);
    state.SetBytesProcessed(state.iterations() * batch * kIo);
    lun->close();
}

void BM_LunRead16(benchmark::State& state) { lun_bench(state, false); }
void BM_LunWrite16(benchmark::State& state) { lun_bench(state, true); }
BENCHMARK(BM_LunRead16)->ArgNames({"aio", "batch"})->ArgsProduct({{0, 1}, {1, 8, 32}});
BENCHMARK(BM_LunWrite16)->ArgNames({"aio", "batch"})->ArgsProduct({{0, 1}, {1, 32}});

void BM_UnmapPlanWholeDisk(benchmark::State& state) {
    const bool walk = state.range(0) != 0;
    const uint64_t device_blocks = (100ull << 30) / icbd::kCacheBlockSize;
    icbd::CacheSuperblock sb;
    sb.geometry.nr_blocks = (1ull << 30) / icbd::kCacheBlockSize;
    sb.generation = 1;
    sb.device = {device_blocks * icbd::kCacheBlockSize, "bench"};
    icbd::CacheMap map(sb);
    std::mt19937_64 rng(1);
    for (uint64_t i = 0; i < sb.geometry.nr_blocks; ++i) {
        auto a = map.allocate(rng() % device_blocks);
        if (!a) break;
        map.mark_written(a->slot);
    }
    uint64_t found = 0;
    for (auto _ : state) {
        if (walk) {
            for (uint64_t lba = 0; lba < device_blocks; ++lba) found += map.lookup(lba).has_value();
        } else {
            found += map.cached_lbas(0, device_blocks).size();
        }
    }
    benchmark::DoNotOptimize(found);
}
BENCHMARK(BM_UnmapPlanWholeDisk)->ArgName("walk")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    if (!make_file()) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
