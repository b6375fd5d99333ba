// One blockd node, wired: the store and repository, the role's pieces, the
// peer and control listeners, and the control commands blockctl sends.
#include "node.hpp"

#include <grp.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <set>

#include "icbd/log.hpp"
#include "icbd/lun_metrics.hpp"
#include "icbd/replicator/image_path.hpp"

namespace icbd::node {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

Status invalid(const std::string& msg) { return Status::error(EINVAL, msg); }

// Typed access to the control request's arguments; EINVAL names the argument.
Result<std::string> arg_string(const json& args, const char* key, bool required = true) {
    if (!args.is_object() || !args.contains(key) || args[key].is_null()) {
        if (required) return invalid(std::string("argument '") + key + "' is missing");
        return std::string();
    }
    if (!args[key].is_string()) return invalid(std::string("argument '") + key + "' must be a string");
    return args[key].get<std::string>();
}

Result<uint64_t> arg_uint(const json& args, const char* key, bool required = true, uint64_t dflt = 0) {
    if (!args.is_object() || !args.contains(key) || args[key].is_null()) {
        if (required) return invalid(std::string("argument '") + key + "' is missing");
        return dflt;
    }
    if (!args[key].is_number_unsigned() && !args[key].is_number_integer())
        return invalid(std::string("argument '") + key + "' must be a non-negative integer");
    if (args[key].is_number_integer() && args[key].get<int64_t>() < 0)
        return invalid(std::string("argument '") + key + "' must be a non-negative integer");
    return args[key].get<uint64_t>();
}

bool arg_bool(const json& args, const char* key) {
    return args.is_object() && args.contains(key) && args[key].is_boolean() && args[key].get<bool>();
}

json to_json(const VersionRecord& v) {
    return {{"image", v.image},           {"version", v.version},       {"message", v.message},
            {"created_ms", v.created_ms}, {"size_bytes", v.size_bytes}, {"delta_bytes", v.delta_bytes}};
}

json to_json(const Channels& c) {
    return {{"image", c.image},
            {"production", c.production},
            {"test", c.test},
            {"previous_production", c.previous_production}};
}

json to_json(const ClientStatus& c) {
    const ClientRecord& r = c.record;
    return {{"name", r.name},
            {"image", r.image},
            {"channel", r.channel},
            {"initiator", r.initiator},
            {"chap_user", r.chap_user},
            {"persistent", r.persistent},
            {"tid", r.tid},
            {"lun", 1},
            {"target", c.target},
            {"version", r.bound_version},
            {"desired_version", c.desired_version},
            {"behind", c.behind},
            {"sessions", c.sessions},
            {"exported", c.exported},
            {"overlay_blocks", c.overlay_blocks},
            {"overlay_path", r.overlay_path},
            {"cache_path", r.cache_path},
            {"state", client_state_name(r.state)},
            {"created_ms", r.created_ms}};
}

json to_json(const PushRecord& p) {
    return {{"id", p.id},
            {"image", p.image},
            {"version", p.version},
            {"replica", p.replica},
            {"started_ms", p.started_ms},
            {"finished_ms", p.finished_ms},
            {"ok", p.ok},
            {"wire_bytes", p.wire_bytes},
            {"payload_bytes", p.payload_bytes},
            {"message", p.message}};
}

json to_json(const repl::ReplicaProgress& p) {
    return {{"peer", p.peer},
            {"state", p.state},
            {"payload_total", p.payload_total},
            {"payload_sent", p.payload_sent},
            {"wire_sent", p.wire_sent},
            {"rate_bytes_per_s", p.rate_bytes_per_s},
            {"eta_seconds", p.eta_seconds}};
}

// "host:port" -> listen host and port (an empty host listens everywhere).
Result<repl::HostPort> listen_address(const std::string& text, const std::string& what) {
    auto hp = repl::parse_host_port(text);
    if (!hp) return Status::error(EINVAL, what + ": " + hp.status().message());
    return hp;
}

std::string cmd_role_error(const std::string& cmd, Role role) {
    return "'" + cmd + "' is not available on a " + role_name(role) +
           (role == Role::master ? " (clients live on replicas)" : " (images are made on the master)");
}

}  // namespace

Result<std::unique_ptr<Node>> Node::start(const NodeConfig& config) {
    std::unique_ptr<Node> node(new Node(config));
    if (auto st = node->open(); !st) {
        node->stop();
        return st;
    }
    return node;
}

Node::~Node() { stop(); }

PrefetchOptions Node::prefetch_options() const {
    PrefetchOptions o;
    o.max_rate = cfg_.prefetch_max_rate;
    o.adaptive = cfg_.prefetch_adaptive;
    return o;
}

repl::TlsConfig Node::tls() const {
    repl::TlsConfig t;
    t.ca_file = cfg_.tls_ca;
    t.cert_file = cfg_.tls_cert;
    t.key_file = cfg_.tls_key;
    return t;
}

