// blockctl: the operator's command line for the local blockd. Each command is
// one control request (docs/blockd-control-protocol.md, section 5); this file
// only parses the command line, checks pure syntax and renders the answer.
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "control_protocol.hpp"
#include "icbd/build_version.hpp"

#ifndef ICBD_VERSION
#error "ICBD_VERSION (the project version) must be defined by the build"
#endif

namespace {

using nlohmann::json;
using icbd::Result;
using icbd::Status;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

// ---- reading result fields without trusting their shape ----

std::string str(const json& j, const char* key) {
    if (!j.is_object() || !j.contains(key)) return "";
    const json& v = j[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_null()) return "";
    return v.dump();
}

uint64_t u64(const json& j, const char* key) {
    if (!j.is_object() || !j.contains(key)) return 0;
    const json& v = j[key];
    if (v.is_number_unsigned()) return v.get<uint64_t>();
    if (v.is_number_integer()) return v.get<int64_t>() < 0 ? 0 : static_cast<uint64_t>(v.get<int64_t>());
    if (v.is_number_float()) return v.get<double>() < 0 ? 0 : static_cast<uint64_t>(v.get<double>());
    return 0;
}

int64_t i64(const json& j, const char* key) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_number()) return 0;
    return j[key].is_number_float() ? static_cast<int64_t>(j[key].get<double>()) : j[key].get<int64_t>();
}

bool flag(const json& j, const char* key) { return j.is_object() && j.contains(key) && j[key].is_boolean() && j[key].get<bool>(); }

const json& list(const json& j, const char* key) {
    static const json empty = json::array();
    return j.is_object() && j.contains(key) && j[key].is_array() ? j[key] : empty;
}

// ---- rendering ----

std::string version_text(uint64_t v) { return v ? std::to_string(v) : "-"; }

std::string bytes_text(uint64_t b) {
    static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = static_cast<double>(b);
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        ++u;
    }
    char out[32];
    if (u < 3)
        std::snprintf(out, sizeof(out), "%.0f %s", v, units[u]);
    else
        std::snprintf(out, sizeof(out), "%.1f %s", v, units[u]);
    return out;
}

std::string time_text(int64_t ms) {
    if (ms <= 0) return "-";
    std::time_t t = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    localtime_r(&t, &tm);
    char out[32];
    std::strftime(out, sizeof(out), "%Y-%m-%d %H:%M", &tm);
    return out;
}

std::string duration_text(int64_t seconds) {
    if (seconds < 0) seconds = 0;
    if (seconds < 120) return std::to_string(seconds) + "s";
    if (seconds < 7200) return std::to_string(seconds / 60) + "m";
    if (seconds < 2 * 86400) return std::to_string(seconds / 3600) + "h";
    return std::to_string(seconds / 86400) + "d";
}

std::string ago_text(int64_t ms) {
    if (ms <= 0) return "never";
    auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    return duration_text((now - ms) / 1000) + " ago";
}

// [1,2,3,5] -> "1-3,5"
std::string ranges_text(const json& versions) {
    std::vector<uint64_t> v;
    for (const json& x : versions)
        if (x.is_number_unsigned()) v.push_back(x.get<uint64_t>());
    if (v.empty()) return "-";
    std::string out;
    for (size_t i = 0; i < v.size();) {
        size_t j = i;
        while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
        if (!out.empty()) out += ",";
        out += std::to_string(v[i]);
        if (j > i) out += "-" + std::to_string(v[j]);
        i = j + 1;
    }
    return out;
}

std::string join_text(const json& items, const std::string& sep) {
    std::string out;
    for (const json& x : items) {
        if (!out.empty()) out += sep;
        out += x.is_string() ? x.get<std::string>() : x.dump();
    }
    return out.empty() ? "-" : out;
}

// Columns separated by two spaces, left aligned; the last one unpadded.
void print_table(const std::vector<std::string>& headers, const std::vector<std::vector<std::string>>& rows) {
    std::vector<size_t> width(headers.size());
    for (size_t c = 0; c < headers.size(); ++c) width[c] = headers[c].size();
    for (const auto& r : rows)
        for (size_t c = 0; c < r.size() && c < width.size(); ++c) width[c] = std::max(width[c], r[c].size());
    auto line = [&](const std::vector<std::string>& cells) {
        std::string out;
        for (size_t c = 0; c < cells.size(); ++c) {
            out += cells[c];
            if (c + 1 < cells.size()) out += std::string(width[c] - cells[c].size() + 2, ' ');
        }
        std::cout << out << "\n";
    };
    line(headers);
    for (const auto& r : rows) line(r);
}

