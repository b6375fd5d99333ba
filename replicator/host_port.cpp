// Parsing and printing "host:port" addresses.
#include "icbd/replicator/host_port.hpp"

#include <algorithm>
#include <cerrno>

namespace icbd::repl {

// Strings built by append: GCC 12 misreads chains of + here (-Wrestrict).
std::string HostPort::text() const {
    std::string s;
    if (host.find(':') != std::string::npos) s.append("[").append(host).append("]");
    else s.append(host);
    return s.append(":").append(std::to_string(port));
}

Result<HostPort> parse_host_port(std::string_view text) {
    auto bad = [&](const char* why) {
        std::string m;
        m.append("'").append(text).append("' is not HOST:PORT (").append(why).append(")");
        return Status::error(EINVAL, std::move(m));
    };
    HostPort hp;
    std::string_view port;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
            return bad("an IPv6 address goes in brackets: [::1]:7000");
        hp.host = std::string(text.substr(1, close - 1));
        port = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos) return bad("no port");
        hp.host = std::string(text.substr(0, colon));
        port = text.substr(colon + 1);
        if (hp.host.find(':') != std::string::npos) return bad("an IPv6 address goes in brackets: [::1]:7000");
    }
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return bad("the port is not a number");
    unsigned long p = std::stoul(std::string(port));
    if (p > 65535) return bad("the port is above 65535");
    hp.port = static_cast<uint16_t>(p);
    return hp;
}

}  // namespace icbd::repl
