// ClientManager: desktops on a cache server as tgt targets (one LUN: overlay
// over the channel's golden version behind a write-back cache), kept in line
// with the store by reconcile(), which also moves session-less clients.
#include "client_manager.hpp"

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <fcntl.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <set>

#include "icbd/log.hpp"
#include "icbd/overlay.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd::node {

namespace fs = std::filesystem;

namespace {

constexpr int kLun = 1;  // a desktop's disk: never changes across versions

std::string client_label(const std::string& name) { return "client '" + name + "'"; }

// Same rules as image names (image_service.hpp's validate_name), kept here so
// this library does not pull in the image service.
Status validate_plain_name(const std::string& what, const std::string& name) {
    auto bad = [&](const std::string& why) { return Status::error(EINVAL, what + " '" + name + "': " + why); };
    if (name.empty() || name.size() > 64) return bad("must be 1 to 64 characters");
    if (name[0] == '.' || name[0] == '-') return bad("must not start with '.' or '-'");
    for (unsigned char c : name)
        if (!std::isalnum(c) && c != '.' && c != '_' && c != '-')
            return bad("only letters, digits, '.', '_' and '-' are allowed");
    return Status::ok();
}

Status validate_chap(const std::string& client, const std::string& user, const std::string& secret) {
    const std::string what = client_label(client) + ": CHAP";
    if (user.empty() != secret.empty()) return Status::error(EINVAL, what + ": give both user and secret, or neither");
    if (user.empty()) return Status::ok();
    if (user.size() > 255) return Status::error(EINVAL, what + " user: longer than 255 characters");
    for (unsigned char c : user)
        if (!std::isalnum(c) && c != '.' && c != '_' && c != '-' && c != '@' && c != ':')
            return Status::error(EINVAL, what + " user '" + user + "': only letters, digits, '.', '_', '-', '@', ':'");
    // Most initiators (Microsoft's among them) refuse CHAP secrets under 12 bytes.
    if (secret.size() < 12 || secret.size() > 255)
        return Status::error(EINVAL, what + " secret: must be 12 to 255 characters");
    for (unsigned char c : secret)
        if (!std::isgraph(c)) return Status::error(EINVAL, what + " secret: printable characters without spaces only");
    return Status::ok();
}

const TgtLun* find_lun(const TgtTarget& t, int lun) {
    for (const auto& l : t.luns)
        if (l.lun == lun) return &l;
    return nullptr;
}

bool has(const std::vector<std::string>& v, const std::string& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// Removes a file; a missing one is fine.
Status remove_file(const std::string& path, const std::string& what) {
    if (path.empty()) return Status::ok();
    std::error_code ec;
    fs::remove(path, ec);
    if (ec) return Status::error(ec.value(), what + ": removing '" + path + "': " + ec.message());
    return Status::ok();
}

std::optional<TgtTarget> find_target(const std::vector<TgtTarget>& ts, int tid) {
    for (const auto& t : ts)
        if (t.tid == tid) return t;
    return std::nullopt;
}

}  // namespace

ClientManager::ClientManager(Options options, NodeStore& store, TgtAdmin& tgt,
                             std::function<Result<fs::path>(const std::string&, uint64_t)> golden,
                             std::function<Catalog()> catalog,
                             std::function<std::vector<uint64_t>(const std::string&)> local_versions)
    : opt_(std::move(options)),
      store_(store),
      tgt_(tgt),
      golden_(std::move(golden)),
      catalog_(std::move(catalog)),
      local_versions_(std::move(local_versions)) {}

ClientManager::~ClientManager() { stop(); }

std::string ClientManager::target_name(const std::string& client) const { return opt_.iqn_prefix + ":" + client; }

bool ClientManager::have_version(const std::string& image, uint64_t version) const {
    return version != 0 && golden_(image, version).is_ok();
}

uint64_t ClientManager::desired_version(const ClientRecord& r, const Catalog& catalog) const {
    auto it = catalog.find(r.image);
    if (it == catalog.end()) return 0;
    // A test desktop follows production while nothing is on test.
    if (r.channel == "test" && it->second.test != 0) return it->second.test;
    return it->second.production;
}

Result<uint64_t> ClientManager::initial_version(const std::string& image, const std::string& channel,
                                                const Catalog& catalog) const {
    ClientRecord probe;
    probe.image = image;
    probe.channel = channel;
    if (uint64_t d = desired_version(probe, catalog); have_version(image, d)) return d;
    // The channel's version is not here yet (or nothing is known of the
    // channels): start on the newest local version; reconcile moves on later.
    std::vector<uint64_t> candidates;
    if (local_versions_) candidates = local_versions_(image);
    if (auto it = catalog.find(image); it != catalog.end())
        candidates.insert(candidates.end(), it->second.versions.begin(), it->second.versions.end());
    std::sort(candidates.rbegin(), candidates.rend());
    for (uint64_t v : candidates)
        if (have_version(image, v)) return v;
    return Status::error(ENOENT, "image '" + image + "': no version of it is on this node" +
                                     (catalog.count(image) ? "" : " (and the master's catalog does not list it)"));
}

// The golden file is <repo>/images/<image>/<version>/<file>; its boot set
// sidecar <repo>/images/<image>/.bootsets/<version>/<file>.bset
// (docs/boot-set.md): the LUN records the desktop's boot into it.
static std::optional<fs::path> boot_set_of(const fs::path& golden, const std::string& image, uint64_t version) {
    const std::string v = std::to_string(version);
    for (fs::path dir = golden.parent_path(); dir.has_relative_path(); dir = dir.parent_path())
        if (dir.filename() == v && dir.parent_path().filename() == image)
            return dir.parent_path() / ".bootsets" / v / (golden.lexically_relative(dir).string() + ".bset");
    return std::nullopt;
}

std::string ClientManager::bsopts(const ClientRecord& r, const fs::path& golden) const {
    std::string s = "overlay=" + r.overlay_path;
    if (!r.cache_path.empty()) s += ";cache=" + r.cache_path + ";cache_size=" + std::to_string(opt_.cache_size);
    if (auto b = boot_set_of(golden, r.image, r.bound_version)) s += ";bootset=" + b->string();
    return s;
}

Status ClientManager::validate(const ClientSpec& spec, const std::string& channel) const {
    if (Status s = validate_plain_name("client name", spec.name); !s) return s;
    if (Status s = validate_iscsi_name(target_name(spec.name)); !s)
        return Status::error(EINVAL, client_label(spec.name) + ": unusable in its target name: " + s.message());
    if (Status s = validate_plain_name("image name", spec.image); !s) return s;
    if (Status s = validate_iscsi_name(spec.initiator); !s)
        return Status::error(EINVAL, client_label(spec.name) + ": initiator: " + s.message());
    if (channel != "production" && channel != "test")
        return Status::error(EINVAL, client_label(spec.name) + ": channel '" + channel + "' is not production or test");
    return validate_chap(spec.name, spec.chap_user, spec.chap_secret);
}

Result<int> ClientManager::pick_tid(const std::vector<ClientRecord>& clients) const {
    auto tid = store_.free_tid();
    if (!tid) return tid.status();
    // A target someone made by hand may hold the store's free id.
    auto targets = tgt_.targets();
    if (!targets) return targets.status();
    std::set<int> used;
    for (const auto& c : clients) used.insert(c.tid);
    for (const auto& t : *targets) used.insert(t.tid);
    int id = *tid;
    while (used.count(id)) ++id;
    return id;
}

Status ClientManager::ensure_overlay(const ClientRecord& r) const {
    const std::string what = client_label(r.name);
    auto golden = golden_(r.image, r.bound_version);
    if (!golden) return Status::error(golden.status().code(), what + ": " + golden.status().message());
    UniqueFd fd(::open(golden->c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Status::from_errno(errno, what + ": golden file '" + golden->string() + "'");
    auto id = golden_identity(fd.get(), golden->string());
    if (!id) return Status::error(id.status().code(), what + ": " + id.status().message());

    std::error_code ec;
    if (fs::exists(r.overlay_path, ec)) {
        auto info = read_overlay_info(r.overlay_path);
        // An unreadable overlay may still be someone's data: never replace it silently.
        if (!info) return Status::error(info.status().code(), what + ": " + info.status().message());
        if (info->golden.image == id->image && info->golden.version == id->version) return Status::ok();
        // Names another version: a move or reset was cut short after the
        // record changed; the writes were being discarded anyway.
        log(LogLevel::warning, what + ": overlay '" + r.overlay_path + "' belongs to " + info->golden.describe() +
                                   ", replaced by an empty one for version " + std::to_string(r.bound_version),
            {.image = r.image, .version = r.bound_version, .client = r.name});
        if (Status s = remove_file(r.overlay_path, what); !s) return s;
    }
    // A cache holds blocks of the overlay it was in front of: never put it
    // in front of a new one.
    if (Status s = remove_file(r.cache_path, what); !s) return s;
    if (Status s = create_overlay(r.overlay_path, *id); !s) return Status::error(s.code(), what + ": " + s.message());
    return Status::ok();
}

Status ClientManager::ensure_export(const ClientRecord& r, const std::optional<TgtTarget>& target) {
    const std::string iqn = target_name(r.name);
    const std::string what = client_label(r.name) + " (target " + iqn + ", tid " + std::to_string(r.tid) + ")";
    if (target && target->iqn != iqn)
        return Status::error(EEXIST, what + ": tgtd has another target '" + target->iqn + "' with that tid");
    if (!target) {
        if (Status s = tgt_.create_target(r.tid, iqn); !s) return s;
    }
    auto golden = golden_(r.image, r.bound_version);
    if (!golden) return Status::error(golden.status().code(), what + ": " + golden.status().message());
    const TgtLun* lun = target ? find_lun(*target, kLun) : nullptr;
    if (lun && lun->backing_store != golden->string()) {
        // Serves a golden file the record does not name (the repository moved
        // under it): replaced only while nobody uses it.
        if (target->sessions > 0)
            return Status::error(EBUSY, what + ": LUN serves '" + lun->backing_store + "', not '" + golden->string() +
                                            "'; replaced when its session ends");
        if (Status s = tgt_.delete_lun(r.tid, kLun); !s) return s;
        lun = nullptr;
    }
    if (!lun) {
        if (Status s = ensure_overlay(r); !s) return s;
        if (Status s = tgt_.create_lun(r.tid, kLun, golden->string(), "icbd", bsopts(r, *golden)); !s) return s;
    }
    if (!r.chap_user.empty() && !(target && has(target->accounts, r.chap_user))) {
        if (Status s = tgt_.bind_chap(r.tid, r.chap_user, r.chap_secret); !s) return s;
    }
    // The ACL last: the desktop can log in only once everything is in place.
    if (!(target && has(target->initiator_names, r.initiator))) {
        if (Status s = tgt_.bind_initiator_name(r.tid, r.initiator); !s) return s;
    }
    return Status::ok();
}

Status ClientManager::move(ClientRecord& r, uint64_t to) {
    const std::string what = client_label(r.name);
    // No new login while the LUN is swapped: take the initiator off the ACL,
    // then make sure nobody got in before that.
    if (Status s = tgt_.unbind_initiator_name(r.tid, r.initiator); !s && s.code() != ENOENT) return s;
    auto rebind = [&] { (void)tgt_.bind_initiator_name(r.tid, r.initiator); };
    auto target = tgt_.target(r.tid);
    if (!target) {
        rebind();
        return target.status();
    }
    if (*target && (*target)->sessions > 0) {
        rebind();
        return Status::error(EBUSY, what + ": " + std::to_string((*target)->sessions) + " iSCSI session(s) open");
    }
    // Removing the LUN writes its cache back into the old overlay first.
    if (*target && find_lun(**target, kLun)) {
        if (Status s = tgt_.delete_lun(r.tid, kLun); !s) {
            rebind();
            return s;
        }
    }
    const uint64_t from = r.bound_version;
    r.bound_version = to;
    if (Status s = store_.put_client(r); !s) {
        r.bound_version = from;
        if (auto t = tgt_.target(r.tid)) (void)ensure_export(r, *t);  // put the old LUN back
        return s;
    }
    // The overlay names its golden version, so an empty one is made for `to`
    // (ensure_overlay sees the old one naming `from` only if the versions differ).
    if (Status s = remove_file(r.overlay_path, what); !s) return s;
    auto fresh = tgt_.target(r.tid);
    if (!fresh) return fresh.status();
    if (Status s = ensure_export(r, *fresh); !s) return s;
    log(LogLevel::info, what + ": now on image '" + r.image + "' version " + std::to_string(to) + " (was " +
                            std::to_string(from) + "), overlay reset",
        {.image = r.image, .version = to, .client = r.name, .target = target_name(r.name)});
    return Status::ok();
}

Status ClientManager::finish_removal(const ClientRecord& r, bool force) {
    const std::string what = client_label(r.name);
    auto target = tgt_.target(r.tid);
    if (!target) return target.status();
    if (*target && (*target)->iqn == target_name(r.name)) {
        if (has((*target)->initiator_names, r.initiator)) (void)tgt_.unbind_initiator_name(r.tid, r.initiator);
        if ((*target)->sessions > 0 && !force)
            return Status::error(EBUSY, what + ": " + std::to_string((*target)->sessions) + " iSCSI session(s) open");
        // The LUN first: its cache is written back before the files go.
        if (find_lun(**target, kLun)) {
            if (Status s = tgt_.delete_lun(r.tid, kLun); !s && s.code() != ENOENT) return s;
        }
        if (Status s = tgt_.delete_target(r.tid, force); !s && s.code() != ENOENT) return s;
    }
    if (!r.chap_user.empty()) {
        auto clients = store_.clients();
        if (!clients) return clients.status();
        bool shared = std::any_of(clients->begin(), clients->end(),
                                  [&](const ClientRecord& c) { return c.name != r.name && c.chap_user == r.chap_user; });
        if (!shared) {
            if (Status s = tgt_.delete_account(r.chap_user); !s && s.code() != ENOENT) return s;
        }
    }
    if (Status s = remove_file(r.cache_path, what); !s) return s;
    if (Status s = remove_file(r.overlay_path, what); !s) return s;
    return store_.delete_client(r.name);
}

// A full cache directory would fail deep inside tgtd (tgtadm only says
// "invalid request"): refuse up front, naming the directory and the sizes.
Status ClientManager::check_space(const ClientRecord& r) const {
    auto free_bytes = [](const fs::path& dir) -> Result<uint64_t> {
        struct statvfs st{};
        if (::statvfs(dir.c_str(), &st) != 0) return Status::from_errno(errno, "directory '" + dir.string() + "'");
        return uint64_t(st.f_bavail) * st.f_frsize;
    };
    auto mib = [](uint64_t b) { return std::to_string(b >> 20) + " MiB"; };
    if (!r.cache_path.empty()) {
        auto avail = free_bytes(opt_.cache_dir);
        if (!avail) return avail.status();
        // Cache files are sparse and fill as desktops write: no overcommit,
        // so every cache (the existing ones too) can grow to its full size
        // without the directory running out under a desktop's writes.
        auto clients = store_.clients();
        if (!clients) return clients.status();
        uint64_t promised = opt_.cache_size + kSpaceMargin, allocated = 0;
        for (const ClientRecord& c : *clients) {
            if (c.cache_path.empty()) continue;
            promised += opt_.cache_size;
            struct stat st{};
            if (::stat(c.cache_path.c_str(), &st) == 0) allocated += uint64_t(st.st_blocks) * 512;
        }
        if (*avail + allocated < promised)
            return Status::error(ENOSPC, "cache directory '" + opt_.cache_dir.string() + "' has " + mib(*avail) +
                                             " free; its write-back caches need " + mib(promised - allocated) +
                                             " more to be able to fill (clients.cache_size " +
                                             mib(opt_.cache_size) + " each)");
    }
    auto avail = free_bytes(opt_.overlay_dir);
    if (!avail) return avail.status();
    if (*avail < kSpaceMargin)
        return Status::error(ENOSPC, "overlay directory '" + opt_.overlay_dir.string() + "' has " + mib(*avail) +
                                         " free; a new overlay needs at least " + mib(kSpaceMargin));
    return Status::ok();
}

Result<ClientStatus> ClientManager::add(const ClientSpec& spec) {
    std::lock_guard op(op_mu_);
    const std::string channel = spec.channel.empty() ? opt_.default_channel : spec.channel;
    if (Status s = validate(spec, channel); !s) return s;
    const std::string what = client_label(spec.name);
    auto clients = store_.clients();
    if (!clients) return clients.status();
    for (const auto& c : *clients) {
        if (c.name == spec.name) return Status::error(EEXIST, what + ": already exists");
        if (c.initiator == spec.initiator)
            return Status::error(EEXIST, what + ": initiator '" + spec.initiator + "' already belongs to client '" +
                                             c.name + "'");
        if (!spec.chap_user.empty() && c.chap_user == spec.chap_user && c.chap_secret != spec.chap_secret)
            return Status::error(EEXIST, what + ": CHAP user '" + spec.chap_user + "' is client '" + c.name +
                                             "''s with another secret");
    }
    const Catalog catalog = catalog_();
    auto version = initial_version(spec.image, channel, catalog);
    if (!version) return Status::error(version.status().code(), what + ": " + version.status().message());

    ClientRecord r;
    r.name = spec.name;
    r.image = spec.image;
    r.channel = channel;
    r.initiator = spec.initiator;
    r.chap_user = spec.chap_user;
    r.chap_secret = spec.chap_secret;
    r.persistent = spec.persistent;
    r.bound_version = *version;
    r.overlay_path = (opt_.overlay_dir / (spec.name + ".ovl")).string();
    if (opt_.cache_size > 0) r.cache_path = (opt_.cache_dir / (spec.name + ".cache")).string();
    std::error_code ec;
    for (const std::string& f : {r.overlay_path, r.cache_path})
        if (!f.empty() && fs::exists(f, ec))
            return Status::error(EEXIST, what + ": '" + f + "' already exists (left from an earlier client?); "
                                                "remove it first");
    if (Status s = check_space(r); !s) return Status::error(s.code(), what + ": " + s.message());
    auto tid = pick_tid(*clients);
    if (!tid) return tid.status();
    r.tid = *tid;
    r.state = ClientState::creating;
    r.created_ms = now_ms();
    // The intent is durable before anything exists, so a crash from here on
    // is finished by reconcile().
    if (Status s = store_.put_client(r); !s) return s;
    if (Status s = ensure_export(r, std::nullopt); !s) {
        if (Status u = finish_removal(r, true); !u)
            log(LogLevel::error, what + ": undoing a failed add: " + u.message() + " (reconcile retries)",
                {.client = r.name});
        return s;
    }
    r.state = ClientState::ready;
    if (Status s = store_.put_client(r); !s) return s;
    return status_of(r, catalog, tgt_.targets());
}

Status ClientManager::remove(const std::string& name, bool force) {
    std::lock_guard op(op_mu_);
    auto rec = store_.client(name);
    if (!rec) return rec.status();
    if (!*rec) return Status::error(ENOENT, client_label(name) + ": no such client");
    ClientRecord r = **rec;
    auto target = tgt_.target(r.tid);
    if (!target) return target.status();
    if (*target && (*target)->iqn == target_name(name) && (*target)->sessions > 0 && !force)
        return Status::error(EBUSY, client_label(name) + ": " + std::to_string((*target)->sessions) +
                                        " iSCSI session(s) open; disconnect the desktop or force the removal");
    r.state = ClientState::removing;
    if (Status s = store_.put_client(r); !s) return s;
    return finish_removal(r, force);
}

Status ClientManager::reset(const std::string& name) {
    std::lock_guard op(op_mu_);
    auto rec = store_.client(name);
    if (!rec) return rec.status();
    if (!*rec) return Status::error(ENOENT, client_label(name) + ": no such client");
    ClientRecord r = **rec;
    if (r.state != ClientState::ready)
        return Status::error(EAGAIN, client_label(name) + ": is being " +
                                         (r.state == ClientState::creating ? "created" : "removed"));
    uint64_t to = desired_version(r, catalog_());
    if (!have_version(r.image, to)) to = r.bound_version;
    return move(r, to);
}

Result<std::vector<ClientStatus>> ClientManager::list() {
    auto clients = store_.clients();
    if (!clients) return clients.status();
    const Catalog catalog = catalog_();
    const auto targets = tgt_.targets();
    std::vector<ClientStatus> out;
    for (const auto& c : *clients) out.push_back(status_of(c, catalog, targets));
    return out;
}

Result<ClientStatus> ClientManager::show(const std::string& name) {
    auto rec = store_.client(name);
    if (!rec) return rec.status();
    if (!*rec) return Status::error(ENOENT, client_label(name) + ": no such client");
    return status_of(**rec, catalog_(), tgt_.targets());
}

ClientStatus ClientManager::status_of(const ClientRecord& r, const Catalog& catalog,
                                      const Result<std::vector<TgtTarget>>& targets) const {
    ClientStatus st;
    st.record = r;
    st.target = target_name(r.name);
    st.desired_version = desired_version(r, catalog);
    st.behind = st.desired_version != 0 && st.desired_version != r.bound_version;
    if (!targets) {
        st.sessions = -1;
    } else if (auto t = find_target(targets.value(), r.tid); t && t->iqn == st.target) {
        st.sessions = t->sessions;
        st.exported = find_lun(*t, kLun) != nullptr;
    }
    if (auto blocks = count_overlay_blocks(r.overlay_path)) st.overlay_blocks = *blocks;
    return st;
}

std::map<std::string, std::vector<uint64_t>> ClientManager::versions_in_use() {
    std::map<std::string, std::set<uint64_t>> used;
    if (auto clients = store_.clients()) {
        for (const auto& c : *clients)
            if (c.bound_version != 0) used[c.image].insert(c.bound_version);
    }
    std::map<std::string, std::vector<uint64_t>> out;
    for (const auto& [image, vs] : used) out[image].assign(vs.begin(), vs.end());
    return out;
}

Status ClientManager::reconcile_client(ClientRecord& r, const std::optional<TgtTarget>& target,
                                       const Catalog& catalog) {
    switch (r.state) {
        case ClientState::removing:
            return finish_removal(r, true);  // accepted before the crash: finish it
        case ClientState::creating:
            if (Status s = ensure_export(r, target); !s) return s;
            r.state = ClientState::ready;
            return store_.put_client(r);
        case ClientState::ready:
            break;
    }
    // Heals what tgtd lost (a restart) or never got; another IQN at our tid
    // is not ours to touch and is reported.
    if (Status s = ensure_export(r, target); !s) return s;
    const uint64_t to = desired_version(r, catalog);
    if (to == 0 || to == r.bound_version || r.persistent || !have_version(r.image, to)) return Status::ok();
    // A desktop with a session moves at its next disconnect.
    if (target && target->sessions > 0) return Status::ok();
    Status s = move(r, to);
    return s.code() == EBUSY ? Status::ok() : s;
}

Status ClientManager::remove_orphans(const std::vector<ClientRecord>& clients, const std::vector<TgtTarget>& targets) {
    const std::string prefix = opt_.iqn_prefix + ":";
    Status first;
    for (const auto& t : targets) {
        if (t.iqn.rfind(prefix, 0) != 0) continue;
        bool ours = std::any_of(clients.begin(), clients.end(),
                                [&](const ClientRecord& c) { return c.tid == t.tid && target_name(c.name) == t.iqn; });
        if (ours) continue;
        if (t.sessions > 0) {
            log(LogLevel::warning, "target " + t.iqn + " (tid " + std::to_string(t.tid) +
                                       ") belongs to no client; kept while its session lasts",
                {.target = t.iqn});
            continue;
        }
        Status s;
        for (const auto& l : t.luns)
            if (s) s = tgt_.delete_lun(t.tid, l.lun);
        if (s) s = tgt_.delete_target(t.tid, false);
        if (s.code() == ENOENT) continue;  // gone meanwhile
        if (s)
            log(LogLevel::info, "target " + t.iqn + " (tid " + std::to_string(t.tid) + ") belonged to no client: deleted", {.target = t.iqn});
        else if (first)
            first = s;
    }
    return first;
}

Status ClientManager::reconcile() {
    // One client at a time under the operation lock, not the whole pass: a
    // roll-out to hundreds of desktops must not hold `client add` up until
    // the last one has moved. What changed while we waited is left to the
    // next pass.
    auto targets = tgt_.targets();
    if (!targets) return targets.status();
    auto clients = store_.clients();
    if (!clients) return clients.status();
    const Catalog catalog = catalog_();
    std::vector<std::string> failed;
    for (const ClientRecord& seen : *clients) {
        std::lock_guard op(op_mu_);
        auto fresh = store_.client(seen.name);
        if (!fresh) return fresh.status();
        if (!*fresh) continue;  // removed meanwhile
        ClientRecord r = **fresh;
        if (r.tid != seen.tid || r.state != seen.state || r.bound_version != seen.bound_version) continue;
        std::optional<TgtTarget> target = find_target(*targets, r.tid);
        if (Status s = reconcile_client(r, target, catalog); !s) {
            log(LogLevel::warning, "reconcile: " + s.message());
            failed.push_back(s.message());
        }
    }
    {
        // Orphans on fresh views, under the lock: a client being added owns
        // a target before its record says ready.
        std::lock_guard op(op_mu_);
        auto now = store_.clients();
        if (!now) return now.status();
        auto fresh_targets = tgt_.targets();
        if (!fresh_targets) return fresh_targets.status();
        if (Status s = remove_orphans(*now, *fresh_targets); !s) failed.push_back(s.message());
    }
    if (failed.empty()) return Status::ok();
    std::string msg = "reconcile: " + std::to_string(failed.size()) + " problem(s): " + failed.front();
    for (size_t i = 1; i < failed.size(); ++i) msg += "; " + failed[i];
    return Status::error(EIO, msg);
}

void ClientManager::start() {
    std::lock_guard lk(mu_);
    if (thread_.joinable()) return;
    stopping_ = false;
    wake_ = true;  // first pass at once: heal what changed while blockd was down
    thread_ = std::thread([this] { run(); });
}

void ClientManager::stop() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void ClientManager::trigger() {
    {
        std::lock_guard lk(mu_);
        wake_ = true;
    }
    cv_.notify_all();
}

void ClientManager::run() {
    std::unique_lock lk(mu_);
    while (!stopping_) {
        cv_.wait_for(lk, opt_.reconcile_interval, [this] { return stopping_ || wake_; });
        if (stopping_) break;
        wake_ = false;
        lk.unlock();
        (void)reconcile();  // problems are logged per client
        lk.lock();
    }
}

}  // namespace icbd::node
