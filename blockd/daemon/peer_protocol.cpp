// The node-to-node messages (docs/blockd-peer-protocol.md): framing over the
// replicator's TLS streams and the validating conversions of each message.
#include "peer_protocol.hpp"

#include <cerrno>
#include <charconv>

#include "icbd/replicator/image_path.hpp"

namespace icbd::node {

using nlohmann::json;

namespace {

constexpr size_t kHeaderSize = 4;
constexpr size_t kMaxAddressLength = 255;
constexpr size_t kMaxNodeNameLength = 64;

// A JSON unsigned integer. In-process JSON built from a signed int (json{{"proto", 1}})
// holds a signed number that the wire would parse as unsigned: both count.
bool is_u64(const json& v) {
    return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
}

Status bad_frame(const std::string& who, const std::string& cause) {
    return Status::error(EBADMSG, who + ": " + cause);
}

uint32_t load_be32(const uint8_t* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// The length a header announces, checked against the limits before any body is read.
Result<uint32_t> frame_length(const uint8_t* header, const std::string& who) {
    uint32_t len = load_be32(header);
    if (len == 0) return bad_frame(who, "peer message of length 0");
    if (len > kMaxPeerMessage)
        return bad_frame(who, "peer message of " + std::to_string(len) + " bytes is larger than the limit of " +
                                  std::to_string(kMaxPeerMessage));
    return len;
}

Result<json> parse_body(const uint8_t* data, size_t size, const std::string& who) {
    json j = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return bad_frame(who, "peer message is not valid JSON");
    if (!j.is_object()) return bad_frame(who, std::string("peer message is a JSON ") + j.type_name() + ", not an object");
    auto t = j.find("type");
    if (t == j.end()) return bad_frame(who, "peer message has no field 'type'");
    if (!t->is_string()) return bad_frame(who, "peer message field 'type' is not a string");
    return j;
}

// Reads the fields of one message; every error is EBADMSG and names the
// message and the field ("register: field 'subscribe[2]': expected a string").
class Fields {
public:
    explicit Fields(const char* what) : what_(what) {}

    Status error(const std::string& field, const std::string& cause) const {
        return Status::error(EBADMSG, std::string(what_) + ": field '" + field + "': " + cause);
    }

    Result<const json*> member(const json& obj, const std::string& field, const std::string& path) const {
        if (!obj.is_object()) return error(path.empty() ? field : path, "expected an object");
        auto it = obj.find(field);
        if (it == obj.end()) return error(join(path, field), "missing");
        return &*it;
    }

    Result<std::string> string(const json& obj, const std::string& field, const std::string& path = "") const {
        auto m = member(obj, field, path);
        if (!m) return m.status();
        if (!(*m)->is_string()) return error(join(path, field), std::string("expected a string, got ") + (*m)->type_name());
        return (*m)->get<std::string>();
    }

    Result<uint64_t> u64(const json& obj, const std::string& field, const std::string& path = "") const {
        auto m = member(obj, field, path);
        if (!m) return m.status();
        if (!is_u64(**m))
            return error(join(path, field), std::string("expected an unsigned integer, got ") + describe(**m));
        return (*m)->get<uint64_t>();
    }

    Result<std::string> node_name(const json& obj, const std::string& field) const {
        auto s = string(obj, field);
        if (!s) return s;
        if (Status v = validate_node_name(*s); !v) return error(field, v.message());
        return s;
    }

    // An array member of at most `max` elements.
    Result<const json*> array(const json& obj, const std::string& field, size_t max) const {
        auto m = member(obj, field, "");
        if (!m) return m.status();
        const json& a = **m;
        if (!a.is_array()) return error(field, std::string("expected an array, got ") + a.type_name());
        if (a.size() > max)
            return error(field, std::to_string(a.size()) + " elements (at most " + std::to_string(max) + ")");
        return &a;
    }
    Result<std::string> address(const json& obj, const std::string& field) const {
        auto s = string(obj, field);
        if (!s) return s;
        if (auto a = parse_peer_address(*s); !a) return error(field, a.status().message());
        return s;
    }

    Result<std::vector<std::string>> subscriptions(const json& obj, const std::string& field) const {
        auto m = member(obj, field, "");
        if (!m) return m.status();
        const json& a = **m;
        if (!a.is_array()) return error(field, std::string("expected an array, got ") + a.type_name());
        std::vector<std::string> out;
        for (size_t i = 0; i < a.size(); ++i) {
            const std::string f = field + "[" + std::to_string(i) + "]";
            if (!a[i].is_string()) return error(f, std::string("expected a string, got ") + a[i].type_name());
            std::string s = a[i].get<std::string>();
            if (s != "*") {
                if (Status v = repl::validate_image_name(s); !v) return error(f, v.message());
            }
            out.push_back(std::move(s));
        }
        return out;
    }

    Result<std::vector<uint64_t>> version_list(const json& a, const std::string& field) const {
        if (!a.is_array()) return error(field, std::string("expected an array, got ") + a.type_name());
        std::vector<uint64_t> out;
        for (size_t i = 0; i < a.size(); ++i) {
            const std::string f = field + "[" + std::to_string(i) + "]";
            if (!is_u64(a[i])) return error(f, "expected an unsigned integer, got " + describe(a[i]));
            uint64_t v = a[i].get<uint64_t>();
            if (v == 0 || (!out.empty() && v <= out.back()))
                return error(field, "versions must be >= 1 and strictly ascending");
            out.push_back(v);
        }
        return out;
    }

    // image -> ascending versions.
    Result<std::map<std::string, std::vector<uint64_t>>> versions(const json& obj, const std::string& field) const {
        auto m = member(obj, field, "");
        if (!m) return m.status();
        const json& o = **m;
        if (!o.is_object()) return error(field, std::string("expected an object, got ") + o.type_name());
        std::map<std::string, std::vector<uint64_t>> out;
        for (const auto& [image, list] : o.items()) {
            if (Status v = repl::validate_image_name(image); !v) return error(field, v.message());
            auto l = version_list(list, field + "." + image);
            if (!l) return l.status();
            out.emplace(image, std::move(*l));
        }
        return out;
    }

    Result<std::string> image(const json& obj, const std::string& field) const {
        auto s = string(obj, field);
        if (!s) return s;
        if (Status v = repl::validate_image_name(*s); !v) return error(field, v.message());
        return s;
    }

    Result<uint64_t> version(const json& obj, const std::string& field) const {
        auto v = u64(obj, field);
        if (!v) return v;
        if (*v == 0) return error(field, "a version must be >= 1");
        return v;
    }

    Result<std::string> file(const json& obj, const std::string& field) const {
        auto s = string(obj, field);
        if (!s) return s;
        if (Status v = repl::validate_relative_path(*s); !v) return error(field, v.message());
        return s;
    }

    Result<std::vector<uint8_t>> bytes(const json& obj, const std::string& field) const {
        auto s = string(obj, field);
        if (!s) return s.status();
        auto b = base64_decode(*s);
        if (!b) return error(field, b.status().message());
        return b;
    }

    // The header every message carries: the expected type and a spoken version.
    Status header(const json& j, const char* type) const {
        if (!j.is_object()) return Status::error(EBADMSG, std::string(what_) + ": expected a JSON object, got " + j.type_name());
        auto t = string(j, "type");
        if (!t) return t.status();
        if (*t != type) return error("type", "expected '" + std::string(type) + "', got '" + *t + "'");
        return check_peer_version(j);
    }

private:
    static std::string join(const std::string& path, const std::string& field) {
        return path.empty() ? field : path + "." + field;
    }
    static std::string describe(const json& v) {
        if (v.is_number_integer()) return "a negative number";  // is_u64 took the others
        if (v.is_number_float()) return "a fractional number";
        return v.type_name();
    }
    const char* what_;
};

json versions_json(const std::map<std::string, std::vector<uint64_t>>& versions) {
    json o = json::object();
    for (const auto& [image, list] : versions) o[image] = list;
    return o;
}

json base(const char* type) {
    return json{{"type", type}, {"proto", kPeerProtocolVersion}};
}

Result<CatalogImage> catalog_image_from_json(const Fields& f, const json& entry, const std::string& path) {
    if (!entry.is_object()) return f.error(path, std::string("expected an object, got ") + entry.type_name());
    CatalogImage c;
    auto versions = f.member(entry, "versions", path);
    if (!versions) return versions.status();
    auto list = f.version_list(**versions, path + ".versions");
    if (!list) return list.status();
    c.versions = std::move(*list);
    auto production = f.u64(entry, "production", path);
    if (!production) return production.status();
    auto test = f.u64(entry, "test", path);
    if (!test) return test.status();
    auto disk = f.string(entry, "disk", path);
    if (!disk) return disk.status();
    if (Status v = repl::validate_relative_path(*disk); !v) return f.error(path + ".disk", v.message());
    c.production = *production;
    c.test = *test;
    c.disk = std::move(*disk);
    return c;
}

constexpr char kBase64Alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int base64_value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

// The fields every boot set message names: image, version, file.
struct BootSetTarget {
    std::string image;
    uint64_t version = 0;
    std::string file;
};

Result<BootSetTarget> boot_set_target(const Fields& f, const json& j) {
    auto image = f.image(j, "image");
    if (!image) return image.status();
    auto version = f.version(j, "version");
    if (!version) return version.status();
    auto file = f.file(j, "file");
    if (!file) return file.status();
    return BootSetTarget{std::move(*image), *version, std::move(*file)};
}

json boot_set_base(const char* type, const std::string& image, uint64_t version, const std::string& file) {
    json j = base(type);
    j["image"] = image;
    j["version"] = version;
    j["file"] = file;
    return j;
}

}  // namespace

std::string base64_encode(const std::vector<uint8_t>& bytes) {
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        uint32_t v = (uint32_t{bytes[i]} << 16) | (uint32_t{bytes[i + 1]} << 8) | bytes[i + 2];
        for (int k = 3; k >= 0; --k) out.push_back(kBase64Alphabet[(v >> (6 * k)) & 63]);
    }
    if (size_t rest = bytes.size() - i; rest > 0) {
        uint32_t v = uint32_t{bytes[i]} << 16;
        if (rest == 2) v |= uint32_t{bytes[i + 1]} << 8;
        out.push_back(kBase64Alphabet[(v >> 18) & 63]);
        out.push_back(kBase64Alphabet[(v >> 12) & 63]);
        out.push_back(rest == 2 ? kBase64Alphabet[(v >> 6) & 63] : '=');
        out.push_back('=');
    }
    return out;
}

Result<std::vector<uint8_t>> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0)
        return Status::error(EINVAL, "base64 of " + std::to_string(text.size()) + " characters, not a multiple of 4");
    std::vector<uint8_t> out;
    out.reserve(text.size() / 4 * 3);
    for (size_t i = 0; i < text.size(); i += 4) {
        const bool last = i + 4 == text.size();
        int v[4];
        size_t pad = 0;
        for (size_t k = 0; k < 4; ++k) {
            char c = text[i + k];
            if (c == '=' && last && k >= 2) {
                v[k] = 0;
                ++pad;
                continue;
            }
            if (pad > 0 || (v[k] = base64_value(c)) < 0)
                return Status::error(EINVAL, "base64: character " + std::to_string(i + k) + " is not allowed there");
        }
        uint32_t w = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
        // Bits the padding drops must be 0: one encoding per byte string.
        if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0))
            return Status::error(EINVAL, "base64: nonzero bits before the padding");
        out.push_back(static_cast<uint8_t>(w >> 16));
        if (pad < 2) out.push_back(static_cast<uint8_t>(w >> 8));
        if (pad < 1) out.push_back(static_cast<uint8_t>(w));
    }
    return out;
}

