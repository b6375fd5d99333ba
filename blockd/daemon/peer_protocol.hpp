// The node-to-node control protocol between blockd processes, over the
// replicator's mutual-TLS streams (docs/blockd-peer-protocol.md, "Peer protocol", version 1):
// each message is a 4-byte big-endian length then that many bytes of UTF-8
// JSON (an object with "type"), at most kMaxPeerMessage bytes. A connection
// carries one request and its answer.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "icbd/replicator/transport.hpp"
#include "icbd/status.hpp"

namespace icbd::node {

inline constexpr uint32_t kPeerProtocolVersion = 1;
inline constexpr uint32_t kMaxPeerMessage = 1u << 20;

// Framing. read fails with EBADMSG (length 0 or too large, not JSON, not an
// object, no string "type"), ECONNRESET at an early end; the message names the peer.
Status write_peer_message(repl::Stream& s, const nlohmann::json& msg);
Result<nlohmann::json> read_peer_message(repl::Stream& s);
// The same on bytes (fuzzing, tests): decodes one whole frame.
Result<nlohmann::json> decode_peer_frame(const uint8_t* data, size_t size);
std::vector<uint8_t> encode_peer_frame(const nlohmann::json& msg);

// What one image looks like in the master's catalog (sent in every ping).
struct CatalogImage {
    std::vector<uint64_t> versions;  // published on the master, ascending
    uint64_t production = 0;
    uint64_t test = 0;
    std::string disk;  // file name of the LUN disk inside a version ("disk.raw")
};
using Catalog = std::map<std::string, CatalogImage>;

// replica -> master
struct RegisterRequest {
    std::string node;  // must equal the TLS identity (checked by the master)
    std::string peer_address;
    std::string replication_address;
    std::vector<std::string> subscribe;
    std::map<std::string, std::vector<uint64_t>> versions;
};
// master -> replica (keepalive)
struct PingRequest {
    std::string master;
    Catalog catalog;
    std::string parent;  // the replica's relay, which may push to it too; "" (absent on the wire): none
};
struct PongReply {
    std::string node;
    std::vector<std::string> subscribe;
    std::map<std::string, std::vector<uint64_t>> versions;
    // Versions the replica's clients use (the master keeps them as bases).
    std::map<std::string, std::vector<uint64_t>> in_use;
    std::string parent;  // the parent it applied from the ping; "": none
};

// master -> replica, just before a push (docs/blockd-peer-protocol.md, "relay"):
// the children this replica feeds from now on.
struct RelayChild {
    std::string name;
    std::string replication_address;
};
inline constexpr size_t kMaxRelayChildren = 1000;
struct RelayRequest {
    std::string master;
    std::vector<RelayChild> children;
};
struct RelayReply {  // "relay.ok"
    std::string node;
    std::vector<std::string> children;
};
nlohmann::json to_json(const RelayRequest& r);
nlohmann::json to_json(const RelayReply& r);
Result<RelayRequest> relay_from_json(const nlohmann::json& j);
Result<RelayReply> relay_ok_from_json(const nlohmann::json& j);

// Validating conversions: from_json errors are EBADMSG naming the field.
nlohmann::json to_json(const RegisterRequest& r);
nlohmann::json to_json(const PingRequest& r);
nlohmann::json to_json(const PongReply& r);
Result<RegisterRequest> register_from_json(const nlohmann::json& j);
Result<PingRequest> ping_from_json(const nlohmann::json& j);
Result<PongReply> pong_from_json(const nlohmann::json& j);
// {"type":"error","proto":1,"message":...}
nlohmann::json error_message(const std::string& message);

// master -> replica, the answer to "register".
struct RegisteredReply {
    std::string master;
    uint64_t keepalive_interval_ms = 0;
};
nlohmann::json to_json(const RegisteredReply& r);
Result<RegisteredReply> registered_from_json(const nlohmann::json& j);

// Boot sets (docs/blockd-peer-protocol.md, "bootset.put" .. "bootset"): the
// sidecar travels as its raw bytes here, base64 on the wire; what they hold
// is checked by whoever uses them (BootSet::decode), not by the conversions.
struct BootSetPut {  // replica -> master
    std::string node;
    std::string image;
    uint64_t version = 0;
    std::string file;  // relative to the version's directory
    std::vector<uint8_t> sidecar;
};
struct BootSetAck {  // master -> replica
    std::string image;
    uint64_t version = 0;
    std::string file;
    uint64_t boots = 0;  // the master's total after the merge
};
struct BootSetGet {  // replica -> master
    std::string node;
    std::string image;
    uint64_t version = 0;
    std::string file;
};
enum class BootSetKind { recorded, predicted, none };
const char* boot_set_kind_name(BootSetKind k);  // "recorded", "predicted", "none"
struct BootSetReply {  // master -> replica
    std::string image;
    uint64_t version = 0;
    std::string file;
    BootSetKind kind = BootSetKind::none;
    uint64_t source = 0;  // version whose boots the set holds; 0 for none
    std::vector<uint8_t> sidecar;  // empty for none
};
nlohmann::json to_json(const BootSetPut& r);
nlohmann::json to_json(const BootSetAck& r);
nlohmann::json to_json(const BootSetGet& r);
nlohmann::json to_json(const BootSetReply& r);
Result<BootSetPut> bootset_put_from_json(const nlohmann::json& j);
Result<BootSetAck> bootset_ack_from_json(const nlohmann::json& j);
Result<BootSetGet> bootset_get_from_json(const nlohmann::json& j);
Result<BootSetReply> bootset_reply_from_json(const nlohmann::json& j);

// RFC 4648 base64 with padding; decode refuses anything else (EINVAL).
std::string base64_encode(const std::vector<uint8_t>& bytes);
Result<std::vector<uint8_t>> base64_decode(std::string_view text);

// "proto" present and spoken here: EBADMSG when missing or mistyped,
// EPROTONOSUPPORT naming the supported versions otherwise.
Status check_peer_version(const nlohmann::json& msg);
// The error answer for a version check failure ("supported": [1] when it is a mismatch).
nlohmann::json version_error_message(const Status& version_error);

// Names in messages (docs/blockd-peer-protocol.md, "Field types"): node names
// are certificate CNs, 1-64 characters of [A-Za-z0-9._-] not starting with '.'.
Status validate_node_name(std::string_view name);
// "host:port" or "[v6]:port" -> host (without brackets) and port (1-65535).
Result<std::pair<std::string, uint16_t>> parse_peer_address(std::string_view address);

}  // namespace icbd::node
