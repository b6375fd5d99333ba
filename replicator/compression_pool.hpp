// Builds the DATA frames of a push on worker threads: the reader reads chunk
// N+1 while chunks N-1 and N are compressed, and zstd uses every core. Each
// chunk may use its own codec and level (push --compress auto), and the pool
// measures what each costs.
#pragma once

#include <array>

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "icbd/replicator/compression.hpp"
#include "messages.hpp"

namespace icbd::repl {

// What the chunks finished since the last take_stats() cost, per ladder step
// of codec_ladder() (a chunk at a setting off the ladder counts nowhere).
struct PoolStats {
    struct Step {
        uint64_t chunks = 0;
        uint64_t raw_bytes = 0;
        uint64_t coded_bytes = 0;  // frame bytes
        double busy_seconds = 0;   // worker time, compressing and framing
    };
    std::array<Step, 6> steps;
};

class CompressionPool {
public:
    // `workers` threads (at least 1), each with its own Compressor for
    // `algorithm` (not `none`) at `level`; EINVAL as Compressor::create says.
    // `none`: the workers only frame (a push whose setting may change later).
    static Result<std::unique_ptr<CompressionPool>> create(Compression algorithm, std::optional<int> level,
                                                           unsigned workers);
    // One worker per compressor (create() is the checked way in); they share
    // its algorithm and level as the default setting.
    explicit CompressionPool(std::vector<Compressor> compressors);
    // Waits for the jobs already queued, then joins the workers.
    ~CompressionPool();
    CompressionPool(const CompressionPool&) = delete;
    CompressionPool& operator=(const CompressionPool&) = delete;

    // The whole DATA frame for `m` carrying `raw` (m.bytes and m.compression
    // are set here): compressed when it pays, else as `none`. The future holds
    // the frame or the error; jobs run in any order, the caller keeps its own.
    // `raw` comes back to the pool's spare buffers when the job is done.
    std::future<Result<Bytes>> encode(Data m, Bytes raw);
    // The same with a setting of its own (a worker makes the compressor it
    // lacks on first use and keeps it; EINVAL for a level out of range).
    std::future<Result<Bytes>> encode(Data m, Bytes raw, CodecSetting setting);

    // The cost of the chunks finished since the previous call.
    PoolStats take_stats();

    // A buffer of `size` bytes for the next chunk, reused when one is spare
    // (its contents are unspecified): fresh 1 MiB allocations would cost a
    // page fault and a memset per 4 KiB of the stream.
    Bytes take_buffer(size_t size);

    unsigned workers() const { return static_cast<unsigned>(threads_.size()); }
    // How many chunks a caller should keep submitted and not yet collected:
    // enough that no worker waits, few enough to bound memory (and the spare
    // buffers kept for take_buffer).
    size_t max_in_flight() const { return 2 * workers_.size() + 2; }

private:
    struct Worker {
        std::optional<Compressor> zstd, lz4;  // made on first use, then reused
        Bytes packed;  // compressed output, reused from chunk to chunk
    };
    static Result<Compressor*> compressor_for(Worker& w, CodecSetting s);
    void start();  // one thread per worker; workers_ is never resized after
    void run(Worker& w);
    void give_back(Bytes&& b);
    void record(CodecSetting setting, uint64_t raw, uint64_t coded, double busy);

    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::function<void(Worker&)>> jobs_;
    bool stopping_ = false;
    std::vector<Bytes> spare_;
    CodecSetting default_{Compression::none, 0};
    PoolStats stats_;
    std::vector<Worker> workers_;
    std::vector<std::thread> threads_;
};

// The number of compression workers for this machine: one per online CPU but
// one, at least 1 and at most 8 (beyond that the reader and the network are
// the limit).
unsigned default_compression_workers();

}  // namespace icbd::repl
