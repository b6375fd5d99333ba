// Parser of --bsopts: "key=value" pairs separated by ';' (tgt's convention, as
// in bs_rbd) or ','. The accepted names are documented in docs/bsopts.md.
#include "icbd/bsopts.hpp"

#include <cerrno>
#include <charconv>
#include <string>

#include "icbd/parse_size.hpp"

namespace icbd {
namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

Status bad_value(std::string_view key, std::string_view value, std::string_view expected) {
    return Status::error(EINVAL, "bsopts: option '" + std::string(key) + "': bad value '" +
                                     std::string(value) + "' (expected " + std::string(expected) + ")");
}

bool parse_bool(std::string_view v, bool* out) {
    if (v == "1" || v == "yes" || v == "true" || v == "on") return *out = true, true;
    if (v == "0" || v == "no" || v == "false" || v == "off") return *out = false, true;
    return false;
}

}  // namespace

Result<LunOptions> parse_bsopts(std::string_view text) {
    LunOptions o;
    while (!text.empty()) {
        size_t sep = text.find_first_of(";,");
        std::string_view item = trim(text.substr(0, sep));
        text = sep == std::string_view::npos ? std::string_view{} : text.substr(sep + 1);
        if (item.empty()) continue;

        size_t eq = item.find('=');
        if (eq == std::string_view::npos)
            return Status::error(EINVAL, "bsopts: '" + std::string(item) + "' is not of the form name=value");
        std::string_view key = trim(item.substr(0, eq));
        std::string_view value = trim(item.substr(eq + 1));

        if (key == "direct" && (value == "writes" || value == "auto")) {
            o.direct = false;
            o.direct_writes = value == "writes";
            o.direct_auto = value == "auto";
        } else if (key == "readonly" || key == "direct") {
            bool b;
            if (!parse_bool(value, &b))
                return bad_value(key, value, key == "direct" ? "0, 1, writes or auto" : "0 or 1");
            if (key == "readonly") o.readonly = b;
            else o.direct = b, o.direct_writes = false, o.direct_auto = false;
        } else if (key == "queue_depth") {
            unsigned qd = 0;
            auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), qd);
            if (ec != std::errc() || p != value.data() + value.size() || qd < 1 || qd > 4096)
                return bad_value(key, value, "an integer from 1 to 4096");
            o.engine.queue_depth = qd;
        } else if (key == "engine") {
            if (value == "auto") o.engine.kind = EngineKind::automatic;
            else if (value == "io_uring") o.engine.kind = EngineKind::io_uring;
            else if (value == "aio") o.engine.kind = EngineKind::aio;
            else return bad_value(key, value, "auto, io_uring or aio");
        } else if (key == "overlay" || key == "cache") {
            if (value.empty() || value.front() != '/') return bad_value(key, value, "an absolute path");
            (key == "overlay" ? o.overlay : o.cache) = std::string(value);
        } else if (key == "metrics_dir") {
            if (value != "off" && (value.empty() || value.front() != '/'))
                return bad_value(key, value, "an absolute path or off");
            o.metrics_dir = std::string(value);
        } else if (key == "bootset") {
            if (value.empty() || value.front() != '/') return bad_value(key, value, "an absolute path");
            o.bootset = std::string(value);
        } else if (key == "bootset_window") {
            uint32_t s = 0;
            auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), s);
            if (ec != std::errc() || p != value.data() + value.size() || s > 86400)
                return bad_value(key, value, "seconds from 0 (off) to 86400");
            o.bootset_window_s = s;
        } else if (key == "cache_size") {
            Result<uint64_t> n = parse_size(value);
            if (!n || *n < (1u << 20)) return bad_value(key, value, "a size of at least 1M, e.g. 512M or 4G");
            o.cache_size = *n;
        } else if (key == "cache_idle") {
            uint32_t ms = 0;
            auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), ms);
            if (ec != std::errc() || p != value.data() + value.size() || ms > 3600000)
                return bad_value(key, value, "milliseconds from 0 (never) to 3600000");
            o.cache_idle_ms = ms;
        } else {
            return Status::error(ENOENT, "bsopts: unknown option '" + std::string(key) +
                                             "' (known: readonly, direct, queue_depth, engine, overlay, cache, cache_size, cache_idle, metrics_dir, bootset, bootset_window)");
        }
    }
    return o;
}

}  // namespace icbd
