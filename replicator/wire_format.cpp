// Encoding, decoding and validation of replication frames and messages, and
// the end-of-version digest; byte layouts are those of docs/replication-protocol.md.
#include "icbd/replicator/wire_format.hpp"

#include <cstdio>
#include <cstring>
#include <iterator>

#include "icbd/checksum.hpp"
#include "icbd/endian.hpp"
#include "icbd/replicator/image_path.hpp"

namespace icbd::repl {
namespace {

// ---- little-endian writing and reading ----

void put_u8(Bytes& out, uint8_t v) { out.push_back(v); }
void put_u16(Bytes& out, uint16_t v) {
    uint8_t b[2];
    store_le16(b, v);
    out.insert(out.end(), b, b + 2);
}
void put_u32(Bytes& out, uint32_t v) {
    uint8_t b[4];
    store_le32(b, v);
    out.insert(out.end(), b, b + 4);
}
void put_u64(Bytes& out, uint64_t v) {
    uint8_t b[8];
    store_le64(b, v);
    out.insert(out.end(), b, b + 8);
}
// Callers validated the length (<= 4096 < 65536).
void put_str16(Bytes& out, std::string_view s) {
    put_u16(out, static_cast<uint16_t>(s.size()));
    out.insert(out.end(), s.begin(), s.end());
}

std::string frame_prefix(FrameType t) { return std::string(frame_type_name(t)) + " frame: "; }

// Reads fields in order; the first missing field makes the reader fail and is
// named by finish(), as are bytes left over.
class Reader {
public:
    Reader(ByteView b, FrameType t) : b_(b), type_(t) {}

    bool u8(uint8_t& v, const char* field) {
        if (!need(1, field)) return false;
        v = b_[pos_++];
        return true;
    }
    bool u16(uint16_t& v, const char* field) {
        if (!need(2, field)) return false;
        v = load_le16(b_.data() + pos_);
        pos_ += 2;
        return true;
    }
    bool u32(uint32_t& v, const char* field) {
        if (!need(4, field)) return false;
        v = load_le32(b_.data() + pos_);
        pos_ += 4;
        return true;
    }
    bool u64(uint64_t& v, const char* field) {
        if (!need(8, field)) return false;
        v = load_le64(b_.data() + pos_);
        pos_ += 8;
        return true;
    }
    bool i64(int64_t& v, const char* field) {
        uint64_t u;
        if (!u64(u, field)) return false;
        v = static_cast<int64_t>(u);
        return true;
    }
    bool str16(std::string& s, const char* field) {
        uint16_t n;
        if (!u16(n, field) || !need(n, field)) return false;
        s.assign(reinterpret_cast<const char*>(b_.data() + pos_), n);
        pos_ += n;
        return true;
    }
    bool bytes(size_t n, const uint8_t*& p, const char* field) {
        if (!need(n, field)) return false;
        p = b_.data() + pos_;
        pos_ += n;
        return true;
    }
    size_t remaining() const { return failed_ ? 0 : b_.size() - pos_; }
    ByteView rest() {
        ByteView r = failed_ ? ByteView() : b_.subspan(pos_);
        pos_ = b_.size();
        return r;
    }
    Status finish() const {
        if (failed_)
            return Status::error(EPROTO, frame_prefix(type_) + "truncated at field '" + field_ + "' (payload of " +
                                             std::to_string(b_.size()) + " bytes)");
        if (pos_ != b_.size())
            return Status::error(EPROTO, frame_prefix(type_) + std::to_string(b_.size() - pos_) + " trailing bytes");
        return Status::ok();
    }

private:
    bool need(size_t n, const char* field) {
        if (failed_) return false;
        if (b_.size() - pos_ < n) {
            failed_ = true;
            field_ = field;
            return false;
        }
        return true;
    }
    ByteView b_;
    FrameType type_;
    size_t pos_ = 0;
    bool failed_ = false;
    std::string field_;
};

// A hostile name stays readable in a message: control bytes escaped, long cut.
std::string quote_name(std::string_view s) {
    std::string out = "'";
    for (char c : s.substr(0, 200)) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            out += "\\x";
            out += hex[u >> 4];
            out += hex[u & 0xf];
        } else {
            out += c;
        }
    }
    if (s.size() > 200) out += "...";
    return out + "'";
}

Status bad(FrameType t, const std::string& why) { return Status::error(EPROTO, frame_prefix(t) + why); }

