// The replication wire format against docs/replication-protocol.md: byte-exact
// layouts, round trips of every message, a decoder that takes the stream split
// anywhere, and every kind of bad input refused with a message that names it.
#include "digests.hpp"
#include "entry_stat.hpp"
#include "failure_code.hpp"
#include "frame_codec.hpp"
#include "messages.hpp"
#include "name_rules.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <fstream>

#include "icbd/checksum.hpp"
#include "temp_dir.hpp"

using namespace icbd;
using namespace icbd::repl;

namespace {

uint64_t le(const Bytes& b, size_t off, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(b.at(off + i)) << (8 * i);
    return v;
}

template <typename M>
Bytes frame_of(const M& m) {
    auto f = make_frame(m);
    EXPECT_TRUE(f) << f.status().message();
    return f ? *f : Bytes();
}

template <typename M>
Bytes payload_of(const M& m) {
    Bytes p;
    m.encode_payload(p);
    return p;
}

// A header with a correct CRC around arbitrary fields: what a buggy or hostile
// peer can send.
Bytes raw_header(uint8_t type, uint8_t flags, uint32_t length, uint64_t xxh = 0, uint32_t magic = kFrameMagic) {
    Bytes b;
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(magic >> (8 * i)));
    b.push_back(type);
    b.push_back(flags);
    b.push_back(0);
    b.push_back(0);
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(length >> (8 * i)));
    uint32_t crc = crc32c(b.data(), 12);
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(crc >> (8 * i)));
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(xxh >> (8 * i)));
    return b;
}

Status first_error(const Bytes& stream) {
    FrameDecoder d;
    d.feed(stream);
    while (true) {
        auto f = d.next();
        if (!f) return f.status();
        if (!f->has_value()) return d.finish();
    }
}

EntryAttrs regular(uint64_t size) {
    EntryAttrs a;
    a.type = EntryType::regular;
    a.mode = 0644;
    a.uid = 1000;
    a.gid = 100;
    a.mtime_sec = 1700000000;
    a.mtime_nsec = 123456789;
    a.size = size;
    return a;
}

const std::vector<uint8_t> kChunk = [] {
    std::vector<uint8_t> v(4096);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<uint8_t>(i * 7);
    return v;
}();

// One of every message, with non-trivial field values.
std::vector<Message> every_message() {
    Hello h{1, 3, Role::receiver, kCapLz4 | kCapZstd, "cache-3.lab"};
    Offer o{9, 20ull << 30, 1234, {1, 2, 4, 8}, "win11"};
    Need n{9, NeedKind::incremental, 8, 77, 0xDEADBEEFCAFEull, "win11"};
    FileEntry f{5, "disks/root.vmdk", regular(1ull << 34)};
    EntryAttrs l;
    l.type = EntryType::symlink;
    l.symlink_target = "../disks/root.vmdk";
    FileEntry link{6, "current/root", l};
    EntryAttrs d;
    d.type = EntryType::directory;
    d.mode = 0755;
    FileEntry dir{7, "disks", d};
    Data data{8, 1ull << 33, static_cast<uint32_t>(kChunk.size()), Compression::none, "disks/root.vmdk", kChunk};
    Hole hole{9, 4096, 1 << 20, "disks/root.vmdk"};
    Truncate tr{10, 1ull << 34, "disks/root.vmdk"};
    Delete del{11, "old/config.vmx"};
    Checkpoint cp{11};
    CheckpointAck ack{11, 0x1122334455667788ull};
    End end{11, 1, 2, 3, 4};
    PushResult res{ErrorCode::digest_mismatch, 9, "win11",
                   "image 'win11' version 9 on replica 'cache-3': digest mismatch"};
    Error err{ErrorCode::no_space, "image 'win11' version 9: no space left"};
    return {h, o, n, f, link, dir, data, hole, tr, del, cp, ack, end, res, err};
}

Bytes frame_of_message(const Message& m) {
    return std::visit([](const auto& x) { return frame_of(x); }, m);
}

}  // namespace

// ---- layouts, byte for byte as the doc's tables ----

TEST(WireLayout, FrameHeaderMatchesTheDoc) {
    Bytes payload = {'a', 'b', 'c'};
    auto f = encode_frame(FrameType::data, payload);
    ASSERT_TRUE(f);
    const Bytes& b = *f;
    ASSERT_EQ(b.size(), 24u + 3);
    EXPECT_EQ(Bytes(b.begin(), b.begin() + 4), (Bytes{0x49, 0x43, 0x52, 0x46}));  // "ICRF"
    EXPECT_EQ(b[4], 0x11);
    EXPECT_EQ(b[5], 0);
    EXPECT_EQ(le(b, 6, 2), 0u);
    EXPECT_EQ(le(b, 8, 4), 3u);
    EXPECT_EQ(le(b, 12, 4), crc32c(b.data(), 12));
    EXPECT_EQ(le(b, 16, 8), xxh3_64("abc", 3));
    EXPECT_EQ(Bytes(b.begin() + 24, b.end()), payload);

    auto empty = encode_frame(FrameType::checkpoint, {});
    ASSERT_TRUE(empty);
    EXPECT_EQ(empty->size(), 24u);
    EXPECT_EQ(le(*empty, 16, 8), 0x2D06800538D394C2ull);
}