const char* boot_set_kind_name(BootSetKind k) {
    switch (k) {
        case BootSetKind::recorded: return "recorded";
        case BootSetKind::predicted: return "predicted";
        case BootSetKind::none: return "none";
    }
    return "?";
}

Status validate_node_name(std::string_view name) {
    auto bad = [&](const std::string& cause) {
        return Status::error(EINVAL, "node name '" + std::string(name.substr(0, kMaxNodeNameLength)) + "': " + cause);
    };
    if (name.empty()) return Status::error(EINVAL, "node name is empty");
    if (name.size() > kMaxNodeNameLength) return bad("longer than " + std::to_string(kMaxNodeNameLength) + " characters");
    if (name.front() == '.') return bad("starts with '.'");
    for (char c : name) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                  c == '-';
        if (!ok) return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    return Status::ok();
}

Result<std::pair<std::string, uint16_t>> parse_peer_address(std::string_view address) {
    auto bad = [&](const std::string& cause) {
        return Status::error(EINVAL, "address '" + std::string(address.substr(0, kMaxAddressLength)) + "': " + cause);
    };
    if (address.size() > kMaxAddressLength) return bad("longer than " + std::to_string(kMaxAddressLength) + " bytes");
    std::string_view host, port;
    if (!address.empty() && address.front() == '[') {
        size_t close = address.find(']');
        if (close == std::string_view::npos || close + 1 >= address.size() || address[close + 1] != ':')
            return bad("expected [host]:port");
        host = address.substr(1, close - 1);
        port = address.substr(close + 2);
    } else {
        size_t colon = address.rfind(':');
        if (colon == std::string_view::npos) return bad("expected host:port");
        host = address.substr(0, colon);
        port = address.substr(colon + 1);
        if (host.find(':') != std::string_view::npos) return bad("an IPv6 host must be in brackets ([::1]:7401)");
    }
    if (host.empty()) return bad("no host");
    for (char c : host) {
        if (static_cast<unsigned char>(c) <= 0x20 || c == '/' || c == '[' || c == ']' || c == 0x7f)
            return bad("the host holds a character that is not allowed");
    }
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535 ||
        port.front() == '0')
        return bad("the port must be a number from 1 to 65535");
    return std::pair<std::string, uint16_t>{std::string(host), static_cast<uint16_t>(value)};
}

