// The fourteen messages of the replication protocol (docs/replication-protocol.md,
// sections 3-5): each typed, with the validation of every field the doc asks
// for, its payload encoding and decoding, and a whole frame made in one buffer.
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "frame_codec.hpp"
#include "icbd/replicator/compression.hpp"
#include "icbd/replicator/entry_attrs.hpp"
#include "icbd/replicator/protocol.hpp"
#include "icbd/status.hpp"

namespace icbd::repl {

inline constexpr uint32_t kChunkSize = 1u << 20;  // max DATA length
inline constexpr size_t kMaxMessage = 1024;
inline constexpr uint32_t kMaxHeldVersions = 65536;
inline constexpr uint64_t kMaxFileSize = 0x7fffffffffffffffull;  // off_t
inline constexpr size_t kMaxRoute = 16;        // nodes in a ROUTE
inline constexpr size_t kMaxRelayChildren = 256;  // children in a CHILDREN
inline constexpr size_t kMaxChildAddress = 255;
inline constexpr std::array<char, 8> kHelloMagic = {'I', 'C', 'B', 'D', 'R', 'E', 'P', 'L'};

// ---- Messages ----------------------------------------------------------------
// Each message: kType, validate() (every field, as the doc says), encode_payload()
// (appends the payload bytes; valid fields assumed), decode() (validates).
// make_frame() validates and builds the whole frame in one buffer.

enum class Role : uint8_t { sender = 1, receiver = 2 };

struct Hello {
    static constexpr FrameType kType = FrameType::hello;
    uint16_t min_version = kMinProtocolVersion;
    uint16_t max_version = kProtocolVersion;
    Role role = Role::sender;
    uint32_t capabilities = 0;  // kCapLz4 | kCapZstd; unknown bits are kept and ignored
    std::string node_name;

    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<Hello> decode(ByteView payload);
    friend bool operator==(const Hello&, const Hello&) = default;
};

// The protocol version both sides speak, or ErrorCode::unsupported_version's
// Status (EPROTO) naming both ranges.
Result<uint16_t> negotiate_version(const Hello& ours, const Hello& theirs);

struct Offer {
    static constexpr FrameType kType = FrameType::offer;
    uint64_t version = 0;
    uint64_t total_size = 0;
    uint64_t entry_count = 0;
    std::vector<uint64_t> held;  // strictly increasing, each >= 1
    std::string image;

    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<Offer> decode(ByteView payload);
    friend bool operator==(const Offer&, const Offer&) = default;
};

struct Need {
    static constexpr FrameType kType = FrameType::need;
    uint64_t version = 0;
    NeedKind kind = NeedKind::nothing;
    uint64_t base = 0;
    uint64_t resume_seq = 0;
    uint64_t resume_chain = 0;
    std::string image;

    Status validate() const;  // the rules of 4.2 that need no OFFER
    // The rest: echoes of image/version, base in offer.held.
    Status check_against(const Offer& offer) const;
    void encode_payload(Bytes& out) const;
    static Result<Need> decode(ByteView payload);
    friend bool operator==(const Need&, const Need&) = default;
};

// Version 2 (section 4.8): the senders an offer went through, master first,
// the sender of the frame last.
struct Route {
    static constexpr FrameType kType = FrameType::route;
    std::vector<std::string> nodes;

    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<Route> decode(ByteView payload);
    // Is `node` one of the relays (not the master, the first node) the offer
    // came through? Names default to the host name, so a master and a replica
    // on one host may share one; only a relay can close a cycle.
    bool relays_through(const std::string& node) const {
        return nodes.size() > 1 && std::find(nodes.begin() + 1, nodes.end(), node) != nodes.end();
    }
    std::string text() const;  // "master -> a -> b"
    friend bool operator==(const Route&, const Route&) = default;
};

// Version 2 (section 4.9): the children a relay feeds with this offer's
// stream, for its parent to take over if it fails.
struct RelayChild {
    std::string address;  // HOST:PORT as the relay connects to it
    std::string node_name;
    friend bool operator==(const RelayChild&, const RelayChild&) = default;
};
struct Children {
    static constexpr FrameType kType = FrameType::children;
    std::vector<RelayChild> children;

    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<Children> decode(ByteView payload);
    friend bool operator==(const Children&, const Children&) = default;
};

// What a replica answers to an offer (4.2 steps 1, 3, 4; step 2 is an ERROR):
// `published` are the versions it publishes for the image, any order.
// Returns nullopt when `offer.version` is older than one it publishes.
std::optional<Need> choose_need(const Offer& offer, std::span<const uint64_t> published);

struct FileEntry {
    static constexpr FrameType kType = FrameType::file;
    uint64_t seq = 0;
    std::string path;
    EntryAttrs attrs;  // type, mode, uid, gid, mtime, size, symlink_target

    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<FileEntry> decode(ByteView payload);
    friend bool operator==(const FileEntry&, const FileEntry&) = default;
};

// `bytes` is a view: into the frame's payload after decode (valid while that
// Frame lives), into the caller's buffer for encoding.
struct Data {
    static constexpr FrameType kType = FrameType::data;
    uint64_t seq = 0;
    uint64_t offset = 0;
    uint32_t length = 0;  // uncompressed
    Compression compression = Compression::none;
    std::string path;
    ByteView bytes;

    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<Data> decode(ByteView payload);
    bool operator==(const Data& o) const;  // compares the bytes, not the views
};

struct Hole {
    static constexpr FrameType kType = FrameType::hole;
    uint64_t seq = 0;
    uint64_t offset = 0;
    uint64_t length = 0;
    std::string path;

    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<Hole> decode(ByteView payload);
    friend bool operator==(const Hole&, const Hole&) = default;
};

struct Truncate {
    static constexpr FrameType kType = FrameType::truncate;
    uint64_t seq = 0;
    uint64_t size = 0;
    std::string path;

    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<Truncate> decode(ByteView payload);
    friend bool operator==(const Truncate&, const Truncate&) = default;
};

struct Delete {
    static constexpr FrameType kType = FrameType::del;
    uint64_t seq = 0;
    std::string path;

    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<Delete> decode(ByteView payload);
    friend bool operator==(const Delete&, const Delete&) = default;
};

struct Checkpoint {
    static constexpr FrameType kType = FrameType::checkpoint;
    uint64_t seq = 0;

