// The master side of a push (docs/replication-protocol.md, sections 3-5): per
// replica the handshake and negotiation (push_session.cpp), then per distinct
// base one reader that reads and encodes each change once into a shared window
// (change_encoder.cpp), and one writer per replica that streams it
// (replica_writer.cpp). This file runs them and gathers the report.
#include "icbd/replicator/sender.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include "icbd/log.hpp"
#include "icbd/replicator/image_path.hpp"
#include "icbd/replicator/repository.hpp"
#include "failure_code.hpp"
#include "name_rules.hpp"
#include "push_session.hpp"

namespace icbd::repl {

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

std::string host_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "master";
    std::string n;
    for (char c : std::string(buf))
        if (c > 0x20 && c < 0x7f) n += c;
    return n.empty() ? "master" : n.substr(0, kMaxNodeName);
}

std::vector<ReplicaProgress> snapshot_progress(const std::vector<std::unique_ptr<Session>>& sessions) {
    std::vector<ReplicaProgress> out;
    for (const auto& s : sessions) {
        ReplicaProgress p;
        p.peer = s->target.text();
        p.state = state_name(static_cast<State>(s->state.load()));
        p.payload_total = s->payload_total;
        p.payload_sent = s->payload_sent;
        if (s->stream_open) p.wire_sent = s->stream.counters().wire_sent;
        double secs = seconds_since(s->started);
        if (secs > 0) p.rate_bytes_per_s = p.wire_sent / secs;
        double payload_rate = secs > 0 ? p.payload_sent / secs : 0;
        if (p.payload_sent >= p.payload_total) p.eta_seconds = 0;
        else if (payload_rate > 0) p.eta_seconds = (p.payload_total - p.payload_sent) / payload_rate;
        out.push_back(std::move(p));
    }
    return out;
}

// The replicas one push has served or is serving (its targets and the
// children it took over), so that none is pushed to twice.
struct Takeovers {
    std::mutex mu;
    std::set<std::string> claimed;
    int depth = 0;
};

Result<PushReport> push_round(const PushOptions& opt, Takeovers& tk);

// A relay `s` failed: push to the children it named, directly and resuming
// from their checkpoints (docs/replication-protocol.md, section 11).
void take_over(const PushOptions& opt, Takeovers& tk, Session& s, const std::string& node_name) {
    if (s.taken_over || s.children.empty() || s.report.ok() || !opt.take_over_relay_children) return;
    s.taken_over = true;
    std::vector<HostPort> kids;
    std::vector<std::string> kid_names;
    std::string names;
    {
        std::lock_guard lk(tk.mu);
        if (tk.depth >= static_cast<int>(kMaxRoute)) return;
        for (const auto& c : s.children) {
            auto hp = parse_host_port(c.address);
            if (!hp || !tk.claimed.insert(hp->text()).second) continue;
            kids.push_back(*hp);
            kid_names.push_back(c.node_name);
            names += (names.empty() ? "" : ", ") + hp->text();
        }
    }
    if (kids.empty()) return;
    std::string why = s.report.code == ErrorCode::no_space ? " (ENOSPC: the relay's filesystem is full)" : "";
    log(LogLevel::warning, s.report.status.message() + why + "; taking over its children " + names);
    PushOptions sub = opt;
    sub.targets = kids;
    sub.on_progress = nullptr;
    // A pusher that names the replicas it may talk to (TLS) admits the
    // children by the names their relay gave: each must hold that certificate.
    if (!sub.tls.allowed_peer_names.empty())
        sub.tls.allowed_peer_names.insert(sub.tls.allowed_peer_names.end(), kid_names.begin(), kid_names.end());
    Takeovers inner;
    {
        std::lock_guard lk(tk.mu);
        inner.claimed = tk.claimed;
        inner.depth = tk.depth + 1;
    }
    auto r = push_round(sub, inner);
    // A child may still be closing the relay's stream (flushing what it had
    // applied) and answer busy: offer it again a few times, 1 s apart.
    for (int attempt = 0; r && attempt < 5; ++attempt) {
        std::vector<HostPort> again;
        for (const auto& rep : r->replicas)
            if (rep.code == ErrorCode::busy && rep.taken_over_from.empty())
                for (const auto& k : kids)
                    if (k.text() == rep.target) again.push_back(k);
        if (again.empty()) break;
        std::this_thread::sleep_for(std::chrono::seconds(1));
        sub.targets = again;
        auto retry = push_round(sub, inner);
        if (!retry) break;
        r->source_bytes_read += retry->source_bytes_read;
        for (auto& rep : retry->replicas) {
            auto it = std::find_if(r->replicas.begin(), r->replicas.end(), [&](const ReplicaReport& x) {
                return x.target == rep.target && x.taken_over_from.empty();
            });
            if (rep.taken_over_from.empty() && it != r->replicas.end()) *it = std::move(rep);
            else r->replicas.push_back(std::move(rep));
        }
    }
    {
        std::lock_guard lk(tk.mu);
        tk.claimed.insert(inner.claimed.begin(), inner.claimed.end());
    }
    s.report.status = Status::error(s.report.status.code(), s.report.status.message() + why + "; its children " +
                                                                names + " taken over by " + node_name);
    if (!r) {
        for (const auto& k : kids) {
            ReplicaReport f;
            f.target = k.text();
            f.image = opt.image;
            f.version = opt.version;
            f.status = r.status();
            f.code = ErrorCode::internal;
            f.taken_over_from = s.target.text();
            s.takeover.push_back(std::move(f));
        }
        return;
    }
    s.takeover_bytes_read = r->source_bytes_read;
    for (auto& rep : r->replicas) {
        if (rep.taken_over_from.empty()) rep.taken_over_from = s.target.text();
        s.takeover.push_back(std::move(rep));
    }
}

}  // namespace

