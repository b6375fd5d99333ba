// icbd-encode-bench: what the sender's compression costs and saves on a real
// diff, without the network or a replica: the changed chunks between two
// versions are read once into memory, then encoded per chunk at several zstd
// levels (as DATA frames are), with 1..N pool workers, and, for comparison,
// as one zstd stream (what `zstd -3` of a send stream can exploit).
//   icbd-encode-bench PARENT_DIR CHILD_DIR [--levels 1,3,5] [--workers 1,2]
#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>

#include <chrono>
#include <cstdio>
#include <deque>
#include <sstream>
#include <string>
#include <vector>

#include "compression_pool.hpp"
#include "icbd/replicator/sender.hpp"
#include "icbd/replicator/snapshot_diff.hpp"
#include "icbd/unique_fd.hpp"

using namespace icbd;
using namespace icbd::repl;
using Clock = std::chrono::steady_clock;

namespace {

struct Chunk {
    std::string path;
    uint64_t offset;
    Bytes bytes;
};

std::vector<int> int_list(const std::string& s) {
    std::vector<int> v;
    std::stringstream in(s);
    for (std::string item; std::getline(in, item, ',');) v.push_back(std::stoi(item));
    return v;
}

double seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
double mib(uint64_t b) { return static_cast<double>(b) / (1 << 20); }

// Encodes every chunk into a DATA frame with the pool; returns the frame bytes.
uint64_t encode_all(CompressionPool& pool, const std::vector<Chunk>& chunks) {
    std::deque<std::future<Result<Bytes>>> inflight;
    uint64_t out = 0, seq = 0;
    for (const auto& c : chunks) {
        Data m;
        m.seq = ++seq;
        m.offset = c.offset;
        m.length = static_cast<uint32_t>(c.bytes.size());
        m.path = c.path;
        Bytes raw = pool.take_buffer(c.bytes.size());
        std::copy(c.bytes.begin(), c.bytes.end(), raw.begin());
        inflight.push_back(pool.encode(std::move(m), std::move(raw)));
        if (inflight.size() >= pool.max_in_flight()) {  // the sender's bound
            out += inflight.front().get()->size();
            inflight.pop_front();
        }
    }
    for (auto& f : inflight) out += f.get()->size();
    return out;
}

// One zstd stream over all chunks, flushed at each chunk (history kept).
uint64_t stream_size(const std::vector<Chunk>& chunks, int level) {
    std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
    ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, level);
    Bytes out(ZSTD_CStreamOutSize() + (2u << 20));
    uint64_t total = 0;
    for (const auto& c : chunks) {
        ZSTD_inBuffer in{c.bytes.data(), c.bytes.size(), 0};
        size_t left;
        do {
            ZSTD_outBuffer o{out.data(), out.size(), 0};
            left = ZSTD_compressStream2(cctx.get(), &o, &in, ZSTD_e_flush);
            total += o.pos;
        } while (left != 0 && !ZSTD_isError(left));
    }
    return total;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: icbd-encode-bench PARENT_DIR CHILD_DIR [--levels 1,3,5] [--workers 1,2]\n");
        return 2;
    }
    std::vector<int> levels{1, 3, 5}, workers{1, 2};
    for (int i = 3; i + 1 < argc; i += 2) {
        std::string o = argv[i];
        if (o == "--levels") levels = int_list(argv[i + 1]);
        else if (o == "--workers") workers = int_list(argv[i + 1]);
        else {
            std::fprintf(stderr, "icbd-encode-bench: unknown option '%s'\n", o.c_str());
            return 2;
        }
    }
    auto diff = diff_versions(std::filesystem::path(argv[1]), argv[2]);
    if (!diff) {
        std::fprintf(stderr, "icbd-encode-bench: %s\n", diff.status().message().c_str());
        return 1;
    }
    auto plan = plan_change_stream(*diff, argv[2]);
    if (!plan) {
        std::fprintf(stderr, "icbd-encode-bench: %s\n", plan.status().message().c_str());
        return 1;
    }
    std::vector<Chunk> chunks;
    uint64_t total = 0;
    for (const auto& pc : *plan) {
        if (pc.type != FrameType::data) continue;
        auto r = ChildFileReader::open(argv[2], pc.path);
        if (!r) {
            std::fprintf(stderr, "icbd-encode-bench: %s\n", r.status().message().c_str());
            return 1;
        }
        Chunk c{pc.path, pc.offset, Bytes(pc.length)};
        if (Status s = r->read_at(pc.offset, c.bytes); !s) {
            std::fprintf(stderr, "icbd-encode-bench: %s\n", s.message().c_str());
            return 1;
        }
        total += pc.length;
        chunks.push_back(std::move(c));
    }
    std::printf("%zu DATA chunks, %.1f MiB changed, %u CPUs\n\n", chunks.size(), mib(total),
                std::thread::hardware_concurrency());
    std::printf("| zstd level | workers | DATA frames MiB | encode s | MB/s | one stream, same level, MiB |\n");
    std::printf("|---:|---:|---:|---:|---:|---:|\n");
    for (int level : levels) {
        uint64_t stream = stream_size(chunks, level);
        for (int w : workers) {
            auto pool = CompressionPool::create(Compression::zstd, level, static_cast<unsigned>(w));
            if (!pool) {
                std::fprintf(stderr, "icbd-encode-bench: %s\n", pool.status().message().c_str());
                return 2;
            }
            auto t0 = Clock::now();
            uint64_t out = encode_all(**pool, chunks);
            double s = seconds(t0);
            std::printf("| %d | %d | %.2f | %.2f | %.0f | %.2f |\n", level, w, mib(out), s, total / s / 1e6,
                        mib(stream));
        }
    }
    return 0;
}
