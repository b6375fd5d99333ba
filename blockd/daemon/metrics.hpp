// blockd's Prometheus exporter (docs/metrics.md): per-LUN metrics from the
// files bs_icbd keeps, replication metrics from the node store, on GET /metrics.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "config.hpp"
#include "icbd/status.hpp"
#include "store.hpp"

namespace httplib {
class Server;
}

namespace icbd::node {

struct MetricsSources {
    std::filesystem::path lun_dir = "/run/icbd/luns";
    Role role = Role::replica;
    std::string node_name;
    NodeStore* store = nullptr;  // thread-safe; nullptr: LUN metrics only
    // Client name by device path (overlay, cache or backing file). Default:
    // the store's clients, by overlay and cache path.
    std::function<std::map<std::string, std::string>()> clients;
};

// One scrape in the Prometheus text format 0.0.4.
std::string render_metrics(const MetricsSources& sources);

class MetricsServer {
public:
    // Listens on "host:port" (port 0: any free port, see port()).
    static Result<std::unique_ptr<MetricsServer>> start(const std::string& listen, MetricsSources sources);
    ~MetricsServer();  // stop()
    void stop();
    uint16_t port() const { return port_; }

private:
    MetricsServer() = default;
    MetricsSources sources_;
    std::unique_ptr<httplib::Server> server_;
    std::thread thread_;
    uint16_t port_ = 0;
};

}  // namespace icbd::node
