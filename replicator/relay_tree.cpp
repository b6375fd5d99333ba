// check_relay_tree(): a relay configuration must be a forest (each node fed by
// at most one parent, no cycle), docs/replication-protocol.md section 11.
#include "icbd/replicator/relay_tree.hpp"

#include <cerrno>
#include <map>
#include <set>

namespace icbd::repl {

namespace {

Status bad(const std::string& why) { return Status::error(EINVAL, "relay tree: " + why); }

}  // namespace

Status check_relay_tree(const std::vector<RelayNode>& nodes) {
    std::map<std::string, const RelayNode*> by_name;
    std::map<std::string, std::string> parent_of;
    for (const auto& n : nodes) {
        if (n.name.empty()) return bad("a node without a name");
        if (!by_name.emplace(n.name, &n).second) return bad("node '" + n.name + "' is described twice");
        std::set<std::string> seen;
        for (const auto& c : n.children) {
            if (c == n.name) return bad("node '" + n.name + "' relays to itself (a cycle)");
            if (!seen.insert(c).second) return bad("node '" + n.name + "' names child '" + c + "' twice");
            auto [it, fresh] = parent_of.emplace(c, n.name);
            if (!fresh)
                return bad("node '" + c + "' has two parents, '" + it->second + "' and '" + n.name +
                           "' (it would get every version twice)");
        }
    }
    // Each node has at most one parent: walking up from any node either ends
    // at a root or comes back to a node of the walk (a cycle).
    for (const auto& n : nodes) {
        std::vector<std::string> walk{n.name};
        std::set<std::string> on_walk{n.name};
        for (auto it = parent_of.find(n.name); it != parent_of.end(); it = parent_of.find(it->second)) {
            const std::string& p = it->second;
            if (on_walk.count(p)) {
                std::string text = p;
                // The walk goes child -> parent; a cycle reads parent -> child.
                for (auto w = walk.rbegin(); w != walk.rend(); ++w) {
                    text += " -> " + *w;
                    if (*w == p) break;
                }
                return bad("cycle " + text);
            }
            walk.push_back(p);
            on_walk.insert(p);
        }
    }
    return Status::ok();
}

}  // namespace icbd::repl