Status Node::open() {
    started_ms_ = now_ms();
    std::error_code ec;
    for (const fs::path& d : {cfg_.state_dir, cfg_.runtime_dir}) {
        fs::create_directories(d, ec);
        if (ec) return Status::error(ec.value(), "directory '" + d.string() + "': " + ec.message());
    }
    auto store = open_sqlite_store(cfg_.state_dir / "blockd.db");
    if (!store) return store.status();
    store_ = std::move(*store);

    auto repo = repl::Repository::open(cfg_.repository);
    if (!repo) return repo.status();
    images_ = std::make_unique<ImageService>(std::move(*repo), *store_, [this](const std::string& i, uint64_t v) {
        return users_of(i, v);
    });
    if (auto st = images_->recover(); !st) return st;

    if (cfg_.role == Role::master) {
        PushScheduler::Options po;
        po.repository = cfg_.repository;
        po.node_name = cfg_.name;
        po.tls = tls();
        if (cfg_.compression == "auto") {
            po.compress_auto = true;
        } else {
            auto comp = repl::parse_compression(cfg_.compression);
            if (!comp) return comp.status();
            po.compression = *comp;
        }
        po.compression_level = cfg_.compression_level;
        po.bandwidth_limit = cfg_.bandwidth_limit;
        po.checkpoint_interval = cfg_.checkpoint_interval;
        pushes_ = std::make_unique<PushScheduler>(po, *store_, [this] { return catalog(); });
        if (auto st = load_relay_tree(); !st) return st;

        Membership::Options mo;
        mo.node_name = cfg_.name;
        mo.tls = tls();
        mo.keepalive_interval = cfg_.keepalive_interval;
        mo.keepalive_tries = cfg_.keepalive_tries;
        mo.parent_of = [this](const std::string& r) { return relay_parent(r); };
        membership_ = std::make_unique<Membership>(
            mo, *store_, [this] { return catalog(); }, [this](const std::string&) { pushes_->trigger(); });
        RelayHooks hooks;
        hooks.parent_of = [this](const std::string& r) { return relay_parent(r); };
        hooks.heard = [this] {
            std::map<std::string, RelayView> out;
            for (const auto& [name, st] : membership_->relay_states()) out[name] = RelayView{st.parent_applied, st.heard_ms};
            return out;
        };
        hooks.assign = [this](const ReplicaRecord& relay, const std::vector<RelayChild>& children) {
            return relay_assign(relay, children);
        };
        hooks.confirm = [this](const std::vector<std::string>& replicas) { membership_->ping_now(replicas); };
        pushes_->set_relay_hooks(std::move(hooks));

        bootsets_ = std::make_unique<BootSetExchange>(cfg_.repository, [this](const std::string& node) {
            auto reps = store_->replicas();
            return reps && std::any_of(reps->begin(), reps->end(), [&](const ReplicaRecord& r) { return r.name == node; });
        });

        auto hp = listen_address(cfg_.peer_listen, "peer.listen");
        if (!hp) return hp.status();
        auto peer = PeerServer::start(hp->host, hp->port, tls(),
                                      [this](const repl::PeerIdentity& p, const json& r) { return on_peer(p, r); });
        if (!peer) return peer.status();
        peer_ = std::move(*peer);
        prefetcher_ = std::make_unique<VersionPrefetcher>(cfg_.repository, prefetch_options(), nullptr, nullptr);
        membership_->start();
        pushes_->start();
    } else {
        if (auto saved = store_->setting("catalog"); saved && saved->has_value()) {
            auto j = json::parse(**saved, nullptr, false);
            if (!j.is_discarded()) {
                auto ping = ping_from_json(json{{"type", "ping"}, {"proto", kPeerProtocolVersion}, {"master", cfg_.master_name},
                                                {"catalog", j}});
                if (ping) replica_catalog_ = ping->catalog;
            }
        }
        tgt_ = std::make_unique<TgtAdmin>(cfg_.tgt_control_port);
        ClientManager::Options co;
        co.iqn_prefix = cfg_.iqn_prefix;
        co.overlay_dir = cfg_.overlay_dir;
        co.cache_dir = cfg_.cache_dir;
        co.cache_size = cfg_.cache_size;
        co.default_channel = cfg_.default_channel;
        co.reconcile_interval = cfg_.reconcile_interval;
        for (const fs::path& d : {cfg_.overlay_dir, cfg_.cache_dir}) {
            fs::create_directories(d, ec);
            if (ec) return Status::error(ec.value(), "directory '" + d.string() + "': " + ec.message());
        }
        clients_ = std::make_unique<ClientManager>(
            co, *store_, *tgt_,
            [this](const std::string& image, uint64_t version) -> Result<fs::path> {
                auto dir = images_->repository().version_path(image, version);
                if (!dir) return dir.status();
                auto file = images_->disk_file(image, version);
                if (!file) return file.status();
                return *dir / *file;
            },
            [this] {
                std::lock_guard lk(catalog_mu_);
                return replica_catalog_;
            },
            [this](const std::string& image) {
                auto v = images_->repository().list_versions(image);
                return v ? *v : std::vector<uint64_t>{};
            });

        repl::TlsConfig from_master = tls();
        from_master.allowed_peer_names = {cfg_.master_name};
        auto rhp = listen_address(cfg_.replication_listen, "replication.listen");
        if (!rhp) return rhp.status();
        ReplicationServer::Options rso;
        rso.host = rhp->host;
        rso.port = rhp->port;
        rso.tls = tls();
        rso.master_name = cfg_.master_name;
        rso.receiver.root = cfg_.repository;
        rso.receiver.node_name = cfg_.name;
        rso.receiver.on_report = [this](const repl::ReceiveReport& r) { on_received(r); };
        auto replication = ReplicationServer::start(rso);
        if (!replication) return replication.status();
        replication_ = std::move(*replication);

        auto hp = listen_address(cfg_.peer_listen, "peer.listen");
        if (!hp) return hp.status();
        auto peer = PeerServer::start(hp->host, hp->port, from_master,
                                      [this](const repl::PeerIdentity& p, const json& r) { return on_peer(p, r); });
        if (!peer) return peer.status();
        peer_ = std::move(*peer);

        MasterLink::Options lo;
        lo.node_name = cfg_.name;
        lo.master_address = cfg_.master_address;
        lo.tls = from_master;
        lo.peer_address = cfg_.peer_advertise;
        lo.replication_address = cfg_.replication_advertise;
        lo.subscribe = cfg_.subscribe;
        lo.reregister_after = std::max(cfg_.keepalive_interval * 3, std::chrono::milliseconds(3000));
        link_ = std::make_unique<MasterLink>(
            lo, [this] { return local_versions(); }, [this](const PingRequest& p) { return on_ping(p); });
        BootSetUploader::Options uo;
        uo.repo = cfg_.repository;
        uo.node_name = cfg_.name;
        uo.master_address = cfg_.master_address;
        uo.tls = from_master;
        uo.ready = [this] { return link_->registered(); };
        uploader_ = std::make_unique<BootSetUploader>(uo, *store_);
        master_tls_ = from_master;
        prefetcher_ = std::make_unique<VersionPrefetcher>(
            cfg_.repository, prefetch_options(),
            [this](const std::string& image, uint64_t version, const std::string& file) -> Result<BootSetReply> {
                auto answer = peer_call(cfg_.master_address, master_tls_,
                                        to_json(BootSetGet{cfg_.name, image, version, file}));
                if (!answer) return answer.status();
                auto reply = bootset_reply_from_json(*answer);
                if (!reply) return reply.status();
                if (reply->image != image || reply->version != version || reply->file != file)
                    return Status::error(EBADMSG, "bootset answer from the master is about another file");
                return reply;
            },
            uploader_.get());
        clients_->start();
        link_->start();
        uploader_->start();
        prefetcher_->start();
        if (cfg_.prefetch_enabled) prefetch_at_start();
    }

    fs::path sock = cfg_.control_socket.empty() ? cfg_.runtime_dir / "blockd.sock" : cfg_.control_socket;
    auto control = ControlServer::start(sock, cfg_.control_group,
                                        [this](const std::string& c, const json& a, const ProgressFn& p) {
                                            return handle(c, a, p);
                                        });
    if (!control) return control.status();
    control_ = std::move(*control);
    if (!cfg_.metrics_listen.empty()) {
        // Metrics are for watching, not serving: a port in use costs /metrics only.
        auto metrics = MetricsServer::start(cfg_.metrics_listen, {cfg_.metrics_dir, cfg_.role, cfg_.name, store_.get(), {}});
        if (metrics) metrics_ = std::move(*metrics);
        else log(LogLevel::error, metrics.status().message() + "; /metrics is off ([metrics] listen in " + cfg_.source.string() + ")");
    }
    return Status::ok();
}

