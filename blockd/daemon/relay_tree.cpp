// The master's relay tree: validation (cycles, self, the master as a parent)
// and the walks the push scheduler and blockctl need.
#include "relay_tree.hpp"

#include <cerrno>
#include <set>

namespace icbd::node {

Result<RelayTree> RelayTree::make(std::map<std::string, std::string> via, const std::string& master_name,
                                  const std::string& where) {
    for (auto it = via.begin(); it != via.end();) {
        if (it->second.empty()) it = via.erase(it);  // "": fed by the master, no entry needed
        else ++it;
    }
    for (const auto& [child, parent] : via) {
        if (child == parent)
            return Status::error(EINVAL, where + ": replica '" + child + "' cannot be its own parent");
        if (!master_name.empty() && parent == master_name)
            return Status::error(EINVAL, where + ": replica '" + child + "': parent '" + parent +
                                             "' is the master (a replica fed by the master needs no entry)");
        if (!master_name.empty() && child == master_name)
            return Status::error(EINVAL, where + ": '" + child + "' is the master, not a replica");
    }
    for (const auto& [start, first_parent] : via) {
        // Follow the parents; meeting `start` again is a cycle. The chain is
        // at most via.size() long when there is none.
        std::vector<std::string> path{start};
        std::set<std::string> seen{start};
        for (std::string cur = first_parent;;) {
            if (seen.count(cur)) {
                std::string cycle;
                bool in = false;
                for (const std::string& n : path) {
                    if (n == cur) in = true;
                    if (in) cycle += "'" + n + "' via ";
                }
                cycle += "'" + cur + "'";
                return Status::error(EINVAL, where + ": relay cycle: " + cycle + " (every chain of parents must end at the master)");
            }
            path.push_back(cur);
            seen.insert(cur);
            auto next = via.find(cur);
            if (next == via.end()) break;
            cur = next->second;
        }
    }
    RelayTree t;
    t.via_ = std::move(via);
    return t;
}

std::string RelayTree::parent_of(const std::string& replica) const {
    auto it = via_.find(replica);
    return it == via_.end() ? std::string() : it->second;
}

std::vector<std::string> RelayTree::children_of(const std::string& replica) const {
    std::vector<std::string> out;
    for (const auto& [child, parent] : via_)
        if (parent == replica) out.push_back(child);
    return out;
}

unsigned RelayTree::depth(const std::string& replica) const {
    unsigned d = 0;
    for (auto it = via_.find(replica); it != via_.end(); it = via_.find(it->second)) ++d;
    return d;
}

}  // namespace icbd::node
