// lz4/zstd chunk compression for DATA frames: compressing into a buffer capped
// at the "pays" size makes a chunk that does not pay fail fast instead of being
// compressed in full and thrown away.
#include "icbd/replicator/compression.hpp"

#include <lz4.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <limits>
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

Status Compressor::set_level(int level) {
    if (algorithm_ == Compression::lz4 && level >= 1 && level <= 65537) {
        level_ = level;
        return Status::ok();
    }
    if (algorithm_ == Compression::zstd && level >= ZSTD_minCLevel() && level <= ZSTD_maxCLevel() && level != 0) {
        level_ = level;
        return Status::ok();
    }
    return Status::error(EINVAL, std::string(compression_name(algorithm_)) + " level " + std::to_string(level) +
                                     " is out of range");
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

// ---- the adaptive controller ----

namespace {

// Relative speed (MB/s of input on one core) and ratio (output / input) of
// each ladder step on a typical update, from bench/RESULTS.md ("where the time
// and the bytes go"). Only the ratios between steps are used: the controller
// scales them by what it measures at the current step.
struct Prior {
    double speed;
    double ratio;
};
constexpr std::array<CodecSetting, 6> kLadder{{{Compression::none, 0},
                                               {Compression::lz4, 1},
                                               {Compression::zstd, 1},
                                               {Compression::zstd, 3},
                                               {Compression::zstd, 5},
                                               {Compression::zstd, 7}}};
constexpr std::array<Prior, 6> kPrior{{{4000, 1.0}, {650, 0.43}, {200, 0.37}, {115, 0.345}, {60, 0.333}, {40, 0.325}}};

bool allowed(size_t step, uint32_t caps) {
    uint32_t need = capability_bit(kLadder[step].algorithm);
    return (caps & need) == need;
}

}  // namespace

std::string CodecSetting::name() const {
    if (algorithm == Compression::zstd) return "zstd:" + std::to_string(level);
    return compression_name(algorithm);
}

std::span<const CodecSetting> codec_ladder() { return kLadder; }

CodecDecision next_codec_step(const CodecObservation& o, CodecControl& st, uint32_t capabilities) {
    const size_t top = kLadder.size() - 1;
    const size_t current = std::min(st.step, top);
    if (o.seconds <= 0 || o.raw_bytes == 0 || o.compress_seconds <= 0) return {current, "too little data"};
    if (st.ceiling_windows > 0 && --st.ceiling_windows == 0) st.ceiling = top;
    const double inf = std::numeric_limits<double>::infinity();
    const double workers = std::max(1u, o.workers);
    const double speed = o.raw_bytes / o.compress_seconds;  // one worker, input bytes/s
    const double ratio = std::clamp(double(o.coded_bytes) / double(o.raw_bytes), 1e-3, 1.1);
    // Below a millisecond of writing the socket took everything at once: no limit seen.
    double link = o.link_seconds > 1e-3 ? o.link_bytes / o.link_seconds : inf;
    if (o.link_limit > 0) link = std::min(link, o.link_limit);
    auto speed_of = [&](size_t s) { return speed * kPrior[s].speed / kPrior[current].speed; };
    auto ratio_of = [&](size_t s) { return std::min(1.0, ratio * kPrior[s].ratio / kPrior[current].ratio); };
    // Input bytes per second the push would move at step s.
    auto throughput = [&](size_t s) { return std::min(workers * speed_of(s), link / ratio_of(s)); };
    auto decide = [&](size_t next, const char* why, double link_raw) {
        st.last_step = current;
        st.last_link_raw = link_raw;
        st.step = next;
        return CodecDecision{next, why};
    };

    const bool link_bound = o.producer_blocked_seconds >= 0.2 * o.seconds;
    const bool cpu_bound = !link_bound && o.starved_seconds >= 0.2 * o.seconds &&
                           o.compress_seconds >= 0.5 * o.seconds * workers;
    if (link_bound) {
        // Input bytes per second through the link: what harder compression should raise.
        const double link_raw = o.link_seconds > 1e-3 ? o.link_raw_bytes / o.link_seconds : 0;
        // Frames of this setting have not reached the socket yet: wait for them.
        if (link_raw <= 0) return {current, "link-bound"};
        if (st.last_step < current && st.last_link_raw > 0 && link_raw <= 1.05 * st.last_link_raw) {
            st.ceiling = st.last_step;
            st.ceiling_windows = 20;
            return decide(st.last_step, "harder did not pay", 0);
        }
        size_t pick = current;
        for (size_t s = current + 1; s <= std::min({top, current + 2, st.ceiling}); ++s)
            if (allowed(s, capabilities) && workers * speed_of(s) >= 1.2 * link / ratio_of(s)) pick = s;
        return decide(pick, "link-bound", link_raw);
    }
    st.cpu_windows = cpu_bound ? st.cpu_windows + 1 : 0;
    if (cpu_bound && st.cpu_windows < 2) return decide(current, "steady", 0);
    if (cpu_bound) {
        st.cpu_windows = 0;  // a move needs two fresh windows at the new setting
        size_t pick = current;
        for (size_t s = current; s-- > 0;) {
            if (!allowed(s, capabilities)) continue;
            if (throughput(s) >= 1.1 * throughput(current)) pick = s;
            break;
        }
        return decide(pick, "cpu-bound", 0);
    }
    return decide(current, "steady", 0);
}

}  // namespace icbd::repl