void Node::stop() {
    // Stop taking requests first, then the loops that act on them.
    if (metrics_) metrics_->stop();
    if (control_) control_->stop();
    if (prefetcher_) prefetcher_->stop();
    if (link_) link_->stop();
    if (uploader_) uploader_->stop();
    if (membership_) membership_->stop();
    if (pushes_) pushes_->stop();
    if (peer_) peer_->stop();
    if (replication_) replication_->stop();
    if (clients_) clients_->stop();
}

std::string Node::status_line() {
    std::string s = std::string(role_name(cfg_.role)) + " '" + cfg_.name + "'";
    if (cfg_.role == Role::master) {
        if (auto r = store_->replicas()) {
            size_t alive = std::count_if(r->begin(), r->end(), [](auto& x) { return x.state == Liveness::alive; });
            s += ": " + std::to_string(alive) + "/" + std::to_string(r->size()) + " replicas alive";
        }
        if (auto f = pushes_->in_flight()) s += ", pushing '" + f->image + "' version " + std::to_string(f->version);
    } else {
        s += link_ && link_->registered() ? ": registered" : ": not registered";
        if (auto c = store_->clients()) s += ", " + std::to_string(c->size()) + " clients";
    }
    return s;
}

Catalog Node::catalog() {
    if (cfg_.role == Role::replica) {
        std::lock_guard lk(catalog_mu_);
        return replica_catalog_;
    }
    Catalog cat;
    auto& repo = images_->repository();
    auto names = repo.list_images();
    if (!names) return cat;
    for (const std::string& image : *names) {
        auto versions = repo.list_versions(image);
        if (!versions || versions->empty()) continue;
        CatalogImage ci;
        ci.versions = *versions;
        if (auto ch = store_->channels(image)) {
            ci.production = ch->production;
            ci.test = ch->test;
        }
        if (auto disk = images_->disk_file(image, versions->back())) ci.disk = *disk;
        cat[image] = std::move(ci);
    }
    return cat;
}

