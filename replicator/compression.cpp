// lz4/zstd chunk compression for DATA frames: compressing into a buffer capped
// at the "pays" size makes a chunk that does not pay fail fast instead of being
// compressed in full and thrown away.
#include "icbd/replicator/compression.hpp"

#include <lz4.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <cerrno>
#include <climits>
#include <string>

namespace icbd::repl {

void Compressor::CctxFree::operator()(ZSTD_CCtx_s* c) const { ZSTD_freeCCtx(c); }
void Decompressor::DctxFree::operator()(ZSTD_DCtx_s* c) const { ZSTD_freeDCtx(c); }

const char* compression_name(Compression c) {
    switch (c) {
    case Compression::none: return "none";
    case Compression::lz4: return "lz4";
    case Compression::zstd: return "zstd";
    }
    return "unknown";
}

Result<Compression> parse_compression(std::string_view name) {
    if (name == "none") return Compression::none;
    if (name == "lz4") return Compression::lz4;
    if (name == "zstd") return Compression::zstd;
    return Status::error(EINVAL, "compression '" + std::string(name.substr(0, 64)) +
                                     "' is not one of none, lz4, zstd");
}

uint32_t capability_bit(Compression c) {
    switch (c) {
    case Compression::lz4: return kCapLz4;
    case Compression::zstd: return kCapZstd;
    case Compression::none: break;
    }
    return 0;
}

Result<Compressor> Compressor::create(Compression algorithm, std::optional<int> level) {
    if (algorithm == Compression::lz4) {
        int accel = level.value_or(1);
        if (accel < 1 || accel > 65537)
            return Status::error(EINVAL, "lz4 acceleration " + std::to_string(accel) + " is not in 1..65537");
        return Compressor(algorithm, accel);
    }
    if (algorithm == Compression::zstd) {
        int lvl = level.value_or(kDefaultZstdLevel);
        if (lvl < ZSTD_minCLevel() || lvl > ZSTD_maxCLevel() || lvl == 0)
            return Status::error(EINVAL, "zstd level " + std::to_string(lvl) + " is not in " +
                                             std::to_string(ZSTD_minCLevel()) + ".." +
                                             std::to_string(ZSTD_maxCLevel()) + " (0 excluded)");
        Compressor c(algorithm, lvl);
        c.zstd_.reset(ZSTD_createCCtx());
        if (!c.zstd_) return Status::error(ENOMEM, "zstd: cannot allocate a compression context");
        return c;
    }
    return Status::error(EINVAL, std::string("cannot create a compressor for '") + compression_name(algorithm) + "'");
}

Result<bool> Compressor::compress(std::span<const uint8_t> in, std::vector<uint8_t>& out) {
    if (in.size() > static_cast<size_t>(INT32_MAX))
        return Status::error(EINVAL, "compress: chunk of " + std::to_string(in.size()) + " bytes is too large");
    // The largest output that still pays; anything that does not fit is not worth it.
    size_t cap = in.size() - in.size() / 16;
    if (cap >= in.size()) cap = in.size() - (in.empty() ? 0 : 1);
    if (cap == 0) return false;
    out.resize(cap);
    if (algorithm_ == Compression::lz4) {
        int n = LZ4_compress_fast(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                                  static_cast<int>(in.size()), static_cast<int>(cap), level_);
        if (n <= 0) return false;
        out.resize(static_cast<size_t>(n));
        return compression_pays(in.size(), out.size());
    }
    size_t n = ZSTD_compressCCtx(zstd_.get(), out.data(), cap, in.data(), in.size(), level_);
    if (ZSTD_isError(n)) {
        if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall) return false;
        return Status::error(EIO, std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
    }
    out.resize(n);
    return compression_pays(in.size(), out.size());
}

Status Decompressor::decompress(Compression algorithm, std::span<const uint8_t> in, std::span<uint8_t> out) {
    auto bad = [&](const std::string& why) {
        return Status::error(EBADMSG, std::string(compression_name(algorithm)) + " chunk of " +
                                          std::to_string(in.size()) + " bytes (expected to hold " +
                                          std::to_string(out.size()) + "): " + why);
    };
    if (in.empty()) return bad("empty input");
    if (in.size() > static_cast<size_t>(INT32_MAX) || out.size() > static_cast<size_t>(INT32_MAX))
        return bad("too large");
    if (algorithm == Compression::lz4) {
        // LZ4_decompress_safe never writes past dstCapacity and fails on
        // malformed input: a lying length can only yield a count mismatch.
        int n = LZ4_decompress_safe(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                                    static_cast<int>(in.size()), static_cast<int>(out.size()));
        if (n < 0) return bad("malformed or larger than expected");
        if (static_cast<size_t>(n) != out.size()) return bad("decompresses to " + std::to_string(n) + " bytes");
        return Status::ok();
    }
    if (algorithm == Compression::zstd) {
        unsigned long long declared = ZSTD_getFrameContentSize(in.data(), in.size());
        if (declared == ZSTD_CONTENTSIZE_ERROR) return bad("not a zstd frame");
        if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != out.size())
            return bad("frame declares " + std::to_string(declared) + " bytes");
        if (!zstd_) {
            zstd_.reset(ZSTD_createDCtx());
            if (!zstd_) return Status::error(ENOMEM, "zstd: cannot allocate a decompression context");
        }
        size_t n = ZSTD_decompressDCtx(zstd_.get(), out.data(), out.size(), in.data(), in.size());
        if (ZSTD_isError(n)) return bad(std::string("malformed or larger than expected (") + ZSTD_getErrorName(n) + ")");
        if (n != out.size()) return bad("decompresses to " + std::to_string(n) + " bytes");
        return Status::ok();
    }
    return bad("not a compression algorithm");
}

}  // namespace icbd::repl
