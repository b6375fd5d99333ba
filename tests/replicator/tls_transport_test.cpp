// The replicator's transport on real sockets: mutual TLS 1.3 on 127.0.0.1 with
// certificates made by scripts/make-certs.sh, refusals, plaintext mode, dead and
// silent peers, wire counters, and the shared bandwidth limit.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "icbd/checksum.hpp"
#include "icbd/replicator/transport.hpp"
#include "icbd/unique_fd.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"

namespace icbd::repl {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test::TempDir;

bool skips_forbidden() {
    const char* v = std::getenv("ICBD_FORBID_SKIP");
    return v && *v && std::strcmp(v, "0") != 0;
}

std::vector<uint8_t> pattern(size_t n, uint64_t seed) {
    std::vector<uint8_t> v(n);
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v[i] = static_cast<uint8_t>(x);
    }
    return v;
}

// Two CAs: the cluster's ("good") and a stranger's ("rogue"), each with node
// certificates made by the script the operator uses.
class TlsTransportTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (!test::have_program("openssl")) return;
        dir_ = new TempDir("/tmp", "icbd-tls-test-");
        const std::string script = std::string(ICBD_SOURCE_DIR) + "/scripts/make-certs.sh";
        auto good = test::run_command({script, (dir_->path() / "good").string(), "server", "client", "other"});
        auto rogue = test::run_command({script, (dir_->path() / "rogue").string(), "server", "client"});
        if (!good.ok() || !rogue.ok()) {
            setup_error_ = good.ok() ? rogue.describe() : good.describe();
        }
    }
    static void TearDownTestSuite() {
        delete dir_;
        dir_ = nullptr;
    }

    void SetUp() override {
        if (!dir_) {
            if (skips_forbidden()) FAIL() << "the openssl program is missing (apt-get install openssl)";
            GTEST_SKIP() << "the openssl program is missing (apt-get install openssl)";
        }
        ASSERT_TRUE(setup_error_.empty()) << setup_error_;
    }

    static TlsConfig config(const std::string& ca, const std::string& node, const std::string& node_ca = "") {
        TlsConfig c;
        auto base = dir_->path();
        c.ca_file = (base / ca / "ca.crt").string();
        const auto& nca = node_ca.empty() ? ca : node_ca;
        c.cert_file = (base / nca / (node + ".crt")).string();
        c.key_file = (base / nca / (node + ".key")).string();
        c.handshake_timeout = 5s;
        c.io_timeout = 10s;
        c.connect_timeout = 5s;
        return c;
    }
    static TlsConfig server_config() { return config("good", "server"); }
    static TlsConfig client_config() { return config("good", "client"); }

    static Listener listen(const TlsConfig& c) {
        auto l = Listener::bind("127.0.0.1", 0, c);
        EXPECT_TRUE(l.is_ok()) << l.status().message();
        return l ? std::move(*l) : Listener();
    }

    // Server side of one connection in its own thread.
    static std::future<Result<Stream>> accept_async(Listener& l) {
        return std::async(std::launch::async, [&l] { return l.accept(10s); });
    }

    static inline TempDir* dir_ = nullptr;
    static inline std::string setup_error_;
};

#define ASSERT_OK(expr)                                               \
    do {                                                              \
        auto&& icbd_st_ = (expr);                                     \
        ASSERT_TRUE(icbd_st_.is_ok()) << icbd_st_.message();          \
    } while (0)

std::string join_names(const TlsConfig& c) {
    std::string out;
    for (const auto& n : c.allowed_peer_names) out += (out.empty() ? "" : ", ") + n;
    return out;
}