std::map<std::string, std::vector<uint64_t>> Node::local_versions() {
    std::map<std::string, std::vector<uint64_t>> out;
    auto& repo = images_->repository();
    auto names = repo.list_images();
    if (!names) return out;
    for (const std::string& image : *names) {
        if (auto v = repo.list_versions(image); v && !v->empty()) out[image] = *v;
    }
    return out;
}

std::vector<std::string> Node::users_of(const std::string& image, uint64_t version) {
    std::vector<std::string> users;
    if (cfg_.role == Role::master) {
        if (auto reps = store_->replicas()) {
            for (const ReplicaRecord& r : *reps) {
                auto it = r.versions.find(image);
                if (it != r.versions.end() && !it->second.empty() && it->second.back() == version)
                    users.push_back("replica '" + r.name + "' (base of its next update)");
            }
        }
        // Versions desktops use on the cache servers, as their last keepalive said.
        for (const auto& [replica, images] : membership_ ? membership_->in_use() : decltype(membership_->in_use()){}) {
            auto it = images.find(image);
            if (it != images.end() && std::find(it->second.begin(), it->second.end(), version) != it->second.end())
                users.push_back("desktops on replica '" + replica + "'");
        }
    } else {
        // The store, not the client manager: that one may be busy in a
        // reconcile that itself waits on the repository.
        if (auto cs = store_->clients()) {
            for (const ClientRecord& c : *cs) {
                if (c.image == image && c.bound_version == version) users.push_back("client '" + c.name + "'");
            }
        }
        if (auto v = images_->repository().newest_version(image); v && v->has_value() && **v == version)
            users.push_back("this replica (base of its next update)");
    }
    return users;
}

PongReply Node::on_ping(const PingRequest& ping) {
    bool changed = false;
    {
        std::lock_guard lk(catalog_mu_);
        json before = to_json(PingRequest{"", replica_catalog_, ""})["catalog"];
        json after = to_json(PingRequest{"", ping.catalog, ""})["catalog"];
        if (before != after) {
            replica_catalog_ = ping.catalog;
            changed = true;
            if (auto st = store_->put_setting("catalog", after.dump()); !st) log(LogLevel::error, st.message());
        }
    }
    if (changed) {
        // Channels as the master says: deletions on this node respect them.
        for (const auto& [image, ci] : ping.catalog) {
            Channels ch;
            ch.image = image;
            ch.production = ci.production;
            ch.test = ci.test;
            if (auto old = store_->channels(image)) ch.previous_production = old->previous_production;
            if (auto st = store_->set_channels(ch); !st) log(LogLevel::error, st.message());
        }
        clients_->trigger();
    }
    PongReply pong;
    pong.node = cfg_.name;
    pong.subscribe = cfg_.subscribe;
    pong.versions = local_versions();
    if (auto cs = store_->clients()) {
        for (const ClientRecord& c : *cs) {
            if (c.bound_version == 0) continue;
            auto& v = pong.in_use[c.image];
            if (std::find(v.begin(), v.end(), c.bound_version) == v.end()) v.push_back(c.bound_version);
        }
        for (auto& [image, v] : pong.in_use) std::sort(v.begin(), v.end());
    }
    // The relay tree: the parent the master names may push to us from now on.
    if (replication_) {
        replication_->set_parent(ping.parent);
        pong.parent = replication_->parent();
    }
    // Boot sets go out after each keepalive, on the uploader's thread: the pong never waits for them.
    if (uploader_) uploader_->trigger();
    return pong;
}

json Node::on_peer(const repl::PeerIdentity& peer, const json& request) {
    std::string type = request.value("type", "");
    if (type == "register" && membership_) return membership_->handle_register(peer, request);
    if (type == "ping" && link_) return link_->handle_ping(peer, request);
    if (type == "relay" && replication_) return on_relay(peer, request);
    if (type == "bootset.put" && bootsets_) return bootsets_->handle_put(peer, request);
    if (type == "bootset.get" && bootsets_) return bootsets_->handle_get(peer, request);
    return error_message("node '" + cfg_.name + "' (" + role_name(cfg_.role) + "): request '" + type +
                         "' not accepted here");
}

void Node::on_received(const repl::ReceiveReport& report) {
    if (!report.published) {
        if (!report.status.is_ok()) log(LogLevel::warning, report.status.message());
        return;
    }
    log(LogLevel::info, "image '" + report.image + "' version " + std::to_string(report.version) + ": received from " +
                            report.peer + " (" + std::to_string(report.data_bytes_written) + " bytes written)",
        {.image = report.image, .version = report.version, .peer = report.peer});
    {
        std::lock_guard lk(images_mu_);
        if (auto st = images_->recover(); !st) log(LogLevel::error, st.message());
    }
    if (clients_) clients_->trigger();
    // Its boot set into the page cache before the desktops move to it.
    if (prefetcher_ && cfg_.prefetch_enabled) prefetcher_->enqueue(report.image, report.version);
}

void Node::prefetch_at_start() {
    auto& repo = images_->repository();
    auto names = repo.list_images();
    if (!names) return;
    for (const std::string& image : *names) {
        auto held = repo.list_versions(image);
        if (!held || held->empty()) continue;
        std::vector<uint64_t> wanted;
        if (auto ch = store_->channels(image)) wanted = {ch->production, ch->test};
        bool any = false;
        for (uint64_t v : wanted) {
            if (v == 0 || std::find(held->begin(), held->end(), v) == held->end()) continue;
            prefetcher_->enqueue(image, v);
            any = true;
        }
        // Channels not heard from the master yet: what clients would get is the newest.
        if (!any) prefetcher_->enqueue(image, held->back());
    }
}

