// Master: decides which replica needs which version and pushes it, fan-out
// (one push per (image, version) to every replica that needs it, source read
// once). Driven by state, not a queue: after a commit, a registration or a
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
#include <optional>
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

    void start();
    void stop();
    void trigger();  // look again soon
    // The push under way, if any (for node list).
    std::optional<PushInFlight> in_flight() const;

private:
    void run();
    void pass();
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
