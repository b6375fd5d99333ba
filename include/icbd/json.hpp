// The one JSON string escaper of the project's --json outputs (tools print
// JSON by hand; this is the part that must be right).
#pragma once

#include <string>
#include <string_view>

namespace icbd {

// `s` as the inside of a JSON string: quotes, backslashes and control
// characters escaped (\n and \uXXXX).
std::string json_escape(std::string_view s);

}  // namespace icbd
