// The node-to-node protocol: frames and message validation on bytes, then the
// listener and peer_call over real mutual TLS on 127.0.0.1 (malformed frames,
// version mismatch, a certificate from another CA, a silent peer at stop()).
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <fstream>

#include "boot_set_exchange.hpp"
#include "boot_set_uploader.hpp"
#include "icbd/boot_set.hpp"
#include "peer_certs.hpp"
#include "peer_protocol.hpp"
#include "peer_server.hpp"
#include "store.hpp"
#include "temp_dir.hpp"

namespace icbd::node {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

std::vector<uint8_t> raw_frame(uint32_t len, const std::string& body) {
    std::vector<uint8_t> f(4 + body.size());
    f[0] = uint8_t(len >> 24);
    f[1] = uint8_t(len >> 16);
    f[2] = uint8_t(len >> 8);
    f[3] = uint8_t(len);
    for (size_t i = 0; i < body.size(); ++i) f[4 + i] = uint8_t(body[i]);
    return f;
}
std::vector<uint8_t> raw_frame(const std::string& body) { return raw_frame(uint32_t(body.size()), body); }

Result<json> decode(const std::vector<uint8_t>& f) { return decode_peer_frame(f.data(), f.size()); }

#define EXPECT_BADMSG(expr, needle)                                                        \
    do {                                                                                   \
        auto r_ = (expr);                                                                  \
        ASSERT_FALSE(r_.is_ok()) << #expr << " was accepted";                              \
        EXPECT_EQ(r_.status().code(), EBADMSG) << r_.status().message();                  \
        EXPECT_NE(r_.status().message().find(needle), std::string::npos)                   \
            << "message '" << r_.status().message() << "' does not name '" << needle << "'"; \
    } while (0)

RegisterRequest sample_register() {
    RegisterRequest r;
    r.node = "r1";
    r.peer_address = "127.0.0.1:7401";
    r.replication_address = "[::1]:7400";
    r.subscribe = {"win10", "*"};
    r.versions = {{"win10", {1, 2, 7}}, {"ubuntu", {}}};
    return r;
}

PingRequest sample_ping() {
    PingRequest p;
    p.master = "master";
    p.catalog["win10"] = CatalogImage{{1, 2, 3}, 2, 3, "disk.raw"};
    p.catalog["empty"] = CatalogImage{{}, 0, 0, "d/disk.raw"};
    return p;
}

PongReply sample_pong() {
    PongReply p;
    p.node = "r1";
    p.subscribe = {"*"};
    p.versions = {{"win10", {1, 2, 3}}};
    p.in_use = {{"win10", {2}}};
    return p;
}

TEST(PeerFrame, MessagesRoundTripThroughFrames) {
    auto reg = register_from_json(*decode(encode_peer_frame(to_json(sample_register()))));
    ASSERT_TRUE(reg) << reg.status().message();
    EXPECT_EQ(reg->node, "r1");
    EXPECT_EQ(reg->peer_address, "127.0.0.1:7401");
    EXPECT_EQ(reg->replication_address, "[::1]:7400");
    EXPECT_EQ(reg->subscribe, sample_register().subscribe);
    EXPECT_EQ(reg->versions, sample_register().versions);

    auto ping = ping_from_json(*decode(encode_peer_frame(to_json(sample_ping()))));
    ASSERT_TRUE(ping) << ping.status().message();
    EXPECT_EQ(ping->master, "master");
    ASSERT_EQ(ping->catalog.size(), 2u);
    EXPECT_EQ(ping->catalog["win10"].versions, (std::vector<uint64_t>{1, 2, 3}));
    EXPECT_EQ(ping->catalog["win10"].production, 2u);
    EXPECT_EQ(ping->catalog["win10"].test, 3u);
    EXPECT_EQ(ping->catalog["win10"].disk, "disk.raw");

    auto pong = pong_from_json(*decode(encode_peer_frame(to_json(sample_pong()))));
    ASSERT_TRUE(pong) << pong.status().message();
    EXPECT_EQ(pong->node, "r1");
    EXPECT_EQ(pong->versions, sample_pong().versions);
    EXPECT_EQ(pong->in_use, sample_pong().in_use);

    auto regd = registered_from_json(*decode(encode_peer_frame(to_json(RegisteredReply{"master", 10000}))));
    ASSERT_TRUE(regd) << regd.status().message();
    EXPECT_EQ(regd->master, "master");
    EXPECT_EQ(regd->keepalive_interval_ms, 10000u);

    // Every message says which protocol version it speaks.
    for (const json& j : {to_json(sample_register()), to_json(sample_ping()), to_json(sample_pong()),
                          error_message("x")})
        EXPECT_EQ(j.at("proto"), kPeerProtocolVersion) << j.dump();
}

TEST(PeerFrame, MalformedFramesAreRejected) {
    EXPECT_BADMSG(decode(raw_frame(0, "")), "length 0");
    EXPECT_BADMSG(decode(raw_frame(kMaxPeerMessage + 1, "{}")), "larger than the limit");
    EXPECT_BADMSG(decode(std::vector<uint8_t>{0, 0}), "shorter than");
    EXPECT_BADMSG(decode(raw_frame(10, R"({"type":"x"})")), "announces 10 bytes");
    EXPECT_BADMSG(decode(raw_frame("not json")), "not valid JSON");
    EXPECT_BADMSG(decode(raw_frame(R"({"type":"ping"} trailing)")), "not valid JSON");
    EXPECT_BADMSG(decode(raw_frame("{\"type\":\"\xff\"}")), "not valid JSON");
    EXPECT_BADMSG(decode(raw_frame(R"([{"type":"ping"}])")), "array");
    EXPECT_BADMSG(decode(raw_frame(R"("ping")")), "string");
    EXPECT_BADMSG(decode(raw_frame(R"({"proto":1})")), "no field 'type'");
    EXPECT_BADMSG(decode(raw_frame(R"({"type":7,"proto":1})")), "'type' is not a string");
    // A hostile peer's deepest nesting within the limit is parsed and freed
    // without recursion, then refused by the validators.
    const size_t depth = (kMaxPeerMessage - 40) / 2;
    std::string deep = R"({"type":"pong","proto":1,"node":)" + std::string(depth, '[') + std::string(depth, ']') + "}";
    auto nested = decode(raw_frame(deep));
    ASSERT_TRUE(nested) << nested.status().message();
    EXPECT_BADMSG(pong_from_json(*nested), "'node'");
    // The largest allowed body decodes.
    std::string big = R"({"type":"x","pad":")" + std::string(kMaxPeerMessage - 21, 'a') + "\"}";
    ASSERT_EQ(big.size(), kMaxPeerMessage);
    EXPECT_TRUE(decode(raw_frame(big)).is_ok());
}