TEST(WireLayout, FrameTypeValues) {
    EXPECT_EQ(static_cast<int>(FrameType::hello), 0x01);
    EXPECT_EQ(static_cast<int>(FrameType::offer), 0x02);
    EXPECT_EQ(static_cast<int>(FrameType::need), 0x03);
    EXPECT_EQ(static_cast<int>(FrameType::file), 0x10);
    EXPECT_EQ(static_cast<int>(FrameType::data), 0x11);
    EXPECT_EQ(static_cast<int>(FrameType::hole), 0x12);
    EXPECT_EQ(static_cast<int>(FrameType::truncate), 0x13);
    EXPECT_EQ(static_cast<int>(FrameType::del), 0x14);
    EXPECT_EQ(static_cast<int>(FrameType::checkpoint), 0x20);
    EXPECT_EQ(static_cast<int>(FrameType::checkpoint_ack), 0x21);
    EXPECT_EQ(static_cast<int>(FrameType::end), 0x22);
    EXPECT_EQ(static_cast<int>(FrameType::result), 0x23);
    EXPECT_EQ(static_cast<int>(FrameType::error), 0x7f);
    for (int t = 0; t < 256; ++t) {
        bool known = is_known_frame_type(static_cast<uint8_t>(t));
        EXPECT_EQ(known, std::string(frame_type_name(static_cast<FrameType>(t))) != "unknown") << t;
    }
}

TEST(WireLayout, HelloMatchesTheDoc) {
    Bytes p = payload_of(Hello{1, 2, Role::receiver, 3, "node1"});
    ASSERT_EQ(p.size(), 18u + 2 + 5);
    EXPECT_EQ(std::string(p.begin(), p.begin() + 8), "ICBDREPL");
    EXPECT_EQ(le(p, 8, 2), 1u);
    EXPECT_EQ(le(p, 10, 2), 2u);
    EXPECT_EQ(p[12], 2);
    EXPECT_EQ(p[13], 0);
    EXPECT_EQ(le(p, 14, 4), 3u);
    EXPECT_EQ(le(p, 18, 2), 5u);
    EXPECT_EQ(std::string(p.begin() + 20, p.end()), "node1");
}

TEST(WireLayout, OfferAndNeedMatchTheDoc) {
    Bytes o = payload_of(Offer{9, 1000, 42, {3, 5}, "img"});
    ASSERT_EQ(o.size(), 28u + 16 + 2 + 3);
    EXPECT_EQ(le(o, 0, 8), 9u);
    EXPECT_EQ(le(o, 8, 8), 1000u);
    EXPECT_EQ(le(o, 16, 8), 42u);
    EXPECT_EQ(le(o, 24, 4), 2u);
    EXPECT_EQ(le(o, 28, 8), 3u);
    EXPECT_EQ(le(o, 36, 8), 5u);
    EXPECT_EQ(le(o, 44, 2), 3u);

    Bytes n = payload_of(Need{9, NeedKind::incremental, 5, 7, 0xABCD, "img"});
    ASSERT_EQ(n.size(), 33u + 2 + 3);
    EXPECT_EQ(le(n, 0, 8), 9u);
    EXPECT_EQ(n[8], 1);
    EXPECT_EQ(le(n, 9, 8), 5u);
    EXPECT_EQ(le(n, 17, 8), 7u);
    EXPECT_EQ(le(n, 25, 8), 0xABCDu);
    EXPECT_EQ(le(n, 33, 2), 3u);
}

TEST(WireLayout, ChangeFramesMatchTheDoc) {
    EntryAttrs a = regular(5000);
    a.mtime_sec = -2;  // before 1970: i64 two's complement
    Bytes f = payload_of(FileEntry{3, "a/b", a});
    ASSERT_EQ(f.size(), 41u + 2 + 3 + 2);
    EXPECT_EQ(le(f, 0, 8), 3u);
    EXPECT_EQ(f[8], 1);
    EXPECT_EQ(le(f, 9, 4), 0644u);
    EXPECT_EQ(le(f, 13, 4), 1000u);
    EXPECT_EQ(le(f, 17, 4), 100u);
    EXPECT_EQ(le(f, 21, 8), static_cast<uint64_t>(-2));
    EXPECT_EQ(le(f, 29, 4), 123456789u);
    EXPECT_EQ(le(f, 33, 8), 5000u);
    EXPECT_EQ(le(f, 41, 2), 3u);
    EXPECT_EQ(le(f, 46, 2), 0u);

    uint8_t raw[2] = {0xAA, 0xBB};
    Bytes d = payload_of(Data{4, 8192, 2, Compression::none, "ab", raw});
    ASSERT_EQ(d.size(), 21u + 2 + 2 + 2);
    EXPECT_EQ(le(d, 0, 8), 4u);
    EXPECT_EQ(le(d, 8, 8), 8192u);
    EXPECT_EQ(le(d, 16, 4), 2u);
    EXPECT_EQ(d[20], 0);
    EXPECT_EQ(le(d, 21, 2), 2u);
    EXPECT_EQ(d[25], 0xAA);
    EXPECT_EQ(d[26], 0xBB);

    Bytes h = payload_of(Hole{5, 4096, 8192, "x"});
    ASSERT_EQ(h.size(), 24u + 3);
    EXPECT_EQ(le(h, 8, 8), 4096u);
    EXPECT_EQ(le(h, 16, 8), 8192u);
    EXPECT_EQ(le(h, 24, 2), 1u);

    Bytes t = payload_of(Truncate{6, 77, "x"});
    ASSERT_EQ(t.size(), 16u + 3);
    EXPECT_EQ(le(t, 8, 8), 77u);

    Bytes del = payload_of(Delete{7, "x"});
    ASSERT_EQ(del.size(), 8u + 3);
    EXPECT_EQ(le(del, 8, 2), 1u);
}

