// The node's durable state in one SQLite file (WAL, synchronous=FULL): one
// connection behind a mutex, one transaction per mutating call, lists as JSON.
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "store.hpp"

namespace icbd::node {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Bumped when the schema changes; a blockd never opens a newer one (it would
// not know what it is missing) and migrates older ones forward.
constexpr int64_t kSchemaVersion = 1;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (
  name TEXT PRIMARY KEY, peer_address TEXT NOT NULL, replication_address TEXT NOT NULL,
  subscribe TEXT NOT NULL, state TEXT NOT NULL, registered_ms INTEGER NOT NULL,
  last_seen_ms INTEGER NOT NULL, missed INTEGER NOT NULL, versions TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
  image TEXT NOT NULL, version INTEGER NOT NULL, message TEXT NOT NULL, created_ms INTEGER NOT NULL,
  size_bytes INTEGER NOT NULL, delta_bytes INTEGER NOT NULL, PRIMARY KEY (image, version));
CREATE TABLE IF NOT EXISTS channels (
  image TEXT PRIMARY KEY, production INTEGER NOT NULL, test INTEGER NOT NULL,
  previous_production INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
  name TEXT PRIMARY KEY, image TEXT NOT NULL, channel TEXT NOT NULL, initiator TEXT NOT NULL,
  chap_user TEXT NOT NULL, chap_secret TEXT NOT NULL, persistent INTEGER NOT NULL, tid INTEGER NOT NULL,
  bound_version INTEGER NOT NULL, overlay_path TEXT NOT NULL, cache_path TEXT NOT NULL,
  state TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pushes (
  id INTEGER PRIMARY KEY AUTOINCREMENT, image TEXT NOT NULL, version INTEGER NOT NULL,
  replica TEXT NOT NULL, started_ms INTEGER NOT NULL, finished_ms INTEGER NOT NULL, ok INTEGER NOT NULL,
  wire_bytes INTEGER NOT NULL, payload_bytes INTEGER NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS intents (
  id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, args TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)sql";

int errno_of(int sqlite_code) {
    switch (sqlite_code & 0xff) {
        case SQLITE_FULL: return ENOSPC;
        case SQLITE_BUSY:
        case SQLITE_LOCKED: return EBUSY;
        case SQLITE_READONLY: return EROFS;
        case SQLITE_PERM:
        case SQLITE_AUTH: return EACCES;
        case SQLITE_CANTOPEN: return ENOENT;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB: return EBADMSG;
        case SQLITE_NOMEM: return ENOMEM;
        case SQLITE_CONSTRAINT: return EEXIST;
        default: return EIO;
    }
}

struct DbCloser {
    void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;

struct StmtFinalizer {
    void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// A cached prepared statement in use: bound on the way in, reset on the way out
// so the next user finds it clean whatever happened.
class Query {
public:
    explicit Query(sqlite3_stmt* s) : s_(s) {}
    ~Query() {
        sqlite3_reset(s_);
        sqlite3_clear_bindings(s_);
    }
    Query(const Query&) = delete;
    Query& operator=(const Query&) = delete;

    Query& bind(int i, const std::string& v) {
        sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
        return *this;
    }
    Query& bind(int i, int64_t v) {
        sqlite3_bind_int64(s_, i, v);
        return *this;
    }
    // uint64 columns keep their bits in SQLite's int64.
    Query& bind_u(int i, uint64_t v) { return bind(i, static_cast<int64_t>(v)); }

    // SQLITE_ROW, SQLITE_DONE or an error code.
    int step() { return sqlite3_step(s_); }

    int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
    uint64_t u64(int c) const { return static_cast<uint64_t>(i64(c)); }
    std::string text(int c) const {
        const unsigned char* p = sqlite3_column_text(s_, c);
        return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(s_, c)))
                 : std::string();
    }

private:
    sqlite3_stmt* s_;
};

Liveness parse_liveness(const std::string& s) {
    if (s == "suspect") return Liveness::suspect;
    if (s == "dead") return Liveness::dead;
    return Liveness::alive;
}

ClientState parse_client_state(const std::string& s) {
    if (s == "ready") return ClientState::ready;
    if (s == "removing") return ClientState::removing;
    return ClientState::creating;
}

class SqliteStore final : public NodeStore {
public:
    SqliteStore(DbPtr db, fs::path file) : db_(std::move(db)), file_(std::move(file)) {}

    Status init();

    // Registry.
    Status upsert_replica(const ReplicaRecord& r) override;
    Result<std::vector<ReplicaRecord>> replicas() override;
    Result<std::optional<ReplicaRecord>> replica(const std::string& name) override;
    Status set_liveness(const std::string& name, Liveness state, int64_t last_seen_ms, unsigned missed) override;
    Status set_replica_versions(const std::string& name,
                                const std::map<std::string, std::vector<uint64_t>>& versions) override;
    Status remove_replica(const std::string& name) override;

    // Versions and channels.
    Status put_version(const VersionRecord& v) override;
    Result<std::vector<VersionRecord>> versions(const std::string& image) override;
    Status delete_version(const std::string& image, uint64_t version) override;
    Result<std::vector<std::string>> images() override;
    Result<Channels> channels(const std::string& image) override;
    Status set_channels(const Channels& c) override;

    // Clients.
    Status put_client(const ClientRecord& c) override;
    Result<std::optional<ClientRecord>> client(const std::string& name) override;
    Result<std::vector<ClientRecord>> clients() override;
    Status delete_client(const std::string& name) override;
    Result<int> free_tid() override;

    // Pushes.
    Result<int64_t> push_started(const PushRecord& p) override;
    Status push_finished(const PushRecord& p) override;
    Result<std::vector<PushRecord>> pushes(size_t limit) override;

    // Intents.
    Result<int64_t> add_intent(const std::string& kind, const std::string& args) override;
    Status clear_intent(int64_t id) override;
    Result<std::vector<Intent>> intents() override;

    // Settings.
    Status put_setting(const std::string& key, const std::string& value) override;
    Result<std::optional<std::string>> setting(const std::string& key) override;

private:
    Status fail(int rc, const std::string& what) const {
        return Status::error(errno_of(rc), "state database '" + file_.string() + "': " + what + ": " +
                                               sqlite3_errmsg(db_.get()));
    }
    Status exec(const char* sql, const std::string& what) {
        char* err = nullptr;
        int rc = sqlite3_exec(db_.get(), sql, nullptr, nullptr, &err);
        std::string msg = err ? err : "";
        sqlite3_free(err);
        if (rc != SQLITE_OK)
            return Status::error(errno_of(rc), "state database '" + file_.string() + "': " + what + ": " + msg);
        return Status::ok();
    }
    // The statement for `sql`, prepared once per connection.
    Result<sqlite3_stmt*> prepare(const char* sql);
    // Runs a statement that returns no rows; `changed` gets sqlite3_changes.
    Status run(Query& q, const std::string& what, int* changed = nullptr);
    // Runs one statement as a whole transaction: a statement in autocommit mode
    // is exactly that, and SQLite makes it durable (synchronous=FULL) before
    // sqlite3_step returns.
    template <typename Bind>
    Status mutate(const char* sql, const std::string& what, Bind bind, int* changed = nullptr) {
        auto st = prepare(sql);
        if (!st) return st.status();
        Query q(*st);
        bind(q);
        return run(q, what, changed);
    }
    Result<ReplicaRecord> replica_row(const Query& q);
    ClientRecord client_row(const Query& q);

    std::mutex mu_;
    DbPtr db_;
    fs::path file_;
    std::unordered_map<std::string, StmtPtr> stmts_;
};

Result<sqlite3_stmt*> SqliteStore::prepare(const char* sql) {
    auto it = stmts_.find(sql);
    if (it != stmts_.end()) return it->second.get();
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v3(db_.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
    StmtPtr owned(raw);
    if (rc != SQLITE_OK) return fail(rc, std::string("prepare '") + sql + "'");
    sqlite3_stmt* s = owned.get();
    stmts_.emplace(sql, std::move(owned));
    return s;
}

Status SqliteStore::run(Query& q, const std::string& what, int* changed) {
    int rc = q.step();
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) return fail(rc, what);
    if (changed) *changed = sqlite3_changes(db_.get());
    return Status::ok();
}

Status SqliteStore::init() {
    std::lock_guard lock(mu_);
    sqlite3_busy_timeout(db_.get(), 5000);
    {
        // SQLite answers with the mode it really uses (it keeps its old one
        // where WAL is impossible); without WAL, readers would block the writer.
        auto st = prepare("PRAGMA journal_mode=WAL");
        if (!st) return st.status();
        Query q(*st);
        int rc = q.step();
        if (rc != SQLITE_ROW) return fail(rc, "set WAL mode");
        if (q.text(0) != "wal")
            return Status::error(ENOTSUP, "state database '" + file_.string() + "': cannot use WAL mode (got '" +
                                              q.text(0) + "')");
    }
    if (Status s = exec("PRAGMA synchronous=FULL", "set synchronous=FULL"); !s) return s;
    // Schema check and creation in one write transaction: two blockd starting at
    // once (a mistake, but possible) cannot both create it.
    if (Status s = exec("BEGIN IMMEDIATE", "begin schema transaction"); !s) return s;
    auto rollback = [&](Status s) {
        // The first error is the one to report; a transaction a failed
        // ROLLBACK leaves open ends when the connection closes.
        (void)exec("ROLLBACK", "rollback");
        return s;
    };
    if (Status s = exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", "create schema");
        !s)
        return rollback(s);
    int64_t found = 0;
    {
        auto st = prepare("SELECT max(version) FROM schema_version");
        if (!st) return rollback(st.status());
        Query q(*st);
        int rc = q.step();
        if (rc != SQLITE_ROW) return rollback(fail(rc, "read schema version"));
        found = q.i64(0);
    }
    if (found > kSchemaVersion)
        return rollback(Status::error(
            ENOTSUP, "state database '" + file_.string() + "': schema version " + std::to_string(found) +
                         " is newer than this blockd knows (" + std::to_string(kSchemaVersion) +
                         "): it was written by a newer blockd; run that one or restore a backup"));
    if (Status s = exec(kSchema, "create schema"); !s) return rollback(s);
    if (found < kSchemaVersion) {
        Status s = exec("DELETE FROM schema_version", "write schema version");
        if (s) {
            auto st = prepare("INSERT INTO schema_version (version) VALUES (?1)");
            if (!st) return rollback(st.status());
            Query q(*st);
            q.bind(1, kSchemaVersion);
            s = run(q, "write schema version");
        }
        if (!s) return rollback(s);
    }
    return exec("COMMIT", "commit schema");
}

// ---- registry --------------------------------------------------------------------

std::string versions_json(const std::map<std::string, std::vector<uint64_t>>& v) { return json(v).dump(); }

Status SqliteStore::upsert_replica(const ReplicaRecord& r) {
    std::lock_guard lock(mu_);
    int64_t now = now_ms();
    // A re-registration refreshes what the replica tells us about itself; its
    // liveness and history stay what keepalive recorded.
    return mutate(
        "INSERT INTO replicas (name, peer_address, replication_address, subscribe, state, registered_ms,"
        " last_seen_ms, missed, versions) VALUES (?1, ?2, ?3, ?4, 'alive', ?5, ?6, 0, ?7)"
        " ON CONFLICT(name) DO UPDATE SET peer_address = excluded.peer_address,"
        " replication_address = excluded.replication_address, subscribe = excluded.subscribe,"
        " versions = excluded.versions",
        "replica '" + r.name + "': save", [&](Query& q) {
            q.bind(1, r.name).bind(2, r.peer_address).bind(3, r.replication_address);
            q.bind(4, json(r.subscribe).dump());
            q.bind(5, r.registered_ms ? r.registered_ms : now).bind(6, r.last_seen_ms ? r.last_seen_ms : now);
            q.bind(7, versions_json(r.versions));
        });
}

Result<ReplicaRecord> SqliteStore::replica_row(const Query& q) {
    ReplicaRecord r;
    r.name = q.text(0);
    r.peer_address = q.text(1);
    r.replication_address = q.text(2);
    r.state = parse_liveness(q.text(4));
    r.registered_ms = q.i64(5);
    r.last_seen_ms = q.i64(6);
    r.missed = static_cast<unsigned>(q.i64(7));
    try {
        r.subscribe = json::parse(q.text(3)).get<std::vector<std::string>>();
        r.versions = json::parse(q.text(8)).get<std::map<std::string, std::vector<uint64_t>>>();
    } catch (const json::exception& e) {
        return Status::error(EBADMSG, "state database '" + file_.string() + "': replica '" + r.name +
                                          "': malformed subscriptions or versions: " + e.what());
    }
    return r;
}

#define REPLICA_COLUMNS \
    "name, peer_address, replication_address, subscribe, state, registered_ms, last_seen_ms, missed, versions"

Result<std::vector<ReplicaRecord>> SqliteStore::replicas() {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT " REPLICA_COLUMNS " FROM replicas ORDER BY name");
    if (!st) return st.status();
    Query q(*st);
    std::vector<ReplicaRecord> out;
    int rc;
    while ((rc = q.step()) == SQLITE_ROW) {
        auto r = replica_row(q);
        if (!r) return r.status();
        out.push_back(std::move(r.value()));
    }
    if (rc != SQLITE_DONE) return fail(rc, "list replicas");
    return out;
}

Result<std::optional<ReplicaRecord>> SqliteStore::replica(const std::string& name) {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT " REPLICA_COLUMNS " FROM replicas WHERE name = ?1");
    if (!st) return st.status();
    Query q(*st);
    q.bind(1, name);
    int rc = q.step();
    if (rc == SQLITE_DONE) return std::optional<ReplicaRecord>();
    if (rc != SQLITE_ROW) return fail(rc, "replica '" + name + "': read");
    auto r = replica_row(q);
    if (!r) return r.status();
    return std::optional<ReplicaRecord>(std::move(r.value()));
}

Status no_such(const std::string& object) { return Status::error(ENOENT, object + ": no such record"); }

Status SqliteStore::set_liveness(const std::string& name, Liveness state, int64_t last_seen_ms, unsigned missed) {
    std::lock_guard lock(mu_);
    int changed = 0;
    Status s = mutate(
        "UPDATE replicas SET state = ?2, last_seen_ms = ?3, missed = ?4 WHERE name = ?1",
        "replica '" + name + "': save liveness", [&](Query& q) {
            q.bind(1, name).bind(2, std::string(liveness_name(state))).bind(3, last_seen_ms);
            q.bind(4, static_cast<int64_t>(missed));
        },
        &changed);
    if (s && changed == 0) return no_such("replica '" + name + "'");
    return s;
}

Status SqliteStore::set_replica_versions(const std::string& name,
                                         const std::map<std::string, std::vector<uint64_t>>& versions) {
    std::lock_guard lock(mu_);
    int changed = 0;
    Status s = mutate(
        "UPDATE replicas SET versions = ?2 WHERE name = ?1", "replica '" + name + "': save versions",
        [&](Query& q) { q.bind(1, name).bind(2, versions_json(versions)); }, &changed);
    if (s && changed == 0) return no_such("replica '" + name + "'");
    return s;
}

Status SqliteStore::remove_replica(const std::string& name) {
    std::lock_guard lock(mu_);
    int changed = 0;
    Status s = mutate(
        "DELETE FROM replicas WHERE name = ?1", "replica '" + name + "': remove",
        [&](Query& q) { q.bind(1, name); }, &changed);
    if (s && changed == 0) return no_such("replica '" + name + "'");
    return s;
}

// ---- versions and channels -----------------------------------------------------------

std::string version_what(const std::string& image, uint64_t version) {
    return "image '" + image + "' version " + std::to_string(version);
}

Status SqliteStore::put_version(const VersionRecord& v) {
    std::lock_guard lock(mu_);
    return mutate("INSERT OR REPLACE INTO versions (image, version, message, created_ms, size_bytes, delta_bytes)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                  version_what(v.image, v.version) + ": save", [&](Query& q) {
                      q.bind(1, v.image).bind_u(2, v.version).bind(3, v.message).bind(4, v.created_ms);
                      q.bind_u(5, v.size_bytes).bind_u(6, v.delta_bytes);
                  });
}

Result<std::vector<VersionRecord>> SqliteStore::versions(const std::string& image) {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT version, message, created_ms, size_bytes, delta_bytes FROM versions"
                      " WHERE image = ?1 ORDER BY version");
    if (!st) return st.status();
    Query q(*st);
    q.bind(1, image);
    std::vector<VersionRecord> out;
    int rc;
    while ((rc = q.step()) == SQLITE_ROW)
        out.push_back({image, q.u64(0), q.text(1), q.i64(2), q.u64(3), q.u64(4)});
    if (rc != SQLITE_DONE) return fail(rc, "image '" + image + "': list versions");
    return out;
}

Status SqliteStore::delete_version(const std::string& image, uint64_t version) {
    std::lock_guard lock(mu_);
    // Idempotent: recovery replays deletions that may have happened already.
    return mutate("DELETE FROM versions WHERE image = ?1 AND version = ?2", version_what(image, version) + ": delete",
                  [&](Query& q) { q.bind(1, image).bind_u(2, version); });
}

Result<std::vector<std::string>> SqliteStore::images() {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT DISTINCT image FROM versions ORDER BY image");
    if (!st) return st.status();
    Query q(*st);
    std::vector<std::string> out;
    int rc;
    while ((rc = q.step()) == SQLITE_ROW) out.push_back(q.text(0));
    if (rc != SQLITE_DONE) return fail(rc, "list images");
    return out;
}

Result<Channels> SqliteStore::channels(const std::string& image) {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT production, test, previous_production FROM channels WHERE image = ?1");
    if (!st) return st.status();
    Query q(*st);
    q.bind(1, image);
    Channels c;
    c.image = image;
    int rc = q.step();
    if (rc == SQLITE_ROW) {
        c.production = q.u64(0);
        c.test = q.u64(1);
        c.previous_production = q.u64(2);
    } else if (rc != SQLITE_DONE) {
        return fail(rc, "image '" + image + "': read channels");
    }
    return c;
}

Status SqliteStore::set_channels(const Channels& c) {
    std::lock_guard lock(mu_);
    return mutate("INSERT OR REPLACE INTO channels (image, production, test, previous_production)"
                  " VALUES (?1, ?2, ?3, ?4)",
                  "image '" + c.image + "': save channels", [&](Query& q) {
                      q.bind(1, c.image).bind_u(2, c.production).bind_u(3, c.test).bind_u(4, c.previous_production);
                  });
}

// ---- clients ----------------------------------------------------------------------------

#define CLIENT_COLUMNS                                                                                  \
    "name, image, channel, initiator, chap_user, chap_secret, persistent, tid, bound_version, overlay_path," \
    " cache_path, state, created_ms"

ClientRecord SqliteStore::client_row(const Query& q) {
    ClientRecord c;
    c.name = q.text(0);
    c.image = q.text(1);
    c.channel = q.text(2);
    c.initiator = q.text(3);
    c.chap_user = q.text(4);
    c.chap_secret = q.text(5);
    c.persistent = q.i64(6) != 0;
    c.tid = static_cast<int>(q.i64(7));
    c.bound_version = q.u64(8);
    c.overlay_path = q.text(9);
    c.cache_path = q.text(10);
    c.state = parse_client_state(q.text(11));
    c.created_ms = q.i64(12);
    return c;
}

Status SqliteStore::put_client(const ClientRecord& c) {
    std::lock_guard lock(mu_);
    return mutate("INSERT OR REPLACE INTO clients (" CLIENT_COLUMNS
                  ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                  "client '" + c.name + "': save", [&](Query& q) {
                      q.bind(1, c.name).bind(2, c.image).bind(3, c.channel).bind(4, c.initiator);
                      q.bind(5, c.chap_user).bind(6, c.chap_secret).bind(7, int64_t(c.persistent ? 1 : 0));
                      q.bind(8, int64_t(c.tid)).bind_u(9, c.bound_version).bind(10, c.overlay_path);
                      q.bind(11, c.cache_path).bind(12, std::string(client_state_name(c.state)));
                      q.bind(13, c.created_ms);
                  });
}

Result<std::optional<ClientRecord>> SqliteStore::client(const std::string& name) {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT " CLIENT_COLUMNS " FROM clients WHERE name = ?1");
    if (!st) return st.status();
    Query q(*st);
    q.bind(1, name);
    int rc = q.step();
    if (rc == SQLITE_DONE) return std::optional<ClientRecord>();
    if (rc != SQLITE_ROW) return fail(rc, "client '" + name + "': read");
    return std::optional<ClientRecord>(client_row(q));
}

Result<std::vector<ClientRecord>> SqliteStore::clients() {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT " CLIENT_COLUMNS " FROM clients ORDER BY name");
    if (!st) return st.status();
    Query q(*st);
    std::vector<ClientRecord> out;
    int rc;
    while ((rc = q.step()) == SQLITE_ROW) out.push_back(client_row(q));
    if (rc != SQLITE_DONE) return fail(rc, "list clients");
    return out;
}

Status SqliteStore::delete_client(const std::string& name) {
    std::lock_guard lock(mu_);
    int changed = 0;
    Status s = mutate(
        "DELETE FROM clients WHERE name = ?1", "client '" + name + "': delete", [&](Query& q) { q.bind(1, name); },
        &changed);
    if (s && changed == 0) return no_such("client '" + name + "'");
    return s;
}

Result<int> SqliteStore::free_tid() {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT DISTINCT tid FROM clients WHERE tid >= 1 ORDER BY tid");
    if (!st) return st.status();
    Query q(*st);
    int next = 1;
    int rc;
    while ((rc = q.step()) == SQLITE_ROW) {
        if (q.i64(0) > next) break;  // a gap
        next = static_cast<int>(q.i64(0)) + 1;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) return fail(rc, "find a free target id");
    return next;
}

// ---- pushes --------------------------------------------------------------------------------

Result<int64_t> SqliteStore::push_started(const PushRecord& p) {
    std::lock_guard lock(mu_);
    Status s = mutate("INSERT INTO pushes (image, version, replica, started_ms, finished_ms, ok, wire_bytes,"
                      " payload_bytes, message) VALUES (?1, ?2, ?3, ?4, 0, 0, 0, 0, '')",
                      version_what(p.image, p.version) + " to replica '" + p.replica + "': record push",
                      [&](Query& q) {
                          q.bind(1, p.image).bind_u(2, p.version).bind(3, p.replica);
                          q.bind(4, p.started_ms ? p.started_ms : now_ms());
                      });
    if (!s) return s;
    return static_cast<int64_t>(sqlite3_last_insert_rowid(db_.get()));
}

Status SqliteStore::push_finished(const PushRecord& p) {
    std::lock_guard lock(mu_);
    int changed = 0;
    Status s = mutate(
        "UPDATE pushes SET finished_ms = ?2, ok = ?3, wire_bytes = ?4, payload_bytes = ?5, message = ?6"
        " WHERE id = ?1",
        "push " + std::to_string(p.id) + ": record end", [&](Query& q) {
            q.bind(1, p.id).bind(2, p.finished_ms ? p.finished_ms : now_ms()).bind(3, int64_t(p.ok ? 1 : 0));
            q.bind_u(4, p.wire_bytes).bind_u(5, p.payload_bytes).bind(6, p.message);
        },
        &changed);
    if (s && changed == 0) return no_such("push " + std::to_string(p.id));
    return s;
}

Result<std::vector<PushRecord>> SqliteStore::pushes(size_t limit) {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT id, image, version, replica, started_ms, finished_ms, ok, wire_bytes, payload_bytes,"
                      " message FROM pushes ORDER BY id DESC LIMIT ?1");
    if (!st) return st.status();
    Query q(*st);
    q.bind(1, static_cast<int64_t>(std::min<size_t>(limit, INT64_MAX)));
    std::vector<PushRecord> out;
    int rc;
    while ((rc = q.step()) == SQLITE_ROW)
        out.push_back({q.i64(0), q.text(1), q.u64(2), q.text(3), q.i64(4), q.i64(5), q.i64(6) != 0, q.u64(7),
                       q.u64(8), q.text(9)});
    if (rc != SQLITE_DONE) return fail(rc, "list pushes");
    return out;
}

// ---- intents and settings ----------------------------------------------------------------

Result<int64_t> SqliteStore::add_intent(const std::string& kind, const std::string& args) {
    std::lock_guard lock(mu_);
    Status s = mutate("INSERT INTO intents (kind, args, created_ms) VALUES (?1, ?2, ?3)",
                      "intent '" + kind + "': record",
                      [&](Query& q) { q.bind(1, kind).bind(2, args).bind(3, now_ms()); });
    if (!s) return s;
    return static_cast<int64_t>(sqlite3_last_insert_rowid(db_.get()));
}

Status SqliteStore::clear_intent(int64_t id) {
    std::lock_guard lock(mu_);
    return mutate("DELETE FROM intents WHERE id = ?1", "intent " + std::to_string(id) + ": clear",
                  [&](Query& q) { q.bind(1, id); });
}

Result<std::vector<Intent>> SqliteStore::intents() {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT id, kind, args, created_ms FROM intents ORDER BY id");
    if (!st) return st.status();
    Query q(*st);
    std::vector<Intent> out;
    int rc;
    while ((rc = q.step()) == SQLITE_ROW) out.push_back({q.i64(0), q.text(1), q.text(2), q.i64(3)});
    if (rc != SQLITE_DONE) return fail(rc, "list intents");
    return out;
}

Status SqliteStore::put_setting(const std::string& key, const std::string& value) {
    std::lock_guard lock(mu_);
    return mutate("INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)", "setting '" + key + "': save",
                  [&](Query& q) { q.bind(1, key).bind(2, value); });
}

Result<std::optional<std::string>> SqliteStore::setting(const std::string& key) {
    std::lock_guard lock(mu_);
    auto st = prepare("SELECT value FROM settings WHERE key = ?1");
    if (!st) return st.status();
    Query q(*st);
    q.bind(1, key);
    int rc = q.step();
    if (rc == SQLITE_DONE) return std::optional<std::string>();
    if (rc != SQLITE_ROW) return fail(rc, "setting '" + key + "': read");
    return std::optional<std::string>(q.text(0));
}

}  // namespace

