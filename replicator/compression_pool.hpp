// Builds the DATA frames of a push on worker threads: the reader reads chunk
// N+1 while chunks N-1 and N are compressed, and zstd uses every core.
#pragma once

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
#include "icbd/replicator/wire_format.hpp"

namespace icbd::repl {

class CompressionPool {
public:
    // `workers` threads (at least 1), each with its own Compressor for
    // `algorithm` (not `none`) at `level`; EINVAL as Compressor::create says.
    static Result<std::unique_ptr<CompressionPool>> create(Compression algorithm, std::optional<int> level,
                                                           unsigned workers);
    // One worker per compressor (create() is the checked way in).
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
        Compressor comp;
        Bytes packed;  // compressed output, reused from chunk to chunk
    };
    void run(Worker& w);
    void give_back(Bytes&& b);

    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::function<void(Worker&)>> jobs_;
    bool stopping_ = false;
    std::vector<Bytes> spare_;
    std::vector<Worker> workers_;
    std::vector<std::thread> threads_;
};

// The number of compression workers for this machine: one per online CPU but
// one, at least 1 and at most 8 (beyond that the reader and the network are
// the limit).
unsigned default_compression_workers();

}  // namespace icbd::repl
