// The frame header and the incremental frame decoder (docs/replication-protocol.md,
// section 2); byte layouts are those of the doc.
#include "frame_codec.hpp"

#include <algorithm>
#include <cstdio>

#include "icbd/checksum.hpp"
#include "wire_bytes.hpp"

namespace icbd::repl {

using namespace wire;

std::string frame_prefix(FrameType t) { return std::string(frame_type_name(t)) + " frame: "; }

// ---- frame types ----

bool is_known_frame_type(uint8_t t) {
    switch (static_cast<FrameType>(t)) {
    case FrameType::hello:
    case FrameType::offer:
    case FrameType::need:
    case FrameType::route:
    case FrameType::children:
    case FrameType::file:
    case FrameType::data:
    case FrameType::hole:
    case FrameType::truncate:
    case FrameType::del:
    case FrameType::checkpoint:
    case FrameType::checkpoint_ack:
    case FrameType::end:
    case FrameType::result:
    case FrameType::error: return true;
    }
    return false;
}

bool is_change_frame(FrameType t) {
    return t == FrameType::file || t == FrameType::data || t == FrameType::hole || t == FrameType::truncate ||
           t == FrameType::del;
}

const char* frame_type_name(FrameType t) {
    switch (t) {
    case FrameType::hello: return "HELLO";
    case FrameType::offer: return "OFFER";
    case FrameType::need: return "NEED";
    case FrameType::route: return "ROUTE";
    case FrameType::children: return "CHILDREN";
    case FrameType::file: return "FILE";
    case FrameType::data: return "DATA";
    case FrameType::hole: return "HOLE";
    case FrameType::truncate: return "TRUNCATE";
    case FrameType::del: return "DELETE";
    case FrameType::checkpoint: return "CHECKPOINT";
    case FrameType::checkpoint_ack: return "CHECKPOINT_ACK";
    case FrameType::end: return "END";
    case FrameType::result: return "RESULT";
    case FrameType::error: return "ERROR";
    }
    return "unknown";
}

// ---- frame header ----

FrameHeader FrameHeader::for_payload(FrameType type, ByteView payload) {
    FrameHeader h;
    h.type = type;
    h.payload_length = static_cast<uint32_t>(payload.size());
    h.payload_xxh3 = xxh3_64(payload.data(), payload.size());
    return h;
}

std::array<uint8_t, kFrameHeaderSize> FrameHeader::encode() const {
    Bytes b;
    b.reserve(kFrameHeaderSize);
    put_u32(b, kFrameMagic);
    put_u8(b, static_cast<uint8_t>(type));
    put_u8(b, flags);
    put_u16(b, 0);
    put_u32(b, payload_length);
    put_u32(b, crc32c(b.data(), 12));
    put_u64(b, payload_xxh3);
    std::array<uint8_t, kFrameHeaderSize> out;
    std::copy(b.begin(), b.end(), out.begin());
    return out;
}

Result<FrameHeader> FrameHeader::decode(ByteView b, uint32_t max_payload) {
    if (b.size() < kFrameHeaderSize)
        return Status::error(EPROTO, "frame header truncated: " + std::to_string(b.size()) + " of 24 bytes");
    uint32_t magic = load_le32(b.data());
    if (magic != kFrameMagic) {
        char hex[16];
        snprintf(hex, sizeof hex, "0x%08x", magic);
        return Status::error(EPROTO, std::string("frame header: bad magic ") + hex + " (not a replication stream)");
    }
    uint32_t crc = load_le32(b.data() + 12);
    if (crc != crc32c(b.data(), 12))
        return Status::error(EBADMSG, "frame header: checksum mismatch (corrupted header)");
    if (!is_known_frame_type(b[4]))
        return Status::error(EPROTO, "frame header: unknown frame type " + std::to_string(b[4]));
    FrameHeader h;
    h.type = static_cast<FrameType>(b[4]);
    h.flags = b[5];
    if (h.flags != 0 || b[6] != 0 || b[7] != 0)
        return Status::error(EPROTO, frame_prefix(h.type) + "reserved flags set");
    h.payload_length = load_le32(b.data() + 8);
    if (h.payload_length > max_payload)
        return Status::error(EMSGSIZE, frame_prefix(h.type) + "payload of " + std::to_string(h.payload_length) +
                                           " bytes is above the maximum " + std::to_string(max_payload));
    h.payload_xxh3 = load_le64(b.data() + 16);
    return h;
}

Status verify_payload(const FrameHeader& h, ByteView payload) {
    if (payload.size() != h.payload_length)
        return Status::error(EPROTO, frame_prefix(h.type) + "payload of " + std::to_string(payload.size()) +
                                         " bytes, header says " + std::to_string(h.payload_length));
    if (xxh3_64(payload.data(), payload.size()) != h.payload_xxh3)
        return Status::error(EBADMSG, frame_prefix(h.type) + "payload checksum mismatch (" +
                                          std::to_string(payload.size()) + " bytes)");
    return Status::ok();
}

Result<Bytes> encode_frame(FrameType type, ByteView payload) {
    if (payload.size() > kMaxPayload)
        return Status::error(EMSGSIZE, frame_prefix(type) + "payload of " + std::to_string(payload.size()) +
                                           " bytes is above the maximum " + std::to_string(kMaxPayload));
    auto h = FrameHeader::for_payload(type, payload).encode();
    Bytes out(h.begin(), h.end());
    out.insert(out.end(), payload.begin(), payload.end());
    return out;
}

// ---- frame decoder ----

void FrameDecoder::feed(ByteView bytes) {
    if (!error_.is_ok() || bytes.empty()) return;
    // Drop consumed bytes once they are the larger part, so a long stream
    // neither grows the buffer nor shifts it for every frame.
    if (pos_ > 0 && pos_ >= buf_.size() - pos_) {
        buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(pos_));
        pos_ = 0;
    }
    buf_.insert(buf_.end(), bytes.begin(), bytes.end());
}