const char* liveness_name(Liveness l) {
    switch (l) {
        case Liveness::alive: return "alive";
        case Liveness::suspect: return "suspect";
        case Liveness::dead: return "dead";
    }
    return "alive";
}

const char* client_state_name(ClientState s) {
    switch (s) {
        case ClientState::creating: return "creating";
        case ClientState::ready: return "ready";
        case ClientState::removing: return "removing";
    }
    return "creating";
}

bool ReplicaRecord::wants(const std::string& image) const {
    return std::any_of(subscribe.begin(), subscribe.end(), [&](const std::string& s) { return s == "*" || s == image; });
}

int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

namespace {

// The database holds the desktops' CHAP secrets in clear (tgtd needs them in
// clear too): only root reads it. Made 0600 before SQLite opens it, and made so
// again on every start for databases created by older versions; SQLite gives
// its -wal and -shm files the database's mode.
Status restrict_to_owner(const fs::path& db_file) {
    int fd = ::open(db_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return Status::ok();  // let SQLite report why it cannot open it
    int rc = ::fchmod(fd, 0600);
    int err = errno;
    ::close(fd);
    if (rc < 0) return Status::error(err, "state database '" + db_file.string() + "': chmod 0600: " + std::strerror(err));
    return Status::ok();
}

}  // namespace

Result<std::unique_ptr<NodeStore>> open_sqlite_store(const fs::path& db_file) {
    if (Status s = restrict_to_owner(db_file); !s) return s;
    sqlite3* raw = nullptr;
    // NOMUTEX: the store serializes its one connection itself.
    int rc = sqlite3_open_v2(db_file.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             nullptr);
    DbPtr db(raw);
    if (rc != SQLITE_OK) {
        std::string cause = raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc);
        int err = errno_of(rc);
        std::error_code ec;
        if (!fs::is_directory(db_file.parent_path().empty() ? "." : db_file.parent_path(), ec)) {
            cause = "its directory does not exist";
            err = ENOENT;
        }
        return Status::error(err, "state database '" + db_file.string() + "': cannot open: " + cause);
    }
    sqlite3_extended_result_codes(db.get(), 1);
    auto store = std::make_unique<SqliteStore>(std::move(db), db_file);
    if (Status s = store->init(); !s) return s;
    return std::unique_ptr<NodeStore>(std::move(store));
}

}  // namespace icbd::node
