// Membership (DESIGN "Node daemon"): on the master, the registry of replicas
// and the keepalive that walks each through alive -> suspect -> dead (and back
// to alive when it answers again; never forgotten silently); on a replica, the
// link that registers with the master and answers its keepalives.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "icbd/replicator/transport.hpp"
#include "icbd/status.hpp"
#include "peer_protocol.hpp"
#include "store.hpp"

namespace icbd::node {

// Master side.
class Membership {
public:
    struct Options {
        std::string node_name;  // ours
        repl::TlsConfig tls;    // client side, for pings
        std::chrono::milliseconds keepalive_interval{10'000};
        unsigned keepalive_tries = 3;
        // The relay tree: each ping names the replica's parent ("": none).
        std::function<std::string(const std::string& replica)> parent_of;
    };
    // What the master last heard from a replica about the relay tree.
    struct RelayState {
        std::string parent_applied;  // the parent its last pong said it accepts ("": none)
        int64_t heard_ms = 0;        // when the ping it answered last was sent (or it registered)
    };
    // catalog(): what every ping carries. on_change(name): called (from the
    // keepalive thread or the registering peer's thread) after a replica
    // registered, changed state or reported new versions; the push scheduler
    // listens to it.
    Membership(Options options, Registry& registry, std::function<Catalog()> catalog,
               std::function<void(const std::string& replica)> on_change);
    ~Membership();  // stop()

    // A "register" request from an authenticated peer. Refused (error answer)
    // when the request's node name is not the peer's certificate name.
    nlohmann::json handle_register(const repl::PeerIdentity& peer, const nlohmann::json& request);

    void start();  // the keepalive thread
    void stop();
    void ping_all_now();  // wakes the keepalive thread (tests, commits)
    // Pings these replicas now, out of turn (children a relay fed: their
    // answers confirm the version); the others keep their schedule.
    void ping_now(const std::vector<std::string>& replicas);

    // State rules, public for tests: after an answer -> alive, missed 0; after a
    // miss -> missed+1, suspect while missed < tries, dead at missed >= tries.
    static Liveness next_state(Liveness current, bool answered, unsigned missed_after, unsigned tries);

    // Per replica, per image: the versions its clients use, from its last pong
    // (kept in memory: a restarted master learns them again at the first ping).
    std::map<std::string, std::map<std::string, std::vector<uint64_t>>> in_use() const;
    // Per replica (kept in memory: a restarted master routes directly until
    // the first pongs): what the push scheduler routes relays by.
    std::map<std::string, RelayState> relay_states() const;

private:
    // One keepalive in flight to one replica; pings to different replicas run
    // in parallel so a dead or hanging one delays nobody else.
    struct Ping {
        std::thread thread;
        bool done = false;  // guarded by mu_
    };
    void run();
    void start_pings(const std::set<std::string>* only = nullptr);
    void reap_pings(bool all);
    void ping_one(const ReplicaRecord& r);
    void apply_answer(const std::string& name, const Result<PongReply>& pong, int64_t sent_ms);

    Options opt_;
    Registry& registry_;
    std::function<Catalog()> catalog_;
    std::function<void(const std::string&)> on_change_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
    bool wake_ = false;
    std::set<std::string> ping_only_;  // guarded by mu_: ping_now()'s replicas
    std::thread thread_;
    std::map<std::string, Ping> pings_;  // guarded by mu_
    // Serializes read-modify-write of one replica's record (registration and
    // ping answers arrive on different threads).
    std::mutex record_mu_;
    mutable std::mutex in_use_mu_;
    std::map<std::string, std::map<std::string, std::vector<uint64_t>>> in_use_;
    std::map<std::string, RelayState> relay_;  // guarded by in_use_mu_
};

// Replica side.
class MasterLink {
public:
    struct Options {
        std::string node_name;
        std::string master_address;  // host:port of the master's peer listener
        repl::TlsConfig tls;         // allowed_peer_names = {master_name}
        std::string peer_address;         // ours, as the master should reach it
        std::string replication_address;  // ours
        std::vector<std::string> subscribe;
        // Re-register when no ping came for this long (the master restarted
        // and lost nothing, but a replica that came back announces itself at once).
        std::chrono::milliseconds reregister_after{30'000};
    };
    // versions(): what we hold now; on_ping(ping) -> pong: the node answers
    // (stores the catalog, reports clients' versions).
    MasterLink(Options options, std::function<std::map<std::string, std::vector<uint64_t>>()> versions,
               std::function<PongReply(const PingRequest&)> on_ping);
    ~MasterLink();

    // A "ping" request from an authenticated peer (must be the master).
    nlohmann::json handle_ping(const repl::PeerIdentity& peer, const nlohmann::json& request);

    void start();  // registers now, and again when pings stop coming
    void stop();
    bool registered() const;
    std::string last_error() const;

private:
    void run();
    Options opt_;
    std::function<std::map<std::string, std::vector<uint64_t>>()> versions_;
    std::function<PongReply(const PingRequest&)> on_ping_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
    bool registered_ = false;
    std::string last_error_;
    std::chrono::steady_clock::time_point last_ping_{};
    std::thread thread_;
};

}  // namespace icbd::node
