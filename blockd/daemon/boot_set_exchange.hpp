// Boot sets between nodes (docs/boot-set.md, "Shipping"): where the set of a
// file of a version comes from (its own sidecar, else the newest older
// version's as a prediction), and the master's answers to bootset.put and
// bootset.get (docs/blockd-peer-protocol.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "icbd/boot_set.hpp"
#include "icbd/replicator/transport.hpp"
#include "peer_protocol.hpp"

namespace icbd::node {

// The largest sidecar a bootset.put or a bootset answer carries: its base64
// and the message's other fields must fit one frame.
inline constexpr size_t kMaxShippedSidecar = (kMaxPeerMessage - 8192) / 4 * 3;

struct FoundBootSet {
    BootSetKind kind = BootSetKind::none;
    uint64_t source = 0;  // the version whose boots `set` holds
    BootSet set;          // predicted: boots 0, version = source
};

// Looks in `repo`'s `.bootsets`: the version's own sidecar of `file`, else
// the newest older version's. A sidecar that does not decode is skipped with
// one log line, as if absent.
FoundBootSet find_boot_set(const std::filesystem::path& repo, const std::string& image, uint64_t version,
                           const std::string& file);

// The master's handlers. Requests come only from registered replicas whose
// certificate carries the name they give.
class BootSetExchange {
public:
    BootSetExchange(std::filesystem::path repo, std::function<bool(const std::string& node)> is_replica);

    // Merges the sidecar into <repo>/images/<image>/.bootsets/<version>/<file>.bset.
    nlohmann::json handle_put(const repl::PeerIdentity& peer, const nlohmann::json& request);
    // Answers with find_boot_set().
    nlohmann::json handle_get(const repl::PeerIdentity& peer, const nlohmann::json& request);

private:
    // Empty when `node` may send boot set requests, else the error answer's message.
    std::string refuse(const repl::PeerIdentity& peer, const std::string& type, const std::string& node) const;
    std::filesystem::path repo_;
    std::function<bool(const std::string&)> is_replica_;
};

}  // namespace icbd::node
