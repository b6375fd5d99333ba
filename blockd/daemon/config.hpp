// blockd's configuration: one TOML file per node (docs/blockd.md, "Configuration").
// Parsing refuses unknown keys, wrong types and unreadable files with one line
// naming the file, the key and the cause.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "icbd/status.hpp"

namespace icbd::node {

enum class Role { master, replica };
const char* role_name(Role r);  // "master", "replica"

struct NodeConfig {
    Role role = Role::replica;
    std::string name;  // this node's name = the CN of its certificate (default: read from tls.cert)

    std::filesystem::path state_dir = "/var/lib/icbd";  // blockd.db lives here; client overlays under clients/
    std::filesystem::path runtime_dir = "/run/icbd";    // control socket
    std::filesystem::path control_socket;               // default <runtime_dir>/blockd.sock
    std::string control_group;                          // group allowed on the socket besides root; "" = root only

    std::filesystem::path repository;  // repository root (images/<image>/<version>); must exist

    // TLS (mutual): PEM files; all three required, checked readable at load.
    std::string tls_ca, tls_cert, tls_key;

    // Peer (node-to-node control protocol) listener and the address others use to reach it.
    std::string peer_listen = "0.0.0.0:7401";
    std::string peer_advertise;  // default: peer_listen with 127.0.0.1 when it listens on all addresses

    // Replication receiver (replica only).
    std::string replication_listen = "0.0.0.0:7400";
    std::string replication_advertise;  // default as peer_advertise

    // Replica only: the master to register with.
    std::string master_address;  // "host:port" of the master's peer listener
    std::string master_name;     // the master's certificate name (only it may push to us)
    std::vector<std::string> subscribe = {"*"};  // images this replica wants; "*" = all

    // Master only: keepalive of replicas.
    std::chrono::milliseconds keepalive_interval{10'000};
    unsigned keepalive_tries = 3;

    // Master only: pushes.
    std::string compression = "zstd";  // zstd | lz4 | none | auto (adapts to whether the link or the CPU limits)
    std::optional<int> compression_level;
    uint64_t bandwidth_limit = 0;  // bytes/s; 0 = unlimited ("50M" in the file)
    // Bytes of frames between checkpoints; 0: automatic (every 1/16 of the
    // stream, 100 ms to 1 s apart: docs/replication-protocol.md).
    uint64_t checkpoint_interval = 0;

    // Master only: the relay tree (docs/blockd.md, "Relay trees"), replica ->
    // its parent; checked at load (no cycle, no self, not the master).
    std::map<std::string, std::string> relay_via;

    // Replica only: tgt export.
    int tgt_control_port = 0;  // tgtadm -C N (0 = the system tgtd)
    std::string iqn_prefix = "iqn.2026-12.org.icbd";
    std::filesystem::path overlay_dir;  // default <state_dir>/clients
    std::filesystem::path cache_dir = "/var/cache/icbd";
    uint64_t cache_size = 1ull << 30;  // per client; 0 = no write-back cache
    std::string default_channel = "production";
    std::chrono::milliseconds reconcile_interval{2'000};  // client/tgtd reconciliation period

    // Prometheus /metrics (docs/metrics.md): "host:port", "" = off; the per-LUN files it reads.
    std::string metrics_listen = "127.0.0.1:9474";
    std::filesystem::path metrics_dir = "/run/icbd/luns";

    // Boot sets into the page cache (docs/blockd.md, "Boot sets"): at publish
    // and start on a replica (blockctl image prefetch runs either way); bytes/s, 0 = unlimited.
    bool prefetch_enabled = true;
    uint64_t prefetch_max_rate = 0;
    bool prefetch_adaptive = true;  // give way to others reading the disk (docs/boot-set.md, "Giving way to clients")

    std::filesystem::path source;  // the file this was read from (messages)
};

// Reads and validates the file. Errors: "<file>: <key>: <cause>".
Result<NodeConfig> load_config(const std::filesystem::path& file);
// The same from text (tests); `name` is used as the file name in messages.
Result<NodeConfig> parse_config(const std::string& text, const std::string& name);

// "10s", "500ms", "2m", "1h" or a bare number of seconds.
Result<std::chrono::milliseconds> parse_duration(const std::string& text);

}  // namespace icbd::node
