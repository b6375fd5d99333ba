// blockd's configuration: reads one node's TOML file (docs/blockd.md, "Configuration")
// into NodeConfig and refuses what it would otherwise have to guess, in one line each.
#include "config.hpp"

#include "icbd/parse_size.hpp"

#include <fcntl.h>
#include <grp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string_view>

#include <toml++/toml.h>

#include "icbd/replicator/compression.hpp"
#include "icbd/replicator/sender.hpp"
#include "icbd/unique_fd.hpp"
#include "relay_tree.hpp"

namespace icbd::node {

const char* role_name(Role r) { return r == Role::master ? "master" : "replica"; }

namespace {

namespace fs = std::filesystem;

// The keys each table may hold; the top level ("") lists its plain keys only.
struct TableKeys {
    std::string_view table;
    std::vector<std::string_view> keys;
};
const std::vector<TableKeys>& schema() {
    static const std::vector<TableKeys> s = {
        {"", {"role", "name", "state_dir", "runtime_dir"}},
        {"control", {"socket", "group"}},
        {"repository", {"root"}},
        {"tls", {"ca", "cert", "key"}},
        {"peer", {"listen", "advertise"}},
        {"replication",
         {"listen", "advertise", "compression", "compression_level", "bandwidth_limit", "checkpoint_interval"}},
        {"master", {"address", "name"}},
        {"membership", {"keepalive_interval", "keepalive_tries"}},
        {"subscribe", {"images"}},
        {"tgt", {"control_port", "iqn_prefix"}},
        {"clients", {"overlay_dir", "cache_dir", "cache_size", "default_channel", "reconcile_interval"}},
        {"metrics", {"listen", "dir"}},
        {"prefetch", {"enabled", "max_rate", "adaptive"}},
        {"relay", {"via"}},
    };
    return s;
}

const TableKeys* find_table(std::string_view name) {
    for (const auto& t : schema())
        if (t.table == name) return &t;
    return nullptr;
}

bool contains(const std::vector<std::string_view>& words, std::string_view w) {
    return std::find(words.begin(), words.end(), w) != words.end();
}

std::string join(const std::vector<std::string_view>& words) {
    std::string out;
    for (auto w : words) out += (out.empty() ? "" : ", ") + std::string(w);
    return out;
}

std::string table_names() {
    std::vector<std::string_view> names;
    for (const auto& t : schema())
        if (!t.table.empty()) names.push_back(t.table);
    return join(names);
}

const char* type_name(toml::node_type t) {
    switch (t) {
        case toml::node_type::string: return "string";
        case toml::node_type::integer: return "integer";
        case toml::node_type::floating_point: return "float";
        case toml::node_type::boolean: return "boolean";
        case toml::node_type::table: return "table";
        case toml::node_type::array: return "array";
        case toml::node_type::date: return "date";
        case toml::node_type::time: return "time";
        case toml::node_type::date_time: return "date-time";
        case toml::node_type::none: break;
    }
    return "nothing";
}

bool is_node_name(std::string_view s) {
    if (s.empty() || s.size() > 64) return false;
    auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
    for (char c : s)
        if (!alnum(c) && c != '.' && c != '-') return false;
    return alnum(s.front()) && alnum(s.back());
}

// 'text', built by appending: GCC 12 warns falsely (-Wrestrict) on "'" + std::string(...).
std::string in_quotes(std::string_view text) {
    std::string q;
    q.reserve(text.size() + 2);
    q += '\'';
    q += text;
    q += '\'';
    return q;
}

bool is_wildcard_host(const std::string& host) { return host.empty() || host == "0.0.0.0" || host == "::"; }

// The project's one size grammar (icbd/parse_size.hpp), with this file's wording.
Result<uint64_t> parse_size(std::string_view text) {
    auto v = icbd::parse_size(text);
    if (!v) return Status::error(EINVAL, in_quotes(text) + " is not a size (e.g. 4M, 50M, 1G or a number of bytes)");
    return v;
}

// Reads the values out of a parsed file; every error is "<file>: <key>: <cause>".
class Reader {
public:
    Reader(const toml::table& root, std::string file) : root_(root), file_(std::move(file)) {}

