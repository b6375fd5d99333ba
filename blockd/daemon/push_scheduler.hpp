// Master: decides which replica needs which version and pushes it, fan-out
// (one push per (image, version) to every replica that needs it, source read
// once), or through the relay tree (docs/blockd.md, "Relay trees": the push
// goes to the replicas routed directly, each relay feeds its children). Driven by state, not a queue: after a commit, a registration or a
// keepalive that reported versions, it compares each live subscribed
// replica's versions with the catalog and pushes what is missing (channel
// versions and the newest, in ascending order, each one incremental from the
// replica's newest), so a replica that was down, new, or missed versions
// catches up by itself and a master restarted mid-push finishes the job.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <utility>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "icbd/replicator/sender.hpp"
#include "peer_protocol.hpp"
#include "store.hpp"

namespace icbd::node {

struct PushInFlight {
    std::string image;
    uint64_t version = 0;
    std::vector<repl::ReplicaProgress> replicas;
};

// What the master last heard from a replica about the relay tree.
struct RelayView {
    std::string parent_applied;  // the parent its last pong said it accepts
    int64_t heard_ms = 0;        // when the ping it last answered was sent (or it registered)
};

// How the scheduler reaches the relay tree (all optional: without them every
// replica is pushed directly).
struct RelayHooks {
    std::function<std::string(const std::string& replica)> parent_of;  // configured; "": the master
    std::function<std::map<std::string, RelayView>()> heard;
    // Tells `relay` the children it feeds from now on (peer message "relay").
    std::function<Status(const ReplicaRecord& relay, const std::vector<RelayChild>& children)> assign;
    // Ask these replicas for their versions now (children awaiting confirmation).
    std::function<void(const std::vector<std::string>& replicas)> confirm;
};

// One version of one image for one replica: how it gets it in this push.
struct RelayRoute {
    std::string replica;
    std::string via;  // "": pushed directly by the master
};

class PushScheduler {
public:
    struct Options {
        std::filesystem::path repository;
        std::string node_name;
        repl::TlsConfig tls;  // client side
        repl::Compression compression = repl::Compression::zstd;
        bool compress_auto = false;  // adapt codec and level per window (repl::PushOptions::compress_auto)
        std::optional<int> compression_level;
        uint64_t bandwidth_limit = 0;
        uint64_t checkpoint_interval = 0;  // 0: the replicator's automatic schedule
    };
    PushScheduler(Options options, NodeStore& store, std::function<Catalog()> catalog);
    ~PushScheduler();

    // The versions `replica` should receive now, ascending (empty: up to date).
    static std::vector<uint64_t> wanted(const CatalogImage& image, const std::vector<uint64_t>& replica_has);

    // Routes one push (public for tests): `targets` need the version; a target
    // goes via its parent when the parent is a target too (so fed by this
    // push), has the same `base`, the child accepts it (`views`), and it is
    // not in `direct_only`. Ascending depth, parents first.
    static std::vector<RelayRoute> route(const std::vector<std::string>& targets,
                                         const std::function<std::string(const std::string&)>& parent_of,
                                         const std::function<uint64_t(const std::string&)>& base,
                                         const std::map<std::string, RelayView>& views,
                                         const std::set<std::string>& direct_only);

    void set_relay_hooks(RelayHooks hooks);  // before start()

    void start();
    void stop();
    void trigger();  // look again soon
    // The push under way, if any (for node list).
    std::optional<PushInFlight> in_flight() const;

private:
    // A child fed through a relay, until a keepalive answer tells whether it
    // has the version.
    struct Pending {
        uint64_t version = 0;
        std::string via;
        int64_t started_ms = 0;
        int64_t after_ms = 0;  // the push to the relays ended
        // The relay's own push: when it failed, the first answer after the
        // push is the truth; when it succeeded, the child may still be
        // finishing (a relay answers its parent before its children end).
        bool relay_ok = false;
    };
    void run();
    void pass();
    // true: `r` is still awaiting confirmation for `image` (skip it this pass).
    bool awaiting(const ReplicaRecord& r, const std::string& image, const std::map<std::string, RelayView>& views,
                  const std::vector<ReplicaRecord>& all);
    RelayHooks hooks_;
    std::map<std::pair<std::string, std::string>, Pending> pending_;  // (replica, image); pass thread only
    // (child, image) -> version its relay failed to deliver: that one goes direct.
    std::map<std::pair<std::string, std::string>, uint64_t> undelivered_;  // pass thread only
    std::set<std::string> assigned_;  // relays told non-empty children (told again, to clear them)
    Options opt_;
    NodeStore& store_;
    std::function<Catalog()> catalog_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
    bool wake_ = true;
    std::optional<PushInFlight> in_flight_;
    std::thread thread_;
};

}  // namespace icbd::node
