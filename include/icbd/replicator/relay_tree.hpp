// A relay configuration given whole (docs/replication-protocol.md, section 11,
// "Cycles"): checked before anything is started, so that an operator or blockd
// sees a cycle or a node with two parents as one clear error.
#pragma once

#include <string>
#include <vector>

#include "icbd/status.hpp"

namespace icbd::repl {

// One node of a relay tree and the nodes it relays to (by any stable name:
// node names or HOST:PORT, as long as one node has one name).
struct RelayNode {
    std::string name;
    std::vector<std::string> children;
};

// EINVAL naming the nodes when the configuration is not a forest: a node that
// relays to itself or names a child twice, a node with two parents, a node
// described twice, or a cycle ("relay tree: cycle a -> b -> c -> a").
Status check_relay_tree(const std::vector<RelayNode>& nodes);

}  // namespace icbd::repl