TEST_F(TlsTransportTest, MutualTlsRoundTripOfSeveralMiBBothWays) {
    Listener l = listen(server_config());
    ASSERT_NE(l.port(), 0);
    const auto up = pattern(4 << 20, 1);
    const auto down = pattern(3 << 20, 2);

    struct ServerSide {
        Status status;
        PeerIdentity peer;
        uint64_t up_hash = 0;
        bool saw_eof = false;
        StreamCounters counters;
    };
    auto server = std::async(std::launch::async, [&]() {
        ServerSide out;
        auto s = l.accept(10s);
        if (!s) {
            out.status = s.status();
            return out;
        }
        out.peer = s->peer();
        std::vector<uint8_t> got(up.size());
        if (out.status = s->read_exact(got); !out.status) return out;
        out.up_hash = xxh3_64(got.data(), got.size());
        if (out.status = s->write_all(down); !out.status) return out;
        uint8_t b;
        auto r = s->read_some({&b, 1});  // the client's shutdown()
        if (!r) {
            out.status = r.status();
            return out;
        }
        out.saw_eof = *r == 0;
        out.status = s->shutdown();
        out.counters = s->counters();
        return out;
    });

    auto c = connect("127.0.0.1", l.port(), client_config());
    if (!c) l.stop();
    ASSERT_TRUE(c.is_ok()) << c.status().message() << "; server: " << server.get().status.message();
    EXPECT_EQ(c->peer().protocol, "TLSv1.3");
    EXPECT_TRUE(c->peer().authenticated);
    EXPECT_EQ(c->peer().common_name, "server");
    EXPECT_TRUE(c->peer().has_name("localhost"));
    ASSERT_OK(c->write_all(up));
    std::vector<uint8_t> got(down.size());
    ASSERT_OK(c->read_exact(got));
    EXPECT_TRUE(got == down) << "data from the server differs";
    ASSERT_OK(c->shutdown());
    uint8_t b;
    auto eof = c->read_some({&b, 1});
    ASSERT_TRUE(eof.is_ok()) << eof.status().message();
    EXPECT_EQ(*eof, 0u) << "the server's shutdown() must read as an orderly end of stream";

    ServerSide srv = server.get();
    ASSERT_TRUE(srv.status.is_ok()) << srv.status.message();
    EXPECT_EQ(srv.up_hash, xxh3_64(up.data(), up.size()));
    EXPECT_TRUE(srv.saw_eof);
    EXPECT_TRUE(srv.peer.authenticated);
    EXPECT_EQ(srv.peer.protocol, "TLSv1.3");
    EXPECT_EQ(srv.peer.common_name, "client");
    EXPECT_EQ(srv.peer.dns_names, (std::vector<std::string>{"client", "localhost"}));
    EXPECT_NE(srv.peer.address.find("127.0.0.1:"), std::string::npos) << srv.peer.address;

    // Wire bytes: at least the payload, plus a modest TLS overhead (records of
    // 16 KiB carry ~22 bytes each; the handshake with certificates ~2-3 KiB).
    StreamCounters cc = c->counters();
    EXPECT_EQ(cc.payload_sent, up.size());
    EXPECT_EQ(cc.payload_received, down.size());
    EXPECT_GE(cc.wire_sent, cc.payload_sent);
    EXPECT_GE(cc.wire_received, cc.payload_received);
    EXPECT_LT(cc.wire_sent, cc.payload_sent + cc.payload_sent / 100 + 16384);
    EXPECT_LT(cc.wire_received, cc.payload_received + cc.payload_received / 100 + 16384);
    EXPECT_EQ(srv.counters.payload_received, up.size());
    EXPECT_EQ(srv.counters.payload_sent, down.size());
    EXPECT_GE(srv.counters.wire_received, srv.counters.payload_received);
    EXPECT_GE(srv.counters.wire_sent, srv.counters.payload_sent);
}

// A client made with OpenSSL directly, presenting no certificate (what an
// unauthorised program would do), TLS 1.3 unless `max_version` says otherwise.
// Returns OpenSSL's reasons for its failure.
std::string client_without_certificate(uint16_t port, const std::string& ca_file, int max_version = 0) {
    // Only this thread: a write to the closed socket must not kill the test.
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, nullptr);

    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    timeval tv{5, 0};
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) return "connect failed";
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
    SSL_CTX_set_min_proto_version(ctx.get(), max_version ? TLS1_2_VERSION : TLS1_3_VERSION);
    if (max_version) SSL_CTX_set_max_proto_version(ctx.get(), max_version);
    SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
    SSL_set_fd(ssl.get(), fd.get());
    ERR_clear_error();
    std::string reasons;
    if (SSL_connect(ssl.get()) == 1) {
        char b;
        if (SSL_read(ssl.get(), &b, 1) > 0) return "read succeeded";
    }
    while (unsigned long e = ERR_get_error()) {
        const char* r = ERR_reason_error_string(e);
        reasons += std::string(r ? r : "?") + ";";
    }
    return reasons;
}