Status check_peer_version(const json& msg) {
    if (!msg.is_object()) return Status::error(EBADMSG, "peer message is not a JSON object");
    std::string type = msg.contains("type") && msg["type"].is_string() ? msg["type"].get<std::string>() : "?";
    auto p = msg.find("proto");
    if (p == msg.end())
        return Status::error(EBADMSG, type + ": field 'proto': missing (supported: " + std::to_string(kPeerProtocolVersion) + ")");
    if (!is_u64(*p))
        return Status::error(EBADMSG, type + ": field 'proto': expected an unsigned integer, got " + p->type_name());
    uint64_t v = p->get<uint64_t>();
    if (v != kPeerProtocolVersion)
        return Status::error(EPROTONOSUPPORT, "peer protocol version " + std::to_string(v) + " is not supported (supported: " +
                                                  std::to_string(kPeerProtocolVersion) + ")");
    return Status::ok();
}

json version_error_message(const Status& version_error) {
    json e = error_message(version_error.message());
    if (version_error.code() == EPROTONOSUPPORT) e["supported"] = json::array({kPeerProtocolVersion});
    return e;
}

std::vector<uint8_t> encode_peer_frame(const json& msg) {
    // Invalid UTF-8 (a message quoting a bad path) is replaced, never thrown.
    const std::string body = msg.dump(-1, ' ', false, json::error_handler_t::replace);
    std::vector<uint8_t> out(kHeaderSize + body.size());
    const uint32_t len = static_cast<uint32_t>(body.size());
    out[0] = static_cast<uint8_t>(len >> 24);
    out[1] = static_cast<uint8_t>(len >> 16);
    out[2] = static_cast<uint8_t>(len >> 8);
    out[3] = static_cast<uint8_t>(len);
    std::copy(body.begin(), body.end(), out.begin() + kHeaderSize);
    return out;
}

