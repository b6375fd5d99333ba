// icbd-overlay: create, reset and inspect per-client overlay files
// (docs/overlay-format.md). blockd uses the same library calls.
#include <fcntl.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "icbd/build_version.hpp"
#include "icbd/json.hpp"
#include "icbd/overlay.hpp"
#include "icbd/unique_fd.hpp"

namespace {

int usage() {
    std::fprintf(stderr,
                 "usage: icbd-overlay create --golden FILE OVERLAY   new empty overlay for a golden file\n"
                 "       icbd-overlay reset OVERLAY                  forget every block the client wrote\n"
                 "       icbd-overlay info OVERLAY [--json]          what it belongs to, blocks written\n");
    return 2;
}

int fail(const icbd::Status& s) {
    std::fprintf(stderr, "icbd-overlay: %s\n", s.message().c_str());
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> a(argv + 1, argv + argc);
    if (a.empty()) return usage();
    if (a[0] == "--version") return std::puts(ICBD_VERSION_LINE("icbd-overlay")) < 0;
    if (a[0] == "create") {
        if (a.size() != 4 || a[1] != "--golden") return usage();
        icbd::UniqueFd g(::open(a[2].c_str(), O_RDONLY | O_CLOEXEC));
        if (!g.valid()) return fail(icbd::Status::from_errno(errno, "golden file '" + a[2] + "': open"));
        auto id = icbd::golden_identity(g.get(), a[2]);
        if (!id) return fail(id.status());
        if (auto s = icbd::create_overlay(a[3], *id); !s) return fail(s);
        std::printf("overlay '%s' created for %s\n", a[3].c_str(), id->describe().c_str());
        return 0;
    }
    if (a[0] == "reset") {
        if (a.size() != 2) return usage();
        if (auto s = icbd::reset_overlay(a[1]); !s) return fail(s);
        std::printf("overlay '%s' reset\n", a[1].c_str());
        return 0;
    }
    if (a[0] == "info") {
        if (a.size() < 2 || a.size() > 3 || (a.size() == 3 && a[2] != "--json")) return usage();
        auto info = icbd::read_overlay_info(a[1]);
        if (!info) return fail(info.status());
        auto blocks = icbd::count_overlay_blocks(a[1]);
        if (!blocks) return fail(blocks.status());
        const auto& g = info->golden;
        if (a.size() == 3) {
            std::printf("{\"overlay\":\"%s\",\"uuid\":\"%s\",\"image\":\"%s\",\"version\":%llu,\"file\":\"%s\","
                        "\"subvolume_uuid\":\"%s\",\"size\":%llu,\"block_size\":%llu,\"blocks_written\":%llu}\n",
                        icbd::json_escape(a[1]).c_str(), icbd::uuid_to_string(info->overlay_uuid).c_str(),
                        icbd::json_escape(g.image).c_str(), static_cast<unsigned long long>(g.version),
                        icbd::json_escape(g.file).c_str(), icbd::uuid_to_string(g.subvol_uuid).c_str(),
                        static_cast<unsigned long long>(info->image_size),
                        static_cast<unsigned long long>(icbd::OverlayInfo::block_size),
                        static_cast<unsigned long long>(*blocks));
        } else {
            std::printf("overlay %s (uuid %s)\n  belongs to %s\n  blocks written %llu of %llu (%llu KiB)\n",
                        a[1].c_str(), icbd::uuid_to_string(info->overlay_uuid).c_str(), g.describe().c_str(),
                        static_cast<unsigned long long>(*blocks), static_cast<unsigned long long>(info->blocks()),
                        static_cast<unsigned long long>(*blocks * icbd::OverlayInfo::block_size / 1024));
        }
        return 0;
    }
    return usage();
}