// "key: value" lines; nested objects as "outer.inner: value".
void print_fields(const json& j, const std::string& prefix = "") {
    if (!j.is_object()) {
        std::cout << (prefix.empty() ? "" : prefix + ": ") << (j.is_string() ? j.get<std::string>() : j.dump()) << "\n";
        return;
    }
    for (const auto& [key, value] : j.items()) {
        std::string name = prefix.empty() ? key : prefix + "." + key;
        if (value.is_object() && !value.empty()) {
            print_fields(value, name);
        } else if (value.is_string()) {
            std::cout << name << ": " << value.get<std::string>() << "\n";
        } else if (value.is_null()) {
            std::cout << name << ": -\n";
        } else {
            std::cout << name << ": " << value.dump() << "\n";
        }
    }
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

void print_image_list(const json& r) {
    std::vector<std::vector<std::string>> rows;
    for (const json& i : r)
        rows.push_back({str(i, "image"), ranges_text(list(i, "versions")), version_text(u64(i, "newest")),
                        version_text(u64(i, "production")), version_text(u64(i, "test"))});
    print_table({"IMAGE", "VERSIONS", "NEWEST", "PRODUCTION", "TEST"}, rows);
}

void print_versions(const json& r) {
    std::vector<std::vector<std::string>> rows;
    for (const json& v : r)
        rows.push_back({std::to_string(u64(v, "version")), time_text(i64(v, "created_ms")),
                        bytes_text(u64(v, "size_bytes")), bytes_text(u64(v, "delta_bytes")),
                        join_text(list(v, "channels"), ","), join_text(list(v, "used_by"), ", "), str(v, "message")});
    print_table({"VERSION", "CREATED", "SIZE", "DELTA", "CHANNELS", "USED-BY", "MESSAGE"}, rows);
}

void print_channels(const json& r) {
    std::cout << "image " << quoted(str(r, "image")) << ": production " << version_text(u64(r, "production"))
              << " (previous " << version_text(u64(r, "previous_production")) << "), test "
              << version_text(u64(r, "test")) << "\n";
}

double number(const json& j, const char* key) {
    return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0;
}

// One line per file of the version, then the total.
void print_prefetch(const json& r) {
    char buf[160];
    for (const json& f : list(r, "files")) {
        std::cout << "  " << str(f, "file") << ": ";
        if (str(f, "from") == "none" || !f.contains("seconds")) {
            std::cout << (f.contains("error") ? "failed: " + str(f, "error") : std::string("no boot set")) << "\n";
            continue;
        }
        std::string origin = str(f, "kind") == "predicted" ? "predicted from version " + std::to_string(u64(f, "source"))
                                                           : std::to_string(u64(f, "boots")) + " boots";
        std::snprintf(buf, sizeof(buf), "%.2f s, %.1f MiB/s", number(f, "seconds"), number(f, "mib_per_s"));
        std::cout << bytes_text(u64(f, "read_bytes")) << " read of " << bytes_text(u64(f, "total_bytes")) << " ("
                  << bytes_text(u64(f, "cached_bytes")) << " already cached), " << buf << ", " << str(f, "end")
                  << " [" << str(f, "from") << ", " << origin << "]\n";
    }
    std::snprintf(buf, sizeof(buf), "%.2f s, %.1f MiB/s", number(r, "seconds"), number(r, "mib_per_s"));
    std::cout << "image " << quoted(str(r, "image")) << " version " << u64(r, "version") << ": "
              << bytes_text(u64(r, "read_bytes")) << " read of " << bytes_text(u64(r, "total_bytes")) << " in "
              << list(r, "files").size() << " files, " << buf << "\n";
}

void print_prune(const json& r) {
    std::cout << "image " << quoted(str(r, "image")) << ": ";
    const json& deleted = list(r, "deleted");
    if (deleted.empty())
        std::cout << "nothing deleted\n";
    else
        std::cout << "deleted versions " << join_text(deleted, ", ") << "\n";
    for (const json& k : list(r, "kept_in_use")) std::cout << "kept: " << (k.is_string() ? k.get<std::string>() : k.dump()) << "\n";
}

std::string node_images_text(const json& images) {
    if (!images.is_object() || images.empty()) return "-";
    std::string out;
    for (const auto& [name, i] : images.items()) {
        if (!out.empty()) out += ", ";
        out += name + ":v" + std::to_string(u64(i, "newest")) + " lag " + std::to_string(u64(i, "lag_versions"));
    }
    return out;
}

std::string node_push_text(const json& push) {
    if (!push.is_object()) return "-";
    std::string out = str(push, "image") + " v" + std::to_string(u64(push, "version"));
    uint64_t total = u64(push, "payload_total");
    if (total > 0) return out + " " + std::to_string(u64(push, "payload_sent") * 100 / total) + "%";
    return out + " " + str(push, "state");
}

// The relay column: the parent ("-": the master), marked when the replica has
// not applied it yet (the master feeds it directly until it has).
std::string node_parent_text(const json& relay) {
    std::string parent = str(relay, "parent");
    if (parent.empty()) return "-";
    const json applied = relay.is_object() && relay.contains("parent_applied") ? relay["parent_applied"] : json();
    if (!applied.is_string() || applied.get<std::string>() != parent) parent += " (not applied)";
    return parent;
}

void print_node_list(const json& r) {
    std::vector<std::vector<std::string>> rows;
    for (const json& n : r)
        rows.push_back({str(n, "name"), str(n, "state"), ago_text(i64(n, "last_seen_ms")), str(n, "address"),
                        node_parent_text(n.is_object() && n.contains("relay") ? n["relay"] : json()),
                        node_images_text(n.is_object() && n.contains("images") ? n["images"] : json()),
                        node_push_text(n.is_object() && n.contains("push") ? n["push"] : json())});
    print_table({"NAME", "STATE", "LAST-SEEN", "ADDRESS", "VIA", "IMAGES(img:vN lag K)", "PUSH"}, rows);
}

// The relay tree, indented under the master.
void print_node_tree(const json& r) {
    std::cout << str(r, "master") << " (master)\n";
    if (!r.is_object() || !r.contains("nodes") || !r["nodes"].is_array()) return;
    for (const json& n : r["nodes"]) {
        std::string line(2 * u64(n, "depth"), ' ');
        line += str(n, "name") + " [" + str(n, "state") + "]";
        const std::string parent = str(n, "parent");
        if (!parent.empty() && !flag(n, "parent_registered"))
            line += "  (parent '" + parent + "' is not registered: fed by the master)";
        else if (!parent.empty() && (!n.contains("parent_applied") || !n["parent_applied"].is_string() ||
                                     n["parent_applied"].get<std::string>() != parent))
            line += "  (parent not applied yet: fed by the master)";
        std::cout << line << "\n";
    }
}

void print_client_list(const json& r) {
    std::vector<std::vector<std::string>> rows;
    for (const json& c : r) {
        int64_t sessions = i64(c, "sessions");
        rows.push_back({str(c, "name"), str(c, "image"), str(c, "channel"), version_text(u64(c, "version")),
                        flag(c, "behind") ? "yes (" + version_text(u64(c, "desired_version")) + ")" : "no",
                        sessions < 0 ? "?" : std::to_string(sessions), flag(c, "persistent") ? "yes" : "no",
                        str(c, "initiator")});
    }
    print_table({"NAME", "IMAGE", "CHANNEL", "VERSION", "BEHIND", "SESSIONS", "PERSISTENT", "INITIATOR"}, rows);
}

void print_push_list(const json& r) {
    std::vector<std::vector<std::string>> rows;
    for (const json& p : r) {
        int64_t started = i64(p, "started_ms"), finished = i64(p, "finished_ms");
        std::string state = finished == 0 ? "running" : flag(p, "ok") ? "ok" : "failed";
        rows.push_back({std::to_string(i64(p, "id")), time_text(started), str(p, "image"),
                        std::to_string(u64(p, "version")), str(p, "replica"), state,
                        finished == 0 ? "-" : duration_text((finished - started) / 1000),
                        bytes_text(u64(p, "payload_bytes")), bytes_text(u64(p, "wire_bytes")), str(p, "message")});
    }
    print_table({"ID", "STARTED", "IMAGE", "VERSION", "REPLICA", "STATE", "DURATION", "PAYLOAD", "WIRE", "MESSAGE"},
                rows);
}

// ---- commands ----

struct Call {
    std::string cmd;
    json args = json::object();
    std::function<void(const json&)> human;
};

Status usage(const std::string& msg) { return Status::error(EINVAL, msg); }

// Digits only, so "1.5", "-1" and "7x" are refused here rather than by blockd.
Result<uint64_t> parse_number(const std::string& what, const std::string& text, uint64_t min) {
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || ec != std::errc() || end != text.data() + text.size() || v < min)
        return usage(what + (min > 0 ? " must be a positive integer" : " must be an integer >= 0") + ", got '" +
                     text + "'");
    return v;
}