TEST(WireLayout, ControlFramesMatchTheDoc) {
    EXPECT_EQ(payload_of(Checkpoint{5}), (Bytes{5, 0, 0, 0, 0, 0, 0, 0}));
    Bytes a = payload_of(CheckpointAck{5, 0x0102030405060708ull});
    ASSERT_EQ(a.size(), 16u);
    EXPECT_EQ(a[8], 0x08);
    EXPECT_EQ(a[15], 0x01);
    Bytes e = payload_of(End{1, 2, 3, 4, 5});
    ASSERT_EQ(e.size(), 40u);
    for (size_t i = 0; i < 5; ++i) EXPECT_EQ(le(e, i * 8, 8), i + 1);
    Bytes r = payload_of(PushResult{ErrorCode::digest_mismatch, 9, "img", "bad"});
    ASSERT_EQ(r.size(), 10u + 5 + 5);
    EXPECT_EQ(le(r, 0, 2), 5u);
    EXPECT_EQ(le(r, 2, 8), 9u);
    EXPECT_EQ(le(r, 10, 2), 3u);
    EXPECT_EQ(le(r, 15, 2), 3u);
    Bytes er = payload_of(Error{ErrorCode::no_space, "full"});
    ASSERT_EQ(er.size(), 2u + 2 + 4);
    EXPECT_EQ(le(er, 0, 2), 7u);
}

// ---- round trips ----

TEST(WireRoundTrip, EveryMessageThroughTheDecoder) {
    auto msgs = every_message();
    Bytes stream;
    for (const auto& m : msgs) {
        Bytes f = frame_of_message(m);
        stream.insert(stream.end(), f.begin(), f.end());
    }
    FrameDecoder d;
    d.feed(stream);
    for (const auto& want : msgs) {
        auto f = d.next();
        ASSERT_TRUE(f) << f.status().message();
        ASSERT_TRUE(f->has_value());
        auto got = decode_message(**f);
        ASSERT_TRUE(got) << got.status().message();
        EXPECT_EQ(got->index(), want.index());
        EXPECT_TRUE(*got == want) << frame_type_name((*f)->type);
    }
    auto none = d.next();
    ASSERT_TRUE(none);
    EXPECT_FALSE(none->has_value());
    EXPECT_TRUE(d.finish());
}

TEST(WireRoundTrip, CompressedDataAndLargestChunk) {
    std::vector<uint8_t> packed(100, 0x42);
    Data z{1, 0, 4096, Compression::zstd, "f", packed};
    const Bytes payload = payload_of(z);  // the decoded Data views into it: keep it alive
    auto back = Data::decode(payload);
    ASSERT_TRUE(back) << back.status().message();
    EXPECT_TRUE(*back == z);

    std::vector<uint8_t> big(kChunkSize, 1);
    std::string longest = std::string(255, 'p');  // 16 components of 255 bytes: 4095 bytes
    for (int i = 1; i < 16; ++i) longest += "/" + std::string(255, 'p');
    Data max{2, kMaxFileSize - kChunkSize, kChunkSize, Compression::none, longest, big};
    auto f = make_frame(max);
    ASSERT_TRUE(f) << f.status().message();
    EXPECT_LE(f->size(), kFrameHeaderSize + kMaxPayload);
    EXPECT_TRUE(first_error(*f));
}

// ---- the decoder and the byte stream ----

TEST(FrameDecoder, SplitAtEveryByteBoundary) {
    auto msgs = every_message();
    Bytes stream;
    for (const auto& m : msgs) {
        Bytes f = frame_of_message(m);
        stream.insert(stream.end(), f.begin(), f.end());
    }
    for (size_t cut = 0; cut <= stream.size(); ++cut) {
        FrameDecoder d;
        std::vector<Frame> got;
        auto drain = [&] {
            while (true) {
                auto f = d.next();
                ASSERT_TRUE(f) << "cut " << cut << ": " << f.status().message();
                if (!f->has_value()) return;
                got.push_back(std::move(**f));
            }
        };
        d.feed(ByteView(stream.data(), cut));
        drain();
        d.feed(ByteView(stream.data() + cut, stream.size() - cut));
        drain();
        ASSERT_EQ(got.size(), msgs.size()) << "cut " << cut;
        for (size_t i = 0; i < got.size(); ++i) {
            auto m = decode_message(got[i]);
            ASSERT_TRUE(m);
            ASSERT_TRUE(*m == msgs[i]) << "cut " << cut << " frame " << i;
        }
        EXPECT_TRUE(d.finish());
    }
}

TEST(FrameDecoder, ByteByByteWithBytesWanted) {
    auto msgs = every_message();
    Bytes stream;
    for (const auto& m : msgs) {
        Bytes f = frame_of_message(m);
        stream.insert(stream.end(), f.begin(), f.end());
    }
    FrameDecoder d;
    size_t frames = 0, pos = 0;
    while (pos < stream.size()) {
        // A blocking reader asks for exactly what is missing.
        size_t want = d.bytes_wanted();
        ASSERT_GT(want, 0u);
        size_t n = std::min<size_t>(1, want);
        d.feed(ByteView(stream.data() + pos, n));
        pos += n;
        auto f = d.next();
        ASSERT_TRUE(f) << f.status().message();
        if (f->has_value()) ++frames;
    }
    EXPECT_EQ(frames, msgs.size());
    EXPECT_EQ(d.buffered(), 0u);
    EXPECT_EQ(d.bytes_wanted(), kFrameHeaderSize);
}

TEST(FrameDecoder, TruncatedStreamIsAnError) {
    Bytes f = frame_of(Delete{1, "some/file"});
    for (size_t n = 1; n < f.size(); ++n) {
        FrameDecoder d;
        d.feed(ByteView(f.data(), n));
        auto r = d.next();
        ASSERT_TRUE(r);
        EXPECT_FALSE(r->has_value());
        Status s = d.finish();
        ASSERT_FALSE(s) << n;
        EXPECT_EQ(s.code(), EPROTO);
        EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.message();
    }
}

TEST(FrameDecoder, PayloadChecksumMismatch) {
    Bytes f = frame_of(Delete{1, "some/file"});
    f.back() ^= 0x01;
    Status s = first_error(f);
    EXPECT_EQ(s.code(), EBADMSG);
    EXPECT_NE(s.message().find("DELETE frame: payload checksum mismatch"), std::string::npos) << s.message();
}

