// The rules for names the protocol carries besides image names and paths
// (image_path.hpp): symlink targets and node names (docs/replication-protocol.md,
// section 7), and how a hostile name is quoted in a message.
#include "name_rules.hpp"

#include <algorithm>
#include <cerrno>

namespace icbd::repl {

// A hostile name stays readable in a message: control bytes escaped, long cut.
std::string quote_name(std::string_view s) {
    std::string out = "'";
    for (char c : s.substr(0, 200)) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            out += "\\x";
            out += hex[u >> 4];
            out += hex[u & 0xf];
        } else {
            out += c;
        }
    }
    if (s.size() > 200) out += "...";
    return out + "'";
}

Status validate_symlink_target(std::string_view link_path, std::string_view target) {
    auto fail = [&](const std::string& why) {
        return Status::error(EINVAL, "symlink " + quote_name(link_path) + " -> " + quote_name(target) + ": " + why);
    };
    if (target.empty()) return fail("empty target");
    if (target.size() > kMaxSymlinkTarget) return fail("target longer than 4095 bytes");
    if (target.find('\0') != std::string_view::npos) return fail("target contains a NUL byte");
    if (target[0] == '/') return fail("absolute target (it would leave the version root)");
    // Depth of the link's directory below the root, then walk the target.
    int64_t depth = static_cast<int64_t>(std::count(link_path.begin(), link_path.end(), '/'));
    size_t pos = 0;
    while (pos <= target.size()) {
        size_t slash = target.find('/', pos);
        std::string_view comp = target.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
        if (comp == "..") {
            if (--depth < 0) return fail("target leaves the version root");
        } else if (!comp.empty() && comp != ".") {
            ++depth;
        }
        if (slash == std::string_view::npos) break;
        pos = slash + 1;
    }
    return Status::ok();
}

Status validate_node_name(std::string_view name) {
    if (name.empty()) return Status::error(EINVAL, "node name is empty");
    if (name.size() > kMaxNodeName) return Status::error(EINVAL, "node name " + quote_name(name) + " is longer than 64 bytes");
    for (char c : name)
        if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e)
            return Status::error(EINVAL, "node name " + quote_name(name) + " has a byte outside printable ASCII");
    return Status::ok();
}

}  // namespace icbd::repl