struct Inputs {
    std::string image, version, from, message, keep, name, initiator, chap, channel, limit, via;
    bool persistent = false, force = false, direct = false;
};

struct Leaf {
    CLI::App* app;
    std::function<Result<Call>()> build;
};

void simple(std::vector<Leaf>& leaves, CLI::App* app, std::string cmd, std::function<json()> args,
            std::function<void(const json&)> human) {
    leaves.push_back({app, [cmd, args, human]() -> Result<Call> { return Call{cmd, args(), human}; }});
}

void add_image_commands(CLI::App& app, Inputs& in, std::vector<Leaf>& leaves) {
    CLI::App* image = app.add_subcommand("image", "The image repository: versions, working copies, channels");
    image->require_subcommand(1);

    simple(leaves, image->add_subcommand("list", "List the images"), "image.list", [] { return json::object(); },
           print_image_list);

    auto* versions = image->add_subcommand("versions", "List the versions of an image");
    versions->add_option("IMAGE", in.image, "Image name")->required();
    simple(leaves, versions, "image.versions", [&in] { return json{{"image", in.image}}; }, print_versions);

    auto* import = image->add_subcommand("import", "Make version 1 of a new image from a raw disk file or a directory");
    import->add_option("IMAGE", in.image, "Image name")->required();
    import->add_option("--from", in.from, "Raw disk file or directory of image files")->required();
    import->add_option("--message", in.message, "Version message");
    leaves.push_back({import, [&in]() -> Result<Call> {
                          std::error_code ec;
                          // blockd has its own working directory: send what the operator meant.
                          auto from = std::filesystem::absolute(in.from, ec);
                          json args{{"image", in.image}, {"from", ec ? in.from : from.string()}};
                          if (!in.message.empty()) args["message"] = in.message;
                          return Call{"image.import", args, [](const json& r) {
                                          std::cout << "image " << quoted(str(r, "image")) << " version "
                                                    << u64(r, "version") << " imported ("
                                                    << bytes_text(u64(r, "size_bytes")) << ")\n";
                                      }};
                      }});

    auto* checkout = image->add_subcommand("checkout", "Make a writable working copy of the newest version");
    checkout->add_option("IMAGE", in.image, "Image name")->required();
    simple(leaves, checkout, "image.checkout", [&in] { return json{{"image", in.image}}; }, [](const json& r) {
        std::cout << "image " << quoted(str(r, "image")) << ": working copy at " << str(r, "path") << "\n";
    });

    auto* commit = image->add_subcommand("commit", "Make the working copy the next read-only version");
    commit->add_option("IMAGE", in.image, "Image name")->required();
    commit->add_option("--message", in.message, "Version message");
    simple(
        leaves, commit, "image.commit",
        [&in] {
            json args{{"image", in.image}};
            if (!in.message.empty()) args["message"] = in.message;
            return args;
        },
        [](const json& r) {
            std::cout << "image " << quoted(str(r, "image")) << " version " << u64(r, "version") << " committed (delta "
                      << bytes_text(u64(r, "delta_bytes")) << ")\n";
        });

    auto* discard = image->add_subcommand("discard", "Drop the working copy without committing");
    discard->add_option("IMAGE", in.image, "Image name")->required();
    simple(leaves, discard, "image.discard", [&in] { return json{{"image", in.image}}; }, [](const json& r) {
        std::cout << "image " << quoted(str(r, "image")) << ": working copy discarded\n";
    });

    auto* del = image->add_subcommand("delete", "Delete a version (refused while it is in use)");
    del->add_option("IMAGE", in.image, "Image name")->required();
    del->add_option("VERSION", in.version, "Version number")->required();
    leaves.push_back({del, [&in]() -> Result<Call> {
                          auto v = parse_number("VERSION", in.version, 1);
                          if (!v) return v.status();
                          return Call{"image.delete", {{"image", in.image}, {"version", *v}}, [](const json& r) {
                                          std::cout << "image " << quoted(str(r, "image")) << " version "
                                                    << u64(r, "version") << " deleted\n";
                                      }};
                      }});

    auto* prune = image->add_subcommand("prune", "Delete the oldest versions beyond the newest N (not those in use)");
    prune->add_option("IMAGE", in.image, "Image name")->required();
    prune->add_option("--keep", in.keep, "How many of the newest versions to keep")->required();
    leaves.push_back({prune, [&in]() -> Result<Call> {
                          auto k = parse_number("--keep", in.keep, 0);
                          if (!k) return k.status();
                          return Call{"image.prune", {{"image", in.image}, {"keep", *k}}, print_prune};
                      }});

    auto* promote = image->add_subcommand("promote", "Make a version the production version");
    promote->add_option("IMAGE", in.image, "Image name")->required();
    promote->add_option("VERSION", in.version, "Version number")->required();
    leaves.push_back({promote, [&in]() -> Result<Call> {
                          auto v = parse_number("VERSION", in.version, 1);
                          if (!v) return v.status();
                          return Call{"image.promote", {{"image", in.image}, {"version", *v}}, print_channels};
                      }});

    auto* rollback = image->add_subcommand("rollback", "Make the previous production version production again");
    rollback->add_option("IMAGE", in.image, "Image name")->required();
    simple(leaves, rollback, "image.rollback", [&in] { return json{{"image", in.image}}; }, print_channels);

    auto* prefetch = image->add_subcommand("prefetch", "Read the version's boot set into this node's page cache");
    prefetch->add_option("IMAGE", in.image, "Image name")->required();
    prefetch->add_option("VERSION", in.version, "Version number (default: the production version)");
    leaves.push_back({prefetch, [&in]() -> Result<Call> {
                          json args{{"image", in.image}};
                          if (!in.version.empty()) {
                              auto v = parse_number("VERSION", in.version, 1);
                              if (!v) return v.status();
                              args["version"] = *v;
                          }
                          return Call{"image.prefetch", args, print_prefetch};
                      }});
}