TEST(FrameDecoder, HeaderChecksumCatchesACorruptLength) {
    Bytes f = frame_of(Delete{1, "some/file"});
    f[9] ^= 0x40;  // length grows by 16 KiB: must not be waited for
    FrameDecoder d;
    d.feed(f);
    auto r = d.next();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), EBADMSG);
    EXPECT_NE(r.status().message().find("header"), std::string::npos);
    // Errors are sticky: the stream cannot resync.
    d.feed(frame_of(Checkpoint{1}));
    EXPECT_EQ(d.next().status().code(), EBADMSG);
    EXPECT_EQ(d.finish().code(), EBADMSG);
    EXPECT_EQ(d.bytes_wanted(), 0u);
}

TEST(FrameDecoder, OversizedPayloadIsRefusedBeforeItArrives) {
    FrameDecoder d;
    d.feed(raw_header(0x11, 0, kMaxPayload + 1));
    auto r = d.next();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), EMSGSIZE);
    EXPECT_NE(r.status().message().find("4194305"), std::string::npos) << r.status().message();

    // Exactly the maximum is accepted (the decoder then waits for it).
    FrameDecoder ok;
    ok.feed(raw_header(0x11, 0, kMaxPayload));
    auto w = ok.next();
    ASSERT_TRUE(w);
    EXPECT_EQ(ok.bytes_wanted(), kMaxPayload);

    // A smaller limit for a peer that asked for one.
    FrameDecoder small(1024);
    small.feed(raw_header(0x11, 0, 1025));
    EXPECT_EQ(small.next().status().code(), EMSGSIZE);

    Bytes huge(kMaxPayload + 1);
    EXPECT_EQ(encode_frame(FrameType::data, huge).status().code(), EMSGSIZE);
}

TEST(FrameDecoder, UnknownTypeBadMagicAndFlags) {
    Status s = first_error(raw_header(0x55, 0, 0, xxh3_64("", 0)));
    EXPECT_EQ(s.code(), EPROTO);
    EXPECT_NE(s.message().find("unknown frame type 85"), std::string::npos) << s.message();
    EXPECT_EQ(first_error(raw_header(0x00, 0, 0, xxh3_64("", 0))).code(), EPROTO);

    s = first_error(raw_header(0x20, 0, 0, xxh3_64("", 0), 0x50545448));  // "HTTP"
    EXPECT_EQ(s.code(), EPROTO);
    EXPECT_NE(s.message().find("magic"), std::string::npos);

    s = first_error(raw_header(0x20, 0x80, 0, xxh3_64("", 0)));
    EXPECT_EQ(s.code(), EPROTO);
    EXPECT_NE(s.message().find("flags"), std::string::npos);
}

// ---- messages: every field checked ----

TEST(WireMessages, TruncatedOrTrailingPayloadsAreRefused) {
    for (const auto& m : every_message()) {
        Bytes f = frame_of_message(m);
        FrameType t = static_cast<FrameType>(f[4]);
        Bytes p(f.begin() + kFrameHeaderSize, f.end());
        bool data = t == FrameType::data;
        for (size_t n = 0; n < p.size(); ++n) {
            auto r = decode_message(Frame{t, Bytes(p.begin(), p.begin() + n)});
            // A DATA payload cut inside its bytes is a length mismatch, also refused.
            ASSERT_FALSE(r) << frame_type_name(t) << " cut at " << n;
            if (!data) {
                EXPECT_EQ(r.status().code(), EPROTO) << r.status().message();
            }
        }
        if (!data) {
            Bytes longer = p;
            longer.push_back(0);
            auto r = decode_message(Frame{t, longer});
            ASSERT_FALSE(r) << frame_type_name(t);
            EXPECT_NE(r.status().message().find("trailing"), std::string::npos) << r.status().message();
        }
    }
}

TEST(WireMessages, BadPathsAreRefusedInEveryChangeFrame) {
    const std::vector<std::string> bad = {"../etc/passwd", "a/../../b", "/etc/passwd", "a//b", "a/./b", "a/",
                                          "", std::string("a\0b", 3), std::string(4097, 'x'),
                                          "a/" + std::string(256, 'y'), ".", ".."};
    uint8_t one = 1;
    for (const auto& p : bad) {
        std::vector<std::pair<std::string, Bytes>> payloads = {
            {"FILE", payload_of(FileEntry{1, p, regular(0)})},
            {"DATA", payload_of(Data{1, 0, 1, Compression::none, p, ByteView(&one, 1)})},
            {"HOLE", payload_of(Hole{1, 0, 1, p})},
            {"TRUNCATE", payload_of(Truncate{1, 0, p})},
            {"DELETE", payload_of(Delete{1, p})},
        };
        const FrameType types[] = {FrameType::file, FrameType::data, FrameType::hole, FrameType::truncate,
                                   FrameType::del};
        for (size_t i = 0; i < payloads.size(); ++i) {
            if (p.size() > 65535) continue;  // cannot even be encoded in a str16
            auto r = decode_message(Frame{types[i], payloads[i].second});
            ASSERT_FALSE(r) << payloads[i].first << " '" << p << "'";
            EXPECT_EQ(r.status().code(), EINVAL) << r.status().message();
            EXPECT_EQ(r.status().message().rfind(payloads[i].first + " frame: ", 0), 0u) << r.status().message();
        }
        EXPECT_EQ(make_frame(Delete{1, p}).status().code(), EINVAL) << p;
    }
    EXPECT_TRUE(make_frame(Delete{1, "a/b c/..d/e..f/.hidden"}));
}