Result<json> decode_peer_frame(const uint8_t* data, size_t size) {
    const std::string who = "peer frame";
    if (size < kHeaderSize)
        return bad_frame(who, std::to_string(size) + " bytes, shorter than the 4-byte length header");
    auto len = frame_length(data, who);
    if (!len) return len.status();
    if (size - kHeaderSize != *len)
        return bad_frame(who, "the header announces " + std::to_string(*len) + " bytes but " +
                                  std::to_string(size - kHeaderSize) + " follow");
    return parse_body(data + kHeaderSize, *len, who);
}

Status write_peer_message(repl::Stream& s, const json& msg) {
    std::vector<uint8_t> frame = encode_peer_frame(msg);
    if (frame.size() - kHeaderSize > kMaxPeerMessage || frame.size() == kHeaderSize)
        return Status::error(EMSGSIZE, "peer " + s.peer().describe() + ": message of " +
                                           std::to_string(frame.size() - kHeaderSize) + " bytes is outside 1.." +
                                           std::to_string(kMaxPeerMessage));
    return s.write_all(frame);
}

Result<json> read_peer_message(repl::Stream& s) {
    const std::string who = "peer " + s.peer().describe();
    uint8_t header[kHeaderSize];
    if (Status st = s.read_exact(header); !st) return st;
    auto len = frame_length(header, who);
    if (!len) return len.status();
    std::vector<uint8_t> body(*len);
    if (Status st = s.read_exact(body); !st) return st;
    return parse_body(body.data(), body.size(), who);
}

