// The difference between two versions of an image: per file, what to create,
// delete or change, and which byte ranges of the child to send. On BTRFS it is
// computed from extent metadata (FIEMAP) without reading unchanged data; else
// from block hashes. See docs/image-layout.md, "Diff".
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "icbd/replicator/entry_attrs.hpp"
#include "icbd/status.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd::repl {

struct ByteRange {
    uint64_t offset = 0;
    uint64_t length = 0;
    uint64_t end() const { return offset + length; }
    friend bool operator==(const ByteRange&, const ByteRange&) = default;
};

enum class ChangeKind : uint8_t { added = 1, modified = 2, deleted = 3 };

// What differs in a `modified` entry (several may be set); informational: a
// receiver applies every attribute of a modified entry anyway.
enum ChangeBits : uint32_t {
    kChangedData = 1u << 0,    // data or holes ranges are not empty
    kChangedSize = 1u << 1,    // regular file resized
    kChangedMode = 1u << 2,    // permission bits (07777)
    kChangedOwner = 1u << 3,   // uid or gid
    kChangedMtime = 1u << 4,   // modification time
    kChangedTarget = 1u << 5,  // symlink target
};

// One change. For a regular file that is `added` or `modified`, the replica:
//   1. creates the file (added) or opens the parent's copy (modified),
//   2. ftruncate(size)            -- drops a shrunk tail, extends with a hole,
//   3. punches every `holes` range -- child holes where the base had data,
//   4. writes every `data` range with the child's bytes at the same offset,
//   5. sets mode, owner, mtime (mtime last).
// Ranges are sorted, disjoint, non-empty and inside [0, size). Any range of the
// child not covered by `data` or `holes` equals the parent's bytes there (or
// lies beyond the parent's size and is a hole in the child).
struct FileChange {
    std::string path;  // relative to the version root (see validate_relative_path)
    ChangeKind kind = ChangeKind::added;
    EntryAttrs attrs;         // the child's; for `deleted`, the parent's
    uint32_t changed = 0;     // ChangeBits, for `modified`
    std::vector<ByteRange> data;
    std::vector<ByteRange> holes;
    friend bool operator==(const FileChange&, const FileChange&) = default;
};

enum class DiffMethod : uint8_t {
    full = 1,    // no parent: everything is added; data = the child's allocated ranges
    fiemap = 2,  // both on one BTRFS filesystem: physical extents compared, no data read
    hash = 3,    // otherwise: xxh3_64 of fixed-size blocks of both files
};
const char* diff_method_name(DiffMethod m);  // "full", "fiemap", "hash"

struct DiffStats {
    uint64_t entries_child = 0;       // entries (files, dirs, symlinks) in the child
    uint64_t files_compared = 0;      // regular files present in both, with their extents/blocks compared
    uint64_t files_changed = 0;       // regular files with data or holes to apply (added included)
    uint64_t data_bytes = 0;          // sum of all data range lengths: what a sender must read and send
    uint64_t hole_bytes = 0;          // sum of all holes range lengths
    uint64_t extents_examined = 0;    // FIEMAP extents looked at (fiemap method)
    uint64_t bytes_hashed = 0;        // file bytes read to hash (hash method; 0 otherwise)
};

struct DiffOptions {
    // nullopt: fiemap when parent and child are on the same BTRFS filesystem,
    // hash otherwise (full when there is no parent, whatever is asked).
    std::optional<DiffMethod> method;
    uint32_t hash_block_size = 64 * 1024;  // hash method: power of two, >= 4096
};

// The diff, in the order a receiver applies it: first every `deleted` entry,
// deepest first (descending byte order of path, so children before their
// directory), then every `added`/`modified` entry in ascending byte order of
// path (a directory before its children). An entry whose type changed (file
// became a directory...) appears as a deletion and an addition of the same
// path. Directories' attributes (mtime) should be applied after their
// children, e.g. in a final pass in reverse order. Deterministic: the same two
// versions give the same list.
struct SnapshotDiff {
    DiffMethod method = DiffMethod::full;
    std::vector<FileChange> changes;
    DiffStats stats;
};

// Computes diff(parent, child). Both are version directories (the roots of the
// trees to compare); `parent` nullopt asks for a full copy. Hard links are
// seen as separate files; extended attributes are not compared; a FIFO,
// socket or device node, or a nested subvolume/mount, is an error (ENOTSUP)
// naming the path. Errors name the version directory and the path.
Result<SnapshotDiff> diff_versions(const std::optional<std::filesystem::path>& parent,
                                   const std::filesystem::path& child, const DiffOptions& options = {});

// Reads a child file's data ranges for a sender: each range exactly once, in
// pieces of at most `chunk` bytes, sequential read-ahead hinted.
class ChildFileReader {
public:
    // Opens `rel_path` beneath `version_dir` (no symlink followed).
    static Result<ChildFileReader> open(const std::filesystem::path& version_dir, std::string_view rel_path);

    // Calls sink(offset, bytes) for consecutive pieces of each range, in order.
    // Stops at the first sink error and returns it; a short file (EOF before a
    // range ends) is an error (the version was changed under us).
    using Sink = std::function<Status(uint64_t offset, std::span<const uint8_t> bytes)>;
    Status for_each_chunk(std::span<const ByteRange> ranges, size_t chunk, const Sink& sink);

    // Exactly buf.size() bytes at `offset` (EIO on a short read).
    Status read_at(uint64_t offset, std::span<uint8_t> buf) const;

    int fd() const { return fd_.get(); }
    const std::string& path() const { return path_; }
    uint64_t bytes_read() const { return bytes_read_; }

private:
    ChildFileReader(UniqueFd fd, std::string path)
        : fd_(std::move(fd)), path_(std::move(path)), quoted_path_("'" + path_ + "'") {}
    UniqueFd fd_;
    std::string path_;         // "<version_dir>/<rel>"
    std::string quoted_path_;  // for messages, made once: read_at runs per chunk
    mutable uint64_t bytes_read_ = 0;
};

}  // namespace icbd::repl