    Status fail(std::string_view key, const std::string& cause) const {
        return Status::error(EINVAL, file_ + ": " + std::string(key) + ": " + cause);
    }
    Status missing(std::string_view key, const std::string& why) const { return fail(key, "missing (" + why + ")"); }

    Status check_known_keys() const {
        const TableKeys& top = *find_table("");
        for (auto&& [k, node] : root_) {
            std::string_view key = k.str();
            if (const TableKeys* t = key.empty() ? nullptr : find_table(key)) {
                if (!node.is_table()) return wrong_type(key, "a table", node);
                for (auto&& entry : *node.as_table()) {
                    std::string_view sub = entry.first.str();
                    if (!contains(t->keys, sub))
                        return fail(std::string(key) + "." + std::string(sub), "unknown key (known: " + join(t->keys) + ")");
                }
            } else if (!contains(top.keys, key)) {
                if (node.is_table()) return fail(key, "unknown table (known: " + table_names() + ")");
                return fail(key, "unknown key (known: " + join(top.keys) + "; tables: " + table_names() + ")");
            }
        }
        return Status::ok();
    }

    bool has(std::string_view path) const { return static_cast<bool>(root_.at_path(path)); }

    Result<std::optional<std::string>> string(std::string_view path) const {
        auto n = root_.at_path(path);
        if (!n) return std::optional<std::string>{};
        if (!n.is_string()) return wrong_type(path, "a string", *n.node());
        return std::optional<std::string>(n.as_string()->get());
    }

    Result<std::optional<int64_t>> integer(std::string_view path, int64_t lo, int64_t hi) const {
        auto n = root_.at_path(path);
        if (!n) return std::optional<int64_t>{};
        if (!n.is_integer()) return wrong_type(path, "an integer", *n.node());
        int64_t v = n.as_integer()->get();
        if (v < lo || v > hi)
            return fail(path, std::to_string(v) + " is not in " + std::to_string(lo) + ".." + std::to_string(hi));
        return std::optional<int64_t>(v);
    }

    Result<std::optional<bool>> boolean(std::string_view path) const {
        auto n = root_.at_path(path);
        if (!n) return std::optional<bool>{};
        if (!n.is_boolean()) return wrong_type(path, "true or false", *n.node());
        return std::optional<bool>(n.as_boolean()->get());
    }

    // A string that must be one of `choices`.
    Result<std::optional<std::string>> choice(std::string_view path, const std::vector<std::string_view>& choices) const {
        auto s = string(path);
        if (!s || !*s) return s;
        for (auto c : choices)
            if (c == **s) return s;
        return fail(path, in_quotes(**s) + " is not one of " + join(choices));
    }

    Result<std::optional<fs::path>> absolute_path(std::string_view path) const {
        auto s = string(path);
        if (!s) return s.status();
        if (!*s) return std::optional<fs::path>{};
        if ((*s)->empty() || (*s)->front() != '/') return fail(path, in_quotes(**s) + " is not an absolute path");
        return std::optional<fs::path>(fs::path(**s).lexically_normal());
    }

    // "50M" or an integer of bytes.
    Result<std::optional<uint64_t>> size(std::string_view path) const {
        auto n = root_.at_path(path);
        if (!n) return std::optional<uint64_t>{};
        if (n.is_integer()) {
            int64_t v = n.as_integer()->get();
            if (v < 0) return fail(path, std::to_string(v) + " is negative");
            return std::optional<uint64_t>(static_cast<uint64_t>(v));
        }
        if (!n.is_string()) return wrong_type(path, "a size (\"50M\" or an integer of bytes)", *n.node());
        auto v = parse_size(n.as_string()->get());
        if (!v) return fail(path, v.status().message());
        return std::optional<uint64_t>(*v);
    }