void add_node_commands(CLI::App& app, Inputs& in, std::vector<Leaf>& leaves) {
    CLI::App* node = app.add_subcommand("node", "The replicas this master knows");
    node->require_subcommand(1);
    simple(leaves, node->add_subcommand("list", "List the replicas"), "node.list", [] { return json::object(); },
           print_node_list);
    auto* show = node->add_subcommand("show", "Show one replica");
    show->add_option("NAME", in.name, "Replica name")->required();
    simple(leaves, show, "node.show", [&in] { return json{{"name", in.name}}; }, [](const json& r) { print_fields(r); });
    auto* remove = node->add_subcommand("remove", "Forget a replica");
    remove->add_option("NAME", in.name, "Replica name")->required();
    simple(leaves, remove, "node.remove", [&in] { return json{{"name", in.name}}; },
           [](const json& r) { std::cout << "node " << quoted(str(r, "name")) << " removed\n"; });
    auto* relay = node->add_subcommand("relay", "Feed a replica through a relay (--via PARENT) or from the master (--direct)");
    relay->add_option("NAME", in.name, "Replica name")->required();
    auto* via = relay->add_option("--via", in.via, "The relay (a registered replica) that feeds it");
    relay->add_flag("--direct", in.direct, "Fed by the master directly")->excludes(via);
    leaves.push_back({relay, [&in]() -> Result<Call> {
                          if (in.via.empty() && !in.direct)
                              return Status::error(EINVAL, "node relay: give --via PARENT or --direct");
                          json args{{"name", in.name}};
                          if (in.direct) args["direct"] = true;
                          else args["via"] = in.via;
                          return Call{"node.relay", args, [](const json& r) {
                                          std::string p = str(r, "parent");
                                          std::cout << "node " << quoted(str(r, "name")) << " is fed "
                                                    << (p.empty() ? std::string("by the master") : "via '" + p + "'") << "\n";
                                      }};
                      }});
    simple(leaves, node->add_subcommand("tree", "Show the relay tree"), "node.tree", [] { return json::object(); },
           print_node_tree);
}

