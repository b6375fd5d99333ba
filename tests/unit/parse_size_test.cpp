// parse_size: the one size grammar (include/icbd/parse_size.hpp) accepts every
// spelling that --bsopts cache_size=, icbd-replicate's --bwlimit /
// --checkpoint-interval and the blockd configuration accepted before they
// shared it, and refuses the rest.
#include "icbd/parse_size.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdint>
#include <string>

using icbd::parse_size;

namespace {
uint64_t ok(const char* s) {
    auto r = parse_size(s);
    EXPECT_TRUE(r) << s << ": " << r.status().message();
    return r ? *r : ~uint64_t{0};
}
}  // namespace

TEST(ParseSize, PlainBytes) {
    EXPECT_EQ(ok("0"), 0u);
    EXPECT_EQ(ok("4096"), 4096u);
    EXPECT_EQ(ok("4096B"), 4096u);
    EXPECT_EQ(ok("007"), 7u);
    EXPECT_EQ(ok("18446744073709551615"), UINT64_MAX);
}

TEST(ParseSize, BinaryUnits) {
    // What cache_size= accepted: K, M, G.
    EXPECT_EQ(ok("100K"), 100u << 10);
    EXPECT_EQ(ok("512M"), 512ull << 20);
    EXPECT_EQ(ok("4G"), 4ull << 30);
    // What --bwlimit / --checkpoint-interval accepted besides: k, KiB, MiB, GiB.
    EXPECT_EQ(ok("64k"), 64u << 10);
    EXPECT_EQ(ok("64KiB"), 64u << 10);
    EXPECT_EQ(ok("50MiB"), 50ull << 20);
    EXPECT_EQ(ok("2GiB"), 2ull << 30);
    // One rule for every letter: either case, "iB" optional.
    EXPECT_EQ(ok("50m"), 50ull << 20);
    EXPECT_EQ(ok("3g"), 3ull << 30);
    EXPECT_EQ(ok("1kiB"), 1024u);
    // What the blockd configuration accepts besides: T, and "B" after a letter
    // (binary as well: "MB" is "MiB").
    EXPECT_EQ(ok("2T"), 2ull << 40);
    EXPECT_EQ(ok("1TiB"), 1ull << 40);
    EXPECT_EQ(ok("4MB"), 4ull << 20);
    EXPECT_EQ(ok("1kB"), 1024u);
    EXPECT_EQ(ok("17179869183G"), 17179869183ull << 30);  // the largest G
}

TEST(ParseSize, RefusesWhatIsNotASize) {
    for (const char* bad : {"", "K", "B", "-1", "+1", " 1", "1 ", "1.5M", "12X", "1Ki", "1kib", "1P", "1iB",
                            "1Mb", "1MiBB", "1BB", "0x10", "1e3", "M1"}) {
        auto r = parse_size(bad);
        EXPECT_FALSE(r) << "'" << bad << "' = " << (r ? *r : 0);
        if (!r) {
            EXPECT_EQ(r.status().code(), EINVAL) << bad;
            std::string quoted = std::string(1, '\'').append(bad).append(1, '\'');  // the text, quoted
            EXPECT_NE(r.status().message().find(quoted), std::string::npos)
                << r.status().message();
        }
    }
}

TEST(ParseSize, OverflowIsRange) {
    for (const char* big : {"18446744073709551616", "99999999999999999999999", "17179869184G", "99999999999999G",
                            "17592186044416M", "18014398509481984K", "16777216T"}) {
        auto r = parse_size(big);
        ASSERT_FALSE(r) << big;
        EXPECT_EQ(r.status().code(), ERANGE) << big;
    }
}