    // "10s", "500ms" or an integer of seconds; never zero.
    Result<std::optional<std::chrono::milliseconds>> duration(std::string_view path) const {
        auto n = root_.at_path(path);
        if (!n) return std::optional<std::chrono::milliseconds>{};
        std::string text;
        if (n.is_integer()) text = std::to_string(n.as_integer()->get());
        else if (n.is_string()) text = n.as_string()->get();
        else return wrong_type(path, "a duration (\"10s\", \"500ms\" or an integer of seconds)", *n.node());
        auto d = parse_duration(text);
        if (!d) return fail(path, d.status().message());
        if (d->count() == 0) return fail(path, in_quotes(text) + " is zero");
        return std::optional<std::chrono::milliseconds>(*d);
    }

    // A table of string values (relay.via: replica = "parent").
    Result<std::optional<std::map<std::string, std::string>>> string_table(std::string_view path) const {
        auto n = root_.at_path(path);
        if (!n) return std::optional<std::map<std::string, std::string>>{};
        if (!n.is_table()) return wrong_type(path, "a table", *n.node());
        std::map<std::string, std::string> out;
        for (auto&& [k, item] : *n.as_table()) {
            std::string at = std::string(path) + "." + std::string(k.str());
            if (!item.is_string()) return wrong_type(at, "a string", item);
            out.emplace(std::string(k.str()), item.as_string()->get());
        }
        return std::optional<std::map<std::string, std::string>>(std::move(out));
    }

    const std::string& file() const { return file_; }

    Result<std::optional<std::vector<std::string>>> string_array(std::string_view path) const {
        auto n = root_.at_path(path);
        if (!n) return std::optional<std::vector<std::string>>{};
        if (!n.is_array()) return wrong_type(path, "an array of strings", *n.node());
        std::vector<std::string> out;
        size_t i = 0;
        for (auto&& item : *n.as_array()) {
            std::string at = std::string(path) + "[" + std::to_string(i++) + "]";
            if (!item.is_string()) return wrong_type(at, "a string", item);
            out.push_back(item.as_string()->get());
        }
        return std::optional<std::vector<std::string>>(std::move(out));
    }

private:
    Status wrong_type(std::string_view path, const char* expected, const toml::node& got) const {
        return fail(path, std::string("expected ") + expected + ", got " + type_name(got.type()));
    }

