// icbd-replicate: the operator's tool for image versions: `serve` (replica side),
// `push` (master side, to one or more replicas), `commit` and `list`.
// Exit codes: 0 ok, 1 a replica or the operation failed, 2 usage error.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "icbd/build_version.hpp"
#include "icbd/log.hpp"
#include "icbd/json.hpp"
#include "icbd/parse_size.hpp"
#include "icbd/replicator/image_path.hpp"
#include "icbd/replicator/receiver.hpp"
#include "icbd/replicator/repository.hpp"
#include "icbd/replicator/sender.hpp"

namespace {

using namespace icbd;
using namespace icbd::repl;

constexpr int kExitOk = 0, kExitFailed = 1, kExitUsage = 2;

const char* kUsage =
    "usage:\n"
    "  icbd-replicate serve --root DIR --listen HOST:PORT --ca F --cert F --key F\n"
    "                       [--allow-peer NAME]... [--name NODE] [--insecure-plaintext] [--once]\n"
    "                       [--relay-to HOST:PORT[,HOST:PORT...]]... [--relay-max-stall MS]\n"
    "                       [--accept-from NAME[,NAME...]]...\n"
    "  icbd-replicate push --root DIR --image NAME --version N --to HOST:PORT [--to ...]\n"
    "                      --ca F --cert F --key F [--allow-peer NAME]... [--name NODE]\n"
    "                      [--compress auto|zstd|lz4|none] [--compress-level N] [--compress-threads N]\n"
    "                      [--bwlimit RATE] [--checkpoint-interval BYTES]\n"
    "                      [--json] [--insecure-plaintext]\n"
    "  icbd-replicate commit --root DIR --image NAME --version N --from DIR\n"
    "  icbd-replicate list --root DIR [--json]\n"
    "RATE, BYTES: a number with an optional B, K, M, G or T suffix (KiB and KB alike; powers of 1024).\n";

struct UsageError {
    std::string message;
};

// The options of one command, parsed by CLI11 and read back by name: --NAME
// VALUE (at most once, or repeatable) and switches. The checks that need
// several options or our own grammars (sizes, versions) run after parsing.
class Args {
public:
    explicit Args(CLI::App* cmd) : cmd_(cmd) {}
    Args& value(const std::string& name, const std::string& help) {
        cmd_->add_option(name, values_[name], help);
        return *this;
    }
    Args& repeatable(const std::string& name, const std::string& help) {
        cmd_->add_option(name, lists_[name], help)->allow_extra_args(false)->take_all();
        return *this;
    }
    Args& flag(const std::string& name, const std::string& help) {
        cmd_->add_flag(name, flags_[name], help);
        return *this;
    }
    bool parsed() const { return cmd_->parsed(); }