TEST(WireMessages, SymlinkTargetsStayInsideTheVersion) {
    EXPECT_TRUE(validate_symlink_target("a/link", "../b"));
    EXPECT_TRUE(validate_symlink_target("a/b/link", "../../c/./d"));
    EXPECT_TRUE(validate_symlink_target("link", "x/../y"));
    EXPECT_TRUE(validate_symlink_target("link", "sub/"));
    EXPECT_FALSE(validate_symlink_target("link", "../x"));
    EXPECT_FALSE(validate_symlink_target("a/link", "../../etc/passwd"));
    EXPECT_FALSE(validate_symlink_target("link", "x/../../y"));
    EXPECT_FALSE(validate_symlink_target("link", "/etc/passwd"));
    EXPECT_FALSE(validate_symlink_target("link", ""));
    EXPECT_FALSE(validate_symlink_target("link", std::string("a\0b", 3)));
    EXPECT_FALSE(validate_symlink_target("link", std::string(4096, 'a')));

    EntryAttrs l;
    l.type = EntryType::symlink;
    l.symlink_target = "../../etc/shadow";
    auto r = FileEntry::decode(payload_of(FileEntry{1, "a/link", l}));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), EINVAL);
    EXPECT_NE(r.status().message().find("leaves the version root"), std::string::npos) << r.status().message();
}

TEST(WireMessages, FileEntryFieldRules) {
    auto refused = [](const FileEntry& f) { return !FileEntry::decode(payload_of(f)); };
    EXPECT_TRUE(refused(FileEntry{0, "f", regular(1)}));  // seq 0
    EntryAttrs a = regular(1);
    a.mode = 0100644;  // file type bits do not belong in mode
    EXPECT_TRUE(refused(FileEntry{1, "f", a}));
    a = regular(1);
    a.mtime_nsec = 1000000000;
    EXPECT_TRUE(refused(FileEntry{1, "f", a}));
    a = regular(kMaxFileSize + 1);
    EXPECT_TRUE(refused(FileEntry{1, "f", a}));
    a = regular(1);
    a.symlink_target = "x";
    EXPECT_TRUE(refused(FileEntry{1, "f", a}));
    a = regular(0);
    a.type = static_cast<EntryType>(4);
    EXPECT_TRUE(refused(FileEntry{1, "f", a}));
    a = regular(10);
    a.type = EntryType::directory;
    EXPECT_TRUE(refused(FileEntry{1, "f", a}));
    a = regular(0);
    a.type = EntryType::symlink;  // no target
    EXPECT_TRUE(refused(FileEntry{1, "f", a}));
    EXPECT_FALSE(refused(FileEntry{1, "f", regular(kMaxFileSize)}));
}

TEST(WireMessages, OffsetsAndLengthsCannotOverflow) {
    uint8_t one = 1;
    auto data = [&](uint64_t off, uint32_t len, ByteView b) {
        return Data::decode(payload_of(Data{1, off, len, Compression::none, "f", b}));
    };
    EXPECT_TRUE(data(kMaxFileSize - 1, 1, ByteView(&one, 1)));
    auto r = data(kMaxFileSize, 1, ByteView(&one, 1));
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("overflows"), std::string::npos) << r.status().message();
    EXPECT_FALSE(data(UINT64_MAX, 1, ByteView(&one, 1)));
    EXPECT_FALSE(data(0, 0, {}));  // empty chunk
    std::vector<uint8_t> big(kChunkSize + 1);
    EXPECT_FALSE(data(0, kChunkSize + 1, big));  // above the chunk size
    EXPECT_FALSE(data(0, 2, ByteView(&one, 1)));  // length lies about the bytes

    EXPECT_TRUE(Hole::decode(payload_of(Hole{1, kMaxFileSize - 4096, 4096, "f"})));
    EXPECT_FALSE(Hole::decode(payload_of(Hole{1, UINT64_MAX, 1, "f"})));
    EXPECT_FALSE(Hole::decode(payload_of(Hole{1, 1, UINT64_MAX, "f"})));
    EXPECT_FALSE(Hole::decode(payload_of(Hole{1, 0, 0, "f"})));
    EXPECT_TRUE(Truncate::decode(payload_of(Truncate{1, kMaxFileSize, "f"})));
    EXPECT_FALSE(Truncate::decode(payload_of(Truncate{1, kMaxFileSize + 1, "f"})));
}

TEST(WireMessages, DataCompressionRules) {
    std::vector<uint8_t> b(100, 7);
    auto decode = [](const Data& d) { return Data::decode(payload_of(d)); };
    EXPECT_TRUE(decode(Data{1, 0, 101, Compression::lz4, "f", b}));
    EXPECT_FALSE(decode(Data{1, 0, 100, Compression::lz4, "f", b}));  // did not shrink: must be none
    EXPECT_FALSE(decode(Data{1, 0, 50, Compression::zstd, "f", b}));  // "compressed" larger than the data
    EXPECT_FALSE(decode(Data{1, 0, 101, Compression::zstd, "f", {}}));
    auto r = decode(Data{1, 0, 101, static_cast<Compression>(3), "f", b});
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("unknown compression 3"), std::string::npos) << r.status().message();
}

TEST(WireMessages, HelloAndVersionNegotiation) {
    Hello a{1, 1, Role::sender, 0, "master"};
    Hello b{1, 3, Role::receiver, kCapZstd, "replica"};
    EXPECT_EQ(*negotiate_version(a, b), 1);
    Hello c{2, 4, Role::receiver, 0, "newer"};
    auto r = negotiate_version(a, c);
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("'newer' speaks 2..4"), std::string::npos) << r.status().message();
    EXPECT_EQ(*negotiate_version(b, c), 3);

    EXPECT_FALSE(Hello::decode(payload_of(Hello{0, 1, Role::sender, 0, "n"})));
    EXPECT_FALSE(Hello::decode(payload_of(Hello{2, 1, Role::sender, 0, "n"})));
    EXPECT_FALSE(Hello::decode(payload_of(Hello{1, 1, static_cast<Role>(3), 0, "n"})));
    EXPECT_FALSE(Hello::decode(payload_of(Hello{1, 1, Role::sender, 0, ""})));
    EXPECT_FALSE(Hello::decode(payload_of(Hello{1, 1, Role::sender, 0, "has space"})));
    EXPECT_FALSE(Hello::decode(payload_of(Hello{1, 1, Role::sender, 0, std::string(65, 'n')})));
    // Unknown capability bits are kept, for later versions.
    auto h = Hello::decode(payload_of(Hello{1, 1, Role::sender, 0xF0000003, "n"}));
    ASSERT_TRUE(h);
    EXPECT_EQ(h->capabilities, 0xF0000003u);
    Bytes p = payload_of(a);
    p[0] = 'X';
    auto m = Hello::decode(p);
    ASSERT_FALSE(m);
    EXPECT_NE(m.status().message().find("magic"), std::string::npos);
}

