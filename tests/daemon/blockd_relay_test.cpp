// The master's relay tree without processes (docs/blockd.md, "Relay trees"):
// which configurations are refused and how, how one push is routed (through
// a parent only when the parent can feed the child), and the peer messages
// that carry the tree.
#include <gtest/gtest.h>

#include "peer_protocol.hpp"
#include "push_scheduler.hpp"
#include "relay_tree.hpp"

namespace icbd::node {
namespace {

using nlohmann::json;

Status tree_error(std::map<std::string, std::string> via) {
    auto t = RelayTree::make(std::move(via), "master", "relay.via");
    return t ? Status::ok() : t.status();
}

TEST(RelayTreeTest, CyclesOfAnyLengthAreRefusedNamingTheReplicas) {
    Status two = tree_error({{"a", "b"}, {"b", "a"}});
    ASSERT_FALSE(two);
    EXPECT_EQ(two.code(), EINVAL);
    EXPECT_EQ(two.message(), "relay.via: relay cycle: 'a' via 'b' via 'a' (every chain of parents must end at the master)");
    Status three = tree_error({{"x", "a"}, {"a", "b"}, {"b", "c"}, {"c", "a"}});
    ASSERT_FALSE(three);
    EXPECT_NE(three.message().find("relay cycle: 'a' via 'b' via 'c' via 'a'"), std::string::npos) << three.message();
}

TEST(RelayTreeTest, SelfAndTheMasterAreRefusedAsParents) {
    Status self = tree_error({{"a", "a"}});
    ASSERT_FALSE(self);
    EXPECT_EQ(self.message(), "relay.via: replica 'a' cannot be its own parent");
    Status master = tree_error({{"a", "master"}});
    ASSERT_FALSE(master);
    EXPECT_NE(master.message().find("parent 'master' is the master"), std::string::npos) << master.message();
    Status master_child = tree_error({{"master", "a"}});
    ASSERT_FALSE(master_child);
    EXPECT_NE(master_child.message().find("'master' is the master, not a replica"), std::string::npos);
}

TEST(RelayTreeTest, ADeepTreeIsAcceptedAndWalked) {
    auto t = RelayTree::make({{"hub", ""}, {"sub", "hub"}, {"leaf1", "sub"}, {"leaf2", "sub"}, {"leaf3", "hub"}}, "master",
                             "relay.via");
    ASSERT_TRUE(t) << t.status().message();
    EXPECT_EQ(t->parent_of("hub"), "");  // "": fed by the master, no entry kept
    EXPECT_EQ(t->via().count("hub"), 0u);
    EXPECT_EQ(t->parent_of("leaf1"), "sub");
    EXPECT_EQ(t->parent_of("unknown"), "");
    EXPECT_EQ(t->children_of("hub"), (std::vector<std::string>{"leaf3", "sub"}));
    EXPECT_EQ(t->children_of("sub"), (std::vector<std::string>{"leaf1", "leaf2"}));
    EXPECT_EQ(t->depth("hub"), 0u);
    EXPECT_EQ(t->depth("leaf2"), 2u);
}

// Routing of one version: parent_of from a tree, bases and views per replica.
struct Routing {
    std::map<std::string, std::string> via;
    std::map<std::string, uint64_t> bases;
    std::map<std::string, RelayView> views;
    std::set<std::string> direct_only;
    std::map<std::string, std::string> run(const std::vector<std::string>& targets) const {
        auto parent = [&](const std::string& n) {
            auto it = via.find(n);
            return it == via.end() ? std::string() : it->second;
        };
        auto base = [&](const std::string& n) {
            auto it = bases.find(n);
            return it == bases.end() ? uint64_t(0) : it->second;
        };
        std::map<std::string, std::string> out;
        for (const RelayRoute& r : PushScheduler::route(targets, parent, base, views, direct_only)) out[r.replica] = r.via;
        return out;
    }
};

Routing hub_with_two_leaves() {
    Routing r;
    r.via = {{"leaf1", "hub"}, {"leaf2", "hub"}};
    r.bases = {{"hub", 3}, {"leaf1", 3}, {"leaf2", 3}};
    r.views = {{"hub", {"", 1}}, {"leaf1", {"hub", 1}}, {"leaf2", {"hub", 1}}};
    return r;
}

TEST(RelayRouteTest, ChildrenGoThroughTheirParentWhenItIsFedByThePush) {
    auto routes = hub_with_two_leaves().run({"leaf1", "hub", "leaf2"});
    EXPECT_EQ(routes, (std::map<std::string, std::string>{{"hub", ""}, {"leaf1", "hub"}, {"leaf2", "hub"}}));
}

TEST(RelayRouteTest, AParentThatDoesNotNeedTheVersionFeedsNobody) {
    // The hub has it already (or is down: not a target): the master feeds the leaves.
    auto routes = hub_with_two_leaves().run({"leaf1", "leaf2"});
    EXPECT_EQ(routes, (std::map<std::string, std::string>{{"leaf1", ""}, {"leaf2", ""}}));
}

TEST(RelayRouteTest, AChildOnAnotherBaseIsPushedDirectly) {
    Routing r = hub_with_two_leaves();
    r.bases["leaf2"] = 2;  // missed a version: the hub forwards only the stream from 3
    auto routes = r.run({"hub", "leaf1", "leaf2"});
    EXPECT_EQ(routes["leaf1"], "hub");
    EXPECT_EQ(routes["leaf2"], "");
}

TEST(RelayRouteTest, AChildThatHasNotAppliedItsParentIsPushedDirectly) {
    Routing r = hub_with_two_leaves();
    r.views["leaf1"].parent_applied = "";  // restarted, or an older blockd
    r.views.erase("leaf2");                // never answered a keepalive
    auto routes = r.run({"hub", "leaf1", "leaf2"});
    EXPECT_EQ(routes["leaf1"], "");
    EXPECT_EQ(routes["leaf2"], "");
}

TEST(RelayRouteTest, AChildItsRelayDidNotDeliverToIsPushedDirectly) {
    Routing r = hub_with_two_leaves();
    r.direct_only = {"leaf2"};
    auto routes = r.run({"hub", "leaf1", "leaf2"});
    EXPECT_EQ(routes["leaf1"], "hub");
    EXPECT_EQ(routes["leaf2"], "");
}

TEST(RelayRouteTest, DeepTreesAreRoutedParentsFirst) {
    Routing r;
    r.via = {{"sub", "hub"}, {"leaf", "sub"}};
    r.views = {{"sub", {"hub", 1}}, {"leaf", {"sub", 1}}};
    auto routes = r.run({"leaf", "sub", "hub"});
    EXPECT_EQ(routes, (std::map<std::string, std::string>{{"hub", ""}, {"sub", "hub"}, {"leaf", "sub"}}));
    // Without the middle relay in the push, the leaf goes direct (no grandparent routing).
    routes = r.run({"leaf", "hub"});
    EXPECT_EQ(routes["leaf"], "");
}

TEST(RelayMessagesTest, RelayAndRelayOkRoundTripAndRefuseBadChildren) {
    RelayRequest req{"master", {{"leaf1", "127.0.0.1:7400"}, {"leaf2", "[::1]:7400"}}};
    json j = to_json(req);
    EXPECT_EQ(j["type"], "relay");
    auto back = relay_from_json(j);
    ASSERT_TRUE(back) << back.status().message();
    ASSERT_EQ(back->children.size(), 2u);
    EXPECT_EQ(back->children[1].name, "leaf2");
    EXPECT_EQ(back->children[1].replication_address, "[::1]:7400");

    json twice = j;
    twice["children"][1]["name"] = "leaf1";
    auto t = relay_from_json(twice);
    ASSERT_FALSE(t);
    EXPECT_EQ(t.status().code(), EBADMSG);
    EXPECT_EQ(t.status().message(), "relay: field 'children[1]': child 'leaf1' named twice");
    json bad_address = j;
    bad_address["children"][0]["replication_address"] = "leaf1";
    auto b = relay_from_json(bad_address);
    ASSERT_FALSE(b);
    EXPECT_NE(b.status().message().find("relay: field 'children[0].replication_address'"), std::string::npos)
        << b.status().message();
    json missing = j;
    missing["children"][0].erase("name");
    auto m = relay_from_json(missing);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.status().message(), "relay: field 'children[0].name': missing");

