// The master's side of boot set shipping (docs/blockd-peer-protocol.md,
// "bootset.put", "bootset.get") and the lookup of a version's set with an
// older version's as the fallback prediction.
#include "boot_set_exchange.hpp"

#include <algorithm>
#include <cerrno>
#include <vector>

#include "icbd/log.hpp"
#include "icbd/replicator/image_path.hpp"

namespace icbd::node {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string what_of(const std::string& image, uint64_t version, const std::string& file) {
    return "image '" + image + "' version " + std::to_string(version) + " file '" + file + "'";
}

// The set of `file` recorded on `version`, or nothing (absent, or corrupt: logged).
std::optional<BootSet> load_quietly(const fs::path& repo, const std::string& image, uint64_t version,
                                    const std::string& file) {
    auto set = load_boot_set(boot_set_path(repo, image, version, file));
    if (set) return std::move(*set);
    if (set.status().code() != ENOENT)
        log(LogLevel::warning, what_of(image, version, file) + ": boot set ignored: " + set.status().message(),
            {.image = image, .version = version});
    return std::nullopt;
}

}  // namespace

FoundBootSet find_boot_set(const fs::path& repo, const std::string& image, uint64_t version, const std::string& file) {
    FoundBootSet found;
    if (auto own = load_quietly(repo, image, version, file)) {
        found.kind = BootSetKind::recorded;
        found.source = version;
        found.set = std::move(*own);
        return found;
    }
    // Older versions that have sidecars, newest first.
    std::vector<uint64_t> older;
    std::error_code ec;
    for (fs::directory_iterator it(repo / "images" / image / ".bootsets", ec), end; !ec && it != end; it.increment(ec)) {
        auto v = repl::parse_version(it->path().filename().string());
        if (v && *v < version) older.push_back(*v);
    }
    std::sort(older.rbegin(), older.rend());
    for (uint64_t v : older) {
        if (auto set = load_quietly(repo, image, v, file)) {
            found.kind = BootSetKind::predicted;
            found.source = v;
            found.set = std::move(*set);
            found.set.boots = 0;
            found.set.version = v;
            return found;
        }
    }
    return found;
}

BootSetExchange::BootSetExchange(fs::path repo, std::function<bool(const std::string&)> is_replica)
    : repo_(std::move(repo)), is_replica_(std::move(is_replica)) {}

std::string BootSetExchange::refuse(const repl::PeerIdentity& peer, const std::string& type,
                                    const std::string& node) const {
    if (peer.authenticated && peer.common_name != node)
        return type + " refused: it names node '" + node + "' but comes from " + peer.describe();
    if (is_replica_ && !is_replica_(node)) return type + " from '" + node + "' refused: not a replica registered here";
    return "";
}

json BootSetExchange::handle_put(const repl::PeerIdentity& peer, const json& request) {
    auto put = bootset_put_from_json(request);
    if (!put) return error_message(put.status().message());
    if (std::string why = refuse(peer, "bootset.put", put->node); !why.empty()) {
        log(LogLevel::warning, why, {.peer = peer.describe()});
        return error_message(why);
    }
    const std::string what =
        "bootset.put from '" + put->node + "': " + what_of(put->image, put->version, put->file);
    const LogFields fields{.image = put->image, .version = put->version, .peer = put->node};
    auto dir = repo_ / "images" / put->image / repl::version_name(put->version);
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return error_message(what + ": no such version on this master");
    if (fs::symlink_status(dir / put->file, ec).type() != fs::file_type::regular)
        return error_message(what + ": not a regular file of the version");
    auto set = BootSet::decode(put->sidecar, "sidecar");
    if (!set) {
        std::string msg = what + ": " + set.status().message();
        log(LogLevel::warning, msg, fields);
        return error_message(msg);
    }
    const fs::path path = boot_set_path(repo_, put->image, put->version, put->file);
    std::string replaced;
    if (Status s = merge_into_boot_set(path, *set, &replaced); !s) {
        log(LogLevel::error, what + ": " + s.message(), fields);
        return error_message(what + ": " + s.message());
    }
    if (!replaced.empty()) log(LogLevel::warning, what + ": the master's boot set was " + replaced, fields);
    auto merged = load_boot_set(path);
    BootSetAck ack{put->image, put->version, put->file, merged ? merged->boots : set->boots};
    log(LogLevel::info,
        what + ": merged " + std::to_string(set->bytes()) + " bytes of boot set, +" + std::to_string(set->boots) +
            " boots, " + std::to_string(ack.boots) + " in all",
        fields);
    return to_json(ack);
}

json BootSetExchange::handle_get(const repl::PeerIdentity& peer, const json& request) {
    auto get = bootset_get_from_json(request);
    if (!get) return error_message(get.status().message());
    if (std::string why = refuse(peer, "bootset.get", get->node); !why.empty()) {
        log(LogLevel::warning, why, {.peer = peer.describe()});
        return error_message(why);
    }
    BootSetReply reply;
    reply.image = get->image;
    reply.version = get->version;
    reply.file = get->file;
    FoundBootSet found = find_boot_set(repo_, get->image, get->version, get->file);
    if (found.kind != BootSetKind::none) {
        std::vector<uint8_t> bytes = found.set.encode();
        if (bytes.size() > kMaxShippedSidecar) {
            log(LogLevel::warning,
                "bootset.get from '" + get->node + "': " + what_of(get->image, found.source, get->file) +
                    ": boot set of " + std::to_string(bytes.size()) + " bytes is larger than a peer message carries (" +
                    std::to_string(kMaxShippedSidecar) + "); answered none",
                {.image = get->image, .version = get->version, .peer = get->node});
        } else {
            reply.kind = found.kind;
            reply.source = found.source;
            reply.sidecar = std::move(bytes);
        }
    }
    return to_json(reply);
}

}  // namespace icbd::node