Result<json> Node::cmd_prefetch(const std::string& image, const json& args, const ProgressFn& progress) {
    uint64_t version = 0;
    if (args.is_object() && args.contains("version") && !args["version"].is_null()) {
        auto v = arg_uint(args, "version");
        if (!v) return v.status();
        version = *v;
    } else {
        if (auto ch = store_->channels(image); ch) version = ch->production;
        if (version == 0)
            return Status::error(ENOENT, "image '" + image + "': no production version known on this node; name a version");
    }
    if (version == 0) return invalid("image '" + image + "': version 0 does not exist");
    auto last = std::chrono::steady_clock::time_point{};
    auto r = prefetcher_->run(image, version, [&](const std::string& file, uint64_t done, uint64_t total) {
        auto now = std::chrono::steady_clock::now();
        if (!progress || (done < total && now - last < std::chrono::milliseconds(100))) return;
        last = now;
        progress("prefetching '" + image + "' version " + std::to_string(version) + " '" + file + "'", done, total);
    });
    if (!r) return r.status();
    return to_json(*r);
}

Result<json> Node::handle(const std::string& cmd, const json& args, const ProgressFn& progress) {
    auto dot = cmd.find('.');
    std::string noun = cmd.substr(0, dot);
    std::string verb = dot == std::string::npos ? "" : cmd.substr(dot + 1);
    if (cmd == "status") return cmd_status();
    if (noun == "image") return cmd_image(verb, args, progress);
    if (noun == "node") {
        if (cfg_.role != Role::master) return invalid(cmd_role_error(cmd, cfg_.role));
        return cmd_node(verb, args);
    }
    if (noun == "client") {
        if (cfg_.role != Role::replica) return invalid(cmd_role_error(cmd, cfg_.role));
        return cmd_client(verb, args);
    }
    if (noun == "push") return cmd_push(verb, args);
    if (cmd == "lun.stats") return cmd_lun_stats();
    return invalid("unknown command '" + cmd + "'");
}

Result<json> Node::cmd_status() {
    json j{{"name", cfg_.name},
           {"role", role_name(cfg_.role)},
           {"uptime_s", (now_ms() - started_ms_) / 1000},
           {"repository", cfg_.repository.string()},
           {"status", status_line()}};
    if (link_) {
        j["master"] = {{"address", cfg_.master_address},
                       {"name", cfg_.master_name},
                       {"registered", link_->registered()},
                       {"last_error", link_->last_error()}};
    }
    if (tgt_) j["tgtd_reachable"] = tgt_->reachable();
    if (replication_) {
        json children = json::array();
        for (const RelayChild& c : replication_->children())
            children.push_back({{"name", c.name}, {"replication_address", c.replication_address}});
        j["relay"] = {{"parent", replication_->parent()}, {"children", children}};
    }
    return j;
}

Result<json> Node::cmd_image(const std::string& verb, const json& args, const ProgressFn& progress) {
    static const std::set<std::string> master_only = {"import", "checkout", "commit", "discard", "promote", "rollback"};
    if (master_only.count(verb) && cfg_.role != Role::master) return invalid(cmd_role_error("image." + verb, cfg_.role));
    if (verb == "list") {
        auto list = images_->list();
        if (!list) return list.status();
        json out = json::array();
        for (const ImageSummary& s : *list) {
            json j{{"image", s.image},
                   {"versions", s.versions},
                   {"newest", s.newest},
                   {"production", s.channels.production},
                   {"test", s.channels.test}};
            j["checkout"] = s.checkout_base ? json(*s.checkout_base) : json(nullptr);
            out.push_back(j);
        }
        return out;
    }
    auto image = arg_string(args, "image");
    if (!image) return image.status();
    if (auto st = validate_name("image name", *image); !st) return st;
    // Not under images_mu_: a prefetch takes a while and only reads.
    if (verb == "prefetch") return cmd_prefetch(*image, args, progress);
    std::lock_guard lk(images_mu_);
    if (verb == "versions") {
        auto vs = images_->versions(*image);
        if (!vs) return vs.status();
        if (vs->empty()) return Status::error(ENOENT, "image '" + *image + "': no such image");
        json out = json::array();
        for (const VersionInfo& v : *vs) {
            json j = to_json(v.record);
            j["channels"] = v.channels;
            j["used_by"] = v.used_by;
            out.push_back(j);
        }
        return out;
    }
    if (verb == "import") {
        auto from = arg_string(args, "from");
        if (!from) return from.status();
        auto message = arg_string(args, "message", false);
        // At most ten progress lines a second (docs/blockd-control-protocol.md).
        auto last = std::chrono::steady_clock::time_point{};
        auto v = images_->import(*image, *from, message ? *message : "", [&](uint64_t done, uint64_t total) {
            auto now = std::chrono::steady_clock::now();
            if (!progress || (done < total && now - last < std::chrono::milliseconds(100))) return;
            last = now;
            progress("importing '" + *image + "'", done, total);
        });
        if (!v) return v.status();
        if (pushes_) pushes_->trigger();
        return to_json(*v);
    }
    if (verb == "checkout") {
        auto path = images_->checkout(*image);
        if (!path) return path.status();
        return json{{"image", *image}, {"path", path->string()}};
    }
    if (verb == "commit") {
        auto message = arg_string(args, "message", false);
        auto v = images_->commit(*image, message ? *message : "");
        if (!v) return v.status();
        if (pushes_) pushes_->trigger();
        if (membership_) membership_->ping_all_now();
        return to_json(*v);
    }
    if (verb == "discard") {
        if (auto st = images_->discard_checkout(*image); !st) return st;
        return json{{"image", *image}};
    }
    if (verb == "delete") {
        auto version = arg_uint(args, "version");
        if (!version) return version.status();
        if (auto st = images_->remove(*image, *version); !st) return st;
        return json{{"image", *image}, {"version", *version}};
    }
    if (verb == "prune") {
        auto keep = arg_uint(args, "keep");
        if (!keep) return keep.status();
        auto r = images_->prune(*image, static_cast<unsigned>(*keep));
        if (!r) return r.status();
        return json{{"image", *image}, {"deleted", r->first}, {"kept_in_use", r->second}};
    }
    if (verb == "promote" || verb == "rollback") {
        Result<Channels> ch = Status::error(EINVAL, "");
        if (verb == "promote") {
            auto version = arg_uint(args, "version");
            if (!version) return version.status();
            ch = images_->promote(*image, *version);
        } else {
            ch = images_->rollback(*image);
        }
        if (!ch) return ch.status();
        if (membership_) membership_->ping_all_now();  // replicas learn the channels at once
        if (pushes_) pushes_->trigger();
        return to_json(*ch);
    }
    return invalid("unknown command 'image." + verb + "'");
}