// A failing name check keeps its code (EINVAL: bad_name) and gains the frame.
Status in_frame(FrameType t, Status s) {
    if (s) return s;
    return Status::error(s.code(), frame_prefix(t) + s.message());
}

Status check_seq(FrameType t, uint64_t seq) { return seq == 0 ? bad(t, "sequence number 0 (they start at 1)") : Status::ok(); }

Status check_range(FrameType t, uint64_t offset, uint64_t length) {
    if (offset > kMaxFileSize || length > kMaxFileSize - offset)
        return bad(t, "offset " + std::to_string(offset) + " + length " + std::to_string(length) +
                          " overflows the largest file offset 2^63-1");
    return Status::ok();
}

Status check_message(FrameType t, std::string_view m) {
    if (m.size() > kMaxMessage)
        return bad(t, "message of " + std::to_string(m.size()) + " bytes is longer than " + std::to_string(kMaxMessage));
    if (m.find('\0') != std::string_view::npos) return bad(t, "message contains a NUL byte");
    return Status::ok();
}

template <typename M>
Result<M> finish_decode(M m, const Reader& r) {
    if (Status s = r.finish(); !s) return s;
    if (Status s = m.validate(); !s) return s;
    return m;
}

}  // namespace

// ---- frame types and codes ----

bool is_known_frame_type(uint8_t t) {
    switch (static_cast<FrameType>(t)) {
    case FrameType::hello:
    case FrameType::offer:
    case FrameType::need:
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

std::string error_code_name(uint16_t code) {
    static const char* const names[] = {"ok",           "protocol", "unsupported_version", "not_newer", "unknown_base",
                                        "digest_mismatch", "io_error", "no_space",          "bad_name",  "busy",
                                        "refused",      "internal", "cancelled"};
    if (code < std::size(names)) return names[code];
    return "error " + std::to_string(code);
}

ErrorCode error_code_for(const Status& s) {
    switch (s.code()) {
    case 0: return ErrorCode::ok;
    case EINVAL: return ErrorCode::bad_name;
    case ENOSPC:
    case EDQUOT: return ErrorCode::no_space;
    case EBADMSG:
    case EMSGSIZE:
    case EPROTO: return ErrorCode::protocol;
    default: return ErrorCode::io_error;
    }
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

// ---- names ----

Status validate_symlink_target(std::string_view link_path, std::string_view target) {
    auto fail = [&](const std::string& why) {
        return Status::error(EINVAL, "symlink " + quote_name(link_path) + " -> " + quote_name(target) + ": " + why);
    };
    if (target.empty()) return fail("empty target");
    if (target.size() > kMaxSymlinkTarget) return fail("target longer than 4095 bytes");
    if (target.find('\0') != std::string_view::npos) return fail("target contains a NUL byte");
    if (target[0] == '/') return fail("absolute target (it would leave the version root)");
    // Depth of the link's directory below the root, then walk the target.
    int64_t depth = static_cast<int64_t>(std::count(link_path.begin(), link_path.end(), '/'));
    size_t pos = 0;
    while (pos <= target.size()) {
        size_t slash = target.find('/', pos);
        std::string_view comp = target.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
        if (comp == "..") {
            if (--depth < 0) return fail("target leaves the version root");
        } else if (!comp.empty() && comp != ".") {
            ++depth;
        }
        if (slash == std::string_view::npos) break;
        pos = slash + 1;
    }
    return Status::ok();
}

Status validate_node_name(std::string_view name) {
    if (name.empty()) return Status::error(EINVAL, "node name is empty");
    if (name.size() > kMaxNodeName) return Status::error(EINVAL, "node name " + quote_name(name) + " is longer than 64 bytes");
    for (char c : name)
        if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e)
            return Status::error(EINVAL, "node name " + quote_name(name) + " has a byte outside printable ASCII");
    return Status::ok();
}

std::string clamp_message(std::string_view message) {
    std::string m(message.substr(0, kMaxMessage));
    std::replace(m.begin(), m.end(), '\0', '?');
    return m;
}

// ---- HELLO ----

Status Hello::validate() const {
    constexpr FrameType t = kType;
    if (min_version == 0 || max_version < min_version)
        return bad(t, "version range " + std::to_string(min_version) + ".." + std::to_string(max_version) + " is empty");
    if (role != Role::sender && role != Role::receiver)
        return bad(t, "role " + std::to_string(static_cast<unsigned>(role)) + " is neither sender (1) nor receiver (2)");
    return in_frame(t, validate_node_name(node_name));
}

void Hello::encode_payload(Bytes& out) const {
    out.insert(out.end(), kHelloMagic.begin(), kHelloMagic.end());
    put_u16(out, min_version);
    put_u16(out, max_version);
    put_u8(out, static_cast<uint8_t>(role));
    put_u8(out, 0);
    put_u32(out, capabilities);
    put_str16(out, node_name);
}

Result<Hello> Hello::decode(ByteView p) {
    Reader r(p, kType);
    Hello m;
    const uint8_t* magic = nullptr;
    uint8_t role = 0, reserved = 0;
    r.bytes(8, magic, "magic") && r.u16(m.min_version, "min_version") && r.u16(m.max_version, "max_version") &&
        r.u8(role, "role") && r.u8(reserved, "reserved") && r.u32(m.capabilities, "capabilities") &&
        r.str16(m.node_name, "node_name");
    if (Status s = r.finish(); !s) return s;
    if (!std::equal(kHelloMagic.begin(), kHelloMagic.end(), magic)) return bad(kType, "bad magic (not an icbd-replicate peer)");
    if (reserved != 0) return bad(kType, "reserved byte set");
    m.role = static_cast<Role>(role);
    if (Status s = m.validate(); !s) return s;
    return m;
}

Result<uint16_t> negotiate_version(const Hello& ours, const Hello& theirs) {
    uint16_t v = std::min(ours.max_version, theirs.max_version);
    if (v < std::max(ours.min_version, theirs.min_version))
        return Status::error(EPROTO, "no common protocol version: we speak " + std::to_string(ours.min_version) + ".." +
                                         std::to_string(ours.max_version) + ", peer '" + clamp_message(theirs.node_name) +
                                         "' speaks " + std::to_string(theirs.min_version) + ".." +
                                         std::to_string(theirs.max_version));
    return v;
}

// ---- OFFER ----

Status Offer::validate() const {
    constexpr FrameType t = kType;
    if (Status s = in_frame(t, validate_image_name(image)); !s) return s;
    if (version == 0) return bad(t, "image " + quote_name(image) + ": version 0 (versions start at 1)");
    if (held.size() > kMaxHeldVersions)
        return bad(t, "image " + quote_name(image) + ": " + std::to_string(held.size()) + " held versions (at most 65536)");
    for (size_t i = 0; i < held.size(); ++i) {
        if (held[i] == 0) return bad(t, "image " + quote_name(image) + ": held version 0");
        if (i > 0 && held[i] <= held[i - 1])
            return bad(t, "image " + quote_name(image) + ": held versions not strictly increasing at " +
                              std::to_string(held[i]));
    }
    return Status::ok();
}

void Offer::encode_payload(Bytes& out) const {
    put_u64(out, version);
    put_u64(out, total_size);
    put_u64(out, entry_count);
    put_u32(out, static_cast<uint32_t>(held.size()));
    for (uint64_t v : held) put_u64(out, v);
    put_str16(out, image);
}

Result<Offer> Offer::decode(ByteView p) {
    Reader r(p, kType);
    Offer m;
    uint32_t n = 0;
    if (r.u64(m.version, "version") && r.u64(m.total_size, "total_size") && r.u64(m.entry_count, "entry_count") &&
        r.u32(n, "held_count")) {
        // Check the count before allocating for it.
        if (n > kMaxHeldVersions) return bad(kType, std::to_string(n) + " held versions (at most 65536)");
        if (r.remaining() / 8 < n)
            return bad(kType, "truncated at field 'held' (" + std::to_string(n) + " versions announced)");
        m.held.resize(n);
        for (uint32_t i = 0; i < n && r.u64(m.held[i], "held"); ++i) {
        }
        r.str16(m.image, "image");
    }
    return finish_decode(std::move(m), r);
}

// ---- NEED ----

Status Need::validate() const {
    constexpr FrameType t = kType;
    if (Status s = in_frame(t, validate_image_name(image)); !s) return s;
    std::string what = "image " + quote_name(image) + " version " + std::to_string(version) + ": ";
    if (version == 0) return bad(t, what + "version 0");
    switch (kind) {
    case NeedKind::nothing:
        if (base != 0 || resume_seq != 0 || resume_chain != 0) return bad(t, what + "'nothing' with a base or resume point");
        break;
    case NeedKind::incremental:
        if (base == 0 || base >= version)
            return bad(t, what + "incremental base " + std::to_string(base) + " is not older than the version");
        break;
    case NeedKind::full:
        if (base != 0) return bad(t, what + "full copy with base " + std::to_string(base));
        break;
    default: return bad(t, what + "unknown kind " + std::to_string(static_cast<unsigned>(kind)));
    }
    if (resume_seq == 0 && resume_chain != 0) return bad(t, what + "resume chain without a resume point");
    return Status::ok();
}

Status Need::check_against(const Offer& offer) const {
    if (image != offer.image || version != offer.version)
        return bad(kType, "answers image " + quote_name(image) + " version " + std::to_string(version) + ", offered was " +
                              quote_name(offer.image) + " version " + std::to_string(offer.version));
    if (kind == NeedKind::incremental && !std::binary_search(offer.held.begin(), offer.held.end(), base))
        return Status::error(ENOENT, frame_prefix(kType) + "image " + quote_name(image) + " version " +
                                         std::to_string(version) + ": base " + std::to_string(base) +
                                         " is not among the offered versions");
    return Status::ok();
}

void Need::encode_payload(Bytes& out) const {
    put_u64(out, version);
    put_u8(out, static_cast<uint8_t>(kind));
    put_u64(out, base);
    put_u64(out, resume_seq);
    put_u64(out, resume_chain);
    put_str16(out, image);
}

Result<Need> Need::decode(ByteView p) {
    Reader r(p, kType);
    Need m;
    uint8_t kind = 0;
    r.u64(m.version, "version") && r.u8(kind, "kind") && r.u64(m.base, "base") && r.u64(m.resume_seq, "resume_seq") &&
        r.u64(m.resume_chain, "resume_chain") && r.str16(m.image, "image");
    m.kind = static_cast<NeedKind>(kind);  // validate() refuses unknown values
    return finish_decode(std::move(m), r);
}

std::optional<Need> choose_need(const Offer& offer, std::span<const uint64_t> published) {
    Need n;
    n.image = offer.image;
    n.version = offer.version;
    uint64_t common = 0;
    for (uint64_t v : published) {
        if (v == offer.version) return n;  // kind nothing
    }
    for (uint64_t v : published) {
        if (v > offer.version) return std::nullopt;
        if (v > common && std::binary_search(offer.held.begin(), offer.held.end(), v)) common = v;
    }
    n.kind = common ? NeedKind::incremental : NeedKind::full;
    n.base = common;
    return n;
}

// ---- FILE ----

Status FileEntry::validate() const {
    constexpr FrameType t = kType;
    if (Status s = check_seq(t, seq); !s) return s;
    if (Status s = in_frame(t, validate_relative_path(path)); !s) return s;
    std::string what = "path " + quote_name(path) + ": ";
    if ((attrs.mode & ~07777u) != 0) return bad(t, what + "mode has bits beyond 07777");
    if (attrs.mtime_nsec >= 1000000000u) return bad(t, what + "mtime nanoseconds out of range");
    switch (attrs.type) {
    case EntryType::regular:
        if (attrs.size > kMaxFileSize) return bad(t, what + "size above 2^63-1");
        if (!attrs.symlink_target.empty()) return bad(t, what + "regular file with a symlink target");
        break;
    case EntryType::directory:
        if (attrs.size != 0 || !attrs.symlink_target.empty()) return bad(t, what + "directory with a size or target");
        break;
    case EntryType::symlink:
        if (attrs.size != 0) return bad(t, what + "symlink with a size");
        return in_frame(t, validate_symlink_target(path, attrs.symlink_target));
    default: return bad(t, what + "unknown entry type " + std::to_string(static_cast<unsigned>(attrs.type)));
    }
    return Status::ok();
}

void FileEntry::encode_payload(Bytes& out) const {
    put_u64(out, seq);
    put_u8(out, static_cast<uint8_t>(attrs.type));
    put_u32(out, attrs.mode);
    put_u32(out, attrs.uid);
    put_u32(out, attrs.gid);
    put_u64(out, static_cast<uint64_t>(attrs.mtime_sec));
    put_u32(out, attrs.mtime_nsec);
    put_u64(out, attrs.size);
    put_str16(out, path);
    put_str16(out, attrs.symlink_target);
}

Result<FileEntry> FileEntry::decode(ByteView p) {
    Reader r(p, kType);
    FileEntry m;
    uint8_t type = 0;
    r.u64(m.seq, "seq") && r.u8(type, "type") && r.u32(m.attrs.mode, "mode") && r.u32(m.attrs.uid, "uid") &&
        r.u32(m.attrs.gid, "gid") && r.i64(m.attrs.mtime_sec, "mtime_sec") && r.u32(m.attrs.mtime_nsec, "mtime_nsec") &&
        r.u64(m.attrs.size, "size") && r.str16(m.path, "path") && r.str16(m.attrs.symlink_target, "target");
    m.attrs.type = static_cast<EntryType>(type);  // validate() refuses unknown values
    return finish_decode(std::move(m), r);
}

// ---- DATA ----

Status Data::validate() const {
    constexpr FrameType t = kType;
    if (Status s = check_seq(t, seq); !s) return s;
    if (Status s = in_frame(t, validate_relative_path(path)); !s) return s;
    std::string what = "path " + quote_name(path) + " offset " + std::to_string(offset) + ": ";
    if (length == 0 || length > kChunkSize)
        return bad(t, what + "length " + std::to_string(length) + " is not in 1.." + std::to_string(kChunkSize));
    if (Status s = check_range(t, offset, length); !s) return s;
    switch (compression) {
    case Compression::none:
        if (bytes.size() != length)
            return bad(t, what + std::to_string(bytes.size()) + " bytes of uncompressed data for length " +
                              std::to_string(length));
        break;
    case Compression::lz4:
    case Compression::zstd:
        if (bytes.empty() || bytes.size() >= length)
            return bad(t, what + std::string(compression_name(compression)) + " chunk of " +
                              std::to_string(bytes.size()) + " bytes for length " + std::to_string(length) +
                              " (must be 1 .. length-1)");
        break;
    default: return bad(t, what + "unknown compression " + std::to_string(static_cast<unsigned>(compression)));
    }
    return Status::ok();
}

void Data::encode_payload(Bytes& out) const {
    put_u64(out, seq);
    put_u64(out, offset);
    put_u32(out, length);
    put_u8(out, static_cast<uint8_t>(compression));
    put_str16(out, path);
    out.insert(out.end(), bytes.begin(), bytes.end());
}

Result<Data> Data::decode(ByteView p) {
    Reader r(p, kType);
    Data m;
    uint8_t c = 0;
    if (r.u64(m.seq, "seq") && r.u64(m.offset, "offset") && r.u32(m.length, "length") && r.u8(c, "compression") &&
        r.str16(m.path, "path"))
        m.bytes = r.rest();
    m.compression = static_cast<Compression>(c);  // validate() refuses unknown values
    return finish_decode(std::move(m), r);
}

bool Data::operator==(const Data& o) const {
    return seq == o.seq && offset == o.offset && length == o.length && compression == o.compression &&
           path == o.path && std::equal(bytes.begin(), bytes.end(), o.bytes.begin(), o.bytes.end());
}

// ---- HOLE, TRUNCATE, DELETE ----

Status Hole::validate() const {
    constexpr FrameType t = kType;
    if (Status s = check_seq(t, seq); !s) return s;
    if (Status s = in_frame(t, validate_relative_path(path)); !s) return s;
    if (length == 0) return bad(t, "path " + quote_name(path) + ": empty hole");
    return check_range(t, offset, length);
}

void Hole::encode_payload(Bytes& out) const {
    put_u64(out, seq);
    put_u64(out, offset);
    put_u64(out, length);
    put_str16(out, path);
}

Result<Hole> Hole::decode(ByteView p) {
    Reader r(p, kType);
    Hole m;
    r.u64(m.seq, "seq") && r.u64(m.offset, "offset") && r.u64(m.length, "length") && r.str16(m.path, "path");
    return finish_decode(std::move(m), r);
}

Status Truncate::validate() const {
    constexpr FrameType t = kType;
    if (Status s = check_seq(t, seq); !s) return s;
    if (Status s = in_frame(t, validate_relative_path(path)); !s) return s;
    if (size > kMaxFileSize) return bad(t, "path " + quote_name(path) + ": size above 2^63-1");
    return Status::ok();
}

void Truncate::encode_payload(Bytes& out) const {
    put_u64(out, seq);
    put_u64(out, size);
    put_str16(out, path);
}

Result<Truncate> Truncate::decode(ByteView p) {
    Reader r(p, kType);
    Truncate m;
    r.u64(m.seq, "seq") && r.u64(m.size, "size") && r.str16(m.path, "path");
    return finish_decode(std::move(m), r);
}

Status Delete::validate() const {
    if (Status s = check_seq(kType, seq); !s) return s;
    return in_frame(kType, validate_relative_path(path));
}

void Delete::encode_payload(Bytes& out) const {
    put_u64(out, seq);
    put_str16(out, path);
}

Result<Delete> Delete::decode(ByteView p) {
    Reader r(p, kType);
    Delete m;
    r.u64(m.seq, "seq") && r.str16(m.path, "path");
    return finish_decode(std::move(m), r);
}

// ---- CHECKPOINT, CHECKPOINT_ACK, END ----

void Checkpoint::encode_payload(Bytes& out) const { put_u64(out, seq); }

Result<Checkpoint> Checkpoint::decode(ByteView p) {
    Reader r(p, kType);
    Checkpoint m;
    r.u64(m.seq, "seq");
    return finish_decode(m, r);
}

void CheckpointAck::encode_payload(Bytes& out) const {
    put_u64(out, seq);
    put_u64(out, chain);
}

Result<CheckpointAck> CheckpointAck::decode(ByteView p) {
    Reader r(p, kType);
    CheckpointAck m;
    r.u64(m.seq, "seq") && r.u64(m.chain, "chain");
    return finish_decode(m, r);
}

void End::encode_payload(Bytes& out) const {
    put_u64(out, change_count);
    put_u64(out, chain);
    put_u64(out, entry_count);
    put_u64(out, manifest_hash);
    put_u64(out, digest);
}

Result<End> End::decode(ByteView p) {
    Reader r(p, kType);
    End m;
    r.u64(m.change_count, "change_count") && r.u64(m.chain, "chain") && r.u64(m.entry_count, "entry_count") &&
        r.u64(m.manifest_hash, "manifest_hash") && r.u64(m.digest, "digest");
    return finish_decode(m, r);
}

// ---- RESULT, ERROR ----

Status PushResult::validate() const {
    constexpr FrameType t = kType;
    if (Status s = in_frame(t, validate_image_name(image)); !s) return s;
    if (version == 0) return bad(t, "image " + quote_name(image) + ": version 0");
    return check_message(t, message);
}

void PushResult::encode_payload(Bytes& out) const {
    put_u16(out, code);
    put_u64(out, version);
    put_str16(out, image);
    put_str16(out, message);
}

Result<PushResult> PushResult::decode(ByteView p) {
    Reader r(p, kType);
    PushResult m;
    r.u16(m.code, "code") && r.u64(m.version, "version") && r.str16(m.image, "image") && r.str16(m.message, "message");
    return finish_decode(std::move(m), r);
}

Status Error::validate() const {
    if (code == 0) return bad(kType, "code 0 (ok) in an ERROR frame");
    return check_message(kType, message);
}

void Error::encode_payload(Bytes& out) const {
    put_u16(out, code);
    put_str16(out, message);
}

Result<Error> Error::decode(ByteView p) {
    Reader r(p, kType);
    Error m;
    r.u16(m.code, "code") && r.str16(m.message, "message");
    return finish_decode(std::move(m), r);
}

// ---- any message ----

Result<Message> decode_message(const Frame& f) {
    auto wrap = [](auto r) -> Result<Message> {
        if (!r) return r.status();
        return Message(std::move(r.value()));
    };
    ByteView p(f.payload);
    switch (f.type) {
    case FrameType::hello: return wrap(Hello::decode(p));
    case FrameType::offer: return wrap(Offer::decode(p));
    case FrameType::need: return wrap(Need::decode(p));
    case FrameType::file: return wrap(FileEntry::decode(p));
    case FrameType::data: return wrap(Data::decode(p));
    case FrameType::hole: return wrap(Hole::decode(p));
    case FrameType::truncate: return wrap(Truncate::decode(p));
    case FrameType::del: return wrap(Delete::decode(p));
    case FrameType::checkpoint: return wrap(Checkpoint::decode(p));
    case FrameType::checkpoint_ack: return wrap(CheckpointAck::decode(p));
    case FrameType::end: return wrap(End::decode(p));
    case FrameType::result: return wrap(PushResult::decode(p));
    case FrameType::error: return wrap(Error::decode(p));
    }
    return Status::error(EPROTO, "unknown frame type " + std::to_string(static_cast<unsigned>(f.type)));
}

// ---- digest ----

Status ChangeChain::add_record(FrameType type, uint64_t seq, const Bytes& logical) {
    if (seq != seq_ + 1)
        return Status::error(EPROTO, frame_prefix(type) + "sequence number " + std::to_string(seq) + " where " +
                                         std::to_string(seq_ + 1) + " was expected");
    Bytes rec;
    rec.reserve(9 + logical.size());
    put_u64(rec, value_);
    put_u8(rec, static_cast<uint8_t>(type));
    rec.insert(rec.end(), logical.begin(), logical.end());
    value_ = xxh3_64(rec.data(), rec.size());
    seq_ = seq;
    return Status::ok();
}

template <typename M>
static Bytes payload_of(const M& m) {
    Bytes b;
    m.encode_payload(b);
    return b;
}

Status ChangeChain::add(const FileEntry& m) { return add_record(m.kType, m.seq, payload_of(m)); }
Status ChangeChain::add(const Hole& m) { return add_record(m.kType, m.seq, payload_of(m)); }
Status ChangeChain::add(const Truncate& m) { return add_record(m.kType, m.seq, payload_of(m)); }
Status ChangeChain::add(const Delete& m) { return add_record(m.kType, m.seq, payload_of(m)); }

Status ChangeChain::add(const Data& m, uint64_t uncompressed_xxh3) {
    Bytes l;
    put_u64(l, m.seq);
    put_u64(l, m.offset);
    put_u32(l, m.length);
    put_str16(l, m.path);
    put_u64(l, uncompressed_xxh3);
    return add_record(m.kType, m.seq, l);
}

Status ManifestHasher::add(std::string_view path, const EntryAttrs& a) {
    if (Status s = validate_relative_path(path); !s) return Status::error(s.code(), "manifest: " + s.message());
    if (count_ > 0 && !(std::string_view(last_) < path))
        return Status::error(EPROTO, "manifest: path " + quote_name(path) + " does not sort after " + quote_name(last_));
    bool is_link = a.type == EntryType::symlink;
    Bytes rec;
    rec.reserve(48 + path.size() + a.symlink_target.size());
    put_u64(rec, value_);
    put_u8(rec, static_cast<uint8_t>(a.type));
    put_u32(rec, is_link ? 0 : a.mode & 07777);
    put_u32(rec, a.uid);
    put_u32(rec, a.gid);
    put_u64(rec, a.type == EntryType::regular ? a.size : 0);
    put_u64(rec, static_cast<uint64_t>(a.mtime_sec));
    put_u32(rec, a.mtime_nsec);
    put_str16(rec, path);
    put_str16(rec, is_link ? std::string_view(a.symlink_target) : std::string_view());
    value_ = xxh3_64(rec.data(), rec.size());
    last_.assign(path);
    ++count_;
    return Status::ok();
}

Result<EntryAttrs> entry_attrs_from_stat(std::string_view path, const struct ::stat& st, std::string symlink_target) {
    EntryAttrs a;
    if (S_ISREG(st.st_mode)) {
        a.type = EntryType::regular;
        a.size = static_cast<uint64_t>(st.st_size);
    } else if (S_ISDIR(st.st_mode)) {
        a.type = EntryType::directory;
    } else if (S_ISLNK(st.st_mode)) {
        a.type = EntryType::symlink;
        a.symlink_target = std::move(symlink_target);
    } else {
        char mode[16];
        snprintf(mode, sizeof mode, "0%o", static_cast<unsigned>(st.st_mode));
        return Status::error(ENOTSUP, "path " + quote_name(path) + ": not a regular file, directory or symlink (mode " +
                                          mode + "); cannot be replicated");
    }
    a.mode = st.st_mode & 07777;
    a.uid = st.st_uid;
    a.gid = st.st_gid;
    a.mtime_sec = st.st_mtim.tv_sec;
    a.mtime_nsec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
    return a;
}

uint64_t version_digest(uint64_t version, uint64_t base, uint64_t change_count, uint64_t chain, uint64_t entry_count,
                        uint64_t manifest_hash) {
    Bytes b;
    b.reserve(56);
    const char tag[] = "ICBDDIG1";
    b.insert(b.end(), tag, tag + 8);
    for (uint64_t v : {version, base, change_count, chain, entry_count, manifest_hash}) put_u64(b, v);
    return xxh3_64(b.data(), b.size());
}

}  // namespace icbd::repl
