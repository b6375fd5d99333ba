// The node-to-node listener and client call (docs/blockd-peer-protocol.md):
// one request and one answer per mutual-TLS connection, each connection
// handshaken and served on its own thread.
#include "peer_server.hpp"

#include <cerrno>
#include <chrono>
#include <exception>

#include "icbd/log.hpp"
#include "peer_protocol.hpp"

namespace icbd::node {

using nlohmann::json;

namespace {

// The handler is the node's code; whatever it throws becomes an error answer
// instead of taking the daemon down.
json call_handler(const PeerHandler& handler, const repl::PeerIdentity& peer, const json& request) {
    try {
        return handler(peer, request);
    } catch (const std::exception& e) {
        return error_message("peer request '" + request.value("type", std::string("?")) + "' from " + peer.describe() +
                             " failed: " + e.what());
    }
}

json answer_for(const PeerHandler& handler, repl::Stream& stream, const Result<json>& request) {
    if (!request) return error_message(request.status().message());
    if (Status v = check_peer_version(request.value()); !v) return version_error_message(v);
    return call_handler(handler, stream.peer(), request.value());
}

}  // namespace

Result<std::unique_ptr<PeerServer>> PeerServer::start(const std::string& host, uint16_t port,
                                                      const repl::TlsConfig& tls, PeerHandler handler) {
    auto listener = repl::Listener::bind(host, port, tls);
    if (!listener) return listener.status();
    // The constructor is private: only start() makes a running server.
    std::unique_ptr<PeerServer> server(new PeerServer());
    server->listener_ = std::move(*listener);
    server->port_ = server->listener_.port();
    server->tls_ = tls;
    server->handler_ = std::move(handler);
    server->thread_ = std::thread([s = server.get()] { s->accept_loop(); });
    return server;
}

PeerServer::~PeerServer() { stop(); }

uint16_t PeerServer::port() const { return port_; }

void PeerServer::stop() {
    if (stopping_.exchange(true)) return;
    listener_.stop();
    if (thread_.joinable()) thread_.join();
    {
        std::lock_guard lock(mu_);
        for (auto& s : sessions_)
            if (s.stream) s.stream->interrupt();
    }
    // No new sessions can appear now (the accept thread is gone); a session
    // still in its handshake ends within handshake_timeout.
    for (auto& s : sessions_)
        if (s.thread.joinable()) s.thread.join();
    sessions_.clear();
    listener_ = repl::Listener();  // closes the socket
}

void PeerServer::accept_loop() {
    while (!stopping_) {
        auto pending = listener_.accept_tcp();
        if (!pending) {
            if (stopping_ || pending.status().code() == ECANCELED) break;
            log(LogLevel::warning, "peer listener " + listener_.address() + ": " + pending.status().message());
            // Out of descriptors or similar: do not spin on it.
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            continue;
        }
        reap_finished();
        std::lock_guard lock(mu_);
        sessions_.emplace_back();
        auto it = std::prev(sessions_.end());
        it->thread = std::thread([this, it, p = std::move(*pending)]() mutable { serve(it, std::move(p)); });
    }
}

void PeerServer::reap_finished() {
    std::list<Session> finished;
    {
        std::lock_guard lock(mu_);
        for (auto it = sessions_.begin(); it != sessions_.end();) {
            auto next = std::next(it);
            if (it->done) finished.splice(finished.end(), sessions_, it);
            it = next;
        }
    }
    for (auto& s : finished)
        if (s.thread.joinable()) s.thread.join();
}

void PeerServer::serve(std::list<Session>::iterator self, repl::PendingConnection pending) {
    const std::string from = pending.address();
    auto stream = std::move(pending).handshake();
    auto finish = [&] {
        std::lock_guard lock(mu_);
        self->stream = nullptr;
        self->done = true;
    };
    if (!stream) {
        log(LogLevel::warning, "peer listener " + listener_.address() + ": connection from " + from +
                                   " refused: " + stream.status().message(), {.peer = from});
        finish();
        return;
    }
    {
        std::lock_guard lock(mu_);
        if (stopping_) {
            self->done = true;
            return;
        }
        self->stream = &*stream;
    }
    auto request = read_peer_message(*stream);
    if (!request)
        log(LogLevel::warning, "peer listener " + listener_.address() + ": " + request.status().message());
    json answer = answer_for(handler_, *stream, request);
    // A peer that already hung up gets nothing; there is nobody to tell.
    if (write_peer_message(*stream, answer)) (void)stream->shutdown();
    finish();
}

Result<json> peer_call(const std::string& address, const repl::TlsConfig& tls, const json& request) {
    auto hp = parse_peer_address(address);
    if (!hp) return Status::error(hp.status().code(), "peer " + hp.status().message());
    auto stream = repl::connect(hp->first, hp->second, tls);
    if (!stream) return stream.status();
    if (Status s = write_peer_message(*stream, request); !s) return s;
    auto answer = read_peer_message(*stream);
    if (!answer) return answer.status();
    (void)stream->shutdown();
    const std::string who = "peer " + stream->peer().describe();
    if (Status v = check_peer_version(*answer); !v) return Status::error(v.code(), who + ": answer: " + v.message());
    if (answer->at("type") == "error") {
        auto m = answer->find("message");
        std::string text = m != answer->end() && m->is_string() ? m->get<std::string>() : "error without a message";
        return Status::error(answer->contains("supported") ? EPROTONOSUPPORT : EREMOTEIO, who + ": " + text);
    }
    return answer;
}

}  // namespace icbd::node
