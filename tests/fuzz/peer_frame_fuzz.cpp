// libFuzzer target: blockd's node-to-node messages (docs/blockd-peer-protocol.md)
// on arbitrary bytes. The frame decoder (the input as a raw frame, and as the
// body of a well-formed header so the JSON parser is reached), every message
// validator (the boot set messages and their base64, the relay messages
// included), and the
// address and name checks never crash; every error carries
// a code and a message; whatever a validator accepts converts back to JSON that
// it accepts again unchanged.
#include <cerrno>
#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "peer_protocol.hpp"

using namespace icbd;
using namespace icbd::node;
using nlohmann::json;

namespace {

void check_error(const Status& s) {
    if (s.is_ok() || s.code() == 0 || s.message().empty()) std::abort();
}

// Accepted -> to_json -> through a frame -> accepted again, with equal JSON.
template <typename Parse>
void check_round_trip(const json& j, Parse parse) {
    auto r = parse(j);
    if (!r) {
        check_error(r.status());
        return;
    }
    const json again = to_json(*r);
    std::vector<uint8_t> frame = encode_peer_frame(again);
    auto decoded = decode_peer_frame(frame.data(), frame.size());
    if (!decoded || *decoded != again) std::abort();
    auto r2 = parse(*decoded);
    if (!r2 || to_json(*r2) != again) std::abort();
}

void check_message(const json& j, const std::string& text) {
    if (Status v = check_peer_version(j); !v) {
        check_error(v);
        json e = version_error_message(v);
        if (e.at("type") != "error") std::abort();
    }
    check_round_trip(j, register_from_json);
    check_round_trip(j, ping_from_json);
    check_round_trip(j, pong_from_json);
    check_round_trip(j, registered_from_json);
    check_round_trip(j, bootset_put_from_json);
    check_round_trip(j, bootset_ack_from_json);
    check_round_trip(j, bootset_get_from_json);
    check_round_trip(j, bootset_reply_from_json);
    check_round_trip(j, relay_from_json);
    check_round_trip(j, relay_ok_from_json);
    // What the server does with a request it cannot serve: an error answer
    // that always encodes (invalid UTF-8 in the message is replaced).
    std::vector<uint8_t> e = encode_peer_frame(error_message(text));
    if (e.size() < 4) std::abort();
}

void decode_and_check(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), std::min<size_t>(size, 256));
    auto j = decode_peer_frame(data, size);
    if (!j) {
        check_error(j.status());
        if (j.status().code() != EBADMSG) std::abort();
        return;
    }
    if (!j->is_object() || !j->contains("type") || !(*j)["type"].is_string()) std::abort();
    check_message(*j, text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // The input as a whole frame (length header included).
    decode_and_check(data, size);

    // The input as the body of a frame whose header is right.
    if (size > 0 && size <= kMaxPeerMessage) {
        std::vector<uint8_t> frame(4 + size);
        frame[0] = static_cast<uint8_t>(size >> 24);
        frame[1] = static_cast<uint8_t>(size >> 16);
        frame[2] = static_cast<uint8_t>(size >> 8);
        frame[3] = static_cast<uint8_t>(size);
        std::copy(data, data + size, frame.begin() + 4);
        decode_and_check(frame.data(), frame.size());
    }

    // Names and addresses as they come in messages.
    std::string_view text(reinterpret_cast<const char*>(data), size);
    if (Status s = validate_node_name(text); !s) check_error(s);
    // base64 as sidecars travel: what decodes encodes back to the same text.
    if (auto b = base64_decode(text); !b) {
        check_error(b.status());
    } else if (base64_encode(*b) != text) {
        std::abort();
    }
    if (auto a = parse_peer_address(text); !a) {
        check_error(a.status());
    } else if (a->second == 0 || a->first.empty()) {
        std::abort();
    }
    return 0;
}