void add_client_commands(CLI::App& app, Inputs& in, std::vector<Leaf>& leaves) {
    CLI::App* client = app.add_subcommand("client", "The desktops this cache server serves");
    client->require_subcommand(1);

    auto* add = client->add_subcommand("add", "Export an image to a desktop");
    add->add_option("NAME", in.name, "Client name")->required();
    add->add_option("--image", in.image, "Image the desktop boots")->required();
    add->add_option("--initiator", in.initiator, "The desktop's iSCSI initiator name (IQN)")->required();
    add->add_option("--chap", in.chap, "CHAP credentials USER:SECRET");
    add->add_flag("--persistent", in.persistent, "Keep the desktop's writes across versions (it stays pinned)");
    add->add_option("--channel", in.channel, "Release channel (default: the node's)")
        ->check(CLI::IsMember({"production", "test"}));
    leaves.push_back({add, [&in]() -> Result<Call> {
                          json args{{"name", in.name}, {"image", in.image}, {"initiator", in.initiator},
                                    {"persistent", in.persistent}};
                          if (!in.chap.empty()) {
                              auto colon = in.chap.find(':');
                              if (colon == std::string::npos || colon == 0 || colon + 1 == in.chap.size())
                                  return usage("--chap must be USER:SECRET");
                              args["chap_user"] = in.chap.substr(0, colon);
                              args["chap_secret"] = in.chap.substr(colon + 1);
                          }
                          if (!in.channel.empty()) args["channel"] = in.channel;
                          return Call{"client.add", args, [](const json& r) {
                                          std::cout << "client " << quoted(str(r, "name")) << " added: target "
                                                    << str(r, "target") << ", image " << str(r, "image") << " version "
                                                    << version_text(u64(r, "version")) << " (" << str(r, "channel")
                                                    << ")\n";
                                      }};
                      }});

    simple(leaves, client->add_subcommand("list", "List the clients"), "client.list", [] { return json::object(); },
           print_client_list);
    auto* show = client->add_subcommand("show", "Show one client");
    show->add_option("NAME", in.name, "Client name")->required();
    simple(leaves, show, "client.show", [&in] { return json{{"name", in.name}}; }, [](const json& r) { print_fields(r); });
    auto* reset = client->add_subcommand("reset", "Forget a client's writes and move it to its channel's version");
    reset->add_option("NAME", in.name, "Client name")->required();
    simple(leaves, reset, "client.reset", [&in] { return json{{"name", in.name}}; },
           [](const json& r) { std::cout << "client " << quoted(str(r, "name")) << " reset\n"; });
    auto* remove = client->add_subcommand("remove", "Remove a client's target, overlay and cache");
    remove->add_option("NAME", in.name, "Client name")->required();
    remove->add_flag("--force", in.force, "Even while it has an iSCSI session");
    simple(leaves, remove, "client.remove", [&in] { return json{{"name", in.name}, {"force", in.force}}; },
           [](const json& r) { std::cout << "client " << quoted(str(r, "name")) << " removed\n"; });
}