TEST(PeerFrame, ValidatorsNameTheWrongField) {
    auto reg = [](auto edit) {
        json j = to_json(sample_register());
        edit(j);
        return register_from_json(j);
    };
    EXPECT_BADMSG(reg([](json& j) { j.erase("node"); }), "'node': missing");
    EXPECT_BADMSG(reg([](json& j) { j["node"] = 5; }), "'node': expected a string");
    EXPECT_BADMSG(reg([](json& j) { j["node"] = "../r1"; }), "'node'");
    EXPECT_BADMSG(reg([](json& j) { j["node"] = "r 1"; }), "'node'");
    EXPECT_BADMSG(reg([](json& j) { j["peer_address"] = "127.0.0.1"; }), "'peer_address'");
    EXPECT_BADMSG(reg([](json& j) { j["peer_address"] = "127.0.0.1:99999"; }), "'peer_address'");
    EXPECT_BADMSG(reg([](json& j) { j["replication_address"] = true; }), "'replication_address'");
    EXPECT_BADMSG(reg([](json& j) { j["subscribe"] = "win10"; }), "'subscribe': expected an array");
    EXPECT_BADMSG(reg([](json& j) { j["subscribe"][1] = 3; }), "'subscribe[1]'");
    EXPECT_BADMSG(reg([](json& j) { j["subscribe"][0] = "a/b"; }), "'subscribe[0]'");
    EXPECT_BADMSG(reg([](json& j) { j["versions"] = json::array(); }), "'versions': expected an object");
    EXPECT_BADMSG(reg([](json& j) { j["versions"]["win10"] = 1; }), "'versions.win10'");
    EXPECT_BADMSG(reg([](json& j) { j["versions"]["win10"] = {1, -2}; }), "'versions.win10[1]'");
    EXPECT_BADMSG(reg([](json& j) { j["versions"]["win10"] = {1.5}; }), "'versions.win10[0]'");
    EXPECT_BADMSG(reg([](json& j) { j["versions"]["win10"] = {"1"}; }), "'versions.win10[0]'");
    EXPECT_BADMSG(reg([](json& j) { j["versions"]["win10"] = {3, 2}; }), "ascending");
    EXPECT_BADMSG(reg([](json& j) { j["versions"]["win10"] = {0}; }), ">= 1");
    EXPECT_BADMSG(reg([](json& j) { j["versions"][".."] = json::array(); }), "'versions'");
    EXPECT_BADMSG(reg([](json& j) { j["type"] = "ping"; }), "'type'");
    EXPECT_BADMSG(reg([](json& j) { j.erase("proto"); }), "'proto'");
    EXPECT_BADMSG(reg([](json& j) { j["proto"] = "1"; }), "'proto'");
    EXPECT_BADMSG(register_from_json(json::array()), "object");

    auto ping = [](auto edit) {
        json j = to_json(sample_ping());
        edit(j);
        return ping_from_json(j);
    };
    EXPECT_BADMSG(ping([](json& j) { j["master"] = json(); }), "'master'");
    EXPECT_BADMSG(ping([](json& j) { j["catalog"] = json::array(); }), "'catalog'");
    EXPECT_BADMSG(ping([](json& j) { j["catalog"]["win10"] = 1; }), "'catalog.win10'");
    EXPECT_BADMSG(ping([](json& j) { j["catalog"]["win10"]["production"] = "2"; }), "'catalog.win10.production'");
    EXPECT_BADMSG(ping([](json& j) { j["catalog"]["win10"].erase("test"); }), "'catalog.win10.test': missing");
    EXPECT_BADMSG(ping([](json& j) { j["catalog"]["win10"]["disk"] = "../etc/passwd"; }), "'catalog.win10.disk'");
    EXPECT_BADMSG(ping([](json& j) { j["catalog"]["win10"]["versions"] = {2, 2}; }), "'catalog.win10.versions'");
    EXPECT_BADMSG(ping([](json& j) { j["catalog"]["bad name"] = j["catalog"]["win10"]; }), "'catalog'");

    auto pong = [](auto edit) {
        json j = to_json(sample_pong());
        edit(j);
        return pong_from_json(j);
    };
    EXPECT_BADMSG(pong([](json& j) { j["in_use"] = nullptr; }), "'in_use'");
    EXPECT_BADMSG(pong([](json& j) { j["in_use"]["win10"] = {"2"}; }), "'in_use.win10[0]'");
    EXPECT_BADMSG(pong([](json& j) { j.erase("subscribe"); }), "'subscribe': missing");

    // Another protocol version is not a malformed message: it says what we speak.
    json v2 = to_json(sample_pong());
    v2["proto"] = 2;
    auto r = pong_from_json(v2);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), EPROTONOSUPPORT);
    EXPECT_NE(r.status().message().find("supported: 1"), std::string::npos) << r.status().message();
    // Unknown extra fields are ignored (a later addition does not break older nodes).
    json extra = to_json(sample_pong());
    extra["future"] = {1, 2};
    EXPECT_TRUE(pong_from_json(extra).is_ok());
}

