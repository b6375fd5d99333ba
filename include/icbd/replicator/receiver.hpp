// The replica side of replication (docs/replication-protocol.md): serves pushes,
// applies each change stream to a hidden staging tree with durable checkpoints,
// verifies the end-of-version digest and publishes atomically.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "icbd/replicator/transport.hpp"
#include "icbd/replicator/compression.hpp"
#include "icbd/replicator/host_port.hpp"
#include "icbd/replicator/protocol.hpp"
#include "icbd/status.hpp"

namespace icbd::repl {

// The outcome of one OFFER on a replica (what `serve` logs).
struct ReceiveReport {
    std::string peer;  // "master1 (127.0.0.1:40211)"
    std::string image;
    uint64_t version = 0;
    uint64_t base = 0;
    std::optional<NeedKind> kind;  // nullopt when refused before NEED
    uint64_t resumed_after = 0;    // resume_seq of the NEED (0: from the start)
    uint64_t changes_applied = 0;
    uint64_t data_bytes_written = 0;  // uncompressed DATA bytes written
    bool published = false;
    bool staging_kept = false;  // left on disk for a resume
    ErrorCode code = ErrorCode::ok;  // what the sender was told (or told us)
    Status status;              // ok, or the error (names image, version, peer)
};

struct ReceiverOptions {
    std::filesystem::path root;  // the replica's repository
    std::string node_name;       // our HELLO name; empty: the host name
    uint32_t capabilities = kCapLz4 | kCapZstd;
    bool use_io_uring = true;  // data writes through io_uring (pwrite when false or unavailable)
    // Waits this long for a staging area another connection still holds (the
    // previous, cut attempt of the same push may not have noticed yet) before
    // answering `busy`.
    std::chrono::milliseconds busy_wait{5'000};
    // Relay (docs/replication-protocol.md, section 11): forward each version
    // received, frame by frame as verified, to these children; connect to them
    // with `relay_tls`. Empty: a leaf replica.
    std::vector<HostPort> relay_to;
    TlsConfig relay_tls;
    // A child that keeps the relay's window (`relay_window_bytes`) full this
    // long is dropped from the push; its siblings and our receive go on.
    std::chrono::milliseconds relay_max_stall{10'000};
    uint64_t relay_window_bytes = 64u << 20;
    // The peers allowed to push versions to us (section 11, "Who may feed a
    // replica"): certificate names (CN or SAN DNS; the HELLO node name in
    // plaintext mode), e.g. our relay and the master. Another sender gets
    // ERROR refused right after HELLO. Empty: any peer the TLS policy admits.
    std::vector<std::string> accept_from;
    // Called after every OFFER handled (from the connection's thread).
    std::function<void(const ReceiveReport&)> on_report;
};

class Receiver {
public:
    explicit Receiver(ReceiverOptions options);
    ~Receiver();
    Receiver(const Receiver&) = delete;
    Receiver& operator=(const Receiver&) = delete;

    // Runs the protocol on one connected stream until the sender closes it or
    // an error ends it. Returns ok for an orderly end, else the error (also
    // reported through on_report when an offer was under way): any failed
    // offer ends the connection.
    Status serve_connection(Stream& stream);

    // Accepts connections (TLS handshake and session each on its own thread)
    // until stop(), or, with `once`, until the first connection has ended.
    // Handshake failures (a peer without a valid certificate) are logged and
    // do not stop the loop, but for `once`. Returns ok after stop(); with
    // `once`, the outcome of that one connection: its handshake's failure, or
    // what serve_connection() returned.
    Status serve(Listener& listener, bool once = false);

    // Thread-safe: makes serve() return, interrupting the sessions under way
    // (their staging areas stay for resume).
    void stop();

    // Every report so far (tests, the tool's summary).
    std::vector<ReceiveReport> reports() const;

private:
    struct Connection;
    void record(const ReceiveReport& r);

    ReceiverOptions opt_;
    mutable std::mutex mu_;
    std::vector<ReceiveReport> reports_;
    std::vector<Stream*> active_;
    Listener* listener_ = nullptr;
    bool stopping_ = false;
};

}  // namespace icbd::repl