    const toml::table& root_;
    std::string file_;
};

// Assigns `out` when the file sets the key; propagates the error otherwise.
template <typename T, typename U>
Status take(Result<std::optional<T>> r, U& out) {
    if (!r) return r.status();
    if (*r) out = std::move(**r);
    return Status::ok();
}

Status read_top(const Reader& r, NodeConfig& c) {
    auto role = r.choice("role", {"master", "replica"});
    if (!role) return role.status();
    if (!*role) return r.missing("role", "master or replica");
    c.role = **role == "master" ? Role::master : Role::replica;
    if (Status s = take(r.string("name"), c.name); !s) return s;
    if (r.has("name") && !is_node_name(c.name))
        return r.fail("name", in_quotes(c.name) + " is not a node name (letters, digits, '.', '-'; at most 64)");
    if (Status s = take(r.absolute_path("state_dir"), c.state_dir); !s) return s;
    if (Status s = take(r.absolute_path("runtime_dir"), c.runtime_dir); !s) return s;
    return Status::ok();
}

Status check_group(const Reader& r, const std::string& name) {
    if (name.empty()) return Status::ok();
    std::vector<char> buf(16384);
    struct group g {};
    struct group* found = nullptr;
    int err = getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found);
    if (err) return r.fail("control.group", in_quotes(name) + ": " + std::strerror(err));
    if (!found) return r.fail("control.group", "no group '" + name + "' on this system");
    return Status::ok();
}

Status read_control(const Reader& r, NodeConfig& c) {
    if (Status s = take(r.absolute_path("control.socket"), c.control_socket); !s) return s;
    if (c.control_socket.empty()) c.control_socket = c.runtime_dir / "blockd.sock";
    if (c.control_socket.native().size() >= sizeof(sockaddr_un{}.sun_path))
        return r.fail(r.has("control.socket") ? "control.socket" : "runtime_dir",
                      "socket path '" + c.control_socket.string() + "' is longer than a Unix socket address allows (" +
                          std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes)");
    if (Status s = take(r.string("control.group"), c.control_group); !s) return s;
    return check_group(r, c.control_group);
}

Status check_directory(const Reader& r, std::string_view key, const fs::path& dir) {
    UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return r.fail(key, dir.string() + ": " + std::strerror(errno));
    return Status::ok();
}

Status check_readable_file(const Reader& r, std::string_view key, const fs::path& file) {
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return r.fail(key, file.string() + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return r.fail(key, file.string() + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return r.fail(key, file.string() + ": not a regular file");
    char byte;
    if (::read(fd.get(), &byte, 1) < 0) return r.fail(key, file.string() + ": " + std::strerror(errno));
    return Status::ok();
}

Status read_repository_and_tls(const Reader& r, NodeConfig& c) {
    if (Status s = take(r.absolute_path("repository.root"), c.repository); !s) return s;
    if (c.repository.empty()) return r.missing("repository.root", "the image repository's directory");
    if (Status s = check_directory(r, "repository.root", c.repository); !s) return s;
    struct Tls {
        std::string_view key;
        std::string* out;
        const char* what;
    };
    for (const Tls& t : {Tls{"tls.ca", &c.tls_ca, "the cluster CA's certificate"},
                         Tls{"tls.cert", &c.tls_cert, "this node's certificate"},
                         Tls{"tls.key", &c.tls_key, "this node's private key"}}) {
        fs::path p;
        if (Status s = take(r.absolute_path(t.key), p); !s) return s;
        if (p.empty()) return r.missing(t.key, std::string(t.what) + ", PEM");
        if (Status s = check_readable_file(r, t.key, p); !s) return s;
        *t.out = p.string();
    }
    return Status::ok();
}

struct FileClose {
    void operator()(FILE* f) const { std::fclose(f); }
};
struct X509Free {
    void operator()(X509* x) const { X509_free(x); }
};

Result<std::string> certificate_cn(const std::string& file) {
    std::unique_ptr<FILE, FileClose> f(std::fopen(file.c_str(), "re"));
    if (!f) return Status::error(errno, file + ": " + std::strerror(errno));
    std::unique_ptr<X509, X509Free> cert(PEM_read_X509(f.get(), nullptr, nullptr, nullptr));
    if (!cert) return Status::error(EINVAL, file + " holds no PEM certificate");
    char cn[256] = {};
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn, sizeof cn);
    if (n <= 0) return Status::error(EINVAL, file + ": the certificate has no CN");
    return std::string(cn, static_cast<size_t>(n));
}

Status read_name(const Reader& r, NodeConfig& c) {
    if (!c.name.empty()) return Status::ok();
    auto cn = certificate_cn(c.tls_cert);
    if (!cn) return r.fail("name", "not set, and no name in tls.cert: " + cn.status().message());
    if (!is_node_name(*cn))
        return r.fail("name", "not set, and the CN '" + *cn + "' of tls.cert " + c.tls_cert + " is not a node name; set name");
    c.name = *cn;
    return Status::ok();
}

// A listen address and the address others reach it by (the listen address
// when it names one host; 127.0.0.1 or ::1 when it listens on all of them).
Status read_endpoint(const Reader& r, const std::string& table, std::string& listen, std::string& advertise) {
    std::string listen_key = table + ".listen", advertise_key = table + ".advertise";
    if (Status s = take(r.string(listen_key), listen); !s) return s;
    auto l = repl::parse_host_port(listen);
    if (!l) return r.fail(listen_key, l.status().message());
    listen = l->text();
    std::optional<std::string> adv;
    if (Status s = take(r.string(advertise_key), adv); !s) return s;
    if (adv) {
        auto a = repl::parse_host_port(*adv);
        if (!a) return r.fail(advertise_key, a.status().message());
        if (is_wildcard_host(a->host))
            return r.fail(advertise_key, in_quotes(*adv) + " is not an address others can reach (it names no host)");
        advertise = a->text();
        return Status::ok();
    }
    repl::HostPort hp = *l;
    if (is_wildcard_host(hp.host)) hp.host = hp.host == "::" ? "::1" : "127.0.0.1";
    advertise = hp.text();
    return Status::ok();
}

Status read_replication(const Reader& r, NodeConfig& c) {
    if (Status s = read_endpoint(r, "replication", c.replication_listen, c.replication_advertise); !s) return s;
    if (Status s = take(r.choice("replication.compression", {"zstd", "lz4", "none", "auto"}), c.compression); !s) return s;
    std::optional<int64_t> level;
    constexpr int64_t lo = std::numeric_limits<int>::min(), hi = std::numeric_limits<int>::max();
    if (Status s = take(r.integer("replication.compression_level", lo, hi), level); !s) return s;
    if (level) c.compression_level = static_cast<int>(*level);
    if (c.compression_level && c.compression == "auto")
        return r.fail("replication.compression_level", "compression auto chooses its own levels");
    if (c.compression_level) {
        auto algorithm = repl::parse_compression(c.compression);
        if (*algorithm == repl::Compression::none)
            return r.fail("replication.compression_level", "compression none has no level");
        // The same check a push makes, so a bad level stops blockd at start, not at the first commit.
        auto compressor = repl::Compressor::create(*algorithm, c.compression_level);
        if (!compressor) return r.fail("replication.compression_level", compressor.status().message());
    }
    if (Status s = take(r.size("replication.bandwidth_limit"), c.bandwidth_limit); !s) return s;
    // Absent: automatic checkpoints (0). Given: bytes, and never zero.
    constexpr uint64_t kAbsent = UINT64_MAX;
    c.checkpoint_interval = kAbsent;
    if (Status s = take(r.size("replication.checkpoint_interval"), c.checkpoint_interval); !s) return s;
    if (c.checkpoint_interval == 0) return r.fail("replication.checkpoint_interval", "zero (a push could never resume)");
    if (c.checkpoint_interval == kAbsent) c.checkpoint_interval = 0;
    return Status::ok();
}

Status read_master(const Reader& r, NodeConfig& c) {
    if (c.role == Role::master) {
        if (r.has("master")) return r.fail("master", "only a replica has a master (role is master)");
        return Status::ok();
    }
    if (Status s = take(r.string("master.address"), c.master_address); !s) return s;
    if (!r.has("master.address")) return r.missing("master.address", "a replica registers with its master at HOST:PORT");
    auto hp = repl::parse_host_port(c.master_address);
    if (!hp) return r.fail("master.address", hp.status().message());
    if (is_wildcard_host(hp->host)) return r.fail("master.address", in_quotes(c.master_address) + " names no host");
    c.master_address = hp->text();
    if (Status s = take(r.string("master.name"), c.master_name); !s) return s;
    if (!r.has("master.name")) return r.missing("master.name", "the CN of the master's certificate");
    if (!is_node_name(c.master_name)) return r.fail("master.name", in_quotes(c.master_name) + " is not a node name");
    if (c.master_name == c.name) return r.fail("master.name", in_quotes(c.master_name) + " is this node's own name");
    return Status::ok();
}

Status read_membership(const Reader& r, NodeConfig& c) {
    if (Status s = take(r.duration("membership.keepalive_interval"), c.keepalive_interval); !s) return s;
    std::optional<int64_t> tries;
    if (Status s = take(r.integer("membership.keepalive_tries", 1, 1000), tries); !s) return s;
    if (tries) c.keepalive_tries = static_cast<unsigned>(*tries);
    return Status::ok();
}

Status read_subscribe(const Reader& r, NodeConfig& c) {
    if (Status s = take(r.string_array("subscribe.images"), c.subscribe); !s) return s;
    if (c.subscribe.empty()) return r.fail("subscribe.images", "empty (\"*\" subscribes to every image)");
    for (size_t i = 0; i < c.subscribe.size(); ++i) {
        const std::string& p = c.subscribe[i];
        if (p.empty() || p.find('/') != std::string::npos || p == "." || p == "..")
            return r.fail("subscribe.images[" + std::to_string(i) + "]", in_quotes(p) + " is not an image name or pattern");
    }
    return Status::ok();
}

bool is_iqn_prefix(std::string_view s) {
    // iqn.YYYY-MM.<reversed domain>[:...] (RFC 3720): lower case, the client's name follows a ':'.
    if (s.size() < 13 || s.substr(0, 4) != "iqn.") return false;
    for (size_t i : {4u, 5u, 6u, 7u, 9u, 10u})
        if (s[i] < '0' || s[i] > '9') return false;
    if (s[8] != '-' || s[11] != '.') return false;
    for (char c : s)
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == ':')) return false;
    return s.back() != '.' && s.back() != ':' && s.back() != '-';
}