TEST(PeerFrame, AddressesAndNodeNames) {
    auto a = parse_peer_address("[::1]:7401");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->first, "::1");
    EXPECT_EQ(a->second, 7401);
    a = parse_peer_address("cache-01.example:7401");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->first, "cache-01.example");
    for (const char* bad : {"", ":7401", "host", "host:", "host:0", "host:65536", "host:07", "::1:7401", "[::1]7401",
                            "a b:1", "host:12x"})
        EXPECT_FALSE(parse_peer_address(bad)) << bad;
    EXPECT_TRUE(validate_node_name("cache-01.site_a"));
    for (const char* bad : {"", ".hidden", "a/b", "..", "a b", "\xc3\xa9"}) EXPECT_FALSE(validate_node_name(bad)) << bad;
    EXPECT_FALSE(validate_node_name(std::string(65, 'a')));
}

// Over real TLS on loopback.
class PeerServerTest : public ::testing::Test {
protected:
    void SetUp() override { ICBD_REQUIRE_PEER_CERTS(); }

    static repl::TlsConfig tls(const std::string& node, const std::string& ca = "good") {
        return test::PeerCerts::get().tls(node, ca);
    }

    // A server on 127.0.0.1 that echoes the request and records who asked.
    std::unique_ptr<PeerServer> echo_server(const repl::TlsConfig& config) {
        auto s = PeerServer::start("127.0.0.1", 0, config, [this](const repl::PeerIdentity& peer, const json& req) {
            calls_++;
            if (req.at("type") == "throw") throw std::runtime_error("handler blew up");
            return json{{"type", "echo"}, {"proto", kPeerProtocolVersion}, {"from", peer.common_name}, {"got", req}};
        });
        EXPECT_TRUE(s) << s.status().message();
        return s ? std::move(*s) : nullptr;
    }
    static std::string address(const PeerServer& s) { return "127.0.0.1:" + std::to_string(s.port()); }

    // Sends raw bytes over a real TLS connection and reads the answer frame.
    static Result<json> raw_exchange(const PeerServer& s, const std::vector<uint8_t>& bytes) {
        auto stream = repl::connect("127.0.0.1", s.port(), tls("r1"));
        if (!stream) return stream.status();
        if (Status st = stream->write_all(bytes); !st) return st;
        return read_peer_message(*stream);
    }

    std::atomic<int> calls_{0};
};