TEST_F(TlsTransportTest, ClientWithoutCertificateIsRefused) {
    Listener l = listen(server_config());
    auto server = accept_async(l);
    std::string client_error = client_without_certificate(l.port(), (dir_->path() / "good/ca.crt").string());
    auto s = server.get();
    ASSERT_FALSE(s.is_ok()) << "a client without certificate was accepted";
    std::cout << "  server says: " << s.status().message() << "\n  client (raw OpenSSL) says: " << client_error << "\n";
    EXPECT_EQ(s.status().code(), EACCES) << s.status().message();
    EXPECT_NE(s.status().message().find("peer 127.0.0.1:"), std::string::npos) << s.status().message();
    EXPECT_NE(s.status().message().find("did not return a certificate"), std::string::npos) << s.status().message();
    EXPECT_NE(client_error.find("certificate required"), std::string::npos) << client_error;
}

TEST_F(TlsTransportTest, Tls12ClientIsRefused) {
    Listener l = listen(server_config());
    auto server = accept_async(l);
    std::string client_error =
        client_without_certificate(l.port(), (dir_->path() / "good/ca.crt").string(), TLS1_2_VERSION);
    auto s = server.get();
    ASSERT_FALSE(s.is_ok()) << "a TLS 1.2 client was accepted";
    std::cout << "  server says: " << s.status().message() << "\n";
    EXPECT_NE(s.status().message().find("unsupported protocol"), std::string::npos) << s.status().message();
    EXPECT_NE(client_error.find("protocol version"), std::string::npos) << client_error;
}

TEST_F(TlsTransportTest, ClientCertificateFromAnotherCaIsRefusedWithClearErrorsOnBothSides) {
    Listener l = listen(server_config());
    auto server = accept_async(l);
    // Trusts the right CA, but its own certificate was signed by a stranger.
    auto c = connect("127.0.0.1", l.port(), config("good", "client", "rogue"));
    auto s = server.get();

    ASSERT_FALSE(s.is_ok()) << "server accepted a client signed by another CA";
    std::cout << "  server says: " << s.status().message() << "\n  client says: " << c.status().message() << "\n";
    const std::string& sm = s.status().message();
    EXPECT_EQ(s.status().code(), EACCES) << sm;
    EXPECT_NE(sm.find("peer 127.0.0.1:"), std::string::npos) << sm;
    EXPECT_NE(sm.find("certificate verify failed"), std::string::npos) << sm;
    EXPECT_NE(sm.find("unable to get local issuer certificate"), std::string::npos) << sm;

    ASSERT_FALSE(c.is_ok()) << "connect() must report the server's refusal";
    const std::string& cm = c.status().message();
    EXPECT_EQ(c.status().code(), EACCES) << cm;
    const std::string dialed = "127.0.0.1:" + std::to_string(l.port());
    EXPECT_NE(cm.find(dialed), std::string::npos) << cm;
    EXPECT_NE(cm.find("unknown ca"), std::string::npos) << cm;
}

TEST_F(TlsTransportTest, ServerCertificateFromAnotherCaIsRefusedByTheClient) {
    Listener l = listen(config("good", "server", "rogue"));
    auto server = accept_async(l);
    auto c = connect("127.0.0.1", l.port(), client_config());
    auto s = server.get();

    ASSERT_FALSE(c.is_ok()) << "client accepted a server signed by another CA";
    std::cout << "  client says: " << c.status().message() << "\n  server says: " << s.status().message() << "\n";
    const std::string& cm = c.status().message();
    EXPECT_EQ(c.status().code(), EACCES) << cm;
    EXPECT_NE(cm.find("peer 127.0.0.1:" + std::to_string(l.port())), std::string::npos) << cm;
    EXPECT_NE(cm.find("certificate verify failed: unable to get local issuer certificate"), std::string::npos) << cm;

    ASSERT_FALSE(s.is_ok());
    EXPECT_NE(s.status().message().find("unknown ca"), std::string::npos) << s.status().message();
}

