// The replication wire format (docs/replication-protocol.md): frame header and
// incremental frame decoder, the typed messages with their validation, and the
// end-of-version digest. Pure functions over bytes; no I/O.
#pragma once

#include <sys/stat.h>

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

#include "icbd/replicator/compression.hpp"
#include "icbd/replicator/snapshot_diff.hpp"  // EntryType, EntryAttrs
#include "icbd/status.hpp"

namespace icbd::repl {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

// Errors of this codec (Status::code()):
//   EBADMSG  a checksum does not match (header CRC32C or payload XXH3)
//   EMSGSIZE a payload length above the maximum
//   EINVAL   a name, path or symlink target breaks the rules (ErrorCode::bad_name)
//   EPROTO   anything else malformed: magic, unknown type, flags, truncation,
//            a field out of range, trailing bytes
// Messages say which frame and which field: "DATA frame: offset 18446744073709551615
// + length 4096 overflows".

inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr uint32_t kFrameMagic = 0x46524349;  // "ICRF" on the wire
inline constexpr size_t kFrameHeaderSize = 24;
inline constexpr uint32_t kMaxPayload = 4u << 20;  // 4 MiB
inline constexpr uint32_t kChunkSize = 1u << 20;   // max DATA length
inline constexpr size_t kMaxSymlinkTarget = 4095;
inline constexpr size_t kMaxNodeName = 64;
inline constexpr size_t kMaxMessage = 1024;
inline constexpr uint32_t kMaxHeldVersions = 65536;
inline constexpr uint64_t kMaxFileSize = 0x7fffffffffffffffull;  // off_t
inline constexpr std::array<char, 8> kHelloMagic = {'I', 'C', 'B', 'D', 'R', 'E', 'P', 'L'};

enum class FrameType : uint8_t {
    hello = 0x01,
    offer = 0x02,
    need = 0x03,
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

// Codes of RESULT and ERROR (section 4.6). Unknown values travel as numbers.
enum class ErrorCode : uint16_t {
    ok = 0,
    protocol = 1,
    unsupported_version = 2,
    not_newer = 3,
    unknown_base = 4,
    digest_mismatch = 5,
    io_error = 6,
    no_space = 7,
    bad_name = 8,
    busy = 9,
    refused = 10,
    internal = 11,
    cancelled = 12,
};
// "digest_mismatch", or "error 77" for a value this version does not know.
std::string error_code_name(uint16_t code);
// The code to send for a local failure: EINVAL -> bad_name, ENOSPC/EDQUOT ->
// no_space, EBADMSG/EMSGSIZE/EPROTO -> protocol, other errno -> io_error.
ErrorCode error_code_for(const Status& s);

// ---- Frames ----------------------------------------------------------------

struct FrameHeader {
    FrameType type = FrameType::hello;
    uint8_t flags = 0;
    uint32_t payload_length = 0;
    uint64_t payload_xxh3 = 0;

    static FrameHeader for_payload(FrameType type, ByteView payload);
    // The 24 wire bytes (the header CRC is computed here).
    std::array<uint8_t, kFrameHeaderSize> encode() const;
    // Checks magic, header CRC, flags/reserved, type and `max_payload`.
    static Result<FrameHeader> decode(ByteView bytes, uint32_t max_payload = kMaxPayload);
};

// EBADMSG when `payload` does not match the header's length or XXH3.
Status verify_payload(const FrameHeader& h, ByteView payload);

// Header + payload; EMSGSIZE when the payload is above kMaxPayload.
Result<Bytes> encode_frame(FrameType type, ByteView payload);

struct Frame {
    FrameType type = FrameType::hello;
    Bytes payload;
};

// Turns a byte stream split anywhere into complete, verified frames. After an
// error every later call returns the same error (the stream cannot resync).
class FrameDecoder {
public:
    explicit FrameDecoder(uint32_t max_payload = kMaxPayload) : max_payload_(max_payload) {}

    void feed(ByteView bytes);
    // The next complete frame, nullopt when more bytes are needed, or the
    // first error of the stream.
    Result<std::optional<Frame>> next();
    // The peer closed the stream: EPROTO "truncated" if it ended inside a
    // frame (or after an error, that error); ok between frames.
    Status finish() const;

