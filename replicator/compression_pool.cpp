// Worker threads that compress and frame DATA chunks (see compression_pool.hpp).
#include "compression_pool.hpp"

#include <algorithm>

namespace icbd::repl {

Result<std::unique_ptr<CompressionPool>> CompressionPool::create(Compression algorithm, std::optional<int> level,
                                                                 unsigned workers) {
    std::vector<Compressor> compressors;
    for (unsigned i = 0; i < std::max(1u, workers); ++i) {
        auto c = Compressor::create(algorithm, level);
        if (!c) return c.status();
        compressors.push_back(std::move(c.value()));
    }
    return std::make_unique<CompressionPool>(std::move(compressors));
}

CompressionPool::CompressionPool(std::vector<Compressor> compressors) {
    for (auto& c : compressors) workers_.push_back(Worker{std::move(c), {}});
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

void CompressionPool::give_back(Bytes&& b) {
    std::lock_guard lk(mu_);
    // Enough for every chunk in flight (the reader bounds them); more is garbage.
    if (spare_.size() < max_in_flight()) spare_.push_back(std::move(b));
}

std::future<Result<Bytes>> CompressionPool::encode(Data m, Bytes raw) {
    auto promise = std::make_shared<std::promise<Result<Bytes>>>();
    auto future = promise->get_future();
    auto job = [this, promise, m = std::move(m), raw = std::move(raw)](Worker& w) mutable {
        m.compression = Compression::none;
        m.bytes = raw;
        auto paid = w.comp.compress(raw, w.packed);
        if (!paid) {
            promise->set_value(paid.status());
        } else {
            if (*paid) {
                m.compression = w.comp.algorithm();
                m.bytes = w.packed;
            }
            promise->set_value(make_frame(m));
        }
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
