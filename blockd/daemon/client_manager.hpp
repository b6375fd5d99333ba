// Desktops on a cache server (replica): one tgt target per client with one
// LUN, a copy-on-write overlay over the golden version of the client's release
// channel behind a write-back cache, an initiator ACL and optional CHAP. Keeps
// tgtd in line with the store (reconcile: creates what is missing, never drops
// a LUN with a session) and moves each client to its channel's version when it
// has no iSCSI session. docs/blockd.md, "Clients".
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "icbd/status.hpp"
#include "peer_protocol.hpp"
#include "store.hpp"
#include "tgt_admin.hpp"

namespace icbd::node {

struct ClientSpec {
    std::string name;
    std::string image;
    std::string initiator;
    std::string chap_user, chap_secret;  // both or neither
    bool persistent = false;
    std::string channel;  // "" = the node's default
};

struct ClientStatus {
    ClientRecord record;
    std::string target;      // the target's IQN (never changes)
    uint64_t desired_version = 0;  // what its channel says now (0 unknown)
    bool behind = false;     // bound_version != desired_version
    int sessions = 0;        // iSCSI sessions now (-1: tgtd unreachable)
    bool exported = false;   // tgtd has its target and LUN now
    uint64_t overlay_blocks = 0;  // 4 KiB blocks the client wrote (since the last reset)
};

class ClientManager {
public:
    struct Options {
        std::string iqn_prefix = "iqn.2026-12.org.icbd";
        std::filesystem::path overlay_dir;
        std::filesystem::path cache_dir;
        uint64_t cache_size = 1ull << 30;  // 0: no cache
        std::string default_channel = "production";
        std::chrono::milliseconds reconcile_interval{2'000};
    };
    // golden(image, version): path of the file a LUN serves (ENOENT when the
    // version is not on this node). catalog(): the channels as last heard from
    // the master (may be empty: then clients stay where they are).
    // local_versions(image) (optional): versions on this node, ascending; picks
    // the version of a client added while the catalog does not name a local
    // one. Without it, the newest catalog version present locally is taken.
    ClientManager(Options options, NodeStore& store, TgtAdmin& tgt,
                  std::function<Result<std::filesystem::path>(const std::string&, uint64_t)> golden,
                  std::function<Catalog()> catalog,
                  std::function<std::vector<uint64_t>(const std::string&)> local_versions = {});
    ~ClientManager();  // stop()

    // Validates (names, initiator syntax, duplicate name or initiator, image
    // present), records the client (intent), creates overlay and cache, exports
    // target + LUN + ACL + CHAP; returns once durable and exported.
    Result<ClientStatus> add(const ClientSpec& spec);
    // Removes target, LUN (the cache is written back first), overlay, cache and
    // the record. EBUSY while a session is open unless force.
    Status remove(const std::string& name, bool force = false);
    // Forgets the client's writes (empty overlay over its bound version) and
    // moves it to its channel's version; EBUSY while a session is open.
    Status reset(const std::string& name);
    Result<std::vector<ClientStatus>> list();
    Result<ClientStatus> show(const std::string& name);

    // Versions (per image) that clients use: never deleted under them.
    std::map<std::string, std::vector<uint64_t>> versions_in_use();

    // One reconciliation pass: finish intents, re-create missing targets/LUNs
    // (tgtd restarted), move session-less clients to their channel's version.
    Status reconcile();
    void start();    // reconcile every reconcile_interval
    void stop();
    void trigger();  // reconcile soon (a new version arrived, the catalog changed)

    std::string target_name(const std::string& client) const;  // <iqn_prefix>:<client>

private:
    // Free space a new client needs beyond its cache (overlay map, metadata).
    static constexpr uint64_t kSpaceMargin = 4ull << 20;
    Status check_space(const ClientRecord& r) const;
    void run();
    // Helpers of the operations; all run under op_mu_.
    bool have_version(const std::string& image, uint64_t version) const;
    uint64_t desired_version(const ClientRecord& r, const Catalog& catalog) const;
    Result<uint64_t> initial_version(const std::string& image, const std::string& channel, const Catalog& catalog) const;
    std::string bsopts(const ClientRecord& r, const std::filesystem::path& golden) const;
    Status validate(const ClientSpec& spec, const std::string& channel) const;
    Result<int> pick_tid(const std::vector<ClientRecord>& clients) const;
    Status ensure_overlay(const ClientRecord& r) const;
    Status ensure_export(const ClientRecord& r, const std::optional<TgtTarget>& target);
    Status move(ClientRecord& r, uint64_t to);
    Status finish_removal(const ClientRecord& r, bool force);
    Status reconcile_client(ClientRecord& r, const std::optional<TgtTarget>& target, const Catalog& catalog);
    Status remove_orphans(const std::vector<ClientRecord>& clients, const std::vector<TgtTarget>& targets);
    ClientStatus status_of(const ClientRecord& r, const Catalog& catalog,
                           const Result<std::vector<TgtTarget>>& targets) const;

    Options opt_;
    NodeStore& store_;
    TgtAdmin& tgt_;
    std::function<Result<std::filesystem::path>(const std::string&, uint64_t)> golden_;
    std::function<Catalog()> catalog_;
    std::function<std::vector<uint64_t>(const std::string&)> local_versions_;
    std::mutex op_mu_;  // one operation at a time (add/remove/reset/reconcile)
    std::mutex mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
    bool wake_ = false;
    std::thread thread_;
};

}  // namespace icbd::node