    // Bytes still missing to complete the frame being read (at least the rest
    // of a header): what a blocking reader can ask for without over-reading.
    size_t bytes_wanted() const;
    size_t buffered() const { return buf_.size() - pos_; }

private:
    uint32_t max_payload_;
    Bytes buf_;
    size_t pos_ = 0;
    std::optional<FrameHeader> header_;  // decoded header of the frame being read
    Status error_;
};

// ---- Names -----------------------------------------------------------------
// Image names and in-version paths follow validate_image_name and
// validate_relative_path of image_path.hpp (section 7).

// A symlink target: 1..4095 bytes, no NUL, relative, and not climbing above the
// version root when resolved lexically from the directory of `link_path`.
Status validate_symlink_target(std::string_view link_path, std::string_view target);
// 1..64 bytes of 0x21..0x7e.
Status validate_node_name(std::string_view name);

// ---- Messages ----------------------------------------------------------------
// Each message: kType, validate() (every field, as the doc says), encode_payload()
// (appends the payload bytes; valid fields assumed), decode() (validates).
// make_frame() validates and builds the whole frame in one buffer.

enum class Role : uint8_t { sender = 1, receiver = 2 };

struct Hello {
    static constexpr FrameType kType = FrameType::hello;
    uint16_t min_version = kProtocolVersion;
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

enum class NeedKind : uint8_t { nothing = 0, incremental = 1, full = 2 };

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
    uint16_t code = 0;  // ErrorCode; 0 = ok
    uint64_t version = 0;
    std::string image;
    std::string message;

    bool ok() const { return code == 0; }
    Status validate() const;
    void encode_payload(Bytes& out) const;
    static Result<PushResult> decode(ByteView payload);
    friend bool operator==(const PushResult&, const PushResult&) = default;
};

struct Error {
    static constexpr FrameType kType = FrameType::error;
    uint16_t code = static_cast<uint16_t>(ErrorCode::internal);  // non-zero
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

using Message = std::variant<Hello, Offer, Need, FileEntry, Data, Hole, Truncate, Delete, Checkpoint,
                             CheckpointAck, End, PushResult, Error>;
// Decodes a frame by its type (a Data's bytes point into `frame.payload`).
Result<Message> decode_message(const Frame& frame);

// ---- End-of-version digest (section 8) ---------------------------------------

// The change chain c_s over the change frames in sequence order. Each add
// checks that the frame's seq is the next one (EPROTO otherwise, naming both).
class ChangeChain {
public:
    // Starts after change `seq` with chain value `value` (a resume point), or
    // from the beginning (0, 0).
    explicit ChangeChain(uint64_t seq = 0, uint64_t value = 0) : seq_(seq), value_(value) {}

    Status add(const FileEntry& m);
    Status add(const Hole& m);
    Status add(const Truncate& m);
    Status add(const Delete& m);
    // `uncompressed_xxh3` = xxh3_64 of the chunk's uncompressed bytes.
    Status add(const Data& m, uint64_t uncompressed_xxh3);

    uint64_t seq() const { return seq_; }
    uint64_t value() const { return value_; }

private:
    Status add_record(FrameType type, uint64_t seq, const Bytes& logical);
    uint64_t seq_;
    uint64_t value_;
};

// The manifest hash M over the entries of a version in bytewise path order.
class ManifestHasher {
public:
    // EPROTO when `path` does not sort strictly after the previous entry;
    // EINVAL for a bad path. Hashed as section 8.2 says: symlink permission
    // bits as 0, the size of a non-regular entry as 0, a target only for a symlink.
    Status add(std::string_view path, const EntryAttrs& attrs);
    uint64_t value() const { return value_; }
    uint64_t count() const { return count_; }

private:
    std::string last_;
    uint64_t value_ = 0;
    uint64_t count_ = 0;
};

// The attributes of an entry from lstat() (and readlink() for a symlink), as
// the manifest and FILE frames carry them; ENOTSUP naming `path` for other
// file types (devices, FIFOs, sockets).
Result<EntryAttrs> entry_attrs_from_stat(std::string_view path, const struct ::stat& st, std::string symlink_target = {});

// D = H("ICBDDIG1" || version || base || change_count || chain || entry_count || M).
uint64_t version_digest(uint64_t version, uint64_t base, uint64_t change_count, uint64_t chain,
                        uint64_t entry_count, uint64_t manifest_hash);

}  // namespace icbd::repl