TEST_F(PeerServerTest, RequestAndAnswerOverMutualTls) {
    auto server = echo_server(tls("master"));
    ASSERT_TRUE(server);
    auto answer = peer_call(address(*server), tls("r1"), to_json(sample_register()));
    ASSERT_TRUE(answer) << answer.status().message();
    EXPECT_EQ(answer->at("type"), "echo");
    // The handler sees the caller's verified certificate name.
    EXPECT_EQ(answer->at("from"), "r1");
    EXPECT_TRUE(register_from_json(answer->at("got")).is_ok());

    // Several callers at once, each its own connection.
    std::vector<std::thread> callers;
    std::atomic<int> ok{0};
    for (int i = 0; i < 6; ++i)
        callers.emplace_back([&] {
            if (peer_call(address(*server), tls("r2"), to_json(sample_pong()))) ok++;
        });
    for (auto& t : callers) t.join();
    EXPECT_EQ(ok, 6);
}

TEST_F(PeerServerTest, MalformedFramesGetAnErrorAnswer) {
    auto server = echo_server(tls("master"));
    ASSERT_TRUE(server);
    struct Case {
        std::vector<uint8_t> bytes;
        const char* needle;
    };
    const Case cases[] = {
        {raw_frame(0, ""), "length 0"},
        // Refused from the header: the body is never sent, and never waited for.
        {raw_frame(kMaxPeerMessage + 1, ""), "larger than the limit"},
        {raw_frame("not json"), "not valid JSON"},
        {raw_frame("[1,2]"), "array"},
        {raw_frame(R"({"proto":1})"), "no field 'type'"},
        {raw_frame(R"({"type":["ping"],"proto":1})"), "'type' is not a string"},
        {raw_frame(R"({"type":"ping"})"), "'proto': missing"},
        {raw_frame(R"({"type":"ping","proto":-1})"), "'proto'"},
    };
    for (const Case& c : cases) {
        auto answer = raw_exchange(*server, c.bytes);
        ASSERT_TRUE(answer) << answer.status().message();
        EXPECT_EQ(answer->at("type"), "error") << answer->dump();
        std::string msg = answer->value("message", "");
        EXPECT_NE(msg.find(c.needle), std::string::npos) << msg << " (expected '" << c.needle << "')";
    }
    EXPECT_EQ(calls_, 0) << "a malformed request reached the handler";
}

TEST_F(PeerServerTest, ReadingAStreamRejectsBadFramesWithEbadmsg) {
    auto listener = repl::Listener::bind("127.0.0.1", 0, tls("master"));
    ASSERT_TRUE(listener) << listener.status().message();
    auto exchange = [&](std::vector<uint8_t> bytes, bool close_early) {
        std::thread client([&] {
            auto s = repl::connect("127.0.0.1", listener->port(), tls("r1"));
            ASSERT_TRUE(s) << s.status().message();
            ASSERT_TRUE(s->write_all(bytes));
            (void)s->shutdown();
            if (!close_early) {
                uint8_t b;
                (void)s->read_some({&b, 1});  // until the server closes
            }
        });
        auto server_side = listener->accept(10s);
        Result<json> got = server_side ? read_peer_message(*server_side) : Result<json>(server_side.status());
        if (server_side) server_side->close();
        client.join();
        return got;
    };
    EXPECT_BADMSG(exchange(raw_frame(0, ""), false), "length 0");
    EXPECT_BADMSG(exchange(raw_frame(kMaxPeerMessage + 1, ""), false), "larger than the limit");
    EXPECT_BADMSG(exchange(raw_frame("{\"type\":"), false), "not valid JSON");
    EXPECT_BADMSG(exchange(raw_frame("[]"), false), "array");
    EXPECT_BADMSG(exchange(raw_frame("{}"), false), "no field 'type'");
    // A stream that ends inside a frame.
    auto cut = exchange(raw_frame(100, "{\"type\""), true);
    ASSERT_FALSE(cut);
    EXPECT_EQ(cut.status().code(), ECONNRESET) << cut.status().message();
    auto good = exchange(encode_peer_frame(to_json(sample_ping())), false);
    ASSERT_TRUE(good) << good.status().message();
    EXPECT_TRUE(ping_from_json(*good).is_ok());
}

TEST_F(PeerServerTest, AnotherProtocolVersionIsAnsweredWithTheSupportedOnes) {
    auto server = echo_server(tls("master"));
    ASSERT_TRUE(server);
    json req = to_json(sample_pong());
    req["proto"] = 2;
    auto answer = raw_exchange(*server, encode_peer_frame(req));
    ASSERT_TRUE(answer) << answer.status().message();
    EXPECT_EQ(answer->at("type"), "error");
    EXPECT_EQ(answer->at("proto"), kPeerProtocolVersion);
    EXPECT_EQ(answer->at("supported"), json::array({kPeerProtocolVersion}));
    EXPECT_NE(answer->at("message").get<std::string>().find("version 2 is not supported (supported: 1)"),
              std::string::npos);
    auto call = peer_call(address(*server), tls("r1"), req);
    ASSERT_FALSE(call);
    EXPECT_EQ(call.status().code(), EPROTONOSUPPORT) << call.status().message();
    EXPECT_EQ(calls_, 0);
}