TEST_F(TlsTransportTest, AllowedPeerNamesAreEnforcedOnBothSides) {
    struct Case {
        std::vector<std::string> server_allows, client_allows;
        bool ok;
        const char* refused_by;  // "server" or "client"
    };
    const Case cases[] = {
        {{"client"}, {"server"}, true, ""},
        {{"nobody", "CLIENT"}, {"localhost"}, true, ""},  // CN case-insensitive, SAN DNS
        {{"other"}, {}, false, "server"},
        {{}, {"other"}, false, "client"},
    };
    for (const auto& k : cases) {
        SCOPED_TRACE(std::string("refused by ") + k.refused_by);
        TlsConfig sc = server_config();
        sc.allowed_peer_names = k.server_allows;
        TlsConfig cc = client_config();
        cc.allowed_peer_names = k.client_allows;
        Listener l = listen(sc);
        auto server = accept_async(l);
        auto c = connect("127.0.0.1", l.port(), cc);
        auto s = server.get();
        EXPECT_EQ(c.is_ok(), k.ok) << c.status().message();
        EXPECT_EQ(s.is_ok(), k.ok) << s.status().message();
        if (k.ok) continue;
        std::cout << "  server says: " << s.status().message() << "\n  client says: " << c.status().message() << "\n";
        const bool by_server = std::string(k.refused_by) == "server";
        const std::string& refuser = by_server ? s.status().message() : c.status().message();
        EXPECT_NE(refuser.find("not among the allowed peer names: " + join_names(by_server ? sc : cc)),
                  std::string::npos)
            << refuser;
        EXPECT_EQ((by_server ? s.status() : c.status()).code(), EACCES);
    }
}

TEST_F(TlsTransportTest, PlaintextClientToTlsServerFailsCleanly) {
    Listener l = listen(server_config());
    auto server = accept_async(l);
    TlsConfig cc;
    cc.insecure_plaintext = true;
    cc.io_timeout = 5s;
    auto c = connect("127.0.0.1", l.port(), cc);
    ASSERT_TRUE(c.is_ok()) << c.status().message();  // TCP itself connects
    const std::string hello = "ICBD hello, in the clear, with no TLS at all\r\n\r\n";
    (void)c->write_all({reinterpret_cast<const uint8_t*>(hello.data()), hello.size()});
    auto s = server.get();
    ASSERT_FALSE(s.is_ok());
    std::cout << "  server says: " << s.status().message() << "\n";
    EXPECT_EQ(s.status().code(), EPROTO) << s.status().message();
    EXPECT_NE(s.status().message().find("peer 127.0.0.1:"), std::string::npos) << s.status().message();
    EXPECT_NE(s.status().message().find("TLS handshake"), std::string::npos) << s.status().message();
    // The client sees the connection end (the server's alert bytes, then EOF
    // or a reset), promptly and without a hang.
    auto t0 = Clock::now();
    std::vector<uint8_t> buf(4096);
    for (;;) {
        auto r = c->read_some(buf);
        if (!r || *r == 0) break;
    }
    EXPECT_LT(Clock::now() - t0, 3s);
}

TEST_F(TlsTransportTest, InsecurePlaintextWorksWhenBothSidesAskForIt) {
    TlsConfig pc;
    pc.insecure_plaintext = true;
    Listener l = listen(pc);
    auto server = std::async(std::launch::async, [&]() -> Status {
        auto s = l.accept(10s);
        if (!s) return s.status();
        if (s->peer().authenticated || s->peer().protocol != "plaintext")
            return Status::error(EINVAL, "plaintext peer reported as authenticated");
        std::vector<uint8_t> buf(1 << 20);
        if (Status st = s->read_exact(buf); !st) return st;
        return s->write_all(buf);  // echo
    });
    auto c = connect("127.0.0.1", l.port(), pc);
    ASSERT_TRUE(c.is_ok()) << c.status().message();
    EXPECT_FALSE(c->peer().authenticated);
    const auto data = pattern(1 << 20, 3);
    ASSERT_OK(c->write_all(data));
    std::vector<uint8_t> back(data.size());
    ASSERT_OK(c->read_exact(back));
    EXPECT_TRUE(back == data);
    ASSERT_OK(server.get());
    auto k = c->counters();
    EXPECT_EQ(k.wire_sent, k.payload_sent);  // no framing of ours in plaintext
    EXPECT_EQ(k.wire_received, k.payload_received);
}

