// Replica: the replication listener of blockd. Accepts pushes from the master
// and from the parent relay the master named (docs/blockd.md, "Relay trees"),
// and serves each connection with a receiver that forwards to the children
// the master assigned at that moment (ReceiverOptions::relay_to), so the
// relay assignment can change between pushes without interrupting one.
#pragma once

#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "icbd/replicator/receiver.hpp"
#include "icbd/replicator/transport.hpp"
#include "peer_protocol.hpp"

namespace icbd::node {

class ReplicationServer {
public:
    struct Options {
        std::string host;
        uint16_t port = 0;
        repl::TlsConfig tls;      // our certificates; peers are checked by name after the handshake
        std::string master_name;  // always allowed to push
        // Everything but relay_to/relay_tls, which come from the assignment.
        repl::ReceiverOptions receiver;
    };
    static Result<std::unique_ptr<ReplicationServer>> start(Options options);
    ~ReplicationServer();  // stop()
    void stop();

    // From the master's ping: besides the master, who may push to us ("": nobody).
    void set_parent(const std::string& parent);
    std::string parent() const;
    // From the master's "relay": the children connections accepted from now on feed.
    Status set_children(std::vector<RelayChild> children);
    std::vector<RelayChild> children() const;

private:
    struct Session {
        std::thread thread;
        std::shared_ptr<repl::Receiver> receiver;  // guarded by mu_
        bool done = false;                         // guarded by mu_
    };
    explicit ReplicationServer(Options options) : opt_(std::move(options)) {}
    void accept_loop();
    void serve(std::list<Session>::iterator self, repl::PendingConnection pending);
    repl::ReceiverOptions receiver_options() const;

    Options opt_;
    repl::Listener listener_;
    std::thread thread_;
    std::atomic<bool> stopping_{false};
    mutable std::mutex mu_;
    std::string parent_;
    std::vector<RelayChild> children_;
    std::list<Session> sessions_;
};

}  // namespace icbd::node