TEST(WireMessages, OfferRules) {
    EXPECT_TRUE(Offer::decode(payload_of(Offer{5, 0, 0, {}, "img"})));
    EXPECT_FALSE(Offer::decode(payload_of(Offer{0, 0, 0, {}, "img"})));
    EXPECT_FALSE(Offer::decode(payload_of(Offer{5, 0, 0, {2, 2}, "img"})));
    EXPECT_FALSE(Offer::decode(payload_of(Offer{5, 0, 0, {3, 2}, "img"})));
    EXPECT_FALSE(Offer::decode(payload_of(Offer{5, 0, 0, {0, 2}, "img"})));
    for (const char* name : {"", ".hidden", "..", "a/b", "a b", "x\n"}) {
        auto r = Offer::decode(payload_of(Offer{5, 0, 0, {}, name}));
        ASSERT_FALSE(r) << name;
        EXPECT_EQ(r.status().code(), EINVAL);
    }
    // A huge announced count with a tiny payload is refused before allocating.
    Bytes p = payload_of(Offer{5, 0, 0, {}, "img"});
    p[24] = 0xff;
    p[25] = 0xff;
    p[26] = 0x00;
    auto r = Offer::decode(p);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), EPROTO);
    p[26] = 0xff;
    p[27] = 0xff;
    EXPECT_FALSE(Offer::decode(p));
}

TEST(WireMessages, NeedRules) {
    auto ok = [](const Need& n) { return static_cast<bool>(Need::decode(payload_of(n))); };
    EXPECT_TRUE(ok(Need{9, NeedKind::nothing, 0, 0, 0, "img"}));
    EXPECT_FALSE(ok(Need{9, NeedKind::nothing, 3, 0, 0, "img"}));
    EXPECT_FALSE(ok(Need{9, NeedKind::nothing, 0, 5, 1, "img"}));
    EXPECT_TRUE(ok(Need{9, NeedKind::incremental, 8, 100, 55, "img"}));
    EXPECT_FALSE(ok(Need{9, NeedKind::incremental, 9, 0, 0, "img"}));  // base not older
    EXPECT_FALSE(ok(Need{9, NeedKind::incremental, 0, 0, 0, "img"}));
    EXPECT_TRUE(ok(Need{9, NeedKind::full, 0, 7, 8, "img"}));
    EXPECT_FALSE(ok(Need{9, NeedKind::full, 4, 0, 0, "img"}));
    EXPECT_FALSE(ok(Need{9, NeedKind::full, 0, 0, 8, "img"}));  // chain without a resume point
    EXPECT_FALSE(ok(Need{9, static_cast<NeedKind>(3), 0, 0, 0, "img"}));
    EXPECT_FALSE(ok(Need{0, NeedKind::full, 0, 0, 0, "img"}));

    Offer o{9, 0, 0, {2, 4, 8}, "img"};
    EXPECT_TRUE((Need{9, NeedKind::incremental, 4, 0, 0, "img"}.check_against(o)));
    EXPECT_EQ((Need{9, NeedKind::incremental, 3, 0, 0, "img"}.check_against(o).code()), ENOENT);
    EXPECT_FALSE((Need{8, NeedKind::full, 0, 0, 0, "img"}.check_against(o)));
    EXPECT_FALSE((Need{9, NeedKind::full, 0, 0, 0, "other"}.check_against(o)));
}

TEST(WireMessages, ReplicaChoosesWhatItNeeds) {
    Offer o{9, 0, 0, {1, 2, 3, 4, 5, 6, 7, 8, 9}, "img"};
    const uint64_t has_it[] = {3, 9};
    auto n = choose_need(o, has_it);
    ASSERT_TRUE(n);
    EXPECT_EQ(n->kind, NeedKind::nothing);
    EXPECT_TRUE(n->validate());

    const uint64_t missed_some[] = {4, 1, 2};  // catch-up 4 -> 9 in one diff
    n = choose_need(o, missed_some);
    ASSERT_TRUE(n);
    EXPECT_EQ(n->kind, NeedKind::incremental);
    EXPECT_EQ(n->base, 4u);
    EXPECT_TRUE(n->check_against(o));

    Offer pruned{9, 0, 0, {6, 7, 8}, "img"};
    n = choose_need(pruned, missed_some);  // nothing in common: full copy
    ASSERT_TRUE(n);
    EXPECT_EQ(n->kind, NeedKind::full);
    EXPECT_EQ(n->base, 0u);

    n = choose_need(o, {});
    ASSERT_TRUE(n);
    EXPECT_EQ(n->kind, NeedKind::full);

    const uint64_t newer[] = {4, 12};
    EXPECT_FALSE(choose_need(o, newer));  // not newer: the replica refuses
}