Result<json> Node::cmd_node(const std::string& verb, const json& args) {
    auto reps = store_->replicas();
    if (!reps) return reps.status();
    Catalog cat = catalog();
    auto in_flight = pushes_->in_flight();
    const auto relay_states = membership_->relay_states();
    auto describe = [&](const ReplicaRecord& r) {
        json images = json::object();
        for (const auto& [image, ci] : cat) {
            if (!r.wants(image)) continue;
            auto it = r.versions.find(image);
            uint64_t newest = it == r.versions.end() || it->second.empty() ? 0 : it->second.back();
            uint64_t lag_versions = 0, lag_bytes = 0;
            auto records = store_->versions(image);
            for (uint64_t v : ci.versions) {
                if (v <= newest) continue;
                ++lag_versions;
                if (records) {
                    for (const VersionRecord& rec : *records) {
                        if (rec.version == v) lag_bytes += newest == 0 ? rec.size_bytes : rec.delta_bytes;
                    }
                }
            }
            images[image] = {{"newest", newest},
                             {"versions", it == r.versions.end() ? std::vector<uint64_t>{} : it->second},
                             {"lag_versions", lag_versions},
                             {"lag_bytes", lag_bytes}};
        }
        json push = nullptr;
        if (in_flight) {
            for (const auto& p : in_flight->replicas) {
                if (p.peer.find(r.name) != std::string::npos ||
                    p.peer.find(r.replication_address) != std::string::npos) {
                    push = to_json(p);
                    push["image"] = in_flight->image;
                    push["version"] = in_flight->version;
                }
            }
        }
        json relay{{"parent", relay_parent(r.name)}, {"parent_source", relay_source(r.name)}};
        auto heard = relay_states.find(r.name);
        relay["parent_applied"] = heard == relay_states.end() ? json(nullptr) : json(heard->second.parent_applied);
        {
            std::lock_guard lk(relay_mu_);
            relay["children"] = relay_tree_.children_of(r.name);
        }
        return json{{"name", r.name},
                    {"relay", relay},
                    {"state", liveness_name(r.state)},
                    {"last_seen_ms", r.last_seen_ms},
                    {"registered_ms", r.registered_ms},
                    {"missed", r.missed},
                    {"address", r.peer_address},
                    {"replication_address", r.replication_address},
                    {"subscribe", r.subscribe},
                    {"images", images},
                    {"push", push}};
    };
    if (verb == "list") {
        json out = json::array();
        for (const ReplicaRecord& r : *reps) out.push_back(describe(r));
        return out;
    }
    if (verb == "tree") {
        // Depth-first from the master; a replica whose parent is not
        // registered hangs under the master (the master feeds it).
        std::set<std::string> known;
        for (const ReplicaRecord& r : *reps) known.insert(r.name);
        json nodes = json::array();
        std::function<void(const std::string&, unsigned)> walk = [&](const std::string& parent, unsigned depth) {
            for (const ReplicaRecord& r : *reps) {
                std::string p = relay_parent(r.name);
                bool orphan = !p.empty() && !known.count(p);
                if ((parent.empty() && !(p.empty() || orphan)) || (!parent.empty() && p != parent)) continue;
                auto heard = relay_states.find(r.name);
                nodes.push_back({{"name", r.name},
                                 {"depth", depth},
                                 {"state", liveness_name(r.state)},
                                 {"parent", p},
                                 {"parent_registered", !orphan},
                                 {"parent_applied", heard == relay_states.end() ? json(nullptr)
                                                                                : json(heard->second.parent_applied)}});
                if (depth < known.size()) walk(r.name, depth + 1);
            }
        };
        walk("", 1);
        return json{{"master", cfg_.name}, {"nodes", nodes}};
    }
    auto name = arg_string(args, "name");
    if (!name) return name.status();
    auto it = std::find_if(reps->begin(), reps->end(), [&](auto& r) { return r.name == *name; });
    if (it == reps->end()) return Status::error(ENOENT, "node '" + *name + "': not registered here");
    if (verb == "show") return describe(*it);
    if (verb == "relay") return cmd_node_relay(args);
    if (verb == "remove") {
        if (auto st = store_->remove_replica(*name); !st) return st;
        return json{{"name", *name}};
    }
    return invalid("unknown command 'node." + verb + "'");
}

