// Master: compares what each live replica holds with the catalog and pushes
// what is missing, one push per (image, version), directly or through the
// relay tree. State-driven, so a commit, a replica coming back, a dead relay
// and a master restart all end in the same pass.
#include "push_scheduler.hpp"

#include <algorithm>
#include <set>

#include "icbd/log.hpp"

namespace icbd::node {

namespace {

// A failed replica is tried again after this long (a push to a replica that
// is down costs a connect timeout; keepalive marks it suspect meanwhile).
constexpr std::chrono::seconds kPassInterval{5};
// While children fed by a relay await their confirming keepalive answer.
constexpr std::chrono::seconds kPendingPassInterval{1};
// A child whose answer never comes (its pings fail: it turns suspect and
// is skipped anyway) is not held back longer than this.
constexpr int64_t kConfirmTimeoutMs = 60'000;
// A relay answers its parent when it has published, its children end after
// it (up to its window behind): a child of a relay that succeeded is given
// this long before the master pushes to it itself.
constexpr int64_t kRelayGraceMs = 10'000;

std::string version_text(const std::string& image, uint64_t version) {
    return "image '" + image + "' version " + std::to_string(version);
}

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

void PushScheduler::set_relay_hooks(RelayHooks hooks) { hooks_ = std::move(hooks); }

std::vector<RelayRoute> PushScheduler::route(const std::vector<std::string>& targets,
                                             const std::function<std::string(const std::string&)>& parent_of,
                                             const std::function<uint64_t(const std::string&)>& base,
                                             const std::map<std::string, RelayView>& views,
                                             const std::set<std::string>& direct_only) {
    auto parent = [&](const std::string& n) { return parent_of ? parent_of(n) : std::string(); };
    auto depth = [&](const std::string& n) {
        unsigned d = 0;
        // The tree is acyclic (RelayTree); the bound only guards a broken hook.
        for (std::string p = parent(n); !p.empty() && d <= targets.size() + 1; p = parent(p)) ++d;
        return d;
    };
    std::vector<std::pair<unsigned, std::string>> order;
    for (const std::string& t : targets) order.emplace_back(depth(t), t);
    std::stable_sort(order.begin(), order.end(), [](auto& a, auto& b) { return a.first < b.first; });
    std::set<std::string> fed;
    std::vector<RelayRoute> out;
    for (const auto& [d, t] : order) {
        RelayRoute r{t, ""};
        const std::string p = parent(t);
        auto view = views.find(t);
        if (!p.empty() && fed.count(p) && !direct_only.count(t) && base(p) == base(t) && view != views.end() &&
            view->second.parent_applied == p)
            r.via = p;
        fed.insert(t);
        out.push_back(std::move(r));
    }
    return out;
}

std::optional<PushInFlight> PushScheduler::in_flight() const {
    std::lock_guard lk(mu_);
    return in_flight_;
}

void PushScheduler::run() {
    std::unique_lock lk(mu_);
    while (!stopping_) {
        cv_.wait_for(lk, pending_.empty() ? std::chrono::seconds(kPassInterval) : kPendingPassInterval,
                     [this] { return stopping_ || wake_; });
        if (stopping_) break;
        wake_ = false;
        lk.unlock();
        pass();
        lk.lock();
    }
}

bool PushScheduler::awaiting(const ReplicaRecord& r, const std::string& image,
                             const std::map<std::string, RelayView>& views, const std::vector<ReplicaRecord>& all) {
    auto it = pending_.find({r.name, image});
    if (it == pending_.end()) return false;
    const Pending& p = it->second;
    auto view = views.find(r.name);
    const int64_t heard_ms = view == views.end() ? 0 : view->second.heard_ms;
    const bool heard = heard_ms >= p.after_ms;
    const int64_t now = now_ms();
    // The record's versions are what the last answer said (`views` was read
    // before the records, and an answer updates the record first).
    auto has = r.versions.find(image);
    const bool got = has != r.versions.end() &&
                     std::binary_search(has->second.begin(), has->second.end(), p.version);
    if (!got) {
        auto relay = std::find_if(all.begin(), all.end(), [&](const ReplicaRecord& x) { return x.name == p.via; });
        const bool relay_gone = !p.relay_ok || relay == all.end() || relay->state != Liveness::alive;
        const bool final_answer = heard && (relay_gone || heard_ms >= p.after_ms + kRelayGraceMs);
        if (!final_answer && now - p.after_ms < kConfirmTimeoutMs) return true;
    }
    PushRecord rec;
    rec.image = image;
    rec.version = p.version;
    rec.replica = r.name;
    rec.started_ms = p.started_ms;
    rec.ok = got;
    rec.message = got ? "relayed by '" + p.via + "'"
                      : "relay '" + p.via + "' did not deliver" + (heard ? "" : " (no keepalive answer)") +
                            "; pushing directly";
    if (auto id = store_.push_started(rec)) {
        rec.id = *id;
        rec.finished_ms = now;
        if (auto st = store_.push_finished(rec); !st) log(LogLevel::error, st.message());
    }
    if (got) {
        log(LogLevel::info, version_text(image, p.version) + ": replica '" + r.name + "' has it, relayed by '" + p.via + "'",
            {.image = image, .version = p.version, .peer = r.name});
    } else {
        undelivered_[{r.name, image}] = p.version;
        log(LogLevel::warning, version_text(image, p.version) + ": replica '" + r.name + "': " + rec.message,
            {.image = image, .version = p.version, .peer = r.name});
    }
    pending_.erase(it);
    return false;
}

void PushScheduler::pass() {
    Catalog catalog = catalog_();
    // Before the records: an answer heard here has already updated its record.
    const std::map<std::string, RelayView> views = hooks_.heard ? hooks_.heard() : std::map<std::string, RelayView>{};
    auto replicas = store_.replicas();
    if (!replicas) {
        log(LogLevel::error, "push scheduler: " + replicas.status().message());
        return;
    }
    // Pending entries of replicas that are gone or no longer want the image are dropped.
    for (auto it = pending_.begin(); it != pending_.end();) {
        auto r = std::find_if(replicas->begin(), replicas->end(), [&](const ReplicaRecord& x) { return x.name == it->first.first; });
        if (r == replicas->end() || !catalog.count(it->first.second)) it = pending_.erase(it);
        else ++it;
    }
    auto find = [&](const std::string& name) -> const ReplicaRecord* {
        auto it = std::find_if(replicas->begin(), replicas->end(), [&](const ReplicaRecord& x) { return x.name == name; });
        return it == replicas->end() ? nullptr : &*it;
    };
    auto has_children = [&](const std::string& name) {
        if (!hooks_.parent_of) return false;
        return std::any_of(replicas->begin(), replicas->end(),
                           [&](const ReplicaRecord& x) { return hooks_.parent_of(x.name) == name; });
    };
    for (const auto& [image, entry] : catalog) {
        // Versions to push for this image, ascending, and who needs each.
        std::map<uint64_t, std::vector<std::string>> plan;
        for (const ReplicaRecord& r : *replicas) {
            if (r.state != Liveness::alive || !r.wants(image) || r.replication_address.empty()) continue;
            if (awaiting(r, image, views, *replicas)) continue;
            auto it = r.versions.find(image);
            static const std::vector<uint64_t> none;
            for (uint64_t v : wanted(entry, it == r.versions.end() ? none : it->second)) plan[v].push_back(r.name);
        }
        std::map<std::string, bool> failed;  // a replica that failed v is not offered v+1 in this pass
        for (auto& [version, wanting] : plan) {
            {
                std::lock_guard lk(mu_);
                if (stopping_) return;
            }
            std::vector<std::string> targets;
            std::set<std::string> direct_only;
            for (const std::string& name : wanting) {
                if (failed[name] || !find(name)) continue;
                targets.push_back(name);
                auto u = undelivered_.find({name, image});
                if (u != undelivered_.end() && u->second == version) direct_only.insert(name);
            }
            auto base = [&](const std::string& name) -> uint64_t {
                const ReplicaRecord* r = find(name);
                if (!r) return 0;
                auto it = r->versions.find(image);
                return it == r->versions.end() || it->second.empty() ? 0 : it->second.back();
            };
            std::vector<RelayRoute> routes = route(targets, hooks_.parent_of, base, views, direct_only);
            // Tell each relay of this push its children (and clear those told
            // before); a relay that cannot be told feeds nobody: its children
            // are pushed directly.
            std::map<std::string, std::vector<RelayChild>> children;
            for (const RelayRoute& r : routes)
                if (!r.via.empty()) children[r.via].push_back({r.replica, find(r.replica)->replication_address});
            if (hooks_.assign) {
                for (const RelayRoute& r : routes) {
                    auto kids = children.find(r.replica);
                    const bool has = kids != children.end() && !kids->second.empty();
                    if (!has && !assigned_.count(r.replica) && !has_children(r.replica)) continue;
                    static const std::vector<RelayChild> no_children;
                    Status st = hooks_.assign(*find(r.replica), has ? kids->second : no_children);
                    if (st) {
                        if (has) assigned_.insert(r.replica);
                        else assigned_.erase(r.replica);
                        continue;
                    }
                    log(LogLevel::warning, version_text(image, version) + ": relay '" + r.replica +
                                               "' cannot be told its children (" + st.message() +
                                               "); the master pushes to them directly",
                        {.image = image, .version = version, .peer = r.replica});
                    for (RelayRoute& c : routes)
                        if (c.via == r.replica) c.via.clear();
                    children.erase(r.replica);
                }
            } else {
                for (RelayRoute& c : routes) c.via.clear();
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
            std::vector<const RelayRoute*> relayed;
            for (const RelayRoute& route : routes) {
                const ReplicaRecord* r = find(route.replica);
                if (!route.via.empty()) {
                    relayed.push_back(&route);
                    continue;
                }
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
            const int64_t started = now_ms();
            std::string how = std::to_string(go.size()) + " replica(s)";
            if (!relayed.empty()) {
                how += ", " + std::to_string(relayed.size()) + " more through relays (";
                for (size_t i = 0; i < relayed.size(); ++i)
                    how += (i ? ", '" : "'") + relayed[i]->replica + "' via '" + relayed[i]->via + "'";
                how += ")";
            }
            log(LogLevel::info, version_text(image, version) + ": pushing to " + how, {.image = image, .version = version});
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
                    log(LogLevel::info, version_text(image, version) + ": replica '" + r.name + "' has it (" +
                                            std::to_string(rec.wire_bytes) + " bytes sent)",
                        {.image = image, .version = version, .peer = r.name});
                } else {
                    failed[r.name] = true;
                    log(LogLevel::warning, version_text(image, version) + ": push to replica '" + r.name +
                                               "' failed: " + rec.message,
                        {.image = image, .version = version, .peer = r.name});
                }
            }
            // Children fed by relays: their keepalive answers tell (awaiting()).
            const int64_t ended = now_ms();
            std::map<std::string, bool> ok_by_name;
            for (size_t i = 0; i < go.size(); ++i)
                ok_by_name[go[i]->name] = report && report->replicas[i].ok();
            for (const RelayRoute* c : relayed) {
                // A relay fed by a relay: its own outcome is only known later; take its top's.
                std::string top = c->via;
                while (!ok_by_name.count(top) && hooks_.parent_of && !hooks_.parent_of(top).empty()) top = hooks_.parent_of(top);
                pending_[{c->replica, image}] = Pending{version, c->via, started, ended, ok_by_name[top]};
                failed[c->replica] = true;  // its next version waits for the confirmation
            }
            // Versions just recorded are the bases of the next push.
            go.clear();
            if (auto fresh = store_.replicas()) *replicas = std::move(*fresh);
        }
    }
    // Children still awaited are asked again (this runs every second while
    // any is): a child ends after its relay, so the first answer may be early.
    if (!pending_.empty() && hooks_.confirm) {
        std::vector<std::string> awaited;
        for (const auto& [key, p] : pending_) awaited.push_back(key.first);
        hooks_.confirm(awaited);
    }
}

}  // namespace icbd::node