void add_push_commands(CLI::App& app, Inputs& in, std::vector<Leaf>& leaves) {
    CLI::App* push = app.add_subcommand("push", "Pushes of versions to replicas");
    push->require_subcommand(1);
    auto* list_cmd = push->add_subcommand("list", "Recent pushes, newest first");
    list_cmd->add_option("--limit", in.limit, "How many (default 50)");
    leaves.push_back({list_cmd, [&in]() -> Result<Call> {
                          json args = json::object();
                          if (!in.limit.empty()) {
                              auto n = parse_number("--limit", in.limit, 1);
                              if (!n) return n.status();
                              args["limit"] = *n;
                          }
                          return Call{"push.list", args, print_push_list};
                      }});
}

// blockctl top: samples every LUN's counters (lun.stats) and prints, per
// desktop, what happened in the last interval. A loop, not one call.
struct TopOptions {
    std::string interval = "1", count;  // count: default 1 with --json, else until interrupted
};

// The upper bound (ms) of the log2 bucket (bucket i: <= 2^i us) holding
// quantile q of the latencies counted in `delta`; 0 when empty.
double percentile_ms(const std::vector<uint64_t>& delta, double q) {
    uint64_t total = 0;
    for (uint64_t n : delta) total += n;
    if (total == 0) return 0.0;
    uint64_t rank = static_cast<uint64_t>(q * double(total) + 0.5), seen = 0;
    for (size_t i = 0; i < delta.size(); ++i) {
        seen += delta[i];
        if (seen >= std::max<uint64_t>(rank, 1)) return double(1ull << i) / 1000.0;
    }
    return double(1ull << (delta.size() - 1)) / 1000.0;
}

