// The relay frames of protocol version 2 (ROUTE, CHILDREN: their layout and
// refusals, docs/replication-protocol.md 4.8, 4.9) and check_relay_tree(), the
// configuration-time refusal of a relay cycle (section 11, "Cycles").
#include <gtest/gtest.h>

#include "icbd/replicator/relay_tree.hpp"
#include "messages.hpp"

namespace icbd::repl {
namespace {

Bytes payload_of(const auto& m) {
    Bytes b;
    m.encode_payload(b);
    return b;
}

TEST(RelayFrames, RouteMatchesTheDocAndRefusesARepeatedNode) {
    Route r{{"master", "relay1"}};
    Bytes p = payload_of(r);
    ASSERT_EQ(p.size(), 2u + 2 + 6 + 2 + 6);
    EXPECT_EQ(p[0], 2);
    EXPECT_EQ(p[1], 0);
    EXPECT_EQ(std::string(p.begin() + 4, p.begin() + 10), "master");
    auto back = Route::decode(p);
    ASSERT_TRUE(back) << back.status().message();
    EXPECT_EQ(*back, r);
    EXPECT_EQ(back->text(), "master -> relay1");
    EXPECT_TRUE(back->relays_through("relay1"));
    EXPECT_FALSE(back->relays_through("relay2"));
    EXPECT_FALSE(back->relays_through("master"));  // the master is no relay: a replica may share its host name
    auto twice = Route::decode(payload_of(Route{{"m", "a", "b", "a"}}));
    ASSERT_FALSE(twice);
    EXPECT_NE(twice.status().message().find("ROUTE frame: node 'a' twice"), std::string::npos) << twice.status().message();
    EXPECT_TRUE(Route::decode(payload_of(Route{{"host1", "host1", "b"}})));  // master and relay on one host
    EXPECT_FALSE(Route::decode(Bytes{0, 0}));                                   // empty
    EXPECT_FALSE(Route::decode(payload_of(Route{std::vector<std::string>(17, "")})));  // too long (and bad names)
    EXPECT_FALSE(Route::decode(payload_of(Route{{"has space"}})));
    Bytes trailing = p;
    trailing.push_back(0);
    EXPECT_FALSE(Route::decode(trailing));
    EXPECT_TRUE(make_frame(r));
    EXPECT_FALSE(make_frame(Route{}));
}

TEST(RelayFrames, ChildrenMatchTheDocAndRefuseABadAddress) {
    Children c{{{"127.0.0.1:7002", "child1"}, {"[::1]:7003", "child2"}}};
    Bytes p = payload_of(c);
    ASSERT_EQ(p.size(), 2u + (2 + 14 + 2 + 6) + (2 + 10 + 2 + 6));
    EXPECT_EQ(p[0], 2);
    auto back = Children::decode(p);
    ASSERT_TRUE(back) << back.status().message();
    EXPECT_EQ(*back, c);
    EXPECT_FALSE(Children::decode(Bytes{0, 0}));
    auto noport = Children::decode(payload_of(Children{{{"127.0.0.1", "child1"}}}));
    ASSERT_FALSE(noport);
    EXPECT_NE(noport.status().message().find("CHILDREN frame"), std::string::npos) << noport.status().message();
    EXPECT_FALSE(Children::decode(payload_of(Children{{{"127.0.0.1:7002", ""}}})));
    Bytes cut(p.begin(), p.end() - 3);
    auto truncated = Children::decode(cut);
    ASSERT_FALSE(truncated);
    EXPECT_NE(truncated.status().message().find("truncated"), std::string::npos) << truncated.status().message();
    // Both are frames a decoder of any message recognises by type.
    Frame f{FrameType::children, p};
    auto m = decode_message(f);
    ASSERT_TRUE(m);
    EXPECT_TRUE(std::holds_alternative<Children>(*m));
    EXPECT_STREQ(frame_type_name(FrameType::route), "ROUTE");
    EXPECT_STREQ(frame_type_name(FrameType::children), "CHILDREN");
    EXPECT_TRUE(is_known_frame_type(0x04));
    EXPECT_TRUE(is_known_frame_type(0x05));
    EXPECT_FALSE(is_known_frame_type(0x06));
}

TEST(RelayFrames, VersionTwoIsSpokenWithAVersionOnePeer) {
    Hello ours;  // the defaults: what our sender and receiver speak
    EXPECT_EQ(ours.min_version, 1);
    EXPECT_EQ(ours.max_version, 2);
    Hello old{1, 1, Role::receiver, 0, "old-replica"};
    EXPECT_EQ(*negotiate_version(ours, old), 1);
    Hello now{1, 2, Role::receiver, 0, "replica"};
    EXPECT_EQ(*negotiate_version(ours, now), kRelayFramesVersion);
}

TEST(RelayTree, AForestIsAccepted) {
    EXPECT_TRUE(check_relay_tree({}));
    EXPECT_TRUE(check_relay_tree({{"master", {"r1", "r2"}}, {"r1", {"a", "b"}}, {"r2", {"c"}}, {"a", {}}}));
}

TEST(RelayTree, ACycleIsRefusedNamingItsNodes) {
    auto s = check_relay_tree({{"a", {"b"}}, {"b", {"c"}}, {"c", {"a"}}});
    ASSERT_FALSE(s);
    EXPECT_EQ(s.code(), EINVAL);
    EXPECT_NE(s.message().find("relay tree: cycle "), std::string::npos) << s.message();
    for (const char* n : {"a", "b", "c"}) EXPECT_NE(s.message().find(n), std::string::npos) << s.message();
    auto two = check_relay_tree({{"master", {"a"}}, {"a", {"b"}}, {"b", {"x"}}, {"x", {"b2"}}, {"b2", {"x2"}}, {"x2", {"b2x"}},
                                 {"b2x", {"a2"}}, {"a2", {}}, {"q", {"w"}}, {"w", {"q"}}});
    ASSERT_FALSE(two);
    EXPECT_NE(two.message().find("relay tree: cycle q -> w -> q"), std::string::npos) << two.message();
    auto self = check_relay_tree({{"a", {"a"}}});
    ASSERT_FALSE(self);
    EXPECT_NE(self.message().find("node 'a' relays to itself"), std::string::npos) << self.message();
}

TEST(RelayTree, TwoParentsOrAChildNamedTwiceAreRefused) {
    auto s = check_relay_tree({{"r1", {"a"}}, {"r2", {"a"}}});
    ASSERT_FALSE(s);
    EXPECT_NE(s.message().find("node 'a' has two parents, 'r1' and 'r2'"), std::string::npos) << s.message();
    auto twice = check_relay_tree({{"r1", {"a", "a"}}});
    ASSERT_FALSE(twice);
    EXPECT_NE(twice.message().find("names child 'a' twice"), std::string::npos) << twice.message();
    auto dup = check_relay_tree({{"r1", {}}, {"r1", {}}});
    ASSERT_FALSE(dup);
    EXPECT_NE(dup.message().find("described twice"), std::string::npos) << dup.message();
}

}  // namespace
}  // namespace icbd::repl
