// --bsopts parsing: accepted names and values, and clear errors for the rest.
#include <gtest/gtest.h>

#include <cerrno>

#include "icbd/bsopts.hpp"

using namespace icbd;

TEST(Bsopts, EmptyGivesDefaults) {
    auto o = parse_bsopts("");
    ASSERT_TRUE(o);
    EXPECT_FALSE(o->readonly);
    EXPECT_FALSE(o->direct);
    EXPECT_EQ(o->engine.queue_depth, 128u);
    EXPECT_EQ(o->engine.kind, EngineKind::automatic);
}

TEST(Bsopts, AllOptionsWithEitherSeparator) {
    auto o = parse_bsopts("readonly=1;direct=yes, queue_depth=64;engine=aio");
    ASSERT_TRUE(o) << o.status().message();
    EXPECT_TRUE(o->readonly);
    EXPECT_TRUE(o->direct);
    EXPECT_EQ(o->engine.queue_depth, 64u);
    EXPECT_EQ(o->engine.kind, EngineKind::aio);
    EXPECT_EQ(parse_bsopts("engine=io_uring")->engine.kind, EngineKind::io_uring);
}

TEST(Bsopts, DirectWritesKeepsReadsCached) {
    auto o = parse_bsopts("direct=writes");
    ASSERT_TRUE(o) << o.status().message();
    EXPECT_FALSE(o->direct);
    EXPECT_TRUE(o->direct_writes);
    EXPECT_FALSE(o->direct_auto);
    auto later = parse_bsopts("direct=writes;direct=0");  // the last one wins
    ASSERT_TRUE(later);
    EXPECT_FALSE(later->direct_writes);
    EXPECT_FALSE(later->direct_auto);
    auto bad = parse_bsopts("direct=reads");
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.status().message().find("0, 1, writes or auto"), std::string::npos) << bad.status().message();
}

// Without direct=, the LUN decides at open (BTRFS: direct writes); any explicit
// value, buffered included, overrides that.
TEST(Bsopts, DirectIsAutomaticUntilSet) {
    EXPECT_TRUE(parse_bsopts("")->direct_auto);
    EXPECT_TRUE(parse_bsopts("direct=1;direct=auto")->direct_auto);
    EXPECT_FALSE(parse_bsopts("direct=auto;direct=1")->direct_auto);
    auto off = parse_bsopts("direct=0");
    ASSERT_TRUE(off);
    EXPECT_FALSE(off->direct_auto);
    EXPECT_FALSE(off->direct);
    EXPECT_FALSE(off->direct_writes);
}

TEST(Bsopts, UnknownOptionIsNamed) {
    auto o = parse_bsopts("readonly=1;cache_mode=5");
    ASSERT_FALSE(o);
    EXPECT_EQ(o.status().code(), ENOENT);
    EXPECT_NE(o.status().message().find("'cache_mode'"), std::string::npos) << o.status().message();
}

TEST(Bsopts, OverlayAndCache) {
    auto o = parse_bsopts("overlay=/srv/c1.ovl;cache=/fast/c1.cache;cache_size=512M");
    ASSERT_TRUE(o) << o.status().message();
    EXPECT_EQ(o->overlay, "/srv/c1.ovl");
    EXPECT_EQ(o->cache, "/fast/c1.cache");
    EXPECT_EQ(o->cache_size, 512ull << 20);
    EXPECT_EQ(parse_bsopts("cache=/c;cache_size=4G")->cache_size, 4ull << 30);
    EXPECT_EQ(parse_bsopts("cache=/c")->cache_size, 1ull << 30);
    EXPECT_EQ(parse_bsopts("cache=/c")->cache_idle_ms, 1000u);
    EXPECT_EQ(parse_bsopts("cache=/c;cache_idle=0")->cache_idle_ms, 0u);
    EXPECT_EQ(parse_bsopts("cache=/c;cache_idle=3600000")->cache_idle_ms, 3600000u);
    for (const char* bad : {"overlay=rel.ovl", "cache=", "cache_size=0", "cache_size=12X", "cache_size=100K",
                            "cache_size=99999999999999G", "cache_idle=-1", "cache_idle=1s", "cache_idle=3600001",
                            "cache_idle="}) {
        auto b = parse_bsopts(bad);
        ASSERT_FALSE(b) << bad;
        EXPECT_EQ(b.status().code(), EINVAL) << bad;
    }
}

TEST(Bsopts, BadValuesAreRefused) {
    for (const char* bad : {"readonly=maybe", "queue_depth=0", "queue_depth=4097", "queue_depth=12x",
                            "queue_depth=", "engine=spdk", "direct"}) {
        auto o = parse_bsopts(bad);
        ASSERT_FALSE(o) << bad;
        EXPECT_EQ(o.status().code(), EINVAL) << bad;
        EXPECT_NE(o.status().message().find("bsopts"), std::string::npos) << o.status().message();
    }
}