TEST(WireMessages, ResultAndErrorRules) {
    EXPECT_FALSE(Error::decode(payload_of(Error{ErrorCode::ok, "x"})));
    EXPECT_FALSE(Error::decode(payload_of(Error{ErrorCode::protocol, std::string(1025, 'm')})));
    EXPECT_FALSE(Error::decode(payload_of(Error{ErrorCode::protocol, std::string("a\0b", 3)})));
    auto e = Error::decode(payload_of(Error{static_cast<ErrorCode>(999), "from the future"}));
    ASSERT_TRUE(e);
    EXPECT_EQ(static_cast<uint16_t>(e->code), 999u) << "an unknown code is kept as its number";
    EXPECT_EQ(error_code_name(e->code), "error 999");
    EXPECT_EQ(error_code_name(static_cast<ErrorCode>(5)), "digest_mismatch");
    EXPECT_EQ(clamp_message(std::string(5000, 'x') + std::string(1, '\0')).size(), kMaxMessage);
    EXPECT_EQ(clamp_message(std::string("a\0b", 3)), "a?b");

    EXPECT_TRUE(PushResult::decode(payload_of(PushResult{ErrorCode::ok, 3, "img", ""})));
    EXPECT_FALSE(PushResult::decode(payload_of(PushResult{ErrorCode::ok, 0, "img", ""})));
    EXPECT_FALSE(PushResult::decode(payload_of(PushResult{ErrorCode::ok, 3, "../img", ""})));
}

// The code of a failure depends on what failed, not on its errno alone.
TEST(FailureCodes, ALocalFailureIsNoSpaceOrIoErrorWhateverItsErrno) {
    EXPECT_EQ(code_for_local_failure(ENOSPC), ErrorCode::no_space);
    EXPECT_EQ(code_for_local_failure(EDQUOT), ErrorCode::no_space);
    EXPECT_EQ(code_for_local_failure(EIO), ErrorCode::io_error);
    // Regression: an EINVAL while reading the source reached the replica as bad_name.
    EXPECT_EQ(code_for_local_failure(EINVAL), ErrorCode::io_error);
    EXPECT_EQ(code_for_local_failure(EBADMSG), ErrorCode::io_error) << "a filesystem's checksum error is ours";
}

TEST(FailureCodes, ARefusedFrameIsBadNameOnlyForANameRule) {
    auto bad_path = FileEntry::decode(payload_of(FileEntry{1, "a/../b", regular(1)}));
    ASSERT_FALSE(bad_path);
    EXPECT_EQ(code_for_refused_frame(bad_path.status()), ErrorCode::bad_name) << bad_path.status().message();
    auto bad_seq = Delete::decode(payload_of(Delete{0, "a"}));
    ASSERT_FALSE(bad_seq);
    EXPECT_EQ(code_for_refused_frame(bad_seq.status()), ErrorCode::protocol) << bad_seq.status().message();
    FrameDecoder d;
    Bytes junk(kFrameHeaderSize, 0x55);
    d.feed(junk);
    auto f = d.next();
    ASSERT_FALSE(f);
    EXPECT_EQ(code_for_refused_frame(f.status()), ErrorCode::protocol) << f.status().message();
}

TEST(FailureCodes, AFrameOfOursTheCodecRefusesIsBadNameForANameElseInternal) {
    EntryAttrs escaping;
    escaping.type = EntryType::symlink;
    escaping.symlink_target = "../../etc/passwd";
    auto link = make_frame(FileEntry{1, "lnk", escaping});
    ASSERT_FALSE(link);
    EXPECT_EQ(code_for_unsendable_frame(link.status()), ErrorCode::bad_name) << link.status().message();
    auto empty = make_frame(Hole{1, 0, 0, "f"});
    ASSERT_FALSE(empty);
    EXPECT_EQ(code_for_unsendable_frame(empty.status()), ErrorCode::internal) << empty.status().message();
}

// ---- digest, as section 8 defines it ----

TEST(VersionDigest, ChangeChainFollowsTheDocFormula) {
    Delete d{1, "gone"};
    Bytes rec(8, 0);  // le64(c_0 = 0)
    rec.push_back(0x14);
    Bytes p = payload_of(d);
    rec.insert(rec.end(), p.begin(), p.end());
    uint64_t c1 = xxh3_64(rec.data(), rec.size());

    ChangeChain chain;
    ASSERT_TRUE(chain.add(d));
    EXPECT_EQ(chain.value(), c1);
    EXPECT_EQ(chain.seq(), 1u);

    // DATA: the uncompressed bytes' hash stands for the data.
    Data data{2, 4096, static_cast<uint32_t>(kChunk.size()), Compression::none, "f", kChunk};
    uint64_t h = xxh3_64(kChunk.data(), kChunk.size());
    Bytes rec2;
    for (int i = 0; i < 8; ++i) rec2.push_back(static_cast<uint8_t>(c1 >> (8 * i)));
    rec2.push_back(0x11);
    Bytes l;
    auto put = [&](uint64_t v, int n) {
        for (int i = 0; i < n; ++i) l.push_back(static_cast<uint8_t>(v >> (8 * i)));
    };
    put(2, 8);
    put(4096, 8);
    put(kChunk.size(), 4);
    put(1, 2);
    l.push_back('f');
    put(h, 8);
    rec2.insert(rec2.end(), l.begin(), l.end());
    ASSERT_TRUE(chain.add(data, h));
    EXPECT_EQ(chain.value(), xxh3_64(rec2.data(), rec2.size()));
}

TEST(VersionDigest, ChainIgnoresCompressionAndChecksOrder) {
    std::vector<uint8_t> packed(10, 1);
    Data plain{1, 0, static_cast<uint32_t>(kChunk.size()), Compression::none, "f", kChunk};
    Data zstd{1, 0, static_cast<uint32_t>(kChunk.size()), Compression::zstd, "f", packed};
    uint64_t h = xxh3_64(kChunk.data(), kChunk.size());
    ChangeChain a, b;
    ASSERT_TRUE(a.add(plain, h));
    ASSERT_TRUE(b.add(zstd, h));
    EXPECT_EQ(a.value(), b.value());

    Status s = a.add(Delete{3, "x"});  // 2 was expected
    ASSERT_FALSE(s);
    EXPECT_EQ(s.code(), EPROTO);
    EXPECT_NE(s.message().find("sequence number 3 where 2 was expected"), std::string::npos) << s.message();
    EXPECT_EQ(a.seq(), 1u);
}

