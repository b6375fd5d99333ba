// The master's side of membership (docs/blockd-peer-protocol.md): registration
// of replicas checked against their certificates, and the keepalive that walks
// each replica through alive -> suspect -> dead and back.
#include "membership.hpp"

#include <cerrno>

#include "icbd/log.hpp"
#include "peer_server.hpp"

namespace icbd::node {

using nlohmann::json;

namespace {

// A ping must not outlive its interval by much, or a hanging replica would
// hold its own next keepalive back; loopback needs far less than 100 ms.
repl::TlsConfig ping_tls(repl::TlsConfig tls, const std::string& replica, std::chrono::milliseconds interval) {
    const auto timeout = std::max(interval, std::chrono::milliseconds(100));
    tls.connect_timeout = timeout;
    tls.handshake_timeout = timeout;
    tls.io_timeout = timeout;
    // The pong must come from the replica we mean, not from whoever now holds its address.
    tls.allowed_peer_names = {replica};
    return tls;
}

std::string cause_of(const Result<PongReply>& pong) { return pong ? "" : pong.status().message(); }

}  // namespace

Membership::Membership(Options options, Registry& registry, std::function<Catalog()> catalog,
                       std::function<void(const std::string& replica)> on_change)
    : opt_(std::move(options)), registry_(registry), catalog_(std::move(catalog)), on_change_(std::move(on_change)) {}

Membership::~Membership() { stop(); }

Liveness Membership::next_state(Liveness /*current*/, bool answered, unsigned missed_after, unsigned tries) {
    if (answered) return Liveness::alive;
    return missed_after < tries ? Liveness::suspect : Liveness::dead;
}

json Membership::handle_register(const repl::PeerIdentity& peer, const json& request) {
    auto req = register_from_json(request);
    if (!req) return error_message(req.status().message());
    if (!peer.authenticated || peer.common_name != req->node) {
        std::string msg = "register: node '" + req->node + "' refused: the connection from " + peer.describe() +
                          (peer.authenticated ? " carries the certificate of '" + peer.common_name + "'"
                                              : " is not authenticated");
        log(LogLevel::warning, msg, {.peer = req->node});
        return error_message(msg);
    }
    bool was_alive = true, known = false;
    {
        std::lock_guard lock(record_mu_);
        auto cur = registry_.replica(req->node);
        if (!cur) return error_message("register: replica '" + req->node + "': " + cur.status().message());
        const int64_t now = now_ms();
        ReplicaRecord rec;
        if (cur->has_value()) {
            rec = **cur;
            known = true;
            was_alive = rec.state == Liveness::alive;
        } else {
            rec.name = req->node;
            rec.registered_ms = now;
        }
        rec.peer_address = req->peer_address;
        rec.replication_address = req->replication_address;
        rec.subscribe = req->subscribe;
        rec.versions = req->versions;
        rec.state = Liveness::alive;
        rec.missed = 0;
        rec.last_seen_ms = now;
        Status st = registry_.upsert_replica(rec);
        // upsert keeps a known replica's liveness: registering is an answer too.
        if (st) st = registry_.set_liveness(rec.name, Liveness::alive, now, 0);
        if (st) st = registry_.set_replica_versions(rec.name, rec.versions);
        if (!st) {
            log(LogLevel::error, "register: replica '" + rec.name + "': " + st.message(), {.peer = rec.name});
            return error_message("register: replica '" + rec.name + "': " + st.message());
        }
    }
    const std::string& name = req->node;
    {
        // A replica that registers may have restarted: it accepts no parent
        // until a ping names one again, but its versions are fresh.
        std::lock_guard lock(in_use_mu_);
        relay_[name] = RelayState{"", now_ms()};
    }
    if (!known)
        log(LogLevel::info, "replica '" + name + "' registered from " + peer.address + " (peer " + req->peer_address +
                                ", replication " + req->replication_address + ")",
            {.peer = name});
    else
        log(LogLevel::info, "replica '" + name + "' registered again from " + peer.address +
                                (was_alive ? "" : ": alive again"),
            {.peer = name});
    if (on_change_) on_change_(name);
    return to_json(RegisteredReply{opt_.node_name, static_cast<uint64_t>(opt_.keepalive_interval.count())});
}

void Membership::start() {
    std::lock_guard lock(mu_);
    if (thread_.joinable()) return;
    stopping_ = false;
    thread_ = std::thread([this] { run(); });
}

void Membership::stop() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    // Pings in flight end within their timeouts (about one interval).
    reap_pings(true);
}

void Membership::ping_all_now() {
    {
        std::lock_guard lock(mu_);
        wake_ = true;
    }
    cv_.notify_all();
}

std::map<std::string, std::map<std::string, std::vector<uint64_t>>> Membership::in_use() const {
    std::lock_guard lock(in_use_mu_);
    return in_use_;
}

std::map<std::string, Membership::RelayState> Membership::relay_states() const {
    std::lock_guard lock(in_use_mu_);
    return relay_;
}

