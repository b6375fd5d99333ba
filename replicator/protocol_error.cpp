// The codes of RESULT and ERROR (docs/replication-protocol.md, section 4.6).
#include "icbd/replicator/protocol_error.hpp"

#include <cerrno>
#include <iterator>

namespace icbd::repl {

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

}  // namespace icbd::repl