    Status validate() const { return Status::ok(); }
    void encode_payload(Bytes& out) const;
    static Result<Checkpoint> decode(ByteView payload);
    friend bool operator==(const Checkpoint&, const Checkpoint&) = default;
};

struct CheckpointAck {
    static constexpr FrameType kType = FrameType::checkpoint_ack;
    uint64_t seq = 0;
    uint64_t chain = 0;

    Status validate() const { return Status::ok(); }
    void encode_payload(Bytes& out) const;
    static Result<CheckpointAck> decode(ByteView payload);
    friend bool operator==(const CheckpointAck&, const CheckpointAck&) = default;
};

struct End {
    static constexpr FrameType kType = FrameType::end;
    uint64_t change_count = 0;
    uint64_t chain = 0;
    uint64_t entry_count = 0;
    uint64_t manifest_hash = 0;
    uint64_t digest = 0;

    Status validate() const { return Status::ok(); }
    void encode_payload(Bytes& out) const;
    static Result<End> decode(ByteView payload);
    friend bool operator==(const End&, const End&) = default;
};

// The RESULT frame (named so it does not hide icbd::Result).
struct PushResult {
    static constexpr FrameType kType = FrameType::result;
    ErrorCode code = ErrorCode::ok;
    uint64_t version = 0;
    std::string image;
    std::string message;

    bool ok() const { return code == ErrorCode::ok; }
    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<PushResult> decode(ByteView payload);
    friend bool operator==(const PushResult&, const PushResult&) = default;
};

struct Error {
    static constexpr FrameType kType = FrameType::error;
    ErrorCode code = ErrorCode::internal;  // never ok
    std::string message;

    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<Error> decode(ByteView payload);
    friend bool operator==(const Error&, const Error&) = default;
};

// A message too long for the limits is cut (at kMaxMessage bytes, NULs
// replaced) so an ERROR can always be sent.
std::string clamp_message(std::string_view message);

template <typename M>
Result<Bytes> make_frame(const M& m) {
    if (Status s = m.validate(); !s) return s;
    Bytes out(kFrameHeaderSize);
    m.encode_payload(out);
    if (out.size() - kFrameHeaderSize > kMaxPayload)
        return Status::error(EMSGSIZE, std::string(frame_type_name(M::kType)) + " frame: payload of " +
                                           std::to_string(out.size() - kFrameHeaderSize) +
                                           " bytes is above the maximum " + std::to_string(kMaxPayload));
    ByteView payload(out.data() + kFrameHeaderSize, out.size() - kFrameHeaderSize);
    auto h = FrameHeader::for_payload(M::kType, payload).encode();
    std::copy(h.begin(), h.end(), out.begin());
    return out;
}

using Message = std::variant<Hello, Offer, Need, Route, Children, FileEntry, Data, Hole, Truncate, Delete, Checkpoint,
                             CheckpointAck, End, PushResult, Error>;
// Decodes a frame by its type (a Data's bytes point into `frame.payload`).
Result<Message> decode_message(const Frame& frame);

}  // namespace icbd::repl
