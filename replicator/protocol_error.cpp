// The names of the codes of RESULT and ERROR (docs/replication-protocol.md, 4.6).
#include "icbd/replicator/protocol_error.hpp"

#include <iterator>

namespace icbd::repl {

std::string error_code_name(ErrorCode code) {
    static const char* const names[] = {"ok",           "protocol", "unsupported_version", "not_newer", "unknown_base",
                                        "digest_mismatch", "io_error", "no_space",          "bad_name",  "busy",
                                        "refused",      "internal", "cancelled"};
    const auto n = static_cast<uint16_t>(code);
    if (n < std::size(names)) return names[n];
    return "error " + std::to_string(n);
}

}  // namespace icbd::repl
