// Chunk compression of the replication stream: lz4 and zstd round trips, "not
// worth it" when a chunk does not shrink by 1/16, and exact-size decompression
// that refuses a lying length without writing past the buffer.
#include "icbd/replicator/compression.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace icbd;
using namespace icbd::repl;

namespace {

// Random sentences from a small vocabulary: compresses like logs or configs.
std::vector<uint8_t> text_like(size_t n) {
    static const char* const words[] = {"the ",    "golden ",  "image ", "of ",    "a ",      "virtual ",
                                        "desktop ", "boots ",  "every ", "day ",   "at ",     "eight\n",
                                        "cache ",  "server ", "lab ",   "school "};
    std::vector<uint8_t> v;
    v.reserve(n + 16);
    std::mt19937 rng(7);
    while (v.size() < n) {
        const char* w = words[rng() % 16];
        v.insert(v.end(), w, w + strlen(w));
    }
    v.resize(n);
    return v;
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed = 1) {
    std::vector<uint8_t> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
}

std::vector<uint8_t> compressed_with(Compression c, const std::vector<uint8_t>& in) {
    auto comp = Compressor::create(c);
    EXPECT_TRUE(comp) << comp.status().message();
    std::vector<uint8_t> out;
    auto r = comp->compress(in, out);
    EXPECT_TRUE(r && *r);
    return out;
}

}  // namespace

class EachAlgorithm : public ::testing::TestWithParam<Compression> {};

TEST_P(EachAlgorithm, RoundTripOfACompressibleChunk) {
    auto in = text_like(1 << 20);
    auto comp = Compressor::create(GetParam());
    ASSERT_TRUE(comp) << comp.status().message();
    std::vector<uint8_t> out;
    auto pays = comp->compress(in, out);
    ASSERT_TRUE(pays) << pays.status().message();
    ASSERT_TRUE(*pays);
    EXPECT_TRUE(compression_pays(in.size(), out.size()));
    EXPECT_LT(out.size(), in.size() / 2);

    Decompressor d;
    std::vector<uint8_t> back(in.size());
    Status s = d.decompress(GetParam(), out, back);
    ASSERT_TRUE(s) << s.message();
    EXPECT_EQ(back, in);
    // The decompressor is reusable.
    std::fill(back.begin(), back.end(), 0);
    ASSERT_TRUE(d.decompress(GetParam(), out, back));
    EXPECT_EQ(back, in);
}

TEST_P(EachAlgorithm, RandomDataIsNotWorthIt) {
    auto in = random_bytes(1 << 20);
    auto comp = Compressor::create(GetParam());
    ASSERT_TRUE(comp);
    std::vector<uint8_t> out;
    auto pays = comp->compress(in, out);
    ASSERT_TRUE(pays) << pays.status().message();
    EXPECT_FALSE(*pays);
}

TEST_P(EachAlgorithm, ASmallGainIsNotWorthIt) {
    // 3 % zeros, the rest random: it shrinks, but by less than 1/16.
    auto in = random_bytes(1 << 20, 3);
    std::fill(in.begin(), in.begin() + in.size() * 3 / 100, 0);
    auto comp = Compressor::create(GetParam());
    ASSERT_TRUE(comp);
    std::vector<uint8_t> out;
    auto pays = comp->compress(in, out);
    ASSERT_TRUE(pays);
    EXPECT_FALSE(*pays);
    // 20 % zeros pays.
    std::fill(in.begin(), in.begin() + in.size() / 5, 0);
    pays = comp->compress(in, out);
    ASSERT_TRUE(pays);
    EXPECT_TRUE(*pays);
    EXPECT_TRUE(compression_pays(in.size(), out.size()));
}

TEST_P(EachAlgorithm, TinyChunksNeverFail) {
    auto comp = Compressor::create(GetParam());
    ASSERT_TRUE(comp);
    std::vector<uint8_t> out;
    for (size_t n : {0, 1, 2, 15, 16, 17}) {
        std::vector<uint8_t> in(n, 'a');
        auto pays = comp->compress(in, out);
        ASSERT_TRUE(pays) << n;
        if (*pays) {
            EXPECT_LT(out.size(), n);
        }
    }
}