json error_message(const std::string& message) {
    json e = base("error");
    e["message"] = message;
    return e;
}

json to_json(const RegisterRequest& r) {
    json j = base("register");
    j["node"] = r.node;
    j["peer_address"] = r.peer_address;
    j["replication_address"] = r.replication_address;
    j["subscribe"] = r.subscribe;
    j["versions"] = versions_json(r.versions);
    return j;
}

json to_json(const PingRequest& r) {
    json j = base("ping");
    j["master"] = r.master;
    json catalog = json::object();
    for (const auto& [image, c] : r.catalog)
        catalog[image] = json{{"versions", c.versions}, {"production", c.production}, {"test", c.test}, {"disk", c.disk}};
    j["catalog"] = std::move(catalog);
    if (!r.parent.empty()) j["parent"] = r.parent;
    return j;
}

json to_json(const PongReply& r) {
    json j = base("pong");
    j["node"] = r.node;
    j["subscribe"] = r.subscribe;
    j["versions"] = versions_json(r.versions);
    j["in_use"] = versions_json(r.in_use);
    if (!r.parent.empty()) j["parent"] = r.parent;
    return j;
}

json to_json(const RelayRequest& r) {
    json j = base("relay");
    j["master"] = r.master;
    json children = json::array();
    for (const RelayChild& c : r.children)
        children.push_back(json{{"name", c.name}, {"replication_address", c.replication_address}});
    j["children"] = std::move(children);
    return j;
}

json to_json(const RelayReply& r) {
    json j = base("relay.ok");
    j["node"] = r.node;
    j["children"] = r.children;
    return j;
}

json to_json(const RegisteredReply& r) {
    json j = base("registered");
    j["master"] = r.master;
    j["keepalive_interval_ms"] = r.keepalive_interval_ms;
    return j;
}

Result<RegisterRequest> register_from_json(const json& j) {
    Fields f("register");
    if (Status s = f.header(j, "register"); !s) return s;
    RegisterRequest r;
    auto node = f.node_name(j, "node");
    if (!node) return node.status();
    auto peer = f.address(j, "peer_address");
    if (!peer) return peer.status();
    auto repl_addr = f.address(j, "replication_address");
    if (!repl_addr) return repl_addr.status();
    auto sub = f.subscriptions(j, "subscribe");
    if (!sub) return sub.status();
    auto versions = f.versions(j, "versions");
    if (!versions) return versions.status();
    r.node = std::move(*node);
    r.peer_address = std::move(*peer);
    r.replication_address = std::move(*repl_addr);
    r.subscribe = std::move(*sub);
    r.versions = std::move(*versions);
    return r;
}

