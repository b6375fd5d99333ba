// The end-of-version digest (docs/replication-protocol.md, section 8): the
// change chain, the manifest hash and the digest that binds them.
#include "digests.hpp"

#include "icbd/checksum.hpp"
#include "icbd/replicator/image_path.hpp"
#include "name_rules.hpp"
#include "wire_bytes.hpp"

namespace icbd::repl {

using namespace wire;

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
