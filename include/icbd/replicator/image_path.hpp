// Names inside an image repository: validation of image names, version names and
// the relative paths of files inside a version, and opening such paths beneath a
// directory without ever leaving it (through "..", absolute paths or symlinks).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "icbd/status.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd::repl {

inline constexpr size_t kMaxImageNameLength = 64;
inline constexpr size_t kMaxRelativePathLength = 4096;

// An image name: 1..64 characters of [A-Za-z0-9._-], not starting with '.'
// (so ".", ".." and the hidden ".staging" can never be images). EINVAL otherwise,
// with a message that quotes the name and says what is wrong.
Status validate_image_name(std::string_view name);

// A path of a file inside a version: relative ("a/b/c"), '/'-separated, at most
// 4096 bytes, no NUL, no empty component (so no leading, trailing or doubled
// '/'), no "." or ".." component. EINVAL otherwise.
Status validate_relative_path(std::string_view path);

// Version directory names are canonical decimal u64 >= 1 ("7", never "07",
// "+7" or "0"): version 0 means "no version" (a full copy has base 0).
std::optional<uint64_t> parse_version(std::string_view name);
std::string version_name(uint64_t version);

// How open_beneath resolves a path. `automatic` uses openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) and falls back to `walk` when the
// kernel has no openat2 (ENOSYS) or refuses it (seccomp: EPERM). `walk` opens
// one component at a time with O_NOFOLLOW: as safe for validated paths (they
// hold no ".."), one system call per component.
enum class ResolveMethod { automatic, openat2, walk };

// True when this kernel (and seccomp policy) lets us use openat2.
bool openat2_available();

// Opens `rel` (validated first) beneath the directory `dir_fd` with open(2)
// `flags` (O_CLOEXEC is added) and `mode` for O_CREAT. No component, the last
// one included, may be a symlink: ELOOP, reported as "'a/b' ... is a symlink".
// Every error names `rel` and, when given, `what` (e.g. "image 'win11' version 7").
Result<UniqueFd> open_beneath(int dir_fd, std::string_view rel, int flags, mode_t mode = 0,
                              ResolveMethod method = ResolveMethod::automatic, std::string_view what = {});

// The parent directory of `rel` opened beneath `dir_fd` (as open_beneath with
// O_DIRECTORY | O_PATH-free O_RDONLY), and the last component: what a receiver
// needs to create, rename, unlink or symlinkat the entry itself without
// following it. For a one-component path the parent is a dup of `dir_fd`.
struct ParentAndLeaf {
    UniqueFd dir;
    std::string leaf;
};
Result<ParentAndLeaf> open_parent_beneath(int dir_fd, std::string_view rel,
                                          ResolveMethod method = ResolveMethod::automatic,
                                          std::string_view what = {});

}  // namespace icbd::repl