// [metrics]: where /metrics listens ("" or "off": nowhere) and which LUN files it reads.
Status read_metrics(const Reader& r, NodeConfig& c) {
    if (Status s = take(r.string("metrics.listen"), c.metrics_listen); !s) return s;
    if (c.metrics_listen == "off") c.metrics_listen.clear();
    if (!c.metrics_listen.empty()) {
        auto hp = repl::parse_host_port(c.metrics_listen);
        if (!hp) return r.fail("metrics.listen", hp.status().message() + " (\"off\" disables /metrics)");
        c.metrics_listen = hp->text();
    }
    std::optional<fs::path> dir;
    if (Status s = take(r.absolute_path("metrics.dir"), dir); !s) return s;
    if (dir) c.metrics_dir = *dir;
    return Status::ok();
}

// [prefetch]: boot sets read into the page cache at publish and start (docs/blockd.md, "Boot sets").
Status read_prefetch(const Reader& r, NodeConfig& c) {
    if (Status s = take(r.boolean("prefetch.enabled"), c.prefetch_enabled); !s) return s;
    if (Status s = take(r.size("prefetch.max_rate"), c.prefetch_max_rate); !s) return s;
    if (Status s = take(r.boolean("prefetch.adaptive"), c.prefetch_adaptive); !s) return s;
    return Status::ok();
}

