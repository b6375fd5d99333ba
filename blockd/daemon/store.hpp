// Durable node state (docs/blockd.md, "State"): the membership registry (a
// small interface so multi-site membership can move to etcd later) and the
// node's own records (versions, channels, clients, push history, intents).
// Every mutating call is one transaction, durable when it returns ok: blockd
// acknowledges an operation to blockctl only after it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "icbd/status.hpp"

namespace icbd::node {

enum class Liveness { alive, suspect, dead };
const char* liveness_name(Liveness l);  // "alive", "suspect", "dead"

// One replica as the master knows it.
struct ReplicaRecord {
    std::string name;              // certificate name (identity)
    std::string peer_address;      // "host:port" of its peer (control) listener
    std::string replication_address;  // "host:port" of its replication receiver
    std::vector<std::string> subscribe;  // images it wants; {"*"} = all
    Liveness state = Liveness::alive;
    int64_t registered_ms = 0;  // unix ms of the first registration
    int64_t last_seen_ms = 0;   // unix ms of the last answer
    unsigned missed = 0;        // consecutive keepalives without answer
    std::map<std::string, std::vector<uint64_t>> versions;  // image -> versions it holds (ascending)
    bool wants(const std::string& image) const;
};

// The membership registry (master side).
class Registry {
public:
    virtual ~Registry() = default;
    // Adds or updates (address, subscriptions, versions); a new replica starts alive.
    virtual Status upsert_replica(const ReplicaRecord& r) = 0;
    virtual Result<std::vector<ReplicaRecord>> replicas() = 0;  // sorted by name
    virtual Result<std::optional<ReplicaRecord>> replica(const std::string& name) = 0;
    virtual Status set_liveness(const std::string& name, Liveness state, int64_t last_seen_ms, unsigned missed) = 0;
    virtual Status set_replica_versions(const std::string& name,
                                        const std::map<std::string, std::vector<uint64_t>>& versions) = 0;
    // Explicit removal by an operator (never automatic).
    virtual Status remove_replica(const std::string& name) = 0;
};

// A committed version's metadata (master; replicas learn it from the catalog).
struct VersionRecord {
    std::string image;
    uint64_t version = 0;
    std::string message;
    int64_t created_ms = 0;
    uint64_t size_bytes = 0;   // apparent size of the version's files
    uint64_t delta_bytes = 0;  // data bytes changed from the previous version (the push payload)
};

// Release channels of one image (0 = none).
struct Channels {
    std::string image;
    uint64_t production = 0;
    uint64_t test = 0;
    uint64_t previous_production = 0;  // what rollback goes back to
};

enum class ClientState { creating, ready, removing };
const char* client_state_name(ClientState s);

// One desktop on a cache server.
struct ClientRecord {
    std::string name;
    std::string image;
    std::string channel = "production";  // "production" | "test"
    std::string initiator;               // the desktop's initiator IQN (ACL)
    std::string chap_user, chap_secret;  // empty: no CHAP
    bool persistent = false;
    int tid = 0;                   // tgt target id, fixed for life
    uint64_t bound_version = 0;    // version its LUN currently serves (0: none yet)
    std::string overlay_path;
    std::string cache_path;        // empty: no write-back cache
    ClientState state = ClientState::creating;
    int64_t created_ms = 0;
};

struct PushRecord {
    int64_t id = 0;
    std::string image;
    uint64_t version = 0;
    std::string replica;
    int64_t started_ms = 0;
    int64_t finished_ms = 0;  // 0: in flight (or interrupted by a crash)
    bool ok = false;
    uint64_t wire_bytes = 0;
    uint64_t payload_bytes = 0;
    std::string message;  // error text when !ok
};

// A multi-step operation recorded before it starts and cleared when done, so
// a restart after kill -9 completes or undoes it (docs/blockd.md, "Crashes").
struct Intent {
    int64_t id = 0;
    std::string kind;   // "commit", "client_add", "client_remove", ...
    std::string args;   // JSON
    int64_t created_ms = 0;
};

class NodeStore : public Registry {
public:
    // Versions and channels.
    virtual Status put_version(const VersionRecord& v) = 0;  // insert or replace
    virtual Result<std::vector<VersionRecord>> versions(const std::string& image) = 0;  // ascending
    virtual Status delete_version(const std::string& image, uint64_t version) = 0;
    virtual Result<std::vector<std::string>> images() = 0;  // images with any version record
    virtual Result<Channels> channels(const std::string& image) = 0;  // zeros when unknown
    virtual Status set_channels(const Channels& c) = 0;

    // Clients (replica).
    virtual Status put_client(const ClientRecord& c) = 0;  // insert or replace by name
    virtual Result<std::optional<ClientRecord>> client(const std::string& name) = 0;
    virtual Result<std::vector<ClientRecord>> clients() = 0;  // sorted by name
    virtual Status delete_client(const std::string& name) = 0;
    // Lowest target id >= 1 that no client uses.
    virtual Result<int> free_tid() = 0;

    // Push history (master).
    virtual Result<int64_t> push_started(const PushRecord& p) = 0;
    virtual Status push_finished(const PushRecord& p) = 0;  // by id
    virtual Result<std::vector<PushRecord>> pushes(size_t limit) = 0;  // newest first

    // Intents.
    virtual Result<int64_t> add_intent(const std::string& kind, const std::string& args) = 0;
    virtual Status clear_intent(int64_t id) = 0;
    virtual Result<std::vector<Intent>> intents() = 0;  // oldest first

    // Small key/value settings (catalog learned from the master, etc.).
    virtual Status put_setting(const std::string& key, const std::string& value) = 0;
    virtual Result<std::optional<std::string>> setting(const std::string& key) = 0;
};

// The embedded store: SQLite in WAL mode with synchronous=FULL, one file.
// Thread-safe (one connection behind a mutex). Creates the schema on first use;
// refuses a database whose schema version is newer than it knows.
Result<std::unique_ptr<NodeStore>> open_sqlite_store(const std::filesystem::path& db_file);

int64_t now_ms();  // unix time in ms

}  // namespace icbd::node
