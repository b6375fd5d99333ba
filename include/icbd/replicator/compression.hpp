// Per-chunk compression of the replication stream (docs/replication-protocol.md,
// DATA): lz4 or zstd, skipped when it does not pay, and exact-size decompression.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "icbd/status.hpp"

struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;

namespace icbd::repl {

// The wire value of DATA.compression.
enum class Compression : uint8_t { none = 0, lz4 = 1, zstd = 2 };

inline constexpr int kDefaultZstdLevel = 3;

// HELLO.capabilities bits: what a peer can decompress.
inline constexpr uint32_t kCapLz4 = 1u << 0;
inline constexpr uint32_t kCapZstd = 1u << 1;
inline constexpr uint32_t kKnownCapabilities = kCapLz4 | kCapZstd;

const char* compression_name(Compression c);  // "none", "lz4", "zstd"
// Parses "none", "lz4" or "zstd" (a command-line option); EINVAL otherwise.
Result<Compression> parse_compression(std::string_view name);
// The capability bit an algorithm needs from the receiver (0 for none).
uint32_t capability_bit(Compression c);

// True when `compressed` bytes are worth sending instead of `original`: at least
// 1/16 smaller (below that the receiver's decompression costs more than the
// bytes saved).
constexpr bool compression_pays(size_t original, size_t compressed) {
    return compressed <= original - original / 16 && compressed < original;
}

// Compresses chunks with one algorithm and level, reusing its context (one per
// thread: not thread-safe).
class Compressor {
public:
    // `level`: zstd's level (its minimum .. maximum, default 3); for lz4 the
    // acceleration of LZ4_compress_fast (>= 1, default 1: best ratio). EINVAL
    // for `none` or a level out of range.
    static Result<Compressor> create(Compression algorithm, std::optional<int> level = std::nullopt);

    // Compresses `in` (1 .. 1 MiB typically, at most INT32_MAX) into `out`.
    // true: `out` holds the compressed chunk; false: it did not pay
    // (compression_pays), send `in` uncompressed (`out` is then unspecified).
    Result<bool> compress(std::span<const uint8_t> in, std::vector<uint8_t>& out);

    Compression algorithm() const { return algorithm_; }
    int level() const { return level_; }
    // A new level for the next chunks (zstd: its context is kept, so changing
    // the level per chunk costs nothing); EINVAL as create() says.
    Status set_level(int level);

private:
    struct CctxFree {
        void operator()(ZSTD_CCtx_s* c) const;
    };
    Compressor(Compression a, int level) : algorithm_(a), level_(level) {}
    Compression algorithm_;
    int level_;
    std::unique_ptr<ZSTD_CCtx_s, CctxFree> zstd_;
};

// Decompresses chunks, reusing a zstd context (one per thread).
class Decompressor {
public:
    // Decompresses `in` into exactly `out.size()` bytes. An input that is
    // malformed, holds more or fewer bytes than `out.size()`, or uses `none`
    // is EBADMSG with a message naming the algorithm and the sizes; nothing is
    // ever written beyond `out`.
    Status decompress(Compression algorithm, std::span<const uint8_t> in, std::span<uint8_t> out);

private:
    struct DctxFree {
        void operator()(ZSTD_DCtx_s* c) const;
    };
    std::unique_ptr<ZSTD_DCtx_s, DctxFree> zstd_;
};

// ---- adaptive compression (push --compress auto; docs/replication-protocol.md, section 9) ----

// One codec and level. `level` is zstd's level, lz4's acceleration, 0 for none.
struct CodecSetting {
    Compression algorithm = Compression::zstd;
    int level = kDefaultZstdLevel;
    bool operator==(const CodecSetting&) const = default;
    std::string name() const;  // "none", "lz4", "zstd:3"
};

// The settings `auto` moves between, cheapest first: none, lz4, zstd 1, 3, 5, 7.
std::span<const CodecSetting> codec_ladder();
inline constexpr size_t kAutoStartStep = 2;  // zstd 1: one step from zstd 3, two from none and from zstd 5

// What one window of a push showed: the controller's only inputs, so that it
// is a pure function of them (no clock inside).
struct CodecObservation {
    double seconds = 0;           // wall time of the window
    unsigned workers = 1;         // compression workers (never more are used)
    // DATA chunks that finished compressing at the current setting in the window.
    uint64_t raw_bytes = 0;
    uint64_t coded_bytes = 0;       // their frame bytes
    double compress_seconds = 0;    // worker time spent on them
    // The slowest replica's writer (all of a push's replicas share the frames).
    uint64_t link_bytes = 0;        // frame bytes it wrote (DATA at the current setting)
    uint64_t link_raw_bytes = 0;    // their uncompressed bytes
    double link_seconds = 0;        // time it spent in write (socket full) or in the bandwidth limit
    double starved_seconds = 0;     // time it waited for the next frame
    // Time the reader waited because the frames ahead of the fastest replica
    // reached their limit: the link (or the replica) is the bottleneck.
    double producer_blocked_seconds = 0;
    // Frame bytes per second the bandwidth limit allows (0: no limit). Caps
    // the link rate the predictions use even when the socket never blocked.
    double link_limit = 0;
};

// The controller's memory from one window to the next.
struct CodecControl {
    size_t step = kAutoStartStep;  // index into codec_ladder(): the setting now
    size_t ceiling = 5;            // harder than this did not pay on this link (lifted after a while)
    unsigned ceiling_windows = 0;  // windows until the ceiling is lifted
    size_t last_step = SIZE_MAX;   // the setting of the previous window (SIZE_MAX: none yet)
    double last_link_raw = 0;      // input bytes/s the link carried then, when it was the bottleneck
    unsigned cpu_windows = 0;      // consecutive windows that looked CPU-bound
};

struct CodecDecision {
    size_t step = kAutoStartStep;  // the setting for the next window
    const char* reason = "";       // "link-bound", "cpu-bound", "harder did not pay", "steady", "too little data"
};

// Updates `state` after a window and returns the setting for the next one.
// `capabilities` (HELLO bits of every receiver) limit the choice.
// - Link-bound (the reader waited on the link a fifth of the window): up to
//   two steps harder, to the hardest setting whose predicted compression rate
//   still outruns the link by 20 %. If the previous move was such a step and
//   the link carried no more input bytes per second than before (+5 %), the
//   bottleneck is not the bytes (e.g. the replica's disk or CPU): back one
//   move, and no harder than that for 20 windows.
// - CPU-bound (the writer starved a fifth of the window while the workers
//   were busy at least half of it) in two windows in a row: one step cheaper,
//   if its predicted throughput min(workers x speed, link / ratio) is at least
//   10 % better, the link rate capped by the bandwidth limit. One window is
//   not enough: the first one of a push is the pipeline filling (writers
//   starve while the first chunks compress), and a moment of CPU contention
//   from another process is not the push's bottleneck.
// Speeds and ratios of other settings are predicted from the measured ones
// with the relative figures of bench/RESULTS.md.
CodecDecision next_codec_step(const CodecObservation& o, CodecControl& state, uint32_t capabilities);

}  // namespace icbd::repl
