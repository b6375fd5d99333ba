// The vocabulary of the replication protocol (docs/replication-protocol.md) that
// the library's API shows: the protocol version, the frame types, what a replica
// needs, and (protocol_error.hpp) the codes of RESULT and ERROR. The codecs
// themselves are private to libreplicator (replicator/frame_codec.hpp, messages.hpp).
#pragma once

#include <cstdint>

#include "icbd/replicator/protocol_error.hpp"

namespace icbd::repl {

// The newest version we speak, and the oldest (docs/replication-protocol.md,
// section 3). Version 2 adds ROUTE and CHILDREN (relay cycles and takeovers).
inline constexpr uint16_t kProtocolVersion = 2;
inline constexpr uint16_t kMinProtocolVersion = 1;
inline constexpr uint16_t kRelayFramesVersion = 2;  // ROUTE and CHILDREN from here on

enum class FrameType : uint8_t {
    hello = 0x01,
    offer = 0x02,
    need = 0x03,
    route = 0x04,     // version 2
    children = 0x05,  // version 2
    file = 0x10,
    data = 0x11,
    hole = 0x12,
    truncate = 0x13,
    del = 0x14,  // DELETE
    checkpoint = 0x20,
    checkpoint_ack = 0x21,
    end = 0x22,
    result = 0x23,
    error = 0x7f,
};
bool is_known_frame_type(uint8_t type);
bool is_change_frame(FrameType type);  // FILE, DATA, HOLE, TRUNCATE, DELETE
const char* frame_type_name(FrameType type);  // "DATA", "CHECKPOINT_ACK", ...

// What a replica asks for in NEED (section 4.2).
enum class NeedKind : uint8_t { nothing = 0, incremental = 1, full = 2 };

}  // namespace icbd::repl