void Membership::run() {
    std::unique_lock lock(mu_);
    auto next = std::chrono::steady_clock::now();
    while (!stopping_) {
        cv_.wait_until(lock, next, [this] { return stopping_ || wake_ || !ping_only_.empty(); });
        if (stopping_) break;
        if (!wake_ && std::chrono::steady_clock::now() < next) {
            if (ping_only_.empty()) continue;
            // Out of turn, for a few replicas: the schedule of the rest stays.
            std::set<std::string> only = std::move(ping_only_);
            ping_only_.clear();
            lock.unlock();
            reap_pings(false);
            start_pings(&only);
            lock.lock();
            continue;
        }
        wake_ = false;
        ping_only_.clear();
        // Passes start one interval apart however long a ping takes.
        next = std::chrono::steady_clock::now() + opt_.keepalive_interval;
        lock.unlock();
        reap_pings(false);
        start_pings();
        lock.lock();
    }
}

void Membership::ping_now(const std::vector<std::string>& replicas) {
    {
        std::lock_guard lock(mu_);
        ping_only_.insert(replicas.begin(), replicas.end());
    }
    cv_.notify_all();
}

void Membership::start_pings(const std::set<std::string>* only) {
    auto all = registry_.replicas();
    if (!all) {
        log(LogLevel::error, "keepalive: " + all.status().message());
        return;
    }
    std::lock_guard lock(mu_);
    for (const ReplicaRecord& r : *all) {
        // Dead replicas are pinged too: that is how one comes back. A replica
        // whose previous ping still runs is not pinged twice.
        if (stopping_ || pings_.count(r.name) || (only && !only->count(r.name))) continue;
        Ping& p = pings_[r.name];
        p.thread = std::thread([this, r] {
            ping_one(r);
            std::lock_guard l(mu_);
            // stop() may have taken the entry already (it joins this thread).
            if (auto it = pings_.find(r.name); it != pings_.end()) it->second.done = true;
        });
    }
}

void Membership::reap_pings(bool all) {
    std::vector<std::thread> finished;
    {
        std::lock_guard lock(mu_);
        for (auto it = pings_.begin(); it != pings_.end();) {
            if (all || it->second.done) {
                finished.push_back(std::move(it->second.thread));
                it = pings_.erase(it);
            } else {
                ++it;
            }
        }
    }
    for (auto& t : finished)
        if (t.joinable()) t.join();
}

void Membership::ping_one(const ReplicaRecord& r) {
    PingRequest req;
    req.master = opt_.node_name;
    if (catalog_) req.catalog = catalog_();
    if (opt_.parent_of) req.parent = opt_.parent_of(r.name);
    const int64_t sent_ms = now_ms();
    auto answer = peer_call(r.peer_address, ping_tls(opt_.tls, r.name, opt_.keepalive_interval), to_json(req));
    Result<PongReply> pong = answer ? pong_from_json(*answer) : Result<PongReply>(answer.status());
    if (pong && pong->node != r.name)
        pong = Status::error(EBADMSG, "pong from '" + r.name + "' names node '" + pong->node + "'");
    apply_answer(r.name, pong, sent_ms);
}

void Membership::apply_answer(const std::string& name, const Result<PongReply>& pong, int64_t sent_ms) {
    // Result has no const accessors but value().
    const PongReply* answered = pong ? &pong.value() : nullptr;
    bool changed = false;
    {
        std::lock_guard lock(record_mu_);
        auto cur = registry_.replica(name);
        if (!cur || !cur->has_value()) return;  // removed by an operator meanwhile
        ReplicaRecord rec = **cur;
        const unsigned missed = pong ? 0 : rec.missed + 1;
        const Liveness state = next_state(rec.state, pong.is_ok(), missed, opt_.keepalive_tries);
        Status st = registry_.set_liveness(name, state, pong ? now_ms() : rec.last_seen_ms, missed);
        if (pong && st && rec.subscribe != answered->subscribe) {
            rec.subscribe = answered->subscribe;
            rec.versions = answered->versions;
            st = registry_.upsert_replica(rec);
            changed = true;
        }
        if (pong && st && rec.versions != answered->versions) {
            st = registry_.set_replica_versions(name, answered->versions);
            changed = true;
        }
        if (!st) log(LogLevel::error, "keepalive: replica '" + name + "': " + st.message(), {.peer = name});
        if (state != rec.state) {
            changed = true;
            std::string msg = "replica '" + name + "' is " + liveness_name(state) + " (was " +
                              liveness_name(rec.state) + ")";
            if (!pong) msg += ": " + std::to_string(missed) + " keepalive(s) missed; last: " + cause_of(pong);
            log(state == Liveness::alive ? LogLevel::info : LogLevel::warning, msg, {.peer = name});
        }
    }
    if (pong) {
        std::lock_guard lock(in_use_mu_);
        in_use_[name] = answered->in_use;
        RelayState& rs = relay_[name];
        if (rs.parent_applied != answered->parent) changed = true;  // it can be routed through (or around) now
        rs.parent_applied = answered->parent;
        rs.heard_ms = std::max(rs.heard_ms, sent_ms);
    }
    if (changed && on_change_) on_change_(name);
}

}  // namespace icbd::node