// [relay]: the master's relay tree; names checked here, the tree's shape by RelayTree.
Status read_relay(const Reader& r, NodeConfig& c) {
    if (Status s = take(r.string_table("relay.via"), c.relay_via); !s) return s;
    for (const auto& [child, parent] : c.relay_via) {
        if (!is_node_name(child))
            return r.fail("relay.via." + child, in_quotes(child) + " is not a node name (letters, digits, '.', '-'; at most 64)");
        if (!is_node_name(parent))
            return r.fail("relay.via." + child, in_quotes(parent) + " is not a node name (letters, digits, '.', '-'; at most 64)");
    }
    auto tree = RelayTree::make(c.relay_via, c.role == Role::master ? c.name : "", r.file() + ": relay.via");
    if (!tree) return tree.status();
    return Status::ok();
}

Status read_tgt(const Reader& r, NodeConfig& c) {
    std::optional<int64_t> port;
    if (Status s = take(r.integer("tgt.control_port", 0, 65535), port); !s) return s;
    if (port) c.tgt_control_port = static_cast<int>(*port);
    if (Status s = take(r.string("tgt.iqn_prefix"), c.iqn_prefix); !s) return s;
    if (!is_iqn_prefix(c.iqn_prefix))
        return r.fail("tgt.iqn_prefix", in_quotes(c.iqn_prefix) + " is not an iSCSI name prefix (iqn.YYYY-MM.reversed.domain, lower case)");
    return Status::ok();
}