int run_top(const std::string& socket, bool as_json, const TopOptions& o) {
    auto interval = parse_number("--interval", o.interval, 1);
    auto count = parse_number("--count", o.count.empty() ? (as_json ? "1" : "0") : o.count, 0);
    if (!interval || !count) {
        std::cerr << "blockctl: " << (!interval ? interval.status() : count.status()).message() << "\n";
        return kExitUsage;
    }
    bool tty = !as_json && ::isatty(STDOUT_FILENO);
    std::map<std::string, json> before;
    int64_t before_ms = 0;
    for (uint64_t shown = 0; *count == 0 || shown < *count;) {
        auto r = icbd::node::control_call(socket, "lun.stats", json::object());
        if (!r) {
            std::cerr << "blockctl: " << r.status().message() << "\n";
            return kExitFailed;
        }
        int64_t at = i64(*r, "at_ms");
        std::map<std::string, json> now;
        for (const json& l : list(*r, "luns")) now[str(l, "device")] = l;
        if (before_ms != 0) {
            double secs = std::max(1e-3, double(at - before_ms) / 1000.0);
            json sample = json::array();
            std::vector<std::vector<std::string>> rows;
            for (const auto& [dev, l] : now) {
                auto b = before.find(dev);
                auto delta = [&](const char* k) {
                    uint64_t a = u64(l, k), z = b == before.end() ? 0 : u64(b->second, k);
                    return a >= z ? a - z : a;  // a LUN re-created meanwhile starts again
                };
                uint64_t rc = delta("read_commands"), wc = delta("write_commands");
                double lat_ms = (rc + wc) ? double(delta("read_latency_ns") + delta("write_latency_ns")) / 1e6 /
                                                double(rc + wc)
                                          : 0.0;
                uint64_t total = u64(l, "cache_blocks_total");
                std::vector<uint64_t> hist;
                if (l.contains("latency_buckets")) {
                    for (size_t i = 0; i < l["latency_buckets"].size(); ++i) {
                        uint64_t a = l["latency_buckets"][i].get<uint64_t>(), z = 0;
                        if (b != before.end() && i < b->second["latency_buckets"].size())
                            z = b->second["latency_buckets"][i].get<uint64_t>();
                        hist.push_back(a >= z ? a - z : a);
                    }
                }
                json row{{"client", str(l, "client")},
                         {"image", str(l, "image")},
                         {"version", u64(l, "version")},
                         {"p50_ms", percentile_ms(hist, 0.50)},
                         {"p99_ms", percentile_ms(hist, 0.99)},
                         {"cached", total > 0},
                         {"tid", i64(l, "tid")},
                         {"device", dev},
                         {"read_iops", double(rc) / secs},
                         {"write_iops", double(wc) / secs},
                         {"read_mib_s", double(delta("read_bytes")) / secs / 1048576.0},
                         {"write_mib_s", double(delta("write_bytes")) / secs / 1048576.0},
                         {"latency_ms", lat_ms},
                         {"queue_depth", u64(l, "queue_depth")},
                         {"cache_dirty_pct", total ? 100.0 * double(u64(l, "cache_blocks_dirty")) / double(total) : 0.0}};
                sample.push_back(row);
            }
            // Busiest first, as iostat users expect.
            std::stable_sort(sample.begin(), sample.end(), [](const json& a, const json& z) {
                return a["read_iops"].get<double>() + a["write_iops"].get<double>() >
                       z["read_iops"].get<double>() + z["write_iops"].get<double>();
            });
            auto f = [](double v, int prec) {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.*f", prec, v);
                return std::string(buf);
            };
            for (const json& row : sample) {
                std::string who = row["client"].get<std::string>().empty() ? "-" : row["client"].get<std::string>();
                std::string what = row["image"].get<std::string>().empty()
                                       ? "-"
                                       : row["image"].get<std::string>() + ":v" + std::to_string(u64(row, "version"));
                rows.push_back({who, what, std::to_string(i64(row, "tid")), f(row["read_iops"], 0),
                                f(row["write_iops"], 0), f(row["read_mib_s"], 1), f(row["write_mib_s"], 1),
                                f(row["latency_ms"], 2), f(row["p50_ms"], 3), f(row["p99_ms"], 3),
                                std::to_string(u64(row, "queue_depth")),
                                flag(row, "cached") ? f(row["cache_dirty_pct"], 0) + "%" : "-"});
            }
            if (as_json) {
                std::cout << json{{"at_ms", at}, {"seconds", secs}, {"luns", sample}}.dump() << "\n";
            } else {
                if (tty) std::cout << "\033[H\033[2J";
                std::cout << "blockctl top: " << rows.size() << " LUN(s), every " << *interval << " s ("
                          << str(*r, "dir") << ")\n";
                print_table({"CLIENT", "IMAGE", "TID", "R/S", "W/S", "R-MIB/S", "W-MIB/S", "AVG-MS", "P50-MS", "P99-MS",
                             "QD", "DIRTY"},
                            rows);
            }
            std::cout.flush();
            ++shown;
            if (*count != 0 && shown >= *count) break;
        }
        before = std::move(now);
        before_ms = at;
        std::this_thread::sleep_for(std::chrono::seconds(*interval));
    }
    return kExitOk;
}

