// Network addresses as operators write them: "host:port" or "[v6addr]:port".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "icbd/status.hpp"

namespace icbd::repl {

struct HostPort {
    std::string host;
    uint16_t port = 0;
    std::string text() const;  // as given, normalized ("[::1]:7000")
};
// EINVAL naming the text and what is wrong with it.
Result<HostPort> parse_host_port(std::string_view text);

}  // namespace icbd::repl
