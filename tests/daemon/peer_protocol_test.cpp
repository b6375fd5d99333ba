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

#include "peer_certs.hpp"
#include "peer_protocol.hpp"
#include "peer_server.hpp"

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

}  // namespace
}  // namespace icbd::node
