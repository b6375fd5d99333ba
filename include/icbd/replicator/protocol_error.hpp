// The codes of RESULT and ERROR (docs/replication-protocol.md, section 4.6):
// what a replication session tells its peer about a failure, and what the
// reports of a push or a receive say went wrong.
#pragma once

#include <cstdint>
#include <string>

namespace icbd::repl {

// Travels as a u16. A value this version does not know (from a newer peer) is
// kept as its number: the enumeration's underlying type holds any u16.
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
std::string error_code_name(ErrorCode code);

}  // namespace icbd::repl