int usage_error(const std::string& msg) {
    std::cerr << "blockctl: " << msg << "\nRun with --help for more information.\n";
    return kExitUsage;
}

int run(const std::string& socket, bool as_json, const Call& call) {
    bool tty = !as_json && ::isatty(STDERR_FILENO);
    bool shown = false;
    icbd::node::ProgressFn progress = [&](const std::string& text, uint64_t done, uint64_t total) {
        if (!tty) return;
        std::fprintf(stderr, "\r%s %llu/%llu\033[K", text.c_str(), static_cast<unsigned long long>(done),
                     static_cast<unsigned long long>(total));
        std::fflush(stderr);
        shown = true;
    };
    auto r = icbd::node::control_call(socket, call.cmd, call.args, progress);
    if (shown) std::fputc('\n', stderr);
    if (!r) {
        std::cerr << "blockctl: " << r.status().message() << "\n";
        return kExitFailed;
    }
    if (as_json) {
        std::cout << r->dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    } else {
        try {
            call.human(*r);
        } catch (const json::exception&) {
            // An answer of a shape this blockctl does not know still gets shown.
            std::cout << r->dump(2, ' ', false, json::error_handler_t::replace) << "\n";
        }
    }
    std::cout.flush();
    return std::cout ? kExitOk : kExitFailed;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Manage the local blockd: images, replicas (nodes), clients, pushes.", "blockctl"};
    app.set_version_flag("--version", ICBD_VERSION_LINE("blockctl"));
    app.fallthrough();  // --socket and --json also after the command
    app.require_subcommand(1);
    std::string socket = "/run/icbd/blockd.sock";
    bool as_json = false;
    app.add_option("--socket", socket, "blockd's control socket")->envname("BLOCKCTL_SOCKET")->capture_default_str();
    app.add_flag("--json", as_json, "Print the result as JSON");

    Inputs in;
    std::vector<Leaf> leaves;
    simple(leaves, app.add_subcommand("status", "Show this node's role and state"), "status",
           [] { return json::object(); }, [](const json& r) { print_fields(r); });
    add_image_commands(app, in, leaves);
    add_node_commands(app, in, leaves);
    add_client_commands(app, in, leaves);
    add_push_commands(app, in, leaves);
    TopOptions top;
    CLI::App* top_cmd = app.add_subcommand("top", "Live I/O of every desktop's LUN on this node (rates per interval)");
    top_cmd->add_option("--interval", top.interval, "Seconds between samples (default 1)");
    top_cmd->add_option("--count", top.count, "Stop after N samples (default 0: until interrupted)");

    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {
        return app.exit(e);  // --help, --version
    } catch (const CLI::ParseError& e) {
        return usage_error(e.what());
    }
    if (top_cmd->parsed()) return run_top(socket, as_json, top);
    for (const Leaf& leaf : leaves) {
        if (!leaf.app->parsed()) continue;
        auto call = leaf.build();
        if (!call) return usage_error(call.status().message());
        return run(socket, as_json, *call);
    }
    return usage_error("no command given");
}
