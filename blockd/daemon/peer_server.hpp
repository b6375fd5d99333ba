// Accepts node-to-node connections (mutual TLS, peer_protocol.hpp): one
// request and one answer per connection, each connection on its own thread so
// a slow peer holds nobody up. Only peers whose certificate the CA signed get
// this far; what each may ask is the handler's decision.
#pragma once

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "icbd/replicator/transport.hpp"
#include "icbd/status.hpp"

namespace icbd::node {

// Returns the answer message (or an error message built with error_message()).
using PeerHandler = std::function<nlohmann::json(const repl::PeerIdentity& peer, const nlohmann::json& request)>;

class PeerServer {
public:
    static Result<std::unique_ptr<PeerServer>> start(const std::string& host, uint16_t port, const repl::TlsConfig& tls,
                                                     PeerHandler handler);
    ~PeerServer();  // stop()
    // Ends every session and releases the port (a new server may bind it at once).
    void stop();
    uint16_t port() const;

private:
    // One accepted connection: its thread, and its stream while it is in use
    // so that stop() can interrupt a peer that went silent.
    struct Session {
        std::thread thread;
        repl::Stream* stream = nullptr;  // guarded by mu_
        bool done = false;               // guarded by mu_
    };
    PeerServer() = default;
    void accept_loop();
    void serve(std::list<Session>::iterator self, repl::PendingConnection pending);
    void reap_finished();
    repl::Listener listener_;
    repl::TlsConfig tls_;
    uint16_t port_ = 0;  // stays known after stop() released the socket
    PeerHandler handler_;
    std::atomic<bool> stopping_{false};
    std::thread thread_;
    std::mutex mu_;
    std::list<Session> sessions_;
};

// One request/answer exchange with a peer: connect (TLS), send, read the
// answer. An answer of type "error" becomes a Status with its message.
Result<nlohmann::json> peer_call(const std::string& address, const repl::TlsConfig& tls, const nlohmann::json& request);

}  // namespace icbd::node