TEST_F(PeerServerTest, ACertificateFromAnotherCaCannotConnect) {
    auto server = echo_server(tls("master"));
    ASSERT_TRUE(server);
    // The stranger's CA signed a certificate that even carries a cluster name.
    for (const char* node : {"r1", "evil"}) {
        auto c = tls(node, "evil");
        c.ca_file = tls("r1").ca_file;  // it trusts our CA, we do not trust its
        auto answer = peer_call(address(*server), c, to_json(sample_register()));
        EXPECT_FALSE(answer) << node << " got an answer";
    }
    EXPECT_EQ(calls_, 0);
    // The server still serves the cluster.
    EXPECT_TRUE(peer_call(address(*server), tls("r1"), to_json(sample_register())));
}

TEST_F(PeerServerTest, HandlerFailureBecomesAnErrorAnswer) {
    auto server = echo_server(tls("master"));
    ASSERT_TRUE(server);
    auto call = peer_call(address(*server), tls("r1"), json{{"type", "throw"}, {"proto", 1}});
    ASSERT_FALSE(call);
    EXPECT_EQ(call.status().code(), EREMOTEIO);
    EXPECT_NE(call.status().message().find("handler blew up"), std::string::npos) << call.status().message();
    EXPECT_NE(call.status().message().find("master"), std::string::npos) << call.status().message();
}

TEST_F(PeerServerTest, StopDoesNotWaitForASilentPeer) {
    auto config = tls("master");
    config.io_timeout = 60s;
    auto server = echo_server(config);
    ASSERT_TRUE(server);
    // Connected and authenticated, then nothing.
    auto silent = repl::connect("127.0.0.1", server->port(), tls("r1"));
    ASSERT_TRUE(silent) << silent.status().message();
    std::this_thread::sleep_for(100ms);  // let the server reach its read (not an assertion)
    auto t0 = std::chrono::steady_clock::now();
    server->stop();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s) << "stop() waited for the silent peer's io_timeout";
}

// ---- boot sets (docs/blockd-peer-protocol.md, "bootset.put" .. "bootset") ----

std::vector<uint8_t> sample_sidecar(uint32_t boots = 1, uint64_t version = 7) {
    auto set = BootSet::create(8 << 20);
    EXPECT_TRUE(set) << set.status().message();
    set->mark(0, 4096);
    set->mark(3 << 20, 200 << 10);
    set->boots = boots;
    set->version = version;
    return set->encode();
}

BootSetPut sample_put() { return BootSetPut{"r1", "win10", 7, "sub/disk.raw", sample_sidecar()}; }
BootSetGet sample_get() { return BootSetGet{"r1", "win10", 7, "disk.raw"}; }
BootSetReply sample_reply(BootSetKind kind = BootSetKind::predicted) {
    BootSetReply r{"win10", 7, "disk.raw", kind, 0, {}};
    if (kind == BootSetKind::recorded) r.source = 7;
    if (kind == BootSetKind::predicted) r.source = 5;
    if (kind != BootSetKind::none) r.sidecar = sample_sidecar(0, r.source);
    return r;
}

TEST(PeerFrame, Base64IsStrictAndRoundTrips) {
    for (size_t n = 0; n < 10; ++n) {
        std::vector<uint8_t> bytes;
        for (size_t i = 0; i < n; ++i) bytes.push_back(uint8_t(0xf7 * (i + 1)));
        auto back = base64_decode(base64_encode(bytes));
        ASSERT_TRUE(back) << back.status().message();
        EXPECT_EQ(*back, bytes);
    }
    EXPECT_EQ(base64_encode({'f', 'o', 'o', 'b'}), "Zm9vYg==");
    for (const char* bad : {"Zm9", "Zm9vYg=", "Zm=vYg==", "Zm9vY===", "Zm9v\nYg==", "Zm9vYh==", "Zm9-"}) {
        auto r = base64_decode(bad);
        EXPECT_FALSE(r) << bad << " was accepted";
        if (!r) {
            EXPECT_EQ(r.status().code(), EINVAL);
        }
    }
}