TEST_P(EachAlgorithm, ALyingLengthIsAnErrorNotAnOverflow) {
    auto in = text_like(64 * 1024);
    auto packed = compressed_with(GetParam(), in);
    Decompressor d;
    // A canary after the span the decompressor is given must stay untouched.
    std::vector<uint8_t> buf(in.size() + 4096, 0xAB);
    for (size_t claimed : {in.size() - 1, in.size() - 4096, size_t{1}, in.size() + 1, in.size() + 4096}) {
        std::fill(buf.begin(), buf.end(), 0xAB);
        Status s = d.decompress(GetParam(), packed, std::span<uint8_t>(buf.data(), claimed));
        ASSERT_FALSE(s) << claimed;
        EXPECT_EQ(s.code(), EBADMSG);
        EXPECT_NE(s.message().find(compression_name(GetParam())), std::string::npos) << s.message();
        for (size_t i = claimed; i < buf.size(); ++i) ASSERT_EQ(buf[i], 0xAB) << "written past the span at " << i;
    }
    std::vector<uint8_t> exact(in.size());
    EXPECT_TRUE(d.decompress(GetParam(), packed, exact));
}

TEST_P(EachAlgorithm, MalformedInputIsRefused) {
    auto in = text_like(64 * 1024);
    auto packed = compressed_with(GetParam(), in);
    Decompressor d;
    std::vector<uint8_t> out(in.size());
    EXPECT_EQ(d.decompress(GetParam(), {}, out).code(), EBADMSG);
    auto garbage = random_bytes(1000, 9);
    EXPECT_EQ(d.decompress(GetParam(), garbage, out).code(), EBADMSG);
    // Cut short, and with a byte of garbage appended.
    auto cut = packed;
    cut.resize(cut.size() / 2);
    EXPECT_EQ(d.decompress(GetParam(), cut, out).code(), EBADMSG);
    auto longer = packed;
    longer.push_back(0x5A);
    EXPECT_FALSE(d.decompress(GetParam(), longer, out));
}

INSTANTIATE_TEST_SUITE_P(Compression, EachAlgorithm, ::testing::Values(Compression::lz4, Compression::zstd),
                         [](const auto& info) { return std::string(compression_name(info.param)); });

TEST(Compression, LevelsAreConfigurableAndChecked) {
    EXPECT_EQ(Compressor::create(Compression::zstd)->level(), kDefaultZstdLevel);
    EXPECT_EQ(Compressor::create(Compression::zstd, 100).status().code(), EINVAL);
    EXPECT_EQ(Compressor::create(Compression::lz4, 0).status().code(), EINVAL);
    auto none = Compressor::create(Compression::none);
    ASSERT_FALSE(none);
    EXPECT_EQ(none.status().code(), EINVAL);

    auto in = text_like(1 << 20);
    auto fast = Compressor::create(Compression::zstd, 1);
    auto strong = Compressor::create(Compression::zstd, 19);
    ASSERT_TRUE(fast && strong);
    std::vector<uint8_t> a, b;
    ASSERT_TRUE(*fast->compress(in, a));
    ASSERT_TRUE(*strong->compress(in, b));
    EXPECT_LE(b.size(), a.size());
}

TEST(Compression, NoneCannotBeDecompressed) {
    Decompressor d;
    std::vector<uint8_t> in(10, 1), out(10);
    EXPECT_EQ(d.decompress(Compression::none, in, out).code(), EBADMSG);
    EXPECT_EQ(d.decompress(static_cast<Compression>(9), in, out).code(), EBADMSG);
}

TEST(Compression, PaysThreshold) {
    EXPECT_TRUE(compression_pays(1600, 1500));
    EXPECT_FALSE(compression_pays(1600, 1501));
    EXPECT_TRUE(compression_pays(16, 15));
    EXPECT_FALSE(compression_pays(15, 15));
    EXPECT_TRUE(compression_pays(15, 14));
    EXPECT_FALSE(compression_pays(1, 1));
}

TEST(Compression, NamesAndCapabilities) {
    EXPECT_EQ(*parse_compression("zstd"), Compression::zstd);
    EXPECT_EQ(*parse_compression("lz4"), Compression::lz4);
    EXPECT_EQ(*parse_compression("none"), Compression::none);
    auto bad = parse_compression("gzip");
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.status().message().find("'gzip'"), std::string::npos);
    EXPECT_EQ(capability_bit(Compression::lz4), kCapLz4);
    EXPECT_EQ(capability_bit(Compression::zstd), kCapZstd);
    EXPECT_EQ(capability_bit(Compression::none), 0u);
}