Status Node::load_relay_tree() {
    std::map<std::string, std::string> overrides;
    auto saved = store_->setting("relay.via");
    if (!saved) return saved.status();
    if (saved->has_value()) {
        json j = json::parse(**saved, nullptr, false);
        if (j.is_object()) {
            for (const auto& [k, v] : j.items())
                if (v.is_string()) overrides[k] = v.get<std::string>();
        } else {
            log(LogLevel::error, "relay tree: the setting 'relay.via' is not a JSON object; blockctl's entries are ignored");
        }
    }
    auto merged = cfg_.relay_via;
    for (const auto& [child, parent] : overrides) merged[child] = parent;
    auto tree = RelayTree::make(merged, cfg_.name, "relay tree");
    if (!tree) {
        // The file changed under entries made with blockctl: the file wins
        // (it was checked at load), and the operator is told.
        log(LogLevel::error, tree.status().message() + " (the [relay.via] of " + cfg_.source.string() +
                                 " with the entries of blockctl node relay); using the file's tree alone");
        overrides.clear();
        tree = RelayTree::make(cfg_.relay_via, cfg_.name, cfg_.source.string() + ": relay.via");
        if (!tree) return tree.status();
    }
    std::lock_guard lk(relay_mu_);
    relay_tree_ = std::move(*tree);
    relay_override_ = std::move(overrides);
    return Status::ok();
}

std::string Node::relay_parent(const std::string& replica) {
    std::lock_guard lk(relay_mu_);
    return relay_tree_.parent_of(replica);
}

std::string Node::relay_source(const std::string& replica) {
    std::lock_guard lk(relay_mu_);
    if (relay_override_.count(replica)) return "blockctl";
    return cfg_.relay_via.count(replica) ? "config" : "";
}

