// Worker threads that compress and frame DATA chunks (see compression_pool.hpp).
#include "compression_pool.hpp"

#include <algorithm>
#include <chrono>
#include <utility>

namespace icbd::repl {

Result<std::unique_ptr<CompressionPool>> CompressionPool::create(Compression algorithm, std::optional<int> level,
                                                                 unsigned workers) {
    std::vector<Compressor> compressors;
    if (algorithm == Compression::none) {
        // Workers that only frame until a setting with a codec comes.
        auto pool = std::make_unique<CompressionPool>(std::vector<Compressor>{});
        pool->workers_.resize(std::max(1u, workers));
        pool->start();
        return pool;
    }
    for (unsigned i = 0; i < std::max(1u, workers); ++i) {
        auto c = Compressor::create(algorithm, level);
        if (!c) return c.status();
        compressors.push_back(std::move(c.value()));
    }
    return std::make_unique<CompressionPool>(std::move(compressors));
}

CompressionPool::CompressionPool(std::vector<Compressor> compressors) {
    if (!compressors.empty()) default_ = CodecSetting{compressors.front().algorithm(), compressors.front().level()};
    for (auto& c : compressors) {
        Worker w;
        if (c.algorithm() == Compression::zstd) w.zstd.emplace(std::move(c));
        else w.lz4.emplace(std::move(c));
        workers_.push_back(std::move(w));
    }
    start();
}

void CompressionPool::start() {
    // workers_ is never resized again: each thread keeps a reference to its own.
    for (auto& w : workers_) threads_.emplace_back([this, &w] { run(w); });
}

CompressionPool::~CompressionPool() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
}

void CompressionPool::run(Worker& w) {
    for (;;) {
        std::function<void(Worker&)> job;
        {
            std::unique_lock lk(mu_);
            cv_.wait(lk, [&] { return stopping_ || !jobs_.empty(); });
            if (jobs_.empty()) return;  // stopping, and nothing left
            job = std::move(jobs_.front());
            jobs_.pop_front();
        }
        job(w);
    }
}

Bytes CompressionPool::take_buffer(size_t size) {
    Bytes b;
    {
        std::lock_guard lk(mu_);
        if (!spare_.empty()) {
            b = std::move(spare_.back());
            spare_.pop_back();
        }
    }
    b.resize(size);  // zero-fills only what grows beyond a previous chunk
    return b;
}

void CompressionPool::record(CodecSetting setting, uint64_t raw, uint64_t coded, double busy) {
    auto ladder = codec_ladder();
    auto it = std::find(ladder.begin(), ladder.end(), setting);
    if (it == ladder.end()) return;
    std::lock_guard lk(mu_);
    auto& st = stats_.steps[static_cast<size_t>(it - ladder.begin())];
    ++st.chunks;
    st.raw_bytes += raw;
    st.coded_bytes += coded;
    st.busy_seconds += busy;
}

PoolStats CompressionPool::take_stats() {
    std::lock_guard lk(mu_);
    return std::exchange(stats_, PoolStats{});
}

void CompressionPool::give_back(Bytes&& b) {
    std::lock_guard lk(mu_);
    // Enough for every chunk in flight (the reader bounds them); more is garbage.
    if (spare_.size() < max_in_flight()) spare_.push_back(std::move(b));
}

Result<Compressor*> CompressionPool::compressor_for(Worker& w, CodecSetting s) {
    auto& slot = s.algorithm == Compression::zstd ? w.zstd : w.lz4;
    if (!slot) {
        auto c = Compressor::create(s.algorithm, s.level);
        if (!c) return c.status();
        slot.emplace(std::move(c.value()));
    } else if (slot->level() != s.level) {
        if (Status st = slot->set_level(s.level); !st) return st;
    }
    return &*slot;
}

std::future<Result<Bytes>> CompressionPool::encode(Data m, Bytes raw) { return encode(std::move(m), std::move(raw), default_); }

std::future<Result<Bytes>> CompressionPool::encode(Data m, Bytes raw, CodecSetting setting) {
    auto promise = std::make_shared<std::promise<Result<Bytes>>>();
    auto future = promise->get_future();
    auto job = [this, promise, setting, m = std::move(m), raw = std::move(raw)](Worker& w) mutable {
        const auto t0 = std::chrono::steady_clock::now();
        m.compression = Compression::none;
        m.bytes = raw;
        Result<bool> paid = false;
        if (setting.algorithm != Compression::none) {
            auto c = compressor_for(w, setting);
            paid = c ? (*c)->compress(raw, w.packed) : Result<bool>(c.status());
        }
        Result<Bytes> frame = paid.status();
        if (paid) {
            if (*paid) {
                m.compression = setting.algorithm;
                m.bytes = w.packed;
            }
            frame = make_frame(m);
        }
        const double busy = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const uint64_t coded = frame ? frame->size() : 0;
        const uint64_t raw_size = raw.size();
        record(setting, raw_size, coded, busy);  // before the reader can see the frame and decide
        promise->set_value(std::move(frame));
        give_back(std::move(raw));
    };
    {
        std::lock_guard lk(mu_);
        jobs_.emplace_back(std::move(job));
    }
    cv_.notify_one();
    return future;
}

unsigned default_compression_workers() {
    // One CPU stays for the reader, the TLS writers and whatever else the
    // master runs: on 2 CPUs shared with a replica, 2 workers measured 12 %
    // slower end to end than 1 (bench/RESULTS.md), while alone they encode
    // 1.9x as fast as one.
    unsigned n = std::thread::hardware_concurrency();
    return std::clamp(n > 1 ? n - 1 : 1u, 1u, 8u);
}

}  // namespace icbd::repl
