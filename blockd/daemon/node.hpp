// One blockd node: owns the store, the repository and, per role, the pieces
// that run it (master: membership, push scheduler; replica: link to the
// master, replication receiver, clients and their tgt exports), plus the
// control socket blockctl talks to. docs/blockd.md.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "boot_set_exchange.hpp"
#include "boot_set_uploader.hpp"
#include "version_prefetcher.hpp"
#include "client_manager.hpp"
#include "config.hpp"
#include "control_protocol.hpp"
#include "icbd/replicator/receiver.hpp"
#include "image_service.hpp"
#include "membership.hpp"
#include "metrics.hpp"
#include "peer_server.hpp"
#include "push_scheduler.hpp"
#include "relay_tree.hpp"
#include "replication_server.hpp"
#include "store.hpp"
#include "tgt_admin.hpp"

namespace icbd::node {

class Node {
public:
    // Opens the state, recovers what a crash left, starts every listener and
    // thread. Errors name what could not start (a port in use, the store).
    static Result<std::unique_ptr<Node>> start(const NodeConfig& config);
    ~Node();  // stop()
    void stop();

    // A human line for sd_notify STATUS=.
    std::string status_line();

    // The control commands (docs/blockd-control-protocol.md); public for tests.
    Result<nlohmann::json> handle(const std::string& cmd, const nlohmann::json& args, const ProgressFn& progress);

private:
    explicit Node(NodeConfig config) : cfg_(std::move(config)) {}
    Status open();
    Catalog catalog();            // master: from the repository; replica: as last heard
    std::vector<std::string> users_of(const std::string& image, uint64_t version);
    std::map<std::string, std::vector<uint64_t>> local_versions();
    PongReply on_ping(const PingRequest& ping);
    nlohmann::json on_peer(const repl::PeerIdentity& peer, const nlohmann::json& request);
    void on_received(const repl::ReceiveReport& report);
    // Replica at start: the production and test version of each image held.
    void prefetch_at_start();
    Result<nlohmann::json> cmd_prefetch(const std::string& image, const nlohmann::json& args, const ProgressFn& progress);
    repl::TlsConfig tls() const;
    PrefetchOptions prefetch_options() const;

    Result<nlohmann::json> cmd_status();
    Result<nlohmann::json> cmd_image(const std::string& verb, const nlohmann::json& args, const ProgressFn& progress);
    Result<nlohmann::json> cmd_node(const std::string& verb, const nlohmann::json& args);
    Result<nlohmann::json> cmd_client(const std::string& verb, const nlohmann::json& args);
    Result<nlohmann::json> cmd_push(const std::string& verb, const nlohmann::json& args);
    Result<nlohmann::json> cmd_node_relay(const nlohmann::json& args);
    nlohmann::json on_relay(const repl::PeerIdentity& peer, const nlohmann::json& request);  // replica
    // Master: the relay tree in force ([relay.via], overridden per replica by
    // blockctl node relay, kept in the settings 'relay.via').
    Status load_relay_tree();
    std::string relay_parent(const std::string& replica);
    std::string relay_source(const std::string& replica);  // "config", "blockctl" or ""
    Status relay_assign(const ReplicaRecord& relay, const std::vector<RelayChild>& children);
    Result<nlohmann::json> cmd_lun_stats();

    NodeConfig cfg_;
    std::unique_ptr<NodeStore> store_;
    std::unique_ptr<ImageService> images_;
    std::unique_ptr<Membership> membership_;
    std::unique_ptr<PushScheduler> pushes_;
    std::unique_ptr<MasterLink> link_;
    std::unique_ptr<TgtAdmin> tgt_;
    std::unique_ptr<ClientManager> clients_;
    std::unique_ptr<ReplicationServer> replication_;  // replica: pushes from the master or its parent relay
    std::unique_ptr<BootSetExchange> bootsets_;   // master: bootset.put/get
    std::unique_ptr<BootSetUploader> uploader_;   // replica: boot sets to the master
    std::unique_ptr<VersionPrefetcher> prefetcher_;  // boot sets into the page cache (background: replica)
    repl::TlsConfig master_tls_;                  // replica: client side towards the master
    std::unique_ptr<PeerServer> peer_;
    std::unique_ptr<ControlServer> control_;
    std::unique_ptr<MetricsServer> metrics_;  // GET /metrics (docs/metrics.md)
    std::mutex relay_mu_;
    RelayTree relay_tree_;                                // guarded by relay_mu_
    std::map<std::string, std::string> relay_override_;  // blockctl's entries ("" = direct); relay_mu_
    std::mutex catalog_mu_;
    Catalog replica_catalog_;  // replica: the master's catalog, as last heard
    std::mutex images_mu_;     // one repository operation at a time
    int64_t started_ms_ = 0;
};

}  // namespace icbd::node