TEST_F(TlsTransportTest, PeerThatVanishesMidReadGivesAnError) {
    Listener l = listen(server_config());
    auto server = std::async(std::launch::async, [&]() -> Status {
        auto s = l.accept(10s);
        if (!s) return s.status();
        std::vector<uint8_t> part(100, 7);
        if (Status st = s->write_all(part); !st) return st;
        s->close();  // gone: no close_notify, just a FIN
        return Status::ok();
    });
    auto c = connect("127.0.0.1", l.port(), client_config());
    ASSERT_TRUE(c.is_ok()) << c.status().message();
    ASSERT_OK(server.get());
    std::vector<uint8_t> buf(1000);
    Status st = c->read_exact(buf);
    ASSERT_FALSE(st.is_ok());
    EXPECT_EQ(st.code(), ECONNRESET) << st.message();
    EXPECT_NE(st.message().find("peer server (127.0.0.1:"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("close_notify"), std::string::npos) << st.message();

    // Writing on into the dead connection: an error, not SIGPIPE.
    const auto big = pattern(1 << 20, 4);
    Status w;
    for (int i = 0; i < 64 && w.is_ok(); ++i) w = c->write_all(big);
    EXPECT_FALSE(w.is_ok());
    EXPECT_TRUE(w.code() == EPIPE || w.code() == ECONNRESET) << w.message();
}

TEST_F(TlsTransportTest, SilentPeerTimesOutInBoundedTime) {
    Listener l = listen(server_config());
    std::promise<void> done;
    auto server = std::async(std::launch::async, [&, f = done.get_future()]() mutable -> Status {
        auto s = l.accept(10s);
        if (!s) return s.status();
        f.wait();  // connected and authenticated, but says nothing
        return Status::ok();
    });
    TlsConfig cc = client_config();
    cc.io_timeout = 500ms;
    auto c = connect("127.0.0.1", l.port(), cc);
    ASSERT_TRUE(c.is_ok()) << c.status().message();
    std::vector<uint8_t> buf(16);
    auto t0 = Clock::now();
    auto r = c->read_some(buf);
    auto took = Clock::now() - t0;
    done.set_value();
    ASSERT_OK(server.get());
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), ETIMEDOUT) << r.status().message();
    EXPECT_NE(r.status().message().find("peer server (127.0.0.1:"), std::string::npos) << r.status().message();
    EXPECT_GE(took, 400ms);
    EXPECT_LT(took, 5s);

    // The server side: a client that connects and never starts the handshake.
    TlsConfig sc = server_config();
    sc.handshake_timeout = 500ms;
    Listener l2 = listen(sc);
    auto hs = accept_async(l2);
    TlsConfig mute;
    mute.insecure_plaintext = true;
    auto idle = connect("127.0.0.1", l2.port(), mute);
    ASSERT_TRUE(idle.is_ok()) << idle.status().message();
    auto s2 = hs.get();
    ASSERT_FALSE(s2.is_ok());
    EXPECT_EQ(s2.status().code(), ETIMEDOUT) << s2.status().message();
    EXPECT_NE(s2.status().message().find("TLS handshake did not complete within 500 ms"), std::string::npos)
        << s2.status().message();
}

TEST_F(TlsTransportTest, InterruptWakesABlockedReadFromAnotherThread) {
    Listener l = listen(server_config());
    std::promise<void> done;
    auto server = std::async(std::launch::async, [&, f = done.get_future()]() mutable -> Status {
        auto s = l.accept(10s);
        if (!s) return s.status();
        f.wait();
        return Status::ok();
    });
    auto c = connect("127.0.0.1", l.port(), client_config());
    ASSERT_TRUE(c.is_ok()) << c.status().message();
    Stream& stream = *c;
    std::thread stopper([&] {
        std::this_thread::sleep_for(200ms);
        stream.interrupt();
    });
    std::vector<uint8_t> buf(16);
    auto t0 = Clock::now();
    auto r = stream.read_some(buf);
    auto took = Clock::now() - t0;
    stopper.join();
    done.set_value();
    ASSERT_OK(server.get());
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), ECANCELED) << r.status().message();
    EXPECT_LT(took, 3s);
}

TEST_F(TlsTransportTest, ConfigurationErrorsNameTheFile) {
    TlsConfig sc = server_config();
    sc.key_file = (dir_->path() / "good" / "missing.key").string();
    auto l = Listener::bind("127.0.0.1", 0, sc);
    ASSERT_FALSE(l.is_ok());
    EXPECT_NE(l.status().message().find("missing.key"), std::string::npos) << l.status().message();

    sc = server_config();
    sc.key_file = (dir_->path() / "good" / "client.key").string();  // not the server's
    auto l2 = Listener::bind("127.0.0.1", 0, sc);
    ASSERT_FALSE(l2.is_ok());
    EXPECT_NE(l2.status().message().find("does not match"), std::string::npos) << l2.status().message();
}

}  // namespace
}  // namespace icbd::repl
