// Per-chunk compression of the replication stream (docs/replication-protocol.md,
// DATA): lz4 or zstd, skipped when it does not pay, and exact-size decompression.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
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

}  // namespace icbd::repl
