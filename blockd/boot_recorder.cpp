// BootRecorder: the LUN's boot set recorder (docs/boot-set.md, "What is
// recorded"). The merge runs once per boot on its own short-lived thread so
// that an fsync never stalls the LUN's event loop.
#include "boot_recorder.hpp"

#include <cerrno>
#include <charconv>

#include "icbd/log.hpp"

namespace icbd {

Result<std::unique_ptr<BootRecorder>> BootRecorder::create(std::string sidecar, uint64_t file_size,
                                                           uint32_t window_s, std::string what) {
    auto set = BootSet::create(file_size);
    if (!set) return Status::error(set.status().code(), what + ": boot set '" + sidecar + "': " + set.status().message());
    set->version = version_of(sidecar);
    set->boots = 1;
    return std::make_unique<BootRecorder>(Key{}, std::move(sidecar), std::move(set.value()), window_s,
                                          std::move(what));
}

BootRecorder::BootRecorder(Key, std::string sidecar, BootSet set, uint32_t window_s, std::string what)
    : sidecar_(std::move(sidecar)), set_(std::move(set)), window_s_(window_s), what_(std::move(what)) {}

BootRecorder::~BootRecorder() {
    // A LUN removed before its window closed (a short boot, a desktop shut
    // down early) still booted: keep what it read.
    if (state_ == State::recording) finish();
}  // writer_ (a jthread) joins here

uint64_t BootRecorder::version_of(const std::string& sidecar) {
    const std::string key = "/.bootsets/";
    size_t at = sidecar.rfind(key);
    if (at == std::string::npos) return 0;
    const char* b = sidecar.data() + at + key.size();
    const char* e = sidecar.data() + sidecar.size();
    uint64_t v = 0;
    auto [p, ec] = std::from_chars(b, e, v);
    if (ec != std::errc() || p == e || *p != '/') return 0;
    return v;
}

void BootRecorder::finish() noexcept {
    if (state_ == State::done) return;
    state_ = State::done;
    try {
        writer_ = std::jthread([this] {
            std::string replaced;
            Status s = merge_into_boot_set(sidecar_, set_, &replaced);
            if (!replaced.empty()) log(LogLevel::warning, what_ + ": " + replaced + " (replaced by this boot's)");
            if (!s) {
                log(LogLevel::warning, what_ + ": boot set not saved: " + s.message());
                return;
            }
            log(LogLevel::info, what_ + ": boot set of " + std::to_string(set_.bytes() >> 10) + " KiB merged into '" +
                                    sidecar_ + "'");
        });
    } catch (const std::exception& e) {
        // No thread (resource limits): the boot set is lost, the LUN is not.
        log(LogLevel::warning, what_ + ": boot set not saved: cannot start its writer: " + e.what());
    }
}

}  // namespace icbd