Result<PingRequest> ping_from_json(const json& j) {
    Fields f("ping");
    if (Status s = f.header(j, "ping"); !s) return s;
    PingRequest r;
    auto master = f.node_name(j, "master");
    if (!master) return master.status();
    auto catalog = f.member(j, "catalog", "");
    if (!catalog) return catalog.status();
    if (!(*catalog)->is_object()) return f.error("catalog", std::string("expected an object, got ") + (*catalog)->type_name());
    for (const auto& [image, entry] : (*catalog)->items()) {
        if (Status v = repl::validate_image_name(image); !v) return f.error("catalog", v.message());
        auto c = catalog_image_from_json(f, entry, "catalog." + image);
        if (!c) return c.status();
        r.catalog.emplace(image, std::move(*c));
    }
    if (j.contains("parent")) {
        auto parent = f.node_name(j, "parent");
        if (!parent) return parent.status();
        r.parent = std::move(*parent);
    }
    r.master = std::move(*master);
    return r;
}

Result<PongReply> pong_from_json(const json& j) {
    Fields f("pong");
    if (Status s = f.header(j, "pong"); !s) return s;
    PongReply r;
    auto node = f.node_name(j, "node");
    if (!node) return node.status();
    auto sub = f.subscriptions(j, "subscribe");
    if (!sub) return sub.status();
    auto versions = f.versions(j, "versions");
    if (!versions) return versions.status();
    auto in_use = f.versions(j, "in_use");
    if (!in_use) return in_use.status();
    r.node = std::move(*node);
    r.subscribe = std::move(*sub);
    r.versions = std::move(*versions);
    r.in_use = std::move(*in_use);
    if (j.contains("parent")) {
        auto parent = f.node_name(j, "parent");
        if (!parent) return parent.status();
        r.parent = std::move(*parent);
    }
    return r;
}

Result<RelayRequest> relay_from_json(const json& j) {
    Fields f("relay");
    if (Status s = f.header(j, "relay"); !s) return s;
    RelayRequest r;
    auto master = f.node_name(j, "master");
    if (!master) return master.status();
    auto children = f.array(j, "children", kMaxRelayChildren);
    if (!children) return children.status();
    const json& a = **children;
    for (size_t i = 0; i < a.size(); ++i) {
        const std::string at = "children[" + std::to_string(i) + "]";
        if (!a[i].is_object()) return f.error(at, std::string("expected an object, got ") + a[i].type_name());
        auto name = f.string(a[i], "name", at);
        if (!name) return name.status();
        if (Status v = validate_node_name(*name); !v) return f.error(at + ".name", v.message());
        auto address = f.string(a[i], "replication_address", at);
        if (!address) return address.status();
        if (auto hp = parse_peer_address(*address); !hp) return f.error(at + ".replication_address", hp.status().message());
        for (const RelayChild& c : r.children)
            if (c.name == *name) return f.error(at, "child '" + *name + "' named twice");
        r.children.push_back(RelayChild{std::move(*name), std::move(*address)});
    }
    r.master = std::move(*master);
    return r;
}

Result<RelayReply> relay_ok_from_json(const json& j) {
    Fields f("relay.ok");
    if (Status s = f.header(j, "relay.ok"); !s) return s;
    RelayReply r;
    auto node = f.node_name(j, "node");
    if (!node) return node.status();
    auto children = f.array(j, "children", kMaxRelayChildren);
    if (!children) return children.status();
    const json& a = **children;
    for (size_t i = 0; i < a.size(); ++i) {
        const std::string at = "children[" + std::to_string(i) + "]";
        if (!a[i].is_string()) return f.error(at, std::string("expected a string, got ") + a[i].type_name());
        std::string name = a[i].get<std::string>();
        if (Status v = validate_node_name(name); !v) return f.error(at, v.message());
        r.children.push_back(std::move(name));
    }
    r.node = std::move(*node);
    return r;
}

Result<RegisteredReply> registered_from_json(const json& j) {
    Fields f("registered");
    if (Status s = f.header(j, "registered"); !s) return s;
    auto master = f.node_name(j, "master");
    if (!master) return master.status();
    auto interval = f.u64(j, "keepalive_interval_ms");
    if (!interval) return interval.status();
    return RegisteredReply{std::move(*master), *interval};
}

