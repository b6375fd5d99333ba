// Frames of the replication stream (docs/replication-protocol.md, section 2): the
// 24-byte header with its checksums, and the incremental decoder that turns a
// byte stream split anywhere into verified frames. Pure functions over bytes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "icbd/replicator/protocol.hpp"
#include "icbd/status.hpp"

namespace icbd::repl {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

// Errors of the frame and message codecs (Status::code()):
//   EBADMSG  a checksum does not match (header CRC32C or payload XXH3)
//   EMSGSIZE a payload length above the maximum
//   EINVAL   a name, path or symlink target breaks the rules (section 7)
//   EPROTO   anything else malformed: magic, unknown type, flags, truncation,
//            a field out of range, trailing bytes
// Messages say which frame and which field: "DATA frame: offset 18446744073709551615
// + length 4096 overflows".

inline constexpr uint32_t kFrameMagic = 0x46524349;  // "ICRF" on the wire
inline constexpr size_t kFrameHeaderSize = 24;
inline constexpr uint32_t kMaxPayload = 4u << 20;  // 4 MiB

// "DATA frame: ", the start of every message about a frame.
std::string frame_prefix(FrameType type);

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

}  // namespace icbd::repl