Result<std::optional<Frame>> FrameDecoder::next() {
    if (!error_.is_ok()) return error_;
    if (!header_) {
        if (buffered() < kFrameHeaderSize) return std::optional<Frame>();
        auto h = FrameHeader::decode(ByteView(buf_.data() + pos_, kFrameHeaderSize), max_payload_);
        if (!h) {
            error_ = h.status();
            return error_;
        }
        header_ = *h;
        pos_ += kFrameHeaderSize;
    }
    if (buffered() < header_->payload_length) return std::optional<Frame>();
    ByteView payload(buf_.data() + pos_, header_->payload_length);
    if (Status s = verify_payload(*header_, payload); !s) {
        error_ = s;
        return error_;
    }
    Frame f{header_->type, Bytes(payload.begin(), payload.end())};
    pos_ += header_->payload_length;
    header_.reset();
    if (pos_ == buf_.size()) {
        buf_.clear();
        pos_ = 0;
    }
    return std::optional<Frame>(std::move(f));
}

Status FrameDecoder::finish() const {
    if (!error_.is_ok()) return error_;
    if (header_)
        return Status::error(EPROTO, frame_prefix(header_->type) + "stream ended after " +
                                         std::to_string(buffered()) + " of " +
                                         std::to_string(header_->payload_length) + " payload bytes (truncated)");
    if (buffered() > 0)
        return Status::error(EPROTO, "stream ended inside a frame header (" + std::to_string(buffered()) +
                                         " of 24 bytes; truncated)");
    return Status::ok();
}

size_t FrameDecoder::bytes_wanted() const {
    if (!error_.is_ok()) return 0;
    if (!header_) return buffered() < kFrameHeaderSize ? kFrameHeaderSize - buffered() : 0;
    return buffered() < header_->payload_length ? header_->payload_length - buffered() : 0;
}

}  // namespace icbd::repl