bool PushReport::all_ok() const {
    return std::all_of(replicas.begin(), replicas.end(), [](const ReplicaReport& r) { return r.ok(); });
}

Result<PushReport> push(const PushOptions& opt) {
    Takeovers tk;
    for (const auto& t : opt.targets) tk.claimed.insert(t.text());
    return push_round(opt, tk);
}

namespace {

Result<PushReport> push_round(const PushOptions& opt, Takeovers& tk) {
    const auto started = Clock::now();
    const std::string what = "image '" + opt.image + "' version " + std::to_string(opt.version);
    if (Status s = validate_image_name(opt.image); !s) return s;
    if (opt.targets.empty()) return Status::error(EINVAL, what + ": no replica to push to");
    auto repo = Repository::open(opt.root);
    if (!repo) return repo.status();
    auto vdir = repo->version_path(opt.image, opt.version);
    if (!vdir) return Status::error(vdir.status().code(), what + ": " + vdir.status().message());
    auto held = repo->list_versions(opt.image);
    if (!held) return held.status();

    PushContext ctx(opt);
    ctx.version_dir = *vdir;
    ctx.node_name = opt.node_name.empty() ? host_name() : opt.node_name;
    if (Status s = validate_node_name(ctx.node_name); !s) return s;
    {
        UniqueFd root(::open(vdir->c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!root.valid()) return Status::from_errno(errno, what + ": open '" + vdir->string() + "'");
        auto m = manifest_of_tree(root.get(), what);
        if (!m) return m.status();
        ctx.manifest = *m;
    }
    ctx.offer.version = opt.version;
    ctx.offer.total_size = ctx.manifest.total_size;
    ctx.offer.entry_count = ctx.manifest.entry_count;
    ctx.offer.held = *held;
    ctx.offer.image = opt.image;
    if (Status s = ctx.offer.validate(); !s) return s;

    std::vector<std::unique_ptr<Session>> sessions;
    for (const auto& t : opt.targets) {
        auto s = std::make_unique<Session>();
        s->target = t;
        s->report.target = t.text();
        s->report.image = opt.image;
        s->report.version = opt.version;
        sessions.push_back(std::move(s));
    }

    std::atomic<bool> all_done{false};
    std::jthread progress;
    if (opt.on_progress) {
        progress = std::jthread([&] {
            while (!all_done.load()) {
                opt.on_progress(snapshot_progress(sessions));
                for (int i = 0; i < 20 && !all_done.load(); ++i)
                    std::this_thread::sleep_for(opt.progress_interval / 20);
            }
        });
    }

    // The diff most pushes need (from the newest version held below this
    // one), computed while the replicas handshake and make their staging
    // snapshots (tens of ms on BTRFS) instead of after.
    struct Planned {
        Status status;
        ErrorCode code = ErrorCode::ok;  // what the replicas are told when `status` failed
        std::vector<PlannedChange> plan;
    };
    // The diff and the plan refuse a version that holds what the protocol
    // cannot carry with EINVAL (a name breaking section 7) or ENOTSUP (a FIFO,
    // socket or device, a nested subvolume); anything else is a local failure.
    auto failed = [&](const Status& s, uint64_t base) -> Planned {
        if (base && s.code() == ENOENT && !repo->version_path(opt.image, base))
            return {s, ErrorCode::unknown_base, {}};  // removed while we diffed
        if (s.code() == EINVAL || s.code() == ENOTSUP) return {s, ErrorCode::bad_name, {}};
        return {s, code_for_local_failure(s.code()), {}};
    };
    auto plan_for = [&](uint64_t base) -> Planned {
        std::optional<fs::path> base_dir;
        if (base) {
            auto b = repo->version_path(opt.image, base);
            if (!b)
                return {Status::error(ENOENT, "the base version " + std::to_string(base) + " is not held any more"),
                        ErrorCode::unknown_base, {}};
            base_dir = *b;
        }
        auto d = diff_versions(base_dir, *vdir, opt.diff);
        if (!d) return failed(d.status(), base);
        auto p = plan_change_stream(*d, *vdir);
        if (!p) return failed(p.status(), base);
        return {Status::ok(), ErrorCode::ok, std::move(p.value())};
    };
    uint64_t likely_base = 0;
    for (uint64_t v : *held)
        if (v < opt.version) likely_base = v;
    std::future<Planned> speculative;
    if (likely_base) speculative = std::async(std::launch::async, plan_for, likely_base);

    // 1. Handshake and negotiation, all replicas in parallel.
    {
        std::vector<std::jthread> threads;
        for (auto& s : sessions) threads.emplace_back([&ctx, &s] { negotiate(ctx, *s); });
    }

    // 2. One diff per distinct base.
    std::map<uint64_t, std::unique_ptr<Group>> groups;
    for (auto& s : sessions) {
        if (!s->report.status.is_ok()) continue;
        if (s->need.kind == NeedKind::nothing) {
            (void)s->stream.shutdown();
            s->set_state(State::done);
            continue;
        }
        auto& g = groups[s->need.base];
        if (!g) {
            g = std::make_unique<Group>();
            g->base = s->need.base;
        }
        g->sessions.push_back(s.get());
    }
    std::vector<std::jthread> threads;
    for (auto& [base, g] : groups) {
        Planned planned = base == likely_base && speculative.valid() ? speculative.get() : plan_for(base);
        g->plan = std::move(planned.plan);
        if (!planned.status) {
            for (Session* s : g->sessions) s->fail(planned.status, planned.code, true);
            g->sessions.clear();
            continue;
        }
        // Each replica may resume at its own point; the reader starts at the earliest.
        std::vector<Session*> ok;
        for (Session* s : g->sessions) {
            if (s->need.resume_seq > g->plan.size()) {
                s->fail(Status::error(EPROTO, "NEED resumes after change " + std::to_string(s->need.resume_seq) +
                                                  " but the stream has " + std::to_string(g->plan.size())),
                        ErrorCode::protocol, true);
                continue;
            }
            ok.push_back(s);
        }
        g->sessions = ok;
        if (ok.empty()) continue;
        Session* first = *std::min_element(ok.begin(), ok.end(), [](Session* a, Session* b) {
            return a->need.resume_seq < b->need.resume_seq;
        });
        g->start_seq = first->need.resume_seq;
        g->start_chain = first->need.resume_chain;
        // Adaptive compression: frames are encoded at most 1 MiB ahead of the
        // fastest replica (beyond what the sockets hold), so a new setting
        // reaches the link soon after the link asked for it.
        g->window = std::make_unique<FrameWindow>(opt.window_bytes, ok.size(), opt.compress_auto ? (1u << 20) : 0);
        for (size_t i = 0; i < ok.size(); ++i) {
            ok[i]->group = g.get();
            ok[i]->consumer = i;
            ok[i]->report.change_count = g->plan.size();
            uint64_t total = 0;
            for (uint64_t q = ok[i]->need.resume_seq; q < g->plan.size(); ++q)
                if (g->plan[q].type == FrameType::data) total += g->plan[q].length;
            ok[i]->payload_total = total;
        }
    }
    // 3. Readers and writers.
    for (auto& [base, g] : groups) {
        if (g->sessions.empty()) continue;
        Group* gp = g.get();
        threads.emplace_back([&ctx, gp] { run_reader(ctx, *gp); });
        for (Session* s : g->sessions)
            threads.emplace_back([&ctx, &opt, &tk, s] {
                run_writer(ctx, *s);
                take_over(opt, tk, *s, ctx.node_name);  // at once: the relay's children wait for it
            });
    }
    threads.clear();  // joins
    // Relays that failed before streaming (after they named their children).
    for (auto& s : sessions) take_over(opt, tk, *s, ctx.node_name);
    all_done = true;
    if (progress.joinable()) progress.join();
    if (opt.on_progress) opt.on_progress(snapshot_progress(sessions));

    PushReport report;
    for (auto& [base, g] : groups) report.source_bytes_read += g->bytes_read;
    for (auto& s : sessions) {
        if (s->stream_open) {
            auto c = s->stream.counters();
            s->report.wire_bytes_sent = c.wire_sent;
            s->report.wire_bytes_received = c.wire_received;
        }
        if (s->group) {
            s->report.source_bytes_read = s->group->bytes_read;
            s->report.replicas_sharing_read = s->group->sessions.size();
            s->report.codec_decisions = s->group->codec_decisions;
        }
        s->report.seconds = seconds_since(s->started);
        s->stream.close();
        report.replicas.push_back(std::move(s->report));
    }
    for (auto& s : sessions) {
        report.source_bytes_read += s->takeover_bytes_read;
        for (auto& t : s->takeover) report.replicas.push_back(std::move(t));
    }
    report.seconds = seconds_since(started);
    return report;
}

}  // namespace

}  // namespace icbd::repl
