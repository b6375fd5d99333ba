// Master: compares what each live replica holds with the catalog and pushes
// what is missing, one fan-out push per (image, version). State-driven, so a
// commit, a replica coming back and a master restart all end in the same pass.
#include "push_scheduler.hpp"

#include <algorithm>
#include <set>

#include "icbd/log.hpp"

namespace icbd::node {

namespace {

// A failed replica is tried again after this long (a push to a replica that
// is down costs a connect timeout; keepalive marks it suspect meanwhile).
constexpr std::chrono::seconds kPassInterval{5};

}  // namespace

PushScheduler::PushScheduler(Options options, NodeStore& store, std::function<Catalog()> catalog)
    : opt_(std::move(options)), store_(store), catalog_(std::move(catalog)) {}

PushScheduler::~PushScheduler() { stop(); }

std::vector<uint64_t> PushScheduler::wanted(const CatalogImage& image, const std::vector<uint64_t>& replica_has) {
    if (image.versions.empty()) return {};
    uint64_t has_newest = replica_has.empty() ? 0 : *std::max_element(replica_has.begin(), replica_has.end());
    std::set<uint64_t> want;
    auto published = [&](uint64_t v) {
        return v != 0 && std::binary_search(image.versions.begin(), image.versions.end(), v);
    };
    // A replica only accepts versions newer than its newest (docs/image-layout.md),
    // so anything older it lacks is out of reach: channel versions first, in
    // ascending order, then the newest.
    for (uint64_t v : {image.production, image.test, image.versions.back()}) {
        if (published(v) && v > has_newest) want.insert(v);
    }
    return {want.begin(), want.end()};
}

void PushScheduler::start() {
    std::lock_guard lk(mu_);
    if (thread_.joinable()) return;
    stopping_ = false;
    thread_ = std::thread([this] { run(); });
}

void PushScheduler::stop() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void PushScheduler::trigger() {
    {
        std::lock_guard lk(mu_);
        wake_ = true;
    }
    cv_.notify_all();
}

std::optional<PushInFlight> PushScheduler::in_flight() const {
    std::lock_guard lk(mu_);
    return in_flight_;
}

void PushScheduler::run() {
    std::unique_lock lk(mu_);
    while (!stopping_) {
        cv_.wait_for(lk, kPassInterval, [this] { return stopping_ || wake_; });
        if (stopping_) break;
        wake_ = false;
        lk.unlock();
        pass();
        lk.lock();
    }
}

void PushScheduler::pass() {
    Catalog catalog = catalog_();
    auto replicas = store_.replicas();
    if (!replicas) {
        log(LogLevel::error, "push scheduler: " + replicas.status().message());
        return;
    }
    for (const auto& [image, entry] : catalog) {
        // Versions to push for this image, ascending, and who needs each.
        std::map<uint64_t, std::vector<std::string>> plan;
        for (const ReplicaRecord& r : *replicas) {
            if (r.state != Liveness::alive || !r.wants(image) || r.replication_address.empty()) continue;
            auto it = r.versions.find(image);
            static const std::vector<uint64_t> none;
            for (uint64_t v : wanted(entry, it == r.versions.end() ? none : it->second)) plan[v].push_back(r.name);
        }
        std::map<std::string, bool> failed;  // a replica that failed v is not offered v+1 in this pass
        for (auto& [version, targets] : plan) {
            {
                std::lock_guard lk(mu_);
                if (stopping_) return;
            }
            repl::PushOptions po;
            po.root = opt_.repository;
            po.image = image;
            po.version = version;
            po.tls = opt_.tls;
            po.tls.allowed_peer_names.clear();
            po.node_name = opt_.node_name;
            po.compression = opt_.compression;
            po.compression_level = opt_.compression_level;
            po.compress_auto = opt_.compress_auto;
            po.bandwidth_limit = opt_.bandwidth_limit;
            po.checkpoint_interval = opt_.checkpoint_interval;
            std::vector<const ReplicaRecord*> go;
            for (const std::string& name : targets) {
                if (failed[name]) continue;
                auto found = std::find_if(replicas->begin(), replicas->end(),
                                          [&](const ReplicaRecord& x) { return x.name == name; });
                if (found == replicas->end()) continue;
                const ReplicaRecord* r = &*found;
                auto hp = repl::parse_host_port(r->replication_address);
                if (!hp) {
                    log(LogLevel::error, "replica '" + r->name + "': " + hp.status().message(), {.peer = r->name});
                    continue;
                }
                po.targets.push_back(*hp);
                po.tls.allowed_peer_names.push_back(r->name);
                go.push_back(r);
            }
            if (go.empty()) continue;
            po.on_progress = [this, &image, version](const std::vector<repl::ReplicaProgress>& p) {
                std::lock_guard lk(mu_);
                in_flight_ = PushInFlight{image, version, p};
            };
            {
                std::lock_guard lk(mu_);
                in_flight_ = PushInFlight{image, version, {}};
            }
            std::vector<int64_t> ids;
            for (const ReplicaRecord* r : go) {
                PushRecord rec;
                rec.image = image;
                rec.version = version;
                rec.replica = r->name;
                rec.started_ms = now_ms();
                auto id = store_.push_started(rec);
                ids.push_back(id ? *id : 0);
            }
            log(LogLevel::info, "image '" + image + "' version " + std::to_string(version) + ": pushing to " +
                                    std::to_string(go.size()) + " replica(s)",
                {.image = image, .version = version});
            auto report = repl::push(po);
            {
                std::lock_guard lk(mu_);
                in_flight_.reset();
            }
            for (size_t i = 0; i < go.size(); ++i) {
                const ReplicaRecord& r = *go[i];
                PushRecord rec;
                rec.id = ids[i];
                rec.image = image;
                rec.version = version;
                rec.replica = r.name;
                rec.finished_ms = now_ms();
                if (!report) {
                    rec.message = report.status().message();
                } else {
                    const repl::ReplicaReport& rr = report->replicas[i];
                    rec.ok = rr.ok();
                    rec.wire_bytes = rr.wire_bytes_sent;
                    rec.payload_bytes = rr.payload_bytes;
                    rec.message = rr.ok() ? "" : rr.status.message();
                }
                if (rec.id != 0) {
                    if (auto st = store_.push_finished(rec); !st) log(LogLevel::error, st.message());
                }
                if (rec.ok) {
                    // Keepalive will confirm; recording it now keeps the next
                    // version's plan incremental from this one.
                    auto versions = r.versions;
                    auto& list = versions[image];
                    if (!std::binary_search(list.begin(), list.end(), version)) {
                        list.push_back(version);
                        std::sort(list.begin(), list.end());
                    }
                    if (auto st = store_.set_replica_versions(r.name, versions); !st) log(LogLevel::error, st.message());
                    log(LogLevel::info, "image '" + image + "' version " + std::to_string(version) + ": replica '" +
                                            r.name + "' has it (" + std::to_string(rec.wire_bytes) + " bytes sent)",
                        {.image = image, .version = version, .peer = r.name});
                } else {
                    failed[r.name] = true;
                    log(LogLevel::warning, "image '" + image + "' version " + std::to_string(version) +
                                               ": push to replica '" + r.name + "' failed: " + rec.message,
                        {.image = image, .version = version, .peer = r.name});
                }
            }
            // Versions just recorded are the bases of the next push.
            go.clear();
            if (auto fresh = store_.replicas()) *replicas = std::move(*fresh);
        }
    }
}

}  // namespace icbd::node