Status read_clients(const Reader& r, NodeConfig& c) {
    if (Status s = take(r.absolute_path("clients.overlay_dir"), c.overlay_dir); !s) return s;
    if (c.overlay_dir.empty()) c.overlay_dir = c.state_dir / "clients";
    if (Status s = take(r.absolute_path("clients.cache_dir"), c.cache_dir); !s) return s;
    if (Status s = take(r.size("clients.cache_size"), c.cache_size); !s) return s;
    // bs_icbd refuses a cache below 1 MiB (docs/bsopts.md); say so here rather than at the first client.
    if (c.cache_size != 0 && c.cache_size < (1u << 20))
        return r.fail("clients.cache_size", std::to_string(c.cache_size) + " bytes is below 1M (0 = no cache)");
    if (Status s = take(r.choice("clients.default_channel", {"production", "test"}), c.default_channel); !s) return s;
    if (Status s = take(r.duration("clients.reconcile_interval"), c.reconcile_interval); !s) return s;
    return Status::ok();
}

}  // namespace

Result<std::chrono::milliseconds> parse_duration(const std::string& text) {
    auto bad = [&] {
        return Status::error(EINVAL, in_quotes(text) + " is not a duration (e.g. 10s, 500ms, 2m, 1h or a number of seconds)");
    };
    size_t i = 0;
    int64_t v = 0;
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max() / 3'600'000 / 10;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
        v = v * 10 + (text[i] - '0');
        if (v > kMax) return bad();
    }
    if (i == 0) return bad();
    std::string_view unit = std::string_view(text).substr(i);
    int64_t ms_per_unit = unit == "ms" ? 1 : unit == "" || unit == "s" ? 1000 : unit == "m" ? 60'000 : unit == "h" ? 3'600'000 : 0;
    if (ms_per_unit == 0) return bad();
    return std::chrono::milliseconds(v * ms_per_unit);
}

Result<NodeConfig> parse_config(const std::string& text, const std::string& name) {
    toml::table root;
    try {
        root = toml::parse(text, name);
    } catch (const toml::parse_error& e) {
        const auto& at = e.source().begin;
        return Status::error(EINVAL, name + ":" + std::to_string(at.line) + ":" + std::to_string(at.column) + ": " +
                                         std::string(e.description()));
    }
    Reader r(root, name);
    NodeConfig c;
    c.source = name;
    if (Status s = r.check_known_keys(); !s) return s;
    if (Status s = read_top(r, c); !s) return s;
    if (Status s = read_control(r, c); !s) return s;
    if (Status s = read_repository_and_tls(r, c); !s) return s;
    if (Status s = read_name(r, c); !s) return s;
    if (Status s = read_endpoint(r, "peer", c.peer_listen, c.peer_advertise); !s) return s;
    if (Status s = read_replication(r, c); !s) return s;
    if (Status s = read_master(r, c); !s) return s;
    if (Status s = read_membership(r, c); !s) return s;
    if (Status s = read_subscribe(r, c); !s) return s;
    if (Status s = read_tgt(r, c); !s) return s;
    if (Status s = read_clients(r, c); !s) return s;
    if (Status s = read_metrics(r, c); !s) return s;
    if (Status s = read_prefetch(r, c); !s) return s;
    if (Status s = read_relay(r, c); !s) return s;
    return c;
}

Result<NodeConfig> load_config(const std::filesystem::path& file) {
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Status::from_errno(errno, file.string());
    std::string text;
    char buf[16384];
    for (;;) {
        ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Status::from_errno(errno, file.string());
        if (n == 0) break;
        text.append(buf, static_cast<size_t>(n));
    }
    return parse_config(text, file.string());
}

}  // namespace icbd::node
