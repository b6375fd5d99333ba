// The /metrics exporter: reads every LUN file of the metrics directory and
// the node store once per scrape and prints the Prometheus text format.
// Metric names, types and labels: docs/metrics.md.
#include "metrics.hpp"

#include <httplib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <set>
#include <vector>

#include "icbd/log.hpp"
#include "icbd/lun_metrics.hpp"
#include "icbd/replicator/sender.hpp"

namespace icbd::node {
namespace {

namespace m = icbd::metrics;
using Labels = std::vector<std::pair<std::string, std::string>>;

std::string escape(const std::string& v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

std::string number(double v) {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
}

// Families in first-use order, each with HELP, TYPE and its samples together,
// as the text format requires.
class Exposition {
public:
    void family(const std::string& name, const char* type, const char* help) {
        if (index_.count(name)) return;
        index_[name] = families_.size();
        families_.push_back({name, type, help, {}});
    }
    void sample(const std::string& family, const std::string& name, const Labels& labels, const std::string& value) {
        std::string& out = families_[index_.at(family)].samples;
        out += name;
        if (!labels.empty()) {
            out += '{';
            bool first = true;
            for (const auto& [k, v] : labels) {
                if (v.empty()) continue;  // an empty label is the same as none
                if (!first) out += ',';
                first = false;
                out += k + "=\"" + escape(v) + '"';
            }
            out += '}';
        }
        out += ' ' + value + '\n';
    }
    // A sample whose labels are already rendered (the hot loop of a large scrape).
    void raw(const std::string& family, const std::string& name, const std::string& labels, const std::string& value) {
        std::string& out = families_[index_.at(family)].samples;
        out += name;
        out += '{';
        out += labels;
        out += "} ";
        out += value;
        out += '\n';
    }
    static std::string render(const Labels& labels) {
        std::string out;
        for (const auto& [k, v] : labels) {
            if (v.empty()) continue;
            if (!out.empty()) out += ',';
            out += k + "=\"" + escape(v) + '"';
        }
        return out;
    }
    void sample(const std::string& name, const Labels& labels, uint64_t v) { sample(name, name, labels, std::to_string(v)); }
    void gauge(const std::string& name, const Labels& labels, double v) { sample(name, name, labels, number(v)); }
    std::string text() const {
        std::string out;
        for (const auto& f : families_) {
            if (f.samples.empty()) continue;
            out += "# HELP " + f.name + ' ' + f.help + "\n# TYPE " + f.name + ' ' + f.type + '\n' + f.samples;
        }
        return out;
    }

private:
    struct Family {
        std::string name, type, help, samples;
    };
    std::vector<Family> families_;
    std::map<std::string, size_t> index_;
};

const std::vector<std::string>& bucket_le() {
    static const std::vector<std::string> le = [] {
        std::vector<std::string> v;
        for (unsigned i = 0; i + 1 < m::latency_buckets; ++i) v.push_back(number(m::bucket_upper_seconds(i)));
        v.push_back("+Inf");
        return v;
    }();
    return le;
}

Labels with(Labels l, const std::string& k, const std::string& v) {
    l.emplace_back(k, v);
    return l;
}

void declare_lun_families(Exposition& e) {
    e.family("icbd_lun_info", "gauge", "One per LUN of bs_icbd with its identity (value 1).");
    e.family("icbd_lun_commands_total", "counter", "SCSI commands completed by the LUN, by direction.");
    e.family("icbd_lun_bytes_total", "counter", "Bytes read or written by commands completed GOOD.");
    e.family("icbd_lun_latency_seconds", "histogram", "Command latency inside bs_icbd, by direction.");
    e.family("icbd_lun_errors_total", "counter", "Commands completed CHECK CONDITION, by sense key.");
    e.family("icbd_lun_queue_depth", "gauge", "Commands in flight in bs_icbd.");
    e.family("icbd_lun_cache_blocks", "gauge", "Write-back cache blocks (4 KiB) by state: total, used, dirty.");
    e.family("icbd_lun_cache_flushed_bytes_total", "counter", "Bytes written back from the cache to the device below.");
    e.family("icbd_lun_cache_commits_total", "counter", "Write-back cache commits.");
    e.family("icbd_lun_overlay_blocks_written_total", "counter",
             "Overlay blocks (4 KiB) that became present: copied up or written first.");
    e.family("icbd_lun_files_refused", "gauge", "LUN metrics files the last scrape refused (other layout, short).");
}

void render_lun(Exposition& e, const m::LunSnapshot& s, const std::string& client) {
    const Labels base = {{"target", s.tid >= 0 ? std::to_string(s.tid) : ""},
                         {"lun", s.lun != UINT64_MAX ? std::to_string(s.lun) : ""},
                         {"device", s.identity()},
                         {"client", client}};
    e.gauge("icbd_lun_info",
            with(with(with(with(with(base, "name", s.name), "backing", s.backing_path), "overlay", s.overlay_path),
                      "cache", s.cache_path),
                 "readonly", (s.flags & m::flag_readonly) ? "1" : "0"),
            1);
    const m::LunCounters& c = s.counters;
    for (unsigned d = 0; d < m::dir_count; ++d) {
        const Labels l = with(base, "dir", m::dir_name(d));
        const m::DirCounters& dc = c.dir[d];
        e.sample("icbd_lun_commands_total", l, dc.commands);
        if (d != m::dir_other) e.sample("icbd_lun_bytes_total", l, dc.bytes);
        uint64_t cumulative = 0;
        const std::string rendered = Exposition::render(l) + ",le=\"";
        for (unsigned i = 0; i < m::latency_buckets; ++i) {
            cumulative += dc.buckets[i];
            e.raw("icbd_lun_latency_seconds", "icbd_lun_latency_seconds_bucket", rendered + bucket_le()[i] + '"',
                  std::to_string(cumulative));
        }
        e.sample("icbd_lun_latency_seconds", "icbd_lun_latency_seconds_sum", l,
                 number(static_cast<double>(dc.latency_sum_ns) * 1e-9));
        // From the buckets, so the histogram is self-consistent (docs/metrics.md).
        e.sample("icbd_lun_latency_seconds", "icbd_lun_latency_seconds_count", l, std::to_string(cumulative));
    }
    for (unsigned k = 0; k < m::sense_keys; ++k)
        if (c.errors_by_sense_key[k]) e.sample("icbd_lun_errors_total", with(base, "sense_key", m::sense_key_name(k)), c.errors_by_sense_key[k]);
    e.sample("icbd_lun_queue_depth", base, c.queue_depth);
    if (s.flags & m::flag_cache) {
        e.sample("icbd_lun_cache_blocks", with(base, "state", "total"), c.cache_blocks_total);
        e.sample("icbd_lun_cache_blocks", with(base, "state", "used"), c.cache_blocks_used);
        e.sample("icbd_lun_cache_blocks", with(base, "state", "dirty"), c.cache_blocks_dirty);
        e.sample("icbd_lun_cache_flushed_bytes_total", base, c.cache_flush_bytes);
        e.sample("icbd_lun_cache_commits_total", base, c.cache_commits);
    }
    if (s.flags & m::flag_overlay) e.sample("icbd_lun_overlay_blocks_written_total", base, c.overlay_blocks_written);
}

std::map<std::string, std::string> store_clients(NodeStore& store) {
    std::map<std::string, std::string> out;
    auto cs = store.clients();
    if (!cs) return out;
    for (const ClientRecord& c : *cs) {
        if (!c.overlay_path.empty()) out[c.overlay_path] = c.name;
        if (!c.cache_path.empty()) out[c.cache_path] = c.name;
    }
    return out;
}

void render_luns(Exposition& e, const MetricsSources& src) {
    declare_lun_families(e);
    m::DirReading r = m::read_lun_dir(src.lun_dir);
    std::map<std::string, std::string> clients;
    if (src.clients) clients = src.clients();
    else if (src.store) clients = store_clients(*src.store);
    auto client_of = [&](const m::LunSnapshot& s) -> std::string {
        for (const std::string* p : {&s.overlay_path, &s.cache_path, &s.backing_path})
            if (auto it = clients.find(*p); !p->empty() && it != clients.end()) return it->second;
        return "";
    };
    for (const m::LunSnapshot& s : r.luns) render_lun(e, s, client_of(s));
    e.gauge("icbd_lun_files_refused", {}, static_cast<double>(r.refused.size()));
}

// Master: per replica state, pushes and lag, from the store.
void render_replicas(Exposition& e, NodeStore& store) {
    e.family("icbd_replica_state", "gauge", "Keepalive state of a replica: 1 for its current state.");
    e.family("icbd_replica_missed_keepalives", "gauge", "Consecutive keepalives a replica did not answer.");
    e.family("icbd_replica_pushes_total", "counter", "Pushes to a replica that finished, by result.");
    e.family("icbd_replica_sent_bytes_total", "counter", "Bytes sent on the wire to a replica by finished pushes.");
    e.family("icbd_replica_last_push_duration_seconds", "gauge", "Duration of the last finished push to a replica.");
    e.family("icbd_replica_lag_versions", "gauge", "Versions of an image the master has above the replica's newest.");
    e.family("icbd_replica_lag_bytes", "gauge", "Delta bytes of the versions a replica lacks.");
    auto reps = store.replicas();
    if (!reps) return;
    auto pushes = store.pushes(1'000'000);
    auto images = store.images();
    std::map<std::string, std::vector<VersionRecord>> versions;
    if (images)
        for (const std::string& image : *images)
            if (auto v = store.versions(image)) versions[image] = std::move(*v);
    for (const ReplicaRecord& r : *reps) {
        const Labels l = {{"replica", r.name}};
        for (Liveness st : {Liveness::alive, Liveness::suspect, Liveness::dead})
            e.gauge("icbd_replica_state", with(l, "state", liveness_name(st)), r.state == st ? 1 : 0);
        e.sample("icbd_replica_missed_keepalives", l, r.missed);
        uint64_t ok = 0, failed = 0, bytes = 0;
        double last = -1;
        if (pushes)
            for (const PushRecord& p : *pushes) {  // newest first
                if (p.replica != r.name || p.finished_ms == 0) continue;
                (p.ok ? ok : failed) += 1;
                bytes += p.wire_bytes;
                if (last < 0) last = static_cast<double>(p.finished_ms - p.started_ms) / 1000.0;
            }
        e.sample("icbd_replica_pushes_total", with(l, "result", "ok"), ok);
        e.sample("icbd_replica_pushes_total", with(l, "result", "failed"), failed);
        e.sample("icbd_replica_sent_bytes_total", l, bytes);
        if (last >= 0) e.gauge("icbd_replica_last_push_duration_seconds", l, last);
        for (const auto& [image, vs] : versions) {
            if (!r.wants(image)) continue;
            uint64_t newest = 0;
            if (auto it = r.versions.find(image); it != r.versions.end() && !it->second.empty())
                newest = it->second.back();
            uint64_t lag = 0, lag_bytes = 0;
            for (const VersionRecord& v : vs)
                if (v.version > newest) ++lag, lag_bytes += v.delta_bytes;
            e.sample("icbd_replica_lag_versions", with(l, "image", image), lag);
            e.sample("icbd_replica_lag_bytes", with(l, "image", image), lag_bytes);
        }
    }
}

void render_images(Exposition& e, NodeStore& store) {
    e.family("icbd_image_versions", "gauge", "Versions of an image this node holds (a replica: received).");
    e.family("icbd_image_latest_version", "gauge", "Newest version of an image this node holds.");
    e.family("icbd_image_bytes", "gauge", "Sum of the delta bytes of the versions held (a replica: received).");
    auto images = store.images();
    if (!images) return;
    for (const std::string& image : *images) {
        auto vs = store.versions(image);
        if (!vs) continue;
        uint64_t bytes = 0;
        for (const VersionRecord& v : *vs) bytes += v.delta_bytes;
        const Labels l = {{"image", image}};
        e.sample("icbd_image_versions", l, vs->size());
        e.sample("icbd_image_latest_version", l, vs->empty() ? 0 : vs->back().version);
        e.sample("icbd_image_bytes", l, bytes);
    }
}

}  // namespace

std::string render_metrics(const MetricsSources& src) {
    const auto t0 = std::chrono::steady_clock::now();
    Exposition e;
    e.family("icbd_node_info", "gauge", "This blockd node (value 1).");
    if (!src.node_name.empty()) e.gauge("icbd_node_info", {{"node", src.node_name}, {"role", role_name(src.role)}}, 1);
    render_luns(e, src);
    if (src.store) {
        if (src.role == Role::master) render_replicas(e, *src.store);
        render_images(e, *src.store);
    }
    e.family("icbd_metrics_scrape_duration_seconds", "gauge", "Time this scrape took to gather.");
    e.gauge("icbd_metrics_scrape_duration_seconds", {},
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return e.text();
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(const std::string& listen, MetricsSources sources) {
    auto hp = repl::parse_host_port(listen);
    if (!hp) return Status::error(EINVAL, "metrics listener '" + listen + "': " + hp.status().message());
    std::unique_ptr<MetricsServer> s(new MetricsServer());
    s->sources_ = std::move(sources);
    s->server_ = std::make_unique<httplib::Server>();
    // httplib's default adds SO_REUSEPORT, which lets a second blockd share
    // the port silently; SO_REUSEADDR alone still allows a quick restart.
    s->server_->set_socket_options([](socket_t sock) {
        int yes = 1;
        ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    MetricsServer* self = s.get();
    s->server_->Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
        res.set_content(render_metrics(self->sources_), "text/plain; version=0.0.4; charset=utf-8");
    });
    s->server_->Get("/", [](const httplib::Request&, httplib::Response& res) {
        res.set_content("blockd: metrics at /metrics\n", "text/plain");
    });
    const std::string& host = hp->host;  // without brackets, as httplib wants it
    int port = hp->port == 0 ? s->server_->bind_to_any_port(host) : (s->server_->bind_to_port(host, hp->port) ? hp->port : -1);
    if (port <= 0)
        return Status::error(EADDRINUSE, "metrics listener '" + listen + "': cannot listen (address in use or not local)");
    s->port_ = static_cast<uint16_t>(port);
    s->thread_ = std::thread([self] { self->server_->listen_after_bind(); });
    // httplib's stop() is a no-op until the loop runs: wait for it, so that
    // stop() right after start() cannot leave the thread listening forever.
    for (int i = 0; i < 2000 && !s->server_->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    log(LogLevel::info, "metrics: serving /metrics on " + listen + (hp->port == 0 ? " (port " + std::to_string(port) + ")" : ""));
    return s;
}

MetricsServer::~MetricsServer() { stop(); }

void MetricsServer::stop() {
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
}

}  // namespace icbd::node