Status Node::relay_assign(const ReplicaRecord& relay, const std::vector<RelayChild>& children) {
    repl::TlsConfig t = tls();
    t.allowed_peer_names = {relay.name};
    // A relay that does not answer quickly is routed around (its children pushed directly).
    t.connect_timeout = t.handshake_timeout = t.io_timeout = std::chrono::milliseconds(3'000);
    auto answer = peer_call(relay.peer_address, t, to_json(RelayRequest{cfg_.name, children}));
    if (!answer) return answer.status();
    auto ok = relay_ok_from_json(*answer);
    if (!ok) return ok.status();
    std::vector<std::string> want;
    for (const RelayChild& c : children) want.push_back(c.name);
    if (ok->node != relay.name || ok->children != want)
        return Status::error(EBADMSG, "relay '" + relay.name + "' answered for node '" + ok->node + "' with other children");
    return Status::ok();
}

json Node::on_relay(const repl::PeerIdentity& peer, const json& request) {
    auto req = relay_from_json(request);
    if (!req) return error_message(req.status().message());
    if (req->master != cfg_.master_name || !peer.has_name(cfg_.master_name))
        return error_message("relay: node '" + cfg_.name + "' takes its children only from its master '" +
                             cfg_.master_name + "', not from " + peer.describe());
    RelayReply reply;
    reply.node = cfg_.name;
    for (const RelayChild& c : req->children) reply.children.push_back(c.name);
    if (auto st = replication_->set_children(std::move(req->children)); !st) return error_message(st.message());
    return to_json(reply);
}

Result<json> Node::cmd_node_relay(const json& args) {
    auto name = arg_string(args, "name");
    if (!name) return name.status();
    auto via = arg_string(args, "via", false);
    if (!via) return via.status();
    const bool direct = arg_bool(args, "direct");
    if (direct == !via->empty())
        return invalid("node relay '" + *name + "': give either a parent (--via) or --direct");
    auto reps = store_->replicas();
    if (!reps) return reps.status();
    auto registered = [&](const std::string& n) {
        return std::any_of(reps->begin(), reps->end(), [&](const ReplicaRecord& r) { return r.name == n; });
    };
    if (!registered(*name)) return Status::error(ENOENT, "node relay: replica '" + *name + "' is not registered here");
    if (!direct && !registered(*via))
        return Status::error(ENOENT, "node relay: replica '" + *name + "': parent '" + *via + "' is not registered here");
    std::lock_guard lk(relay_mu_);
    auto overrides = relay_override_;
    overrides[*name] = direct ? "" : *via;
    auto merged = cfg_.relay_via;
    for (const auto& [child, parent] : overrides) merged[child] = parent;
    auto tree = RelayTree::make(merged, cfg_.name, "node relay");
    if (!tree) return tree.status();
    json saved = json::object();
    for (const auto& [child, parent] : overrides) saved[child] = parent;
    if (auto st = store_->put_setting("relay.via", saved.dump()); !st) return st;
    relay_tree_ = std::move(*tree);
    relay_override_ = std::move(overrides);
    log(LogLevel::info, "relay tree: replica '" + *name + "' is fed " + (direct ? "by the master" : "via '" + *via + "'") +
                            " (blockctl node relay)",
        {.peer = *name});
    if (membership_) membership_->ping_all_now();  // replicas learn their parents at once
    return json{{"name", *name}, {"parent", direct ? "" : *via}, {"source", "blockctl"}};
}

Result<json> Node::cmd_client(const std::string& verb, const json& args) {
    if (verb == "list") {
        auto list = clients_->list();
        if (!list) return list.status();
        json out = json::array();
        for (const ClientStatus& c : *list) out.push_back(to_json(c));
        return out;
    }
    auto name = arg_string(args, "name");
    if (!name) return name.status();
    if (verb == "add") {
        ClientSpec spec;
        spec.name = *name;
        auto image = arg_string(args, "image");
        if (!image) return image.status();
        spec.image = *image;
        auto initiator = arg_string(args, "initiator");
        if (!initiator) return initiator.status();
        spec.initiator = *initiator;
        auto chap_user = arg_string(args, "chap_user", false);
        if (!chap_user) return chap_user.status();
        auto chap_secret = arg_string(args, "chap_secret", false);
        if (!chap_secret) return chap_secret.status();
        spec.chap_user = *chap_user;
        spec.chap_secret = *chap_secret;
        spec.persistent = arg_bool(args, "persistent");
        auto channel = arg_string(args, "channel", false);
        if (!channel) return channel.status();
        spec.channel = *channel;
        if (!spec.channel.empty() && spec.channel != "production" && spec.channel != "test")
            return invalid("client '" + *name + "': channel '" + spec.channel + "' is not production or test");
        auto c = clients_->add(spec);
        if (!c) return c.status();
        return to_json(*c);
    }
    if (verb == "show") {
        auto c = clients_->show(*name);
        if (!c) return c.status();
        return to_json(*c);
    }
    if (verb == "reset") {
        if (auto st = clients_->reset(*name); !st) return st;
        return json{{"name", *name}};
    }
    if (verb == "remove") {
        if (auto st = clients_->remove(*name, arg_bool(args, "force")); !st) return st;
        return json{{"name", *name}};
    }
    return invalid("unknown command 'client." + verb + "'");
}

// Every LUN's counters now (blockctl top samples this and shows rates).
Result<json> Node::cmd_lun_stats() {
    std::map<std::string, const ClientRecord*> client_of;  // overlay or cache path -> client
    auto cs = store_->clients();
    if (cs) {
        for (const ClientRecord& c : *cs) {
            client_of[c.overlay_path] = &c;
            if (!c.cache_path.empty()) client_of[c.cache_path] = &c;
        }
    }
    auto reading = metrics::read_lun_dir(cfg_.metrics_dir);
    json luns = json::array();
    for (const metrics::LunSnapshot& l : reading.luns) {
        const metrics::LunCounters& c = l.counters;
        const ClientRecord* client = nullptr;
        for (const std::string* p : {&l.overlay_path, &l.cache_path})
            if (auto it = client_of.find(*p); it != client_of.end()) client = it->second;
        // Reads and writes together, per log2 bucket: blockctl top's percentiles.
        json buckets = json::array();
        for (unsigned b = 0; b < metrics::latency_buckets; ++b)
            buckets.push_back(c.dir[metrics::dir_read].buckets[b] + c.dir[metrics::dir_write].buckets[b]);
        const auto& rd = c.dir[metrics::dir_read];
        const auto& wr = c.dir[metrics::dir_write];
        luns.push_back({{"tid", l.tid},
                        {"lun", l.lun},
                        {"client", client ? client->name : ""},
                        {"image", client ? client->image : ""},
                        {"version", client ? client->bound_version : 0},
                        {"latency_buckets", buckets},
                        {"device", l.identity()},
                        {"read_commands", rd.commands},
                        {"read_bytes", rd.bytes},
                        {"read_latency_ns", rd.latency_sum_ns},
                        {"write_commands", wr.commands},
                        {"write_bytes", wr.bytes},
                        {"write_latency_ns", wr.latency_sum_ns},
                        {"queue_depth", c.queue_depth},
                        {"cache_blocks_total", c.cache_blocks_total},
                        {"cache_blocks_dirty", c.cache_blocks_dirty}});
    }
    return json{{"at_ms", now_ms()}, {"dir", cfg_.metrics_dir.string()}, {"luns", luns}};
}

Result<json> Node::cmd_push(const std::string& verb, const json& args) {
    if (verb != "list") return invalid("unknown command 'push." + verb + "'");
    auto limit = arg_uint(args, "limit", false, 50);
    if (!limit) return limit.status();
    auto list = store_->pushes(*limit);
    if (!list) return list.status();
    json out = json::array();
    for (const PushRecord& p : *list) out.push_back(to_json(p));
    return out;
}

}  // namespace icbd::node
