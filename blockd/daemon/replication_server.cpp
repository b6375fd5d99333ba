// Replica: accepts replication connections from the master or its parent
// relay, each served on its own thread by a receiver made with the relay
// children assigned when it was accepted.
#include "replication_server.hpp"

#include <cerrno>

#include "icbd/log.hpp"

namespace icbd::node {

namespace {

// A child that does not answer within this is not fed by this push (the master
// feeds it instead); the replicator's 10 s default would hold our own NEED back.
constexpr std::chrono::milliseconds kChildConnectTimeout{3'000};

}  // namespace

Result<std::unique_ptr<ReplicationServer>> ReplicationServer::start(Options options) {
    std::unique_ptr<ReplicationServer> s(new ReplicationServer(std::move(options)));
    // Any certificate the cluster's CA signed passes the handshake; who may
    // push is decided per connection (the parent changes at run time).
    repl::TlsConfig tls = s->opt_.tls;
    tls.allowed_peer_names.clear();
    auto listener = repl::Listener::bind(s->opt_.host, s->opt_.port, tls);
    if (!listener) return Status::error(listener.status().code(), "replication.listen: " + listener.status().message());
    s->listener_ = std::move(*listener);
    s->thread_ = std::thread([p = s.get()] { p->accept_loop(); });
    return s;
}

ReplicationServer::~ReplicationServer() { stop(); }

void ReplicationServer::stop() {
    if (stopping_.exchange(true)) return;
    listener_.stop();
    if (thread_.joinable()) thread_.join();
    std::list<Session> sessions;
    {
        std::lock_guard lk(mu_);
        for (Session& s : sessions_)
            if (s.receiver) s.receiver->stop();  // interrupts its stream; staging stays for resume
        sessions.splice(sessions.end(), sessions_);
    }
    for (Session& s : sessions)
        if (s.thread.joinable()) s.thread.join();
}

void ReplicationServer::set_parent(const std::string& parent) {
    std::lock_guard lk(mu_);
    if (parent_ == parent) return;
    log(LogLevel::info, parent.empty() ? "relay tree: no parent any more (only the master '" + opt_.master_name + "' may push)"
                                       : "relay tree: parent '" + parent + "' may push to this replica besides the master");
    parent_ = parent;
}

std::string ReplicationServer::parent() const {
    std::lock_guard lk(mu_);
    return parent_;
}

Status ReplicationServer::set_children(std::vector<RelayChild> children) {
    for (const RelayChild& c : children) {
        if (c.name == opt_.receiver.node_name)
            return Status::error(EINVAL, "relay: child '" + c.name + "' is this replica itself");
        if (auto hp = repl::parse_host_port(c.replication_address); !hp)
            return Status::error(EINVAL, "relay: child '" + c.name + "': " + hp.status().message());
    }
    std::lock_guard lk(mu_);
    auto names = [](const std::vector<RelayChild>& v) {
        std::string out;
        for (const RelayChild& c : v) out += (out.empty() ? "'" : ", '") + c.name + "' (" + c.replication_address + ")";
        return out.empty() ? std::string("none") : out;
    };
    if (names(children) != names(children_)) log(LogLevel::info, "relay tree: children to feed: " + names(children));
    children_ = std::move(children);
    return Status::ok();
}

std::vector<RelayChild> ReplicationServer::children() const {
    std::lock_guard lk(mu_);
    return children_;
}

repl::ReceiverOptions ReplicationServer::receiver_options() const {
    repl::ReceiverOptions ro = opt_.receiver;
    ro.relay_to.clear();
    ro.relay_tls = opt_.tls;
    ro.relay_tls.allowed_peer_names.clear();
    ro.relay_tls.connect_timeout = kChildConnectTimeout;
    ro.relay_tls.handshake_timeout = kChildConnectTimeout;
    std::lock_guard lk(mu_);
    for (const RelayChild& c : children_) {
        auto hp = repl::parse_host_port(c.replication_address);
        if (!hp) continue;  // checked in set_children
        ro.relay_to.push_back(*hp);
        // One TLS config for all children: each must be one of them.
        ro.relay_tls.allowed_peer_names.push_back(c.name);
    }
    return ro;
}

void ReplicationServer::accept_loop() {
    while (!stopping_) {
        {
            // Reap sessions that ended.
            std::list<Session> finished;
            std::lock_guard lk(mu_);
            for (auto it = sessions_.begin(); it != sessions_.end();) {
                auto next = std::next(it);
                if (it->done) finished.splice(finished.end(), sessions_, it);
                it = next;
            }
            for (Session& s : finished)
                if (s.thread.joinable()) s.thread.join();
        }
        auto pc = listener_.accept_tcp();
        if (!pc) {
            if (pc.status().code() == ECANCELED) break;
            log(LogLevel::warning, "replication: accept: " + pc.status().message());
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            continue;
        }
        std::lock_guard lk(mu_);
        if (stopping_) break;
        auto it = sessions_.emplace(sessions_.end());
        it->thread = std::thread([this, it, p = std::move(pc.value())]() mutable { serve(it, std::move(p)); });
    }
}

void ReplicationServer::serve(std::list<Session>::iterator self, repl::PendingConnection pending) {
    auto finish = [&] {
        std::lock_guard lk(mu_);
        self->receiver.reset();
        self->done = true;
    };
    auto stream = std::move(pending).handshake();
    if (!stream) {
        log(LogLevel::warning, "replication: refused connection: " + stream.status().message());
        return finish();
    }
    const repl::PeerIdentity& peer = stream->peer();
    std::string parent = this->parent();
    if (!peer.has_name(opt_.master_name) && (parent.empty() || !peer.has_name(parent))) {
        log(LogLevel::warning, "replication: refused connection from " + peer.describe() + ": not the master '" +
                                   opt_.master_name + "'" + (parent.empty() ? "" : " nor this replica's parent '" + parent + "'"),
            {.peer = peer.common_name});
        stream->close();
        return finish();
    }
    auto receiver = std::make_shared<repl::Receiver>(receiver_options());
    {
        std::lock_guard lk(mu_);
        if (stopping_) return finish();
        self->receiver = receiver;
    }
    (void)receiver->serve_connection(*stream);  // outcomes reach on_report
    finish();
}

}  // namespace icbd::node
