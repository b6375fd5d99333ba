// The compression workers of a push: every frame they build decodes to the
// chunk it was given, whatever order the jobs finish in, and errors come back
// in the job's future instead of being lost.
#include "compression_pool.hpp"

#include <gtest/gtest.h>

#include <random>

using namespace icbd;
using namespace icbd::repl;

namespace {

// Half text-like (compresses), half random (does not pay).
Bytes chunk(std::mt19937_64& rng, size_t size, bool compressible) {
    Bytes b(size);
    for (size_t i = 0; i < size; ++i)
        b[i] = compressible ? static_cast<uint8_t>("icbd golden image "[(i / 3 + rng() % 2) % 18])
                            : static_cast<uint8_t>(rng());
    return b;
}

Data data_for(uint64_t seq, const Bytes& raw) {
    Data m;
    m.seq = seq;
    m.offset = seq << 20;
    m.length = static_cast<uint32_t>(raw.size());
    m.path = "disk.raw";
    m.bytes = raw;
    return m;
}

// The uncompressed bytes a DATA frame carries.
Bytes payload_of(const Bytes& frame, Compression* how) {
    FrameDecoder d;
    d.feed(frame);
    auto f = d.next();
    EXPECT_TRUE(f && f->has_value());
    auto m = Data::decode((**f).payload);
    EXPECT_TRUE(m);
    *how = m->compression;
    Bytes out(m->length);
    if (m->compression == Compression::none) return Bytes(m->bytes.begin(), m->bytes.end());
    Decompressor dec;
    EXPECT_TRUE(dec.decompress(m->compression, m->bytes, out));
    return out;
}

}  // namespace

TEST(CompressionPool, FramesDecodeToTheirChunksInAnyOrder) {
    for (Compression alg : {Compression::zstd, Compression::lz4}) {
        auto pool = CompressionPool::create(alg, std::nullopt, 3);
        ASSERT_TRUE(pool) << pool.status().message();
        std::mt19937_64 rng(7);
        std::vector<Bytes> raws;
        std::vector<std::future<Result<Bytes>>> frames;
        for (uint64_t seq = 1; seq <= 120; ++seq) {
            raws.push_back(chunk(rng, 1 + rng() % (1u << 20), seq % 2 == 0));
            frames.push_back((*pool)->encode(data_for(seq, raws.back()), raws.back()));
        }
        size_t compressed = 0;
        for (size_t i = 0; i < frames.size(); ++i) {
            auto f = frames[i].get();
            ASSERT_TRUE(f) << f.status().message();
            Compression how;
            EXPECT_EQ(payload_of(*f, &how), raws[i]) << compression_name(alg) << " chunk " << i;
            if (how != Compression::none) {
                ++compressed;
                EXPECT_EQ(how, alg);
            }
            // A frame is what one compressor builds on its own: the pool changes where, not what.
            auto solo = Compressor::create(alg);
            Bytes packed;
            Data m = data_for(i + 1, raws[i]);
            if (*solo->compress(raws[i], packed)) {
                m.compression = alg;
                m.bytes = packed;
            }
            EXPECT_EQ(*f, *make_frame(m)) << compression_name(alg) << " chunk " << i;
        }
        EXPECT_GE(compressed, 50u) << "the compressible half should have been compressed";
        EXPECT_LE(compressed, 70u) << "random chunks must travel as none";
    }
}

TEST(CompressionPool, AnInvalidChunkFailsInItsOwnFuture) {
    auto pool = CompressionPool::create(Compression::zstd, 3, 2);
    ASSERT_TRUE(pool);
    Bytes raw(4096, 'a');
    Data bad = data_for(1, raw);
    bad.path = "../escape";
    auto f_bad = (*pool)->encode(bad, raw);
    auto f_ok = (*pool)->encode(data_for(2, raw), raw);
    auto r = f_bad.get();
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("escape"), std::string::npos) << r.status().message();
    EXPECT_TRUE(f_ok.get());
}

TEST(CompressionPool, BadLevelIsRefusedAtCreate) {
    auto pool = CompressionPool::create(Compression::zstd, 99, 2);
    ASSERT_FALSE(pool);
    EXPECT_EQ(pool.status().code(), EINVAL);
    EXPECT_NE(pool.status().message().find("99"), std::string::npos);
    EXPECT_FALSE(CompressionPool::create(Compression::none, std::nullopt, 1));
}

// Regression guard for a reader that stops early (a failed read, every replica
// gone): the pool is destroyed with jobs queued and nobody waiting.
TEST(CompressionPool, DestroyedWithQueuedJobsFinishesThem) {
    std::vector<std::future<Result<Bytes>>> frames;
    {
        auto pool = CompressionPool::create(Compression::zstd, 19, 1);  // slow on purpose
        ASSERT_TRUE(pool);
        Bytes raw(1u << 20, 'x');
        for (uint64_t seq = 1; seq <= 4; ++seq) frames.push_back((*pool)->encode(data_for(seq, raw), raw));
    }
    for (auto& f : frames) {
        ASSERT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::ready);
        EXPECT_TRUE(f.get());
    }
}
