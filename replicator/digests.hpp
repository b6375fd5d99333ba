// The end-of-version digest (docs/replication-protocol.md, section 8): the
// change chain over the change frames, the manifest hash over the entries of a
// version, and the digest D that END carries.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "icbd/replicator/entry_attrs.hpp"
#include "messages.hpp"

namespace icbd::repl {

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

// D = H("ICBDDIG1" || version || base || change_count || chain || entry_count || M).
uint64_t version_digest(uint64_t version, uint64_t base, uint64_t change_count, uint64_t chain,
                        uint64_t entry_count, uint64_t manifest_hash);

}  // namespace icbd::repl
