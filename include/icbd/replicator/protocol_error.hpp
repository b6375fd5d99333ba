// The codes of RESULT and ERROR (docs/replication-protocol.md, section 4.6):
// what a replication session tells its peer about a failure.
#pragma once

#include <cstdint>
#include <string>

#include "icbd/status.hpp"

namespace icbd::repl {

// Unknown values travel as numbers.
enum class ErrorCode : uint16_t {
    ok = 0,
    protocol = 1,
    unsupported_version = 2,
    not_newer = 3,
    unknown_base = 4,
    digest_mismatch = 5,
    io_error = 6,
    no_space = 7,
    bad_name = 8,
    busy = 9,
    refused = 10,
    internal = 11,
    cancelled = 12,
};
// "digest_mismatch", or "error 77" for a value this version does not know.
std::string error_code_name(uint16_t code);
// The code to send for a local failure: EINVAL -> bad_name, ENOSPC/EDQUOT ->
// no_space, EBADMSG/EMSGSIZE/EPROTO -> protocol, other errno -> io_error.
ErrorCode error_code_for(const Status& s);

}  // namespace icbd::repl
