// Options of one icbd LUN, parsed from tgtadm's --bsopts string.
// Syntax and meaning: docs/bsopts.md.
#pragma once

#include <string>
#include <string_view>

#include "icbd/io_engine.hpp"
#include "icbd/status.hpp"

namespace icbd {

struct LunOptions {
    bool readonly = false;  // refuse every write (golden images)
    bool direct = false;    // O_DIRECT: bypass the page cache
    bool direct_writes = false;  // only writes bypass it (a second, O_DIRECT fd); reads stay cached
    // direct=auto (the default, no direct= given): direct_writes for a raw,
    // writable LUN without a cache whose file is on BTRFS, else buffered.
    bool direct_auto = true;
    EngineOptions engine;
    // Per-client copy-on-write overlay over the backing file (the golden
    // file); created when missing. docs/overlay-format.md.
    std::string overlay;
    // Write-back cache file on fast local storage (created when missing) and
    // its size limit. docs/write-back-cache.md.
    std::string cache;
    uint64_t cache_size = 1ull << 30;
    // After this long without a command, commit the cache and write all of it
    // back (0: only under pressure and at close). docs/write-back-cache.md.
    uint32_t cache_idle_ms = 1000;
    // Directory of the LUN's metrics file (docs/metrics.md); "" = $ICBD_METRICS_DIR
    // or /run/icbd/luns, "off" = none.
    std::string metrics_dir;
    // Boot set sidecar of the golden file (docs/boot-set.md): the chunks read
    // from the first READ for bootset_window_s seconds are merged into it.
    // "": no recording; a window of 0 turns it off too.
    std::string bootset;
    uint32_t bootset_window_s = 120;
};

// Status codes: EINVAL for a bad value, ENOENT for an unknown option name.
Result<LunOptions> parse_bsopts(std::string_view text);

}  // namespace icbd