TEST(PeerFrame, BootSetMessagesRoundTripThroughFrames) {
    auto put = bootset_put_from_json(*decode(encode_peer_frame(to_json(sample_put()))));
    ASSERT_TRUE(put) << put.status().message();
    EXPECT_EQ(put->node, "r1");
    EXPECT_EQ(put->image, "win10");
    EXPECT_EQ(put->version, 7u);
    EXPECT_EQ(put->file, "sub/disk.raw");
    EXPECT_EQ(put->sidecar, sample_sidecar());

    auto ack = bootset_ack_from_json(*decode(encode_peer_frame(to_json(BootSetAck{"win10", 7, "disk.raw", 12}))));
    ASSERT_TRUE(ack) << ack.status().message();
    EXPECT_EQ(ack->boots, 12u);

    auto get = bootset_get_from_json(*decode(encode_peer_frame(to_json(sample_get()))));
    ASSERT_TRUE(get) << get.status().message();
    EXPECT_EQ(get->file, "disk.raw");

    for (BootSetKind kind : {BootSetKind::recorded, BootSetKind::predicted, BootSetKind::none}) {
        auto reply = bootset_reply_from_json(*decode(encode_peer_frame(to_json(sample_reply(kind)))));
        ASSERT_TRUE(reply) << boot_set_kind_name(kind) << ": " << reply.status().message();
        EXPECT_EQ(reply->kind, kind);
        EXPECT_EQ(reply->source, sample_reply(kind).source);
        EXPECT_EQ(reply->sidecar, sample_reply(kind).sidecar);
    }
    for (const json& j : {to_json(sample_put()), to_json(sample_get()), to_json(sample_reply())})
        EXPECT_EQ(j.at("proto"), kPeerProtocolVersion) << j.dump();
}

TEST(PeerFrame, BootSetValidatorsNameTheWrongField) {
    auto put = [](auto edit) {
        json j = to_json(sample_put());
        edit(j);
        return bootset_put_from_json(j);
    };
    EXPECT_BADMSG(put([](json& j) { j.erase("node"); }), "bootset.put: field 'node': missing");
    EXPECT_BADMSG(put([](json& j) { j["node"] = "r 1"; }), "'node'");
    EXPECT_BADMSG(put([](json& j) { j.erase("image"); }), "'image': missing");
    EXPECT_BADMSG(put([](json& j) { j["image"] = "../win10"; }), "'image'");
    EXPECT_BADMSG(put([](json& j) { j["image"] = 3; }), "'image': expected a string");
    EXPECT_BADMSG(put([](json& j) { j["version"] = 0; }), "'version': a version must be >= 1");
    EXPECT_BADMSG(put([](json& j) { j["version"] = -7; }), "'version'");
    EXPECT_BADMSG(put([](json& j) { j["version"] = "7"; }), "'version'");
    EXPECT_BADMSG(put([](json& j) { j.erase("file"); }), "'file': missing");
    EXPECT_BADMSG(put([](json& j) { j["file"] = "../../etc/passwd"; }), "'file'");
    EXPECT_BADMSG(put([](json& j) { j["file"] = "/disk.raw"; }), "'file'");
    EXPECT_BADMSG(put([](json& j) { j["file"] = "a//disk.raw"; }), "'file'");
    EXPECT_BADMSG(put([](json& j) { j["file"] = ""; }), "'file'");
    EXPECT_BADMSG(put([](json& j) { j.erase("sidecar"); }), "'sidecar': missing");
    EXPECT_BADMSG(put([](json& j) { j["sidecar"] = ""; }), "'sidecar': empty");
    EXPECT_BADMSG(put([](json& j) { j["sidecar"] = "not base64!"; }), "'sidecar': base64");
    EXPECT_BADMSG(put([](json& j) { j["sidecar"] = json::array({1, 2}); }), "'sidecar': expected a string");
    EXPECT_BADMSG(put([](json& j) { j["type"] = "bootset.get"; }), "'type'");
    EXPECT_BADMSG(put([](json& j) { j.erase("proto"); }), "'proto'");

    auto get = [](auto edit) {
        json j = to_json(sample_get());
        edit(j);
        return bootset_get_from_json(j);
    };
    EXPECT_BADMSG(get([](json& j) { j.erase("node"); }), "bootset.get: field 'node': missing");
    EXPECT_BADMSG(get([](json& j) { j["image"] = ".hidden"; }), "'image'");
    EXPECT_BADMSG(get([](json& j) { j["version"] = 1.5; }), "'version'");
    EXPECT_BADMSG(get([](json& j) { j["file"] = "a/../b"; }), "'file'");
    EXPECT_BADMSG(get([](json& j) { j["file"] = std::string(5000, 'a'); }), "'file'");

    auto reply = [](BootSetKind kind, auto edit) {
        json j = to_json(sample_reply(kind));
        edit(j);
        return bootset_reply_from_json(j);
    };
    EXPECT_BADMSG(reply(BootSetKind::recorded, [](json& j) { j["kind"] = "guessed"; }), "'kind'");
    EXPECT_BADMSG(reply(BootSetKind::recorded, [](json& j) { j["source"] = 6; }), "'source'");
    EXPECT_BADMSG(reply(BootSetKind::predicted, [](json& j) { j["source"] = 7; }), "'source'");
    EXPECT_BADMSG(reply(BootSetKind::predicted, [](json& j) { j["source"] = 0; }), "'source'");
    EXPECT_BADMSG(reply(BootSetKind::predicted, [](json& j) { j["sidecar"] = ""; }), "'sidecar': empty");
    EXPECT_BADMSG(reply(BootSetKind::none, [](json& j) { j["source"] = 3; }), "'source'");
    EXPECT_BADMSG(reply(BootSetKind::none, [](json& j) { j["sidecar"] = "AAAA"; }), "'sidecar'");
    EXPECT_BADMSG(reply(BootSetKind::none, [](json& j) { j.erase("file"); }), "'file': missing");
    EXPECT_BADMSG(bootset_ack_from_json(json{{"type", "bootset.ack"}, {"proto", 1}, {"image", "w"}, {"version", 1},
                                             {"file", "d"}, {"boots", -1}}),
                  "'boots'");
}

