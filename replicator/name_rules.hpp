// Names the protocol carries besides image names and in-version paths (those
// follow validate_image_name and validate_relative_path of image_path.hpp):
// symlink targets and node names (docs/replication-protocol.md, section 7).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "icbd/status.hpp"

namespace icbd::repl {

inline constexpr size_t kMaxSymlinkTarget = 4095;
inline constexpr size_t kMaxNodeName = 64;

// A symlink target: 1..4095 bytes, no NUL, relative, and not climbing above the
// version root when resolved lexically from the directory of `link_path`. EINVAL otherwise.
Status validate_symlink_target(std::string_view link_path, std::string_view target);
// 1..64 bytes of 0x21..0x7e. EINVAL otherwise.
Status validate_node_name(std::string_view name);

// A hostile name stays readable in a message: quoted, control bytes escaped,
// cut after 200 bytes.
std::string quote_name(std::string_view s);

}  // namespace icbd::repl
