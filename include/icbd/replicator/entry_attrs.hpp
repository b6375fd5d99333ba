// The attributes of one entry of a version (file, directory or symlink) as a
// replica must reproduce them: what the diff compares, FILE frames carry and the
// manifest hashes.
#pragma once

#include <cstdint>
#include <string>

namespace icbd::repl {

enum class EntryType : uint8_t { regular = 1, directory = 2, symlink = 3 };

struct EntryAttrs {
    EntryType type = EntryType::regular;
    uint32_t mode = 0;  // permission bits only (st_mode & 07777)
    uint32_t uid = 0;
    uint32_t gid = 0;
    int64_t mtime_sec = 0;
    uint32_t mtime_nsec = 0;
    uint64_t size = 0;           // regular file: its size; otherwise 0
    std::string symlink_target;  // symlink only (any bytes but NUL, <= 4095)
    friend bool operator==(const EntryAttrs&, const EntryAttrs&) = default;
};

}  // namespace icbd::repl