// The master's handlers over real mutual TLS, against a repository in a temp dir.
class BootSetExchangeTest : public PeerServerTest {
protected:
    void SetUp() override {
        PeerServerTest::SetUp();
        fs_path_ = repo_.path();
        version_dir(7);
    }
    std::filesystem::path version_dir(uint64_t v) {
        auto d = repo_.path() / "images" / "win10" / std::to_string(v);
        std::filesystem::create_directories(d / "sub");
        std::ofstream(d / "disk.raw") << "golden";
        std::ofstream(d / "sub" / "disk.raw") << "golden";
        return d;
    }
    std::unique_ptr<PeerServer> master() {
        exchange_ = std::make_unique<BootSetExchange>(repo_.path(), [](const std::string& n) { return n != "r2"; });
        auto s = PeerServer::start("127.0.0.1", 0, tls("master"), [this](const repl::PeerIdentity& p, const json& r) {
            return r.at("type") == "bootset.put" ? exchange_->handle_put(p, r) : exchange_->handle_get(p, r);
        });
        EXPECT_TRUE(s) << s.status().message();
        return s ? std::move(*s) : nullptr;
    }
    test::TempDir repo_;
    std::filesystem::path fs_path_;
    std::unique_ptr<BootSetExchange> exchange_;
};

TEST_F(BootSetExchangeTest, PutMergesAndGetAnswersOwnThenPredictedThenNone) {
    auto server = master();
    ASSERT_TRUE(server);
    auto ack = peer_call(address(*server), tls("r1"), to_json(sample_put()));
    ASSERT_TRUE(ack) << ack.status().message();
    EXPECT_EQ((*ack)["boots"], 1);
    ack = peer_call(address(*server), tls("r1"), to_json(sample_put()));
    ASSERT_TRUE(ack) << ack.status().message();
    EXPECT_EQ((*ack)["boots"], 2) << "boots add up over puts";
    auto stored = load_boot_set(boot_set_path(repo_.path(), "win10", 7, "sub/disk.raw"));
    ASSERT_TRUE(stored) << stored.status().message();
    EXPECT_EQ(stored->boots, 2u);
    EXPECT_TRUE(stored->has_chunk(0));
    EXPECT_TRUE(stored->has_chunk(48));

    // Own set.
    auto get = [&](uint64_t v) {
        auto a = peer_call(address(*server), tls("r1"), to_json(BootSetGet{"r1", "win10", v, "sub/disk.raw"}));
        EXPECT_TRUE(a) << a.status().message();
        auto r = bootset_reply_from_json(a ? *a : json());
        EXPECT_TRUE(r) << r.status().message();
        return r ? *r : BootSetReply{};
    };
    BootSetReply own = get(7);
    EXPECT_EQ(own.kind, BootSetKind::recorded);
    EXPECT_EQ(own.source, 7u);
    // Version 9 was never booted: 7's set, as a prediction that says so itself.
    version_dir(9);
    BootSetReply predicted = get(9);
    EXPECT_EQ(predicted.kind, BootSetKind::predicted);
    EXPECT_EQ(predicted.source, 7u);
    auto p = BootSet::decode(predicted.sidecar, "answer");
    ASSERT_TRUE(p) << p.status().message();
    EXPECT_EQ(p->boots, 0u);
    EXPECT_EQ(p->version, 7u);
    EXPECT_TRUE(p->has_chunk(48));
    // Nothing older than 7.
    version_dir(3);
    EXPECT_EQ(get(3).kind, BootSetKind::none);
}

