// The replicator's transport: blocking byte streams over TCP, protected by TLS 1.3
// with mutual certificate authentication (OpenSSL), or plain TCP for tests only.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "icbd/status.hpp"

namespace icbd::repl {

// Certificates and policy of one side. Both sides use the same structure: the
// server checks the client's certificate, the client checks the server's.
struct TlsConfig {
    std::string ca_file;    // PEM: the CA that must have signed the peer's certificate
    std::string cert_file;  // PEM: our own certificate (chain)
    std::string key_file;   // PEM: our private key
    // When not empty, the peer's certificate must carry one of these names as
    // its subject CN or as a SAN DNS name. Empty: any certificate signed by
    // `ca_file` is accepted (the CA is private to the cluster).
    std::vector<std::string> allowed_peer_names;
    // Plain TCP, no encryption, no authentication: only for tests. Both sides
    // must set it; every connection made this way logs a warning naming it.
    bool insecure_plaintext = false;

    std::chrono::milliseconds connect_timeout{10'000};    // TCP connect
    std::chrono::milliseconds handshake_timeout{10'000};  // TLS handshake (both sides)
    // The longest one read/write waits without any progress: a peer that
    // vanished (cable pulled, host down) gives ETIMEDOUT after this, not a hang.
    // A slow peer that keeps moving bytes never times out.
    std::chrono::milliseconds io_timeout{60'000};
};

// Who is at the other end of a Stream. With TLS, the names come from the
// peer's certificate, which the handshake verified against the CA.
struct PeerIdentity {
    std::string address;                 // "127.0.0.1:40211" or "[::1]:7000"
    std::string common_name;             // subject CN; empty in plaintext mode
    std::vector<std::string> dns_names;  // SAN DNS names
    bool authenticated = false;          // true only after a verified TLS handshake
    std::string protocol;                // "TLSv1.3", or "plaintext"
    std::string cipher;                  // e.g. "TLS_AES_256_GCM_SHA384"; empty in plaintext

    // True if `name` equals the CN or one of the SAN DNS names (exact, ASCII
    // case-insensitive; no wildcards).
    bool has_name(const std::string& name) const;
    // For messages: "replica1 (127.0.0.1:40211)", or the address alone.
    std::string describe() const;
};

// Bytes moved by one Stream. `wire` counts what the socket saw (TLS records,
// headers and handshake included); `payload` counts what the caller read or
// wrote. Readable from any thread (a progress line) while the Stream is in use.
struct StreamCounters {
    uint64_t wire_sent = 0;
    uint64_t wire_received = 0;
    uint64_t payload_sent = 0;
    uint64_t payload_received = 0;
};

// A connected, authenticated byte stream. Blocking and thread-confined: one
// thread uses it at a time (except counters() and interrupt()). Errors name the
// peer and the cause, e.g. "peer replica1 (127.0.0.1:40211): no data for 60000 ms".
// SIGPIPE: the socket is written with send(MSG_NOSIGNAL) (TLS goes through our
// own OpenSSL BIO that does the same), so a peer that vanished gives EPIPE and
// never kills the process; callers need not ignore SIGPIPE.
class Stream {
public:
    Stream();  // not connected; every operation fails with ENOTCONN
    Stream(Stream&&) noexcept;
    Stream& operator=(Stream&&) noexcept;
    ~Stream();  // close()

    bool is_open() const;
    const PeerIdentity& peer() const;

    // Reads at least 1 and at most buf.size() bytes. Returns 0 only at an
    // orderly end of stream (the peer's shutdown(): TLS close_notify, or a TCP
    // FIN in plaintext). A TLS connection cut without close_notify is an error
    // (a truncation attack looks the same).
    Result<size_t> read_some(std::span<uint8_t> buf);
    // Fills buf completely; an end of stream before that is an error (ECONNRESET)
    // that says how many bytes came.
    Status read_exact(std::span<uint8_t> buf);
    Status write_all(std::span<const uint8_t> buf);

    // Orderly end of our direction: sends TLS close_notify and a TCP FIN. The
    // peer's read_some then returns 0. Reading remains possible.
    Status shutdown();
    // Releases the connection at once (no close_notify). Idempotent.
    void close();

    // Thread-safe: makes the blocked (and every later) operation of this stream
    // fail promptly, e.g. to drop a replica that falls too far behind. The
    // stream must still be close()d or destroyed by its own thread.
    void interrupt();

    // Changes the per-operation timeout (TlsConfig::io_timeout) of this stream.
    void set_io_timeout(std::chrono::milliseconds timeout);

    StreamCounters counters() const;  // thread-safe

    struct Impl;  // tls_transport.cpp

private:
    explicit Stream(std::unique_ptr<Impl> impl);
    friend class PendingConnection;
    friend Result<Stream> connect(const std::string& host, uint16_t port, const TlsConfig& config);
    std::unique_ptr<Impl> impl_;
};

// A TCP connection accepted but not yet through the TLS handshake. Handshaking
// in a worker thread keeps a slow or hostile client from holding up accept().
class PendingConnection {
public:
    PendingConnection();
    PendingConnection(PendingConnection&&) noexcept;
    PendingConnection& operator=(PendingConnection&&) noexcept;
    ~PendingConnection();
    const std::string& address() const;  // "127.0.0.1:40211"
    // The server side of the handshake, within TlsConfig::handshake_timeout.
    // Fails (naming the peer and the cause) if the client sent no certificate,
    // one not signed by the CA, or one whose names are not allowed.
    Result<Stream> handshake() &&;

    struct Impl;

private:
    explicit PendingConnection(std::unique_ptr<Impl> impl);
    friend class Listener;
    std::unique_ptr<Impl> impl_;
};

// A listening TCP socket and the server side of the TLS policy.
class Listener {
public:
    Listener();
    Listener(Listener&&) noexcept;
    Listener& operator=(Listener&&) noexcept;
    ~Listener();

    // Loads and checks the certificates (a missing file, a key that does not
    // match the certificate fail here, naming the file) and binds host:port.
    // host "" or "0.0.0.0" listens on all IPv4 addresses, "::" on all IPv6 ones.
    // Port 0 picks a free port; port() tells which.
    static Result<Listener> bind(const std::string& host, uint16_t port, const TlsConfig& config);

    uint16_t port() const;
    std::string address() const;  // "127.0.0.1:40211"

    // Waits for the next connection and completes the handshake: the Stream's
    // peer() is the client's verified identity. A client that fails the
    // handshake gives an error naming it; the listener stays usable.
    // `timeout` < 0 waits forever; on timeout the error is ETIMEDOUT. After
    // stop() it fails with ECANCELED.
    Result<Stream> accept(std::chrono::milliseconds timeout = std::chrono::milliseconds(-1));
    // Only the TCP accept; the caller runs handshake(), typically in a thread.
    Result<PendingConnection> accept_tcp(std::chrono::milliseconds timeout = std::chrono::milliseconds(-1));

    // Thread-safe: wakes a blocked accept() and makes later ones fail (ECANCELED).
    void stop();

    struct Impl;

private:
    explicit Listener(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// Connects to host:port (a name or an address) and runs the client side of
// the handshake: the server's certificate must be signed by config.ca_file and,
// if config.allowed_peer_names is set, carry one of them. Returns only once
// the server has accepted our certificate too, so a refusal shows here with
// the server's reason (e.g. "tlsv1 alert unknown ca") and not at the first read.
Result<Stream> connect(const std::string& host, uint16_t port, const TlsConfig& config);

}  // namespace icbd::repl