TEST(VersionDigest, ResumedChainEqualsUninterrupted) {
    std::vector<FileEntry> changes;
    for (uint64_t s = 1; s <= 10; ++s) {
        std::string name = "f";  // (GCC 12's -Wrestrict misfires on "f" + to_string at -O3)
        name += std::to_string(s);
        changes.push_back(FileEntry{s, name, regular(s)});
    }
    ChangeChain whole;
    for (const auto& c : changes) ASSERT_TRUE(whole.add(c));
    for (uint64_t cut = 0; cut <= 10; ++cut) {
        ChangeChain first;
        for (uint64_t s = 0; s < cut; ++s) ASSERT_TRUE(first.add(changes[s]));
        ChangeChain resumed(first.seq(), first.value());  // NEED.resume_seq / resume_chain
        for (uint64_t s = cut; s < 10; ++s) ASSERT_TRUE(resumed.add(changes[s]));
        EXPECT_EQ(resumed.value(), whole.value()) << cut;
    }
}

TEST(VersionDigest, ManifestFollowsTheDocAndNeedsSortedPaths) {
    EntryAttrs a = regular(5);
    Bytes rec(8, 0);
    rec.push_back(1);
    auto put = [&](uint64_t v, int n) {
        for (int i = 0; i < n; ++i) rec.push_back(static_cast<uint8_t>(v >> (8 * i)));
    };
    put(0644, 4);
    put(1000, 4);
    put(100, 4);
    put(5, 8);
    put(1700000000, 8);
    put(123456789, 4);
    put(1, 2);
    rec.push_back('a');
    put(0, 2);
    ManifestHasher m;
    ASSERT_TRUE(m.add("a", a));
    EXPECT_EQ(m.value(), xxh3_64(rec.data(), rec.size()));

    // Bytewise order: "a" < "a.b" < "a/b" < "b"; a directory before its contents.
    EntryAttrs dir;
    dir.type = EntryType::directory;
    ASSERT_TRUE(m.add("a.b", a));
    ASSERT_TRUE(m.add("a/b", dir));
    EXPECT_EQ(m.add("a/b", a).code(), EPROTO);
    EXPECT_EQ(m.add("a.c", a).code(), EPROTO);
    EXPECT_EQ(m.add("b/../x", a).code(), EINVAL);
    ASSERT_TRUE(m.add("\xc3\xa9t\xc3\xa9", a));  // bytes >= 0x80 sort last
    EXPECT_EQ(m.count(), 4u);

    // Symlink permission bits and a directory's size mean nothing.
    EntryAttrs l1, l2;
    l1.type = l2.type = EntryType::symlink;
    l1.symlink_target = l2.symlink_target = "t";
    l1.mode = 0777;
    EntryAttrs d1 = dir, d2 = dir;
    d2.size = 4096;
    ManifestHasher x, y;
    ASSERT_TRUE(x.add("d", d1) && x.add("l", l1));
    ASSERT_TRUE(y.add("d", d2) && y.add("l", l2));
    EXPECT_EQ(x.value(), y.value());
    ManifestHasher z;  // but an mtime does
    d1.mtime_nsec = 1;
    ASSERT_TRUE(z.add("d", d1) && z.add("l", l1));
    EXPECT_NE(z.value(), x.value());
}

TEST(VersionDigest, DigestFollowsTheDoc) {
    Bytes b = {'I', 'C', 'B', 'D', 'D', 'I', 'G', '1'};
    for (uint64_t v : {9ull, 4ull, 100ull, 0x1111ull, 50ull, 0x2222ull})
        for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
    EXPECT_EQ(version_digest(9, 4, 100, 0x1111, 50, 0x2222), xxh3_64(b.data(), b.size()));
    EXPECT_NE(version_digest(9, 4, 100, 0x1111, 50, 0x2222), version_digest(9, 3, 100, 0x1111, 50, 0x2222));
}

TEST(VersionDigest, EntryAttrsFromRealFiles) {
    icbd::test::TempDir dir;
    auto file = dir / "f";
    std::ofstream(file) << "hello";
    ASSERT_EQ(::chmod(file.c_str(), 0640), 0);
    ASSERT_EQ(::symlink("f", (dir / "l").c_str()), 0);
    ASSERT_EQ(::mkfifo((dir / "p").c_str(), 0600), 0);
    struct stat st;
    ASSERT_EQ(::lstat(file.c_str(), &st), 0);
    auto a = entry_attrs_from_stat("f", st);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->type, EntryType::regular);
    EXPECT_EQ(a->size, 5u);
    EXPECT_EQ(a->mode, 0640u);
    EXPECT_EQ(a->mtime_sec, st.st_mtim.tv_sec);
    EXPECT_EQ(a->mtime_nsec, static_cast<uint32_t>(st.st_mtim.tv_nsec));
    EXPECT_TRUE((FileEntry{1, "f", *a}.validate()));

    ASSERT_EQ(::lstat((dir / "l").c_str(), &st), 0);
    a = entry_attrs_from_stat("l", st, "f");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->type, EntryType::symlink);
    EXPECT_EQ(a->size, 0u);
    EXPECT_EQ(a->symlink_target, "f");

    ASSERT_EQ(::lstat(dir.path().c_str(), &st), 0);
    a = entry_attrs_from_stat("d", st);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->type, EntryType::directory);
    EXPECT_EQ(a->size, 0u);

    ASSERT_EQ(::lstat((dir / "p").c_str(), &st), 0);
    auto fifo = entry_attrs_from_stat("p", st);
    ASSERT_FALSE(fifo);
    EXPECT_EQ(fifo.status().code(), ENOTSUP);
    EXPECT_NE(fifo.status().message().find("'p'"), std::string::npos);
}