TEST_F(BootSetExchangeTest, CorruptSidecarIsRefusedNamingReplicaImageVersionAndFile) {
    auto server = master();
    ASSERT_TRUE(server);
    BootSetPut put = sample_put();
    put.sidecar[60] ^= 0x10;  // a bitmap byte: the CRC no longer matches
    auto r = peer_call(address(*server), tls("r1"), to_json(put));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), EREMOTEIO);
    for (const char* needle : {"'r1'", "'win10'", "version 7", "'sub/disk.raw'", "checksum"})
        EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
    put.sidecar.resize(20);  // truncated
    r = peer_call(address(*server), tls("r1"), to_json(put));
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("'sub/disk.raw'"), std::string::npos) << r.status().message();
    EXPECT_FALSE(std::filesystem::exists(boot_set_path(repo_.path(), "win10", 7, "sub/disk.raw")));

    // A corrupt set on the master is never sent: the answer falls back as if it were absent.
    auto path = boot_set_path(repo_.path(), "win10", 7, "disk.raw");
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path) << "ICBDBSET garbage";
    auto a = peer_call(address(*server), tls("r1"), to_json(sample_get()));
    ASSERT_TRUE(a) << a.status().message();
    EXPECT_EQ((*a)["kind"], "none");
}

TEST_F(BootSetExchangeTest, RefusesStrangersMissingVersionsAndFilesOutsideTheVersion) {
    auto server = master();
    ASSERT_TRUE(server);
    // r2's certificate is the CA's, but r2 is not registered (the test's is_replica).
    auto r = peer_call(address(*server), tls("r2"), to_json(BootSetPut{"r2", "win10", 7, "disk.raw", sample_sidecar()}));
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("not a replica registered here"), std::string::npos) << r.status().message();
    // r1 speaking as r2.
    r = peer_call(address(*server), tls("r1"), to_json(BootSetGet{"r2", "win10", 7, "disk.raw"}));
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("comes from"), std::string::npos) << r.status().message();
    r = peer_call(address(*server), tls("r1"), to_json(BootSetPut{"r1", "win10", 8, "disk.raw", sample_sidecar()}));
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("no such version"), std::string::npos) << r.status().message();
    r = peer_call(address(*server), tls("r1"), to_json(BootSetPut{"r1", "win10", 7, "sub", sample_sidecar()}));
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("not a regular file"), std::string::npos) << r.status().message();
}

// The replica's uploader: only new boots travel, once, even across a restart.
TEST_F(BootSetExchangeTest, UploaderSendsOnlyNewBootsAndRemembersThemAcrossRestarts) {
    auto server = master();
    ASSERT_TRUE(server);
    test::TempDir replica_repo;
    test::TempDir state;
    auto store = open_sqlite_store(state.path() / "blockd.db");
    ASSERT_TRUE(store) << store.status().message();
    auto options = [&] {
        BootSetUploader::Options o;
        o.repo = replica_repo.path();
        o.node_name = "r1";
        o.master_address = address(*server);
        o.tls = tls("r1");
        return o;
    };
    auto seen = BootSet::decode(sample_sidecar(1), "sample");
    ASSERT_TRUE(seen);
    const auto local = boot_set_path(replica_repo.path(), "win10", 7, "disk.raw");
    const auto on_master = boot_set_path(repo_.path(), "win10", 7, "disk.raw");
    ASSERT_TRUE(merge_into_boot_set(local, *seen));
    {
        BootSetUploader up(options(), **store);
        auto n = up.scan_once();
        ASSERT_TRUE(n) << n.status().message();
        EXPECT_EQ(*n, 1u);
        EXPECT_EQ(*up.scan_once(), 0u) << "an unchanged sidecar is not sent again";
        ASSERT_TRUE(merge_into_boot_set(local, *seen));  // a second boot on the replica: 2 boots locally
        EXPECT_EQ(*up.scan_once(), 1u);
        auto m = load_boot_set(on_master);
        ASSERT_TRUE(m) << m.status().message();
        EXPECT_EQ(m->boots, 2u) << "the master counts each boot once";
        // A prediction saved from the master is not sent back.
        auto predicted = *seen;
        predicted.boots = 0;
        ASSERT_TRUE(up.save_from_master("win10", 7, "sub/disk.raw", predicted));
        EXPECT_EQ(*up.scan_once(), 0u);
    }
    // blockd restarted: the record is in the state DB.
    BootSetUploader again(options(), **store);
    EXPECT_EQ(*again.scan_once(), 0u);
    auto m = load_boot_set(on_master);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->boots, 2u);
    EXPECT_FALSE(std::filesystem::exists(boot_set_path(repo_.path(), "win10", 7, "sub/disk.raw")));
}

}  // namespace
}  // namespace icbd::node
