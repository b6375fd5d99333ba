// The change stream of a push (docs/replication-protocol.md, 5.1) as a plan:
// every change frame of diff(base -> version) in protocol order, before any
// data is read. Deterministic: what the stream is, whoever receives it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "icbd/replicator/entry_attrs.hpp"
#include "icbd/replicator/protocol.hpp"
#include "icbd/replicator/snapshot_diff.hpp"
#include "icbd/status.hpp"

namespace icbd::repl {

struct PlannedChange {
    FrameType type = FrameType::file;
    std::string path;
    uint64_t offset = 0;  // DATA, HOLE
    uint64_t length = 0;  // DATA, HOLE; TRUNCATE: the size
    EntryAttrs attrs;     // FILE
};
// The change frames of diff(base -> child) in protocol order; the index + 1 is
// the seq. `child` is the new version's directory (for the attributes of
// unchanged directories whose contents changed).
Result<std::vector<PlannedChange>> plan_change_stream(const SnapshotDiff& diff, const std::filesystem::path& child);

}  // namespace icbd::repl
