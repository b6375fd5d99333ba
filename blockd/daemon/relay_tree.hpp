// The master's relay tree (docs/blockd.md, "Relay trees"): one parent per
// replica that is fed through a relay; validated so that every replica's
// chain of parents ends at the master (no cycle, nobody its own parent).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "icbd/status.hpp"

namespace icbd::node {

class RelayTree {
public:
    RelayTree() = default;
    // `via`: replica -> parent. Refuses (EINVAL, naming the replicas) a
    // replica that is its own parent, a parent that is the master, and any
    // cycle; `where` prefixes the messages ("relay.via", "node relay").
    static Result<RelayTree> make(std::map<std::string, std::string> via, const std::string& master_name,
                                  const std::string& where);

    // "" when fed by the master.
    std::string parent_of(const std::string& replica) const;
    std::vector<std::string> children_of(const std::string& replica) const;
    // Parents above `replica` (0: fed by the master).
    unsigned depth(const std::string& replica) const;
    const std::map<std::string, std::string>& via() const { return via_; }

private:
    std::map<std::string, std::string> via_;
};

}  // namespace icbd::node
