// Encoding, decoding and validation of the fourteen messages of the replication
// protocol; byte layouts and rules are those of docs/replication-protocol.md.
#include "messages.hpp"

#include <algorithm>

#include "icbd/replicator/host_port.hpp"
#include "icbd/replicator/image_path.hpp"
#include "name_rules.hpp"
#include "wire_bytes.hpp"

namespace icbd::repl {

using namespace wire;

namespace {

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

// ---- ROUTE, CHILDREN (version 2) ----

Status Route::validate() const {
    if (nodes.empty() || nodes.size() > kMaxRoute)
        return bad(kType, std::to_string(nodes.size()) + " nodes (1 .. " + std::to_string(kMaxRoute) + ")");
    for (size_t i = 0; i < nodes.size(); ++i) {
        if (Status s = in_frame(kType, validate_node_name(nodes[i])); !s) return s;
        for (size_t j = 1; j < i; ++j)  // the master (first) may share a relay's name
            if (nodes[j] == nodes[i]) return bad(kType, "node '" + nodes[i] + "' twice (a cycle)");
    }
    return Status::ok();
}

void Route::encode_payload(Bytes& out) const {
    put_u16(out, static_cast<uint16_t>(nodes.size()));
    for (const auto& n : nodes) put_str16(out, n);
}

Result<Route> Route::decode(ByteView p) {
    Reader r(p, kType);
    Route m;
    uint16_t n = 0;
    if (r.u16(n, "count")) {
        if (n == 0 || n > kMaxRoute) return bad(kType, std::to_string(n) + " nodes (1 .. " + std::to_string(kMaxRoute) + ")");
        m.nodes.resize(n);
        for (uint16_t i = 0; i < n && r.str16(m.nodes[i], "nodes"); ++i) {
        }
    }
    return finish_decode(std::move(m), r);
}

std::string Route::text() const {
    std::string t;
    for (const auto& n : nodes) t += (t.empty() ? "" : " -> ") + n;
    return t;
}

Status Children::validate() const {
    if (children.empty() || children.size() > kMaxRelayChildren)
        return bad(kType, std::to_string(children.size()) + " children (1 .. " + std::to_string(kMaxRelayChildren) + ")");
    for (const auto& c : children) {
        if (c.address.empty() || c.address.size() > kMaxChildAddress)
            return bad(kType, "child address of " + std::to_string(c.address.size()) + " bytes (1 .. " +
                                  std::to_string(kMaxChildAddress) + ")");
        if (auto hp = parse_host_port(c.address); !hp) return bad(kType, hp.status().message());
        if (Status s = in_frame(kType, validate_node_name(c.node_name)); !s) return s;
    }
    return Status::ok();
}

void Children::encode_payload(Bytes& out) const {
    put_u16(out, static_cast<uint16_t>(children.size()));
    for (const auto& c : children) {
        put_str16(out, c.address);
        put_str16(out, c.node_name);
    }
}

Result<Children> Children::decode(ByteView p) {
    Reader r(p, kType);
    Children m;
    uint16_t n = 0;
    if (r.u16(n, "count")) {
        if (n == 0 || n > kMaxRelayChildren)
            return bad(kType, std::to_string(n) + " children (1 .. " + std::to_string(kMaxRelayChildren) + ")");
        m.children.resize(n);
        for (uint16_t i = 0; i < n && r.str16(m.children[i].address, "address") &&
                             r.str16(m.children[i].node_name, "node_name");
             ++i) {
        }
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
    put_u16(out, static_cast<uint16_t>(code));
    put_u64(out, version);
    put_str16(out, image);
    put_str16(out, message);
}

Result<PushResult> PushResult::decode(ByteView p) {
    Reader r(p, kType);
    PushResult m;
    uint16_t code = 0;
    r.u16(code, "code") && r.u64(m.version, "version") && r.str16(m.image, "image") && r.str16(m.message, "message");
    m.code = static_cast<ErrorCode>(code);  // any value: an unknown code is reported as its number
    return finish_decode(std::move(m), r);
}

Status Error::validate() const {
    if (code == ErrorCode::ok) return bad(kType, "code 0 (ok) in an ERROR frame");
    return check_message(kType, message);
}

void Error::encode_payload(Bytes& out) const {
    put_u16(out, static_cast<uint16_t>(code));
    put_str16(out, message);
}

Result<Error> Error::decode(ByteView p) {
    Reader r(p, kType);
    Error m;
    uint16_t code = 0;
    r.u16(code, "code") && r.str16(m.message, "message");
    m.code = static_cast<ErrorCode>(code);  // any value but ok (validate())
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
    case FrameType::route: return wrap(Route::decode(p));
    case FrameType::children: return wrap(Children::decode(p));
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

}  // namespace icbd::repl
