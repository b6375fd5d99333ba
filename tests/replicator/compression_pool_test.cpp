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
}

// --compress auto: each chunk at its own setting, all decoding to the chunk,
// and the pool's figures per ladder step add up to what it was given.
TEST(CompressionPool, EachChunkAtItsOwnSettingWithItsCostCounted) {
    auto pool = CompressionPool::create(Compression::none, std::nullopt, 2);  // frames only, until told
    ASSERT_TRUE(pool) << pool.status().message();
    std::mt19937_64 rng(15);
    auto ladder = codec_ladder();
    std::vector<Bytes> raws;
    std::vector<std::future<Result<Bytes>>> frames;
    for (size_t i = 0; i < 3 * ladder.size(); ++i) {
        raws.push_back(chunk(rng, 256 * 1024, true));
        frames.push_back((*pool)->encode(data_for(i + 1, raws.back()), raws.back(), ladder[i % ladder.size()]));
    }
    for (size_t i = 0; i < frames.size(); ++i) {
        auto f = frames[i].get();
        ASSERT_TRUE(f) << f.status().message();
        Compression how = Compression::none;
        EXPECT_EQ(payload_of(*f, &how), raws[i]);
        EXPECT_EQ(how, ladder[i % ladder.size()].algorithm) << ladder[i % ladder.size()].name();
    }
    PoolStats st = (*pool)->take_stats();
    for (size_t s = 0; s < ladder.size(); ++s) {
        EXPECT_EQ(st.steps[s].chunks, 3u) << ladder[s].name();
        EXPECT_EQ(st.steps[s].raw_bytes, 3u * 256 * 1024) << ladder[s].name();
        EXPECT_GT(st.steps[s].coded_bytes, 0u);
        EXPECT_GT(st.steps[s].busy_seconds, 0.0);
    }
    EXPECT_LT(st.steps[5].coded_bytes, st.steps[0].coded_bytes) << "zstd 7 against none";
    EXPECT_EQ((*pool)->take_stats().steps[3].chunks, 0u) << "taken: counted once";
    // A level out of range fails that chunk only.
    auto bad = (*pool)->encode(data_for(99, raws[0]), raws[0], CodecSetting{Compression::zstd, 99});
    EXPECT_FALSE(bad.get());
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