    auto ok = relay_ok_from_json(to_json(RelayReply{"hub", {"leaf1", "leaf2"}}));
    ASSERT_TRUE(ok) << ok.status().message();
    EXPECT_EQ(ok->node, "hub");
    EXPECT_EQ(ok->children, (std::vector<std::string>{"leaf1", "leaf2"}));
}

TEST(RelayMessagesTest, PingAndPongCarryTheParentOnlyWhenThereIsOne) {
    PingRequest ping{"master", {}, "hub"};
    json j = to_json(ping);
    EXPECT_EQ(j["parent"], "hub");
    auto back = ping_from_json(j);
    ASSERT_TRUE(back) << back.status().message();
    EXPECT_EQ(back->parent, "hub");
    // An older master sends none; an empty name is not a name.
    EXPECT_FALSE(to_json(PingRequest{"master", {}, ""}).contains("parent"));
    j["parent"] = "";
    auto empty = ping_from_json(j);
    ASSERT_FALSE(empty);
    EXPECT_EQ(empty.status().code(), EBADMSG);

    PongReply pong;
    pong.node = "leaf1";
    pong.subscribe = {"*"};
    pong.parent = "hub";
    auto p = pong_from_json(to_json(pong));
    ASSERT_TRUE(p) << p.status().message();
    EXPECT_EQ(p->parent, "hub");
    json old = to_json(pong);
    old.erase("parent");  // an older replica: accepts no parent
    auto o = pong_from_json(old);
    ASSERT_TRUE(o);
    EXPECT_EQ(o->parent, "");
}

}  // namespace
}  // namespace icbd::node