json to_json(const BootSetPut& r) {
    json j = boot_set_base("bootset.put", r.image, r.version, r.file);
    j["node"] = r.node;
    j["sidecar"] = base64_encode(r.sidecar);
    return j;
}

json to_json(const BootSetAck& r) {
    json j = boot_set_base("bootset.ack", r.image, r.version, r.file);
    j["boots"] = r.boots;
    return j;
}

json to_json(const BootSetGet& r) {
    json j = boot_set_base("bootset.get", r.image, r.version, r.file);
    j["node"] = r.node;
    return j;
}

json to_json(const BootSetReply& r) {
    json j = boot_set_base("bootset", r.image, r.version, r.file);
    j["kind"] = boot_set_kind_name(r.kind);
    j["source"] = r.source;
    j["sidecar"] = base64_encode(r.sidecar);
    return j;
}

Result<BootSetPut> bootset_put_from_json(const json& j) {
    Fields f("bootset.put");
    if (Status s = f.header(j, "bootset.put"); !s) return s;
    auto node = f.node_name(j, "node");
    if (!node) return node.status();
    auto t = boot_set_target(f, j);
    if (!t) return t.status();
    auto sidecar = f.bytes(j, "sidecar");
    if (!sidecar) return sidecar.status();
    if (sidecar->empty()) return f.error("sidecar", "empty");
    return BootSetPut{std::move(*node), std::move(t->image), t->version, std::move(t->file), std::move(*sidecar)};
}

Result<BootSetAck> bootset_ack_from_json(const json& j) {
    Fields f("bootset.ack");
    if (Status s = f.header(j, "bootset.ack"); !s) return s;
    auto t = boot_set_target(f, j);
    if (!t) return t.status();
    auto boots = f.u64(j, "boots");
    if (!boots) return boots.status();
    return BootSetAck{std::move(t->image), t->version, std::move(t->file), *boots};
}

Result<BootSetGet> bootset_get_from_json(const json& j) {
    Fields f("bootset.get");
    if (Status s = f.header(j, "bootset.get"); !s) return s;
    auto node = f.node_name(j, "node");
    if (!node) return node.status();
    auto t = boot_set_target(f, j);
    if (!t) return t.status();
    return BootSetGet{std::move(*node), std::move(t->image), t->version, std::move(t->file)};
}

Result<BootSetReply> bootset_reply_from_json(const json& j) {
    Fields f("bootset");
    if (Status s = f.header(j, "bootset"); !s) return s;
    auto t = boot_set_target(f, j);
    if (!t) return t.status();
    auto kind = f.string(j, "kind");
    if (!kind) return kind.status();
    BootSetReply r;
    if (*kind == "recorded") r.kind = BootSetKind::recorded;
    else if (*kind == "predicted") r.kind = BootSetKind::predicted;
    else if (*kind == "none") r.kind = BootSetKind::none;
    else return f.error("kind", "expected 'recorded', 'predicted' or 'none', got '" + kind->substr(0, 64) + "'");
    auto source = f.u64(j, "source");
    if (!source) return source.status();
    auto sidecar = f.bytes(j, "sidecar");
    if (!sidecar) return sidecar.status();
    switch (r.kind) {
        case BootSetKind::none:
            if (*source != 0) return f.error("source", "must be 0 when kind is 'none'");
            if (!sidecar->empty()) return f.error("sidecar", "must be empty when kind is 'none'");
            break;
        case BootSetKind::recorded:
            if (*source != t->version) return f.error("source", "a recorded set's source must be the version asked for");
            if (sidecar->empty()) return f.error("sidecar", "empty");
            break;
        case BootSetKind::predicted:
            if (*source == 0 || *source >= t->version)
                return f.error("source", "a predicted set's source must be an older version, >= 1");
            if (sidecar->empty()) return f.error("sidecar", "empty");
            break;
    }
    r.image = std::move(t->image);
    r.version = t->version;
    r.file = std::move(t->file);
    r.source = *source;
    r.sidecar = std::move(*sidecar);
    return r;
}

}  // namespace icbd::node