    std::optional<std::string> get(const std::string& k) const {
        if (cmd_->get_option(k)->count() == 0) return std::nullopt;
        return values_.at(k);
    }
    std::string need(const std::string& k) const {
        auto v = get(k);
        if (!v || v->empty()) throw UsageError{"option " + k + " is required"};
        return *v;
    }
    std::vector<std::string> all(const std::string& k) const { return lists_.at(k); }
    bool has(const std::string& k) const { return flags_.at(k); }

private:
    CLI::App* cmd_;
    // Node-based maps: CLI11 keeps pointers to the values.
    std::map<std::string, std::string> values_;
    std::map<std::string, std::vector<std::string>> lists_;
    std::map<std::string, bool> flags_;
};

uint64_t parse_version_arg(const std::string& s) {
    auto v = parse_version(s);
    if (!v) throw UsageError{"--version '" + s + "' is not a version number (1, 2, ...)"};
    return *v;
}

// Sizes and rates in bytes (per second): icbd/parse_size.hpp has the grammar.
uint64_t parse_size_arg(const std::string& option, const std::string& s) {
    Result<uint64_t> v = parse_size(s);
    if (!v) throw UsageError{option + " " + v.status().message()};
    return *v;
}

int parse_int_arg(const std::string& option, const std::string& s, int lo, int hi) {
    size_t i = s.size() > 1 && s[0] == '-' ? 1 : 0;
    bool digits = i < s.size() && s.size() - i <= 6;
    for (size_t k = i; k < s.size(); ++k) digits = digits && std::isdigit(static_cast<unsigned char>(s[k]));
    int v = digits ? std::stoi(s) : lo - 1;
    if (v < lo || v > hi)
        throw UsageError{option + " '" + s + "' is not a number in " + std::to_string(lo) + ".." + std::to_string(hi)};
    return v;
}

TlsConfig tls_from(const Args& a) {
    TlsConfig t;
    t.insecure_plaintext = a.has("--insecure-plaintext");
    if (!t.insecure_plaintext) {
        t.ca_file = a.need("--ca");
        t.cert_file = a.need("--cert");
        t.key_file = a.need("--key");
    } else {
        t.ca_file = a.get("--ca").value_or("");
        t.cert_file = a.get("--cert").value_or("");
        t.key_file = a.get("--key").value_or("");
    }
    t.allowed_peer_names = a.all("--allow-peer");
    return t;
}

std::string human_bytes(double b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", b, units[u]);
    return buf;
}

const char* kind_name(std::optional<NeedKind> k) {
    if (!k) return "none";
    switch (*k) {
    case NeedKind::nothing: return "nothing";
    case NeedKind::incremental: return "incremental";
    case NeedKind::full: return "full";
    }
    return "?";
}

// ---- serve ----

int cmd_serve(const Args& a) {
    std::string root = a.need("--root");
    auto hp = parse_host_port(a.need("--listen"));
    if (!hp) throw UsageError{"--listen: " + hp.status().message()};
    TlsConfig tls = tls_from(a);
    ReceiverOptions ro;
    for (const auto& list : a.all("--relay-to")) {
        size_t from = 0;
        for (;;) {
            size_t comma = list.find(',', from);
            std::string one = list.substr(from, comma == std::string::npos ? std::string::npos : comma - from);
            auto child = parse_host_port(one);
            if (!child) throw UsageError{"--relay-to: " + child.status().message()};
            if (child->host == hp->host && child->port == hp->port && hp->port != 0)
                throw UsageError{"--relay-to: " + one + " is this server's own --listen address (a cycle)"};
            for (const auto& seen : ro.relay_to)
                if (seen.text() == child->text())
                    throw UsageError{"--relay-to: " + one + " is named twice (a child is fed once)"};
            ro.relay_to.push_back(*child);
            if (comma == std::string::npos) break;
            from = comma + 1;
        }
    }
    ro.relay_tls = tls;
    for (const auto& list : a.all("--accept-from")) {
        std::stringstream ss(list);
        for (std::string name; std::getline(ss, name, ',');) {
            if (name.empty()) throw UsageError{"--accept-from: an empty name in '" + list + "'"};
            ro.accept_from.push_back(name);
        }
    }
    if (auto ms = a.get("--relay-max-stall")) {
        try {
            ro.relay_max_stall = std::chrono::milliseconds(std::stoul(*ms));
        } catch (const std::exception&) {
            throw UsageError{"--relay-max-stall: not a number of milliseconds: '" + *ms + "'"};
        }
    }

    auto repo = Repository::open(root);
    if (!repo) {
        std::fprintf(stderr, "icbd-replicate serve: %s\n", repo.status().message().c_str());
        return kExitFailed;
    }
    auto listener = Listener::bind(hp->host, hp->port, tls);
    if (!listener) {
        std::fprintf(stderr, "icbd-replicate serve: %s\n", listener.status().message().c_str());
        return kExitFailed;
    }
    ro.root = root;
    ro.node_name = a.get("--name").value_or("");
    Receiver rx(ro);
    // SIGINT/SIGTERM stop the server from a thread that waits for them (no
    // work in a signal handler); sessions under way keep their staging.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);  // our own wake-up when serve() ends first
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::jthread signals([&rx, set] {
        int sig = 0;
        if (sigwait(&set, &sig) == 0 && sig != SIGUSR1) rx.stop();
    });
    std::printf("listening on %s\n", listener->address().c_str());
    std::fflush(stdout);
    // --once: serve() returns how its one connection went (a failed TLS
    // handshake or a failed push: exit 1). A long-running server stopped by a
    // signal has done its job (a failed push was logged and is retried by the
    // master), so a service manager must not see a failure.
    Status s = rx.serve(*listener, a.has("--once"));
    pthread_kill(signals.native_handle(), SIGUSR1);
    if (!s) {
        std::fprintf(stderr, "icbd-replicate serve: %s\n", s.message().c_str());
        return kExitFailed;
    }
    return kExitOk;
}

// ---- push ----

int cmd_push(const Args& a) {
    PushOptions o;
    o.root = a.need("--root");
    o.image = a.need("--image");
    if (Status s = validate_image_name(o.image); !s) throw UsageError{"--image: " + s.message()};
    o.version = parse_version_arg(a.need("--version"));
    auto tos = a.all("--to");
    if (tos.empty()) throw UsageError{"option --to is required (one per replica)"};
    for (const auto& t : tos) {
        auto hp = parse_host_port(t);
        if (!hp) throw UsageError{"--to: " + hp.status().message()};
        o.targets.push_back(*hp);
    }
    o.tls = tls_from(a);
    o.node_name = a.get("--name").value_or("");
    if (auto c = a.get("--compress")) {
        if (*c == "auto") {
            o.compress_auto = true;
        } else {
            auto alg = parse_compression(*c);
            if (!alg) throw UsageError{"--compress: " + alg.status().message() + " (or auto)"};
            o.compression = *alg;
            o.compress_auto = false;
        }
    }
    if (auto l = a.get("--compress-level")) {
        if (o.compress_auto || o.compression == Compression::none)
            throw UsageError{"--compress-level needs --compress zstd or lz4"};
        o.compression_level = parse_int_arg("--compress-level", *l, -1000000, 1000000);
        // The same check the compressors make, here, before anything connects.
        if (auto c = Compressor::create(o.compression, o.compression_level); !c)
            throw UsageError{"--compress-level: " + c.status().message()};
    }
    if (auto t = a.get("--compress-threads"))
        o.compression_workers = static_cast<unsigned>(parse_int_arg("--compress-threads", *t, 1, 64));
    if (auto r = a.get("--bwlimit")) o.bandwidth_limit = parse_size_arg("--bwlimit", *r);
    if (auto c = a.get("--checkpoint-interval")) {  // explicit: by bytes only
        o.checkpoint_interval = std::max<uint64_t>(parse_size_arg("--checkpoint-interval", *c), 1);
        o.checkpoint_min_period = std::chrono::milliseconds(0);
        o.checkpoint_max_period = std::chrono::milliseconds(0);
    }
    const bool json = a.has("--json");

    const bool tty = ::isatty(2);
    size_t last_len = 0;
    if (tty) {
        o.on_progress = [&](const std::vector<ReplicaProgress>& ps) {
            std::string line;
            for (const auto& p : ps) {
                if (!line.empty()) line += " | ";
                line += p.peer + " " + p.state + " " + human_bytes(p.payload_sent) + "/" + human_bytes(p.payload_total) +
                        " " + human_bytes(p.rate_bytes_per_s) + "/s";
                if (p.eta_seconds >= 0 && p.state == "streaming") line += " ETA " + std::to_string(int(p.eta_seconds + 0.5)) + "s";
            }
            std::string pad = line.size() < last_len ? std::string(last_len - line.size(), ' ') : "";
            std::fprintf(stderr, "\r%s%s", line.c_str(), pad.c_str());
            std::fflush(stderr);
            last_len = line.size();
        };
    }
    auto r = push(o);
    if (tty) std::fprintf(stderr, "\n");
    if (!r) {
        std::fprintf(stderr, "icbd-replicate push: %s\n", r.status().message().c_str());
        if (json)
            std::printf("{\"ok\":false,\"error\":\"%s\",\"replicas\":[]}\n", json_escape(r.status().message()).c_str());
        return kExitFailed;
    }
    for (const auto& rep : r->replicas) {
        if (rep.ok()) {
            std::string codecs;  // e.g. " (chunks: zstd:1 12, lz4 30)"
            for (const auto& u : rep.codecs) codecs += (codecs.empty() ? " (chunks: " : ", ") + u.setting + " " + std::to_string(u.chunks);
            if (!codecs.empty()) codecs += ")";
            if (!rep.taken_over_from.empty()) codecs += " (taken over from relay " + rep.taken_over_from + ")";
            std::fprintf(stderr, "image '%s' version %" PRIu64 " to %s: %s (%s from %" PRIu64 "), %s on the wire%s, %.2f s\n",
                         rep.image.c_str(), rep.version, rep.peer.c_str(),
                         rep.kind == NeedKind::nothing ? "already there" : "ok", kind_name(rep.kind), rep.base,
                         human_bytes(double(rep.wire_bytes_sent)).c_str(), codecs.c_str(), rep.seconds);
        } else std::fprintf(stderr, "icbd-replicate push: %s\n", rep.status.message().c_str());
    }
    if (json) {
        std::ostringstream js;
        js << "{\"ok\":" << (r->all_ok() ? "true" : "false") << ",\"image\":\"" << json_escape(o.image)
           << "\",\"version\":" << o.version << ",\"source_bytes_read\":" << r->source_bytes_read
           << ",\"seconds\":" << r->seconds << ",\"replicas\":[";
        bool first = true;
        for (const auto& rep : r->replicas) {
            if (!first) js << ",";
            first = false;
            js << "{\"target\":\"" << json_escape(rep.target) << "\",\"peer\":\"" << json_escape(rep.peer)
               << "\",\"image\":\"" << json_escape(rep.image) << "\",\"version\":" << rep.version
               << ",\"base\":" << rep.base << ",\"kind\":\"" << kind_name(rep.kind) << "\",\"resume_seq\":"
               << rep.resume_seq << ",\"changes\":" << rep.change_count << ",\"changes_sent\":" << rep.changes_sent
               << ",\"wire_bytes\":" << rep.wire_bytes_sent << ",\"payload_bytes\":" << rep.payload_bytes
               << ",\"frame_bytes\":" << rep.frame_bytes << ",\"source_bytes_read\":" << rep.source_bytes_read
               << ",\"checkpoints\":" << rep.checkpoints << ",\"codec_switches\":" << rep.codec_switches
               << ",\"codecs\":[";
            for (size_t i = 0; i < rep.codecs.size(); ++i) {
                const auto& u = rep.codecs[i];
                js << (i ? "," : "") << "{\"setting\":\"" << json_escape(u.setting) << "\",\"chunks\":" << u.chunks
                   << ",\"raw_bytes\":" << u.raw_bytes << ",\"frame_bytes\":" << u.frame_bytes << "}";
            }
            js << "],\"codec_decisions\":[";
            for (size_t i = 0; i < rep.codec_decisions.size(); ++i)
                js << (i ? "," : "") << "\"" << json_escape(rep.codec_decisions[i]) << "\"";
            js << "],\"timeline\":{\"negotiated\":" << rep.timeline.negotiated << ",\"first_frame\":"
               << rep.timeline.first_frame << ",\"last_frame\":" << rep.timeline.last_frame << ",\"result\":"
               << rep.timeline.result << "}";
            js << ",\"relay_children\":[";
            for (size_t i = 0; i < rep.relay_children.size(); ++i)
                js << (i ? "," : "") << "\"" << json_escape(rep.relay_children[i]) << "\"";
            js << "]";
            if (!rep.taken_over_from.empty()) js << ",\"taken_over_from\":\"" << json_escape(rep.taken_over_from) << "\"";
            js << ",\"seconds\":" << rep.seconds << ",\"result\":\""
               << (rep.ok() ? std::string("ok") : error_code_name(rep.code)) << "\"";
            if (!rep.ok()) js << ",\"error\":\"" << json_escape(rep.status.message()) << "\"";
            js << "}";
        }
        js << "]}\n";
        std::fputs(js.str().c_str(), stdout);
    }
    return r->all_ok() ? kExitOk : kExitFailed;
}

// ---- commit, list ----

int cmd_commit(const Args& a) {
    std::string root = a.need("--root");
    std::string image = a.need("--image");
    if (Status s = validate_image_name(image); !s) throw UsageError{"--image: " + s.message()};
    uint64_t version = parse_version_arg(a.need("--version"));
    std::string from = a.need("--from");
    auto repo = Repository::open(root);
    Status s = repo ? repo->commit(image, version, from) : repo.status();
    if (!s) {
        std::fprintf(stderr, "icbd-replicate commit: %s\n", s.message().c_str());
        return kExitFailed;
    }
    std::fprintf(stderr, "image '%s' version %" PRIu64 " committed from '%s'\n", image.c_str(), version, from.c_str());
    return kExitOk;
}

int cmd_list(const Args& a) {
    auto repo = Repository::open(a.need("--root"));
    if (!repo) {
        std::fprintf(stderr, "icbd-replicate list: %s\n", repo.status().message().c_str());
        return kExitFailed;
    }
    auto images = repo->list_images();
    if (!images) {
        std::fprintf(stderr, "icbd-replicate list: %s\n", images.status().message().c_str());
        return kExitFailed;
    }
    auto staging = repo->list_staging();
    std::ostringstream js;
    js << "{\"images\":[";
    bool first = true;
    for (const auto& img : *images) {
        auto vs = repo->list_versions(img);
        if (!vs) {
            std::fprintf(stderr, "icbd-replicate list: %s\n", vs.status().message().c_str());
            return kExitFailed;
        }
        if (!a.has("--json")) {
            std::printf("%s:", img.c_str());
            for (uint64_t v : *vs) std::printf(" %" PRIu64, v);
            std::printf("\n");
        }
        if (!first) js << ",";
        first = false;
        js << "{\"image\":\"" << json_escape(img) << "\",\"versions\":[";
        for (size_t i = 0; i < vs->size(); ++i) js << (i ? "," : "") << (*vs)[i];
        js << "]}";
    }
    js << "],\"staging\":[";
    if (staging) {
        for (size_t i = 0; i < staging->size(); ++i) {
            const auto& s = (*staging)[i];
            js << (i ? "," : "") << "{\"image\":\"" << json_escape(s.image) << "\",\"version\":" << s.version
               << ",\"base\":" << s.base << "}";
            if (!a.has("--json"))
                std::printf("staging: %s version %" PRIu64 " from %" PRIu64 "\n", s.image.c_str(), s.version, s.base);
        }
    }
    js << "]}\n";
    if (a.has("--json")) std::fputs(js.str().c_str(), stdout);
    return kExitOk;
}

// The TLS options serve and push share.
void add_tls_options(Args& a) {
    a.value("--ca", "PEM file: the CA that signed the peers' certificates")
        .value("--cert", "PEM file: our certificate")
        .value("--key", "PEM file: our private key")
        .repeatable("--allow-peer", "Accept only a peer with this certificate name (repeatable)")
        .flag("--insecure-plaintext", "Plain TCP, no TLS: for tests only");
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Replication of image versions between icbd nodes.", "icbd-replicate"};
    app.set_version_flag("--version", ICBD_VERSION_LINE("icbd-replicate"));
    app.require_subcommand(1);
    app.footer(kUsage);

    Args serve(app.add_subcommand("serve", "Receive pushes into a replica's repository"));
    serve.value("--root", "The replica's repository").value("--listen", "HOST:PORT to listen on");
    add_tls_options(serve);
    serve.value("--name", "Our node name in HELLO (default: the host name)")
        .flag("--once", "Exit after the first connection: 0 if it went well, 1 otherwise")
        .repeatable("--relay-to", "Relay each version received to these replicas, HOST:PORT[,HOST:PORT...]")
        .value("--relay-max-stall", "Milliseconds a relay child may keep the window full before it is dropped")
        .repeatable("--accept-from", "Accept versions only from these senders' certificate names, NAME[,NAME...]");

    Args push(app.add_subcommand("push", "Push one version of an image to one or more replicas"));
    push.value("--root", "The master's repository")
        .value("--image", "Image name")
        .value("--version", "Version number")
        .repeatable("--to", "A replica's HOST:PORT (one per replica)");
    add_tls_options(push);
    push.value("--name", "Our node name in HELLO (default: the host name)")
        .value("--compress", "auto, zstd, lz4 or none")
        .value("--compress-level", "zstd level or lz4 acceleration")
        .value("--compress-threads", "Compression threads (1..64)")
        .value("--bwlimit", "Bandwidth over all replicas, bytes per second (K, M, G suffixes)")
        .value("--checkpoint-interval", "Bytes of frames between checkpoints (K, M, G suffixes)")
        .flag("--json", "Print the report as JSON");

    Args commit(app.add_subcommand("commit", "Make a directory the next version of an image"));
    commit.value("--root", "The repository").value("--image", "Image name").value("--version", "Version number")
        .value("--from", "The directory to commit");

    Args list(app.add_subcommand("list", "List images, versions and staging areas"));
    list.value("--root", "The repository").flag("--json", "Print JSON");

    CLI::App* help = app.add_subcommand("help", "Show the usage of every command");

    try {
        // CLI11 would only say that a command is required.
        if (argc > 1 && argv[1][0] != '-') (void)app.get_subcommand(argv[1]);
    } catch (const CLI::OptionNotFound&) {
        std::fprintf(stderr, "icbd-replicate: unknown command '%s'\n%s", argv[1], kUsage);
        return kExitUsage;
    }
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {
        return app.exit(e);  // --help, --version
    } catch (const CLI::ParseError& e) {
        std::fprintf(stderr, "icbd-replicate: %s\n%s", e.what(), kUsage);
        return kExitUsage;
    }
    try {
        if (serve.parsed()) return cmd_serve(serve);
        if (push.parsed()) return cmd_push(push);
        if (commit.parsed()) return cmd_commit(commit);
        if (list.parsed()) return cmd_list(list);
        if (help->parsed()) {
            std::fputs(kUsage, stdout);
            return kExitOk;
        }
        throw UsageError{"no command given"};
    } catch (const UsageError& e) {
        std::fprintf(stderr, "icbd-replicate: %s\n%s", e.message.c_str(), kUsage);
        return kExitUsage;
    }
}
