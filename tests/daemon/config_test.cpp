// blockd's configuration file as an administrator meets it: the shipped
// examples load once their paths are real, omitted keys take the documented
// defaults, and every mistake stops blockd with one line naming file, key and cause.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "config.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"

namespace icbd::node {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::TempDir;

constexpr const char* kFile = "/etc/icbd/blockd.toml";

bool skips_forbidden() {
    const char* v = std::getenv("ICBD_FORBID_SKIP");
    return v && *v && std::strcmp(v, "0") != 0;
}

std::string quote(const std::string& s) { return "\"" + s + "\""; }

std::string read_file(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_file(const fs::path& p, const std::string& text) {
    std::ofstream out(p);
    out << text;
}

// "table.key" (or a top-level "key") -> a TOML value as written in the file.
using Keys = std::map<std::string, std::string>;

std::string render(const Keys& keys) {
    std::string top;
    std::map<std::string, std::string> tables;
    for (const auto& [path, value] : keys) {
        auto dot = path.find('.');
        if (dot == std::string::npos) top += path + " = " + value + "\n";
        else tables[path.substr(0, dot)] += path.substr(dot + 1) + " = " + value + "\n";
    }
    for (const auto& [table, body] : tables) top += "\n[" + table + "]\n" + body;
    return top;
}

// Certificates made by the script an operator uses (scripts/make-certs.sh),
// once for the suite.
class ConfigTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = new TempDir("/tmp", "icbd-config-test-");
        if (!test::have_program("openssl")) {
            setup_error_ = "openssl is not installed (scripts/make-certs.sh needs it)";
            return;
        }
        auto made = test::run_command({std::string(ICBD_SOURCE_DIR) + "/scripts/make-certs.sh",
                                       (dir_->path() / "tls").string(), "master", "cache01"});
        if (!made.ok()) setup_error_ = made.describe();
        fs::create_directories(dir_->path() / "repo");
    }
    static void TearDownTestSuite() {
        delete dir_;
        dir_ = nullptr;
    }
    void SetUp() override {
        if (setup_error_.empty()) return;
        if (skips_forbidden() || setup_error_.find("openssl") == std::string::npos) FAIL() << setup_error_;
        GTEST_SKIP() << setup_error_;
    }

    static fs::path tls(const std::string& file) { return dir_->path() / "tls" / file; }
    static fs::path repo() { return dir_->path() / "repo"; }

    static Keys master_keys() {
        return {{"role", quote("master")},
                {"repository.root", quote(repo())},
                {"tls.ca", quote(tls("ca.crt"))},
                {"tls.cert", quote(tls("master.crt"))},
                {"tls.key", quote(tls("master.key"))}};
    }
    static Keys replica_keys() {
        return {{"role", quote("replica")},
                {"repository.root", quote(repo())},
                {"tls.ca", quote(tls("ca.crt"))},
                {"tls.cert", quote(tls("cache01.crt"))},
                {"tls.key", quote(tls("cache01.key"))},
                {"master.address", quote("127.0.0.1:7401")},
                {"master.name", quote("master")}};
    }

    static NodeConfig parse_ok(const Keys& keys) {
        auto r = parse_config(render(keys), kFile);
        EXPECT_TRUE(r) << r.status().message() << "\n--- config:\n" << render(keys);
        return r ? *r : NodeConfig{};
    }
    // The message of a refused configuration; one line, naming the file first.
    static std::string error_of(const std::string& text) {
        auto r = parse_config(text, kFile);
        EXPECT_FALSE(r) << "accepted:\n" << text;
        if (r) return "";
        const std::string& m = r.status().message();
        EXPECT_EQ(m.find('\n'), std::string::npos) << "more than one line: " << m;
        EXPECT_EQ(m.rfind(std::string(kFile) + ":", 0), 0u) << "does not start with the file: " << m;
        return m;
    }
    static void expect_error(const Keys& keys, const std::string& expected) {
        std::string m = error_of(render(keys));
        EXPECT_NE(m.find(expected), std::string::npos) << "message: " << m << "\nexpected in it: " << expected;
    }

    static TempDir* dir_;
    static std::string setup_error_;
};
TempDir* ConfigTest::dir_ = nullptr;
std::string ConfigTest::setup_error_;

TEST_F(ConfigTest, MinimalMasterTakesTheDocumentedDefaults) {
    NodeConfig c = parse_ok(master_keys());
    EXPECT_EQ(c.role, Role::master);
    EXPECT_STREQ(role_name(c.role), "master");
    EXPECT_EQ(c.name, "master") << "the CN of tls.cert";
    EXPECT_EQ(c.source, kFile);
    EXPECT_EQ(c.state_dir, "/var/lib/icbd");
    EXPECT_EQ(c.runtime_dir, "/run/icbd");
    EXPECT_EQ(c.control_socket, "/run/icbd/blockd.sock");
    EXPECT_EQ(c.control_group, "");
    EXPECT_EQ(c.repository, repo());
    EXPECT_EQ(c.tls_ca, tls("ca.crt").string());
    EXPECT_EQ(c.tls_cert, tls("master.crt").string());
    EXPECT_EQ(c.tls_key, tls("master.key").string());
    EXPECT_EQ(c.peer_listen, "0.0.0.0:7401");
    EXPECT_EQ(c.peer_advertise, "127.0.0.1:7401");
    EXPECT_EQ(c.replication_listen, "0.0.0.0:7400");
    EXPECT_EQ(c.replication_advertise, "127.0.0.1:7400");
    EXPECT_EQ(c.master_address, "");
    EXPECT_EQ(c.subscribe, std::vector<std::string>{"*"});
    EXPECT_EQ(c.keepalive_interval, 10s);
    EXPECT_EQ(c.keepalive_tries, 3u);
    EXPECT_EQ(c.compression, "zstd");
    EXPECT_FALSE(c.compression_level);
    EXPECT_EQ(c.bandwidth_limit, 0u);
    EXPECT_EQ(c.checkpoint_interval, 0u) << "absent: the replicator's automatic checkpoints";
    EXPECT_EQ(c.tgt_control_port, 0);
    EXPECT_EQ(c.iqn_prefix, "iqn.2026-12.org.icbd");
    EXPECT_EQ(c.overlay_dir, "/var/lib/icbd/clients");
    EXPECT_EQ(c.cache_dir, "/var/cache/icbd");
    EXPECT_EQ(c.cache_size, 1ull << 30);
    EXPECT_EQ(c.default_channel, "production");
    EXPECT_EQ(c.reconcile_interval, 2s);
}

TEST_F(ConfigTest, MinimalReplicaNamesItsMaster) {
    NodeConfig c = parse_ok(replica_keys());
    EXPECT_EQ(c.role, Role::replica);
    EXPECT_EQ(c.name, "cache01");
    EXPECT_EQ(c.master_address, "127.0.0.1:7401");
    EXPECT_EQ(c.master_name, "master");
}

TEST_F(ConfigTest, DerivedDefaultsFollowWhatTheyDeriveFrom) {
    Keys k = master_keys();
    k["state_dir"] = quote("/srv/state/");
    k["runtime_dir"] = quote("/run/blockd-test");
    k["peer.listen"] = quote(":7411");
    k["replication.listen"] = quote("[::]:7410");
    NodeConfig c = parse_ok(k);
    EXPECT_EQ(c.overlay_dir, "/srv/state/clients");
    EXPECT_EQ(c.control_socket, "/run/blockd-test/blockd.sock");
    EXPECT_EQ(c.peer_advertise, "127.0.0.1:7411");
    EXPECT_EQ(c.replication_advertise, "[::1]:7410");

    k["peer.listen"] = quote("127.0.0.2:7411");  // one host: others reach it there
    k["replication.advertise"] = quote("127.0.0.3:7410");
    k["clients.overlay_dir"] = quote("/srv/overlays");
    k["control.socket"] = quote("/run/other.sock");
    c = parse_ok(k);
    EXPECT_EQ(c.peer_advertise, "127.0.0.2:7411");
    EXPECT_EQ(c.replication_advertise, "127.0.0.3:7410");
    EXPECT_EQ(c.overlay_dir, "/srv/overlays");
    EXPECT_EQ(c.control_socket, "/run/other.sock");
}

TEST_F(ConfigTest, EveryKeyIsRead) {
    Keys k = replica_keys();
    k["name"] = quote("cache-7.site1");
    k["control.group"] = quote("root");
    k["replication.compression"] = quote("lz4");
    k["replication.compression_level"] = "4";
    k["replication.bandwidth_limit"] = "1000000";
    k["replication.checkpoint_interval"] = quote("16M");
    k["membership.keepalive_interval"] = "5";
    k["membership.keepalive_tries"] = "5";
    k["subscribe.images"] = R"(["win10", "ubuntu-*"])";
    k["tgt.control_port"] = "3";
    k["tgt.iqn_prefix"] = quote("iqn.2001-04.com.example:vdi");
    k["clients.cache_dir"] = quote("/srv/cache");
    k["clients.cache_size"] = "0";
    k["clients.default_channel"] = quote("test");
    k["clients.reconcile_interval"] = quote("500ms");
    NodeConfig c = parse_ok(k);
    EXPECT_EQ(c.name, "cache-7.site1") << "an explicit name wins over the CN";
    EXPECT_EQ(c.control_group, "root");
    EXPECT_EQ(c.compression, "lz4");
    EXPECT_EQ(c.compression_level, 4);
    EXPECT_EQ(c.bandwidth_limit, 1000000u);
    EXPECT_EQ(c.checkpoint_interval, 16u << 20);
    EXPECT_EQ(c.keepalive_interval, 5s);
    EXPECT_EQ(c.keepalive_tries, 5u);
    EXPECT_EQ(c.subscribe, (std::vector<std::string>{"win10", "ubuntu-*"}));
    EXPECT_EQ(c.tgt_control_port, 3);
    EXPECT_EQ(c.iqn_prefix, "iqn.2001-04.com.example:vdi");
    EXPECT_EQ(c.cache_dir, "/srv/cache");
    EXPECT_EQ(c.cache_size, 0u) << "0 = no write-back cache";
    EXPECT_EQ(c.default_channel, "test");
    EXPECT_EQ(c.reconcile_interval, 500ms);
}

// The shipped examples, with their placeholder paths pointed at this test's files.
std::string substitute(std::string text, const std::string& from, const std::string& to) {
    size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << "the example no longer contains " << from;
    for (; at != std::string::npos; at = text.find(from, at + to.size())) text.replace(at, from.size(), to);
    return text;
}

TEST_F(ConfigTest, ShippedExamplesLoad) {
    const fs::path src = fs::path(ICBD_SOURCE_DIR) / "systemd";
    for (const char* role : {"master", "replica"}) {
        SCOPED_TRACE(role);
        std::string text = read_file(src / ("blockd-" + std::string(role) + ".toml.example"));
        ASSERT_FALSE(text.empty());
        text = substitute(text, "\"/srv/icbd\"", quote(repo()));
        text = substitute(text, "/etc/icbd/tls/", tls("").string());
        fs::path file = dir_->path() / ("blockd-" + std::string(role) + ".toml");
        write_file(file, text);
        auto r = load_config(file);
        ASSERT_TRUE(r) << r.status().message();
        EXPECT_EQ(r->source, file);
        if (std::string(role) == "master") {
            EXPECT_EQ(r->role, Role::master);
            EXPECT_EQ(r->name, "master");
            EXPECT_EQ(r->bandwidth_limit, 50u << 20);
            EXPECT_EQ(r->peer_advertise, "192.0.2.10:7401");
        } else {
            EXPECT_EQ(r->role, Role::replica);
            EXPECT_EQ(r->name, "cache01");
            EXPECT_EQ(r->master_name, "master");
            EXPECT_EQ(r->master_address, "192.0.2.10:7401");
            EXPECT_EQ(r->subscribe, std::vector<std::string>{"*"});
            EXPECT_EQ(r->cache_size, 1ull << 30);
        }
    }
}

TEST_F(ConfigTest, LoadConfigNamesAMissingFile) {
    auto r = load_config(dir_->path() / "nope.toml");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().message(), (dir_->path() / "nope.toml").string() + ": No such file or directory");
}

TEST_F(ConfigTest, SyntaxErrorNamesLineAndColumn) {
    std::string m = error_of("role = \"master\"\n[tls\nca = 1\n");
    EXPECT_NE(m.find(std::string(kFile) + ":2:"), std::string::npos) << m;
}

TEST_F(ConfigTest, UnknownKeysAndTablesAreRefused) {
    Keys k = replica_keys();
    k["tgt.contrl_port"] = "1";
    expect_error(k, "/etc/icbd/blockd.toml: tgt.contrl_port: unknown key (known: control_port, iqn_prefix)");

    k = master_keys();
    k["tgtd.control_port"] = "1";
    expect_error(k, "/etc/icbd/blockd.toml: tgtd: unknown table");

    k = master_keys();
    k["rol"] = quote("master");
    expect_error(k, "/etc/icbd/blockd.toml: rol: unknown key");

    // A key of the right name in the wrong table.
    k = master_keys();
    k["peer.compression"] = quote("zstd");
    expect_error(k, ": peer.compression: unknown key");
}

TEST_F(ConfigTest, WrongTypesNameWhatWasExpected) {
    Keys k = replica_keys();
    k["tgt.control_port"] = quote("3260");
    expect_error(k, "/etc/icbd/blockd.toml: tgt.control_port: expected an integer, got string");

    k = master_keys();
    k["role"] = "1";
    expect_error(k, ": role: expected a string, got integer");

    k = master_keys();
    k["membership.keepalive_tries"] = "2.5";
    expect_error(k, ": membership.keepalive_tries: expected an integer, got float");

    k = replica_keys();
    k["subscribe.images"] = quote("*");
    expect_error(k, ": subscribe.images: expected an array of strings, got string");
    k["subscribe.images"] = R"(["win10", 7])";
    expect_error(k, ": subscribe.images[1]: expected a string, got integer");

    k = master_keys();
    k["replication.bandwidth_limit"] = "true";
    expect_error(k, ": replication.bandwidth_limit: expected a size");

    k = master_keys();
    k["membership.keepalive_interval"] = "[10]";
    expect_error(k, ": membership.keepalive_interval: expected a duration");

    k = master_keys();
    k.erase("repository.root");
    k["repository"] = quote("/srv/icbd");
    expect_error(k, ": repository: expected a table, got string");
}

TEST_F(ConfigTest, RequiredKeysAreNamedWhenMissing) {
    for (const char* key : {"role", "repository.root", "tls.ca", "tls.cert", "tls.key"}) {
        Keys k = master_keys();
        k.erase(key);
        expect_error(k, std::string(": ") + key + ": missing");
    }
    for (const char* key : {"master.address", "master.name"}) {
        Keys k = replica_keys();
        k.erase(key);
        expect_error(k, std::string(": ") + key + ": missing");
    }
}

TEST_F(ConfigTest, RoleAndChoicesAreChecked) {
    Keys k = master_keys();
    k["role"] = quote("primary");
    expect_error(k, ": role: 'primary' is not one of master, replica");

    k = master_keys();
    k["replication.compression"] = quote("gzip");
    expect_error(k, ": replication.compression: 'gzip' is not one of zstd, lz4, none");

    k = replica_keys();
    k["clients.default_channel"] = quote("beta");
    expect_error(k, ": clients.default_channel: 'beta' is not one of production, test");

    k = master_keys();
    k["master.address"] = quote("127.0.0.1:7401");
    expect_error(k, ": master: only a replica has a master");
}

TEST_F(ConfigTest, TlsFilesMustBeReadable) {
    Keys k = master_keys();
    fs::path gone = dir_->path() / "tls" / "gone.key";
    k["tls.key"] = quote(gone);
    expect_error(k, ": tls.key: " + gone.string() + ": No such file or directory");

    k = master_keys();
    k["tls.ca"] = quote(dir_->path() / "tls");
    expect_error(k, ": tls.ca: " + (dir_->path() / "tls").string() + ": not a regular file");

    k = master_keys();
    k["tls.cert"] = quote("tls/master.crt");
    expect_error(k, ": tls.cert: 'tls/master.crt' is not an absolute path");
}

TEST_F(ConfigTest, RepositoryMustBeAReadableDirectory) {
    Keys k = master_keys();
    fs::path gone = dir_->path() / "no-repo";
    k["repository.root"] = quote(gone);
    expect_error(k, ": repository.root: " + gone.string() + ": No such file or directory");

    k["repository.root"] = quote(tls("ca.crt"));
    expect_error(k, ": repository.root: " + tls("ca.crt").string() + ": Not a directory");
}

TEST_F(ConfigTest, NameDefaultsToTheCertificateCommonName) {
    // A certificate issued for another name: the node takes that name.
    Keys k = master_keys();
    k["tls.cert"] = quote(tls("cache01.crt"));
    EXPECT_EQ(parse_ok(k).name, "cache01");

    // Without a name and without a certificate to read it from.
    fs::path not_pem = dir_->path() / "not-a-cert.crt";
    write_file(not_pem, "hello\n");
    k["tls.cert"] = quote(not_pem);
    expect_error(k, ": name: not set, and no name in tls.cert: " + not_pem.string() + " holds no PEM certificate");

    k["name"] = quote("bad/name");
    expect_error(k, ": name: 'bad/name' is not a node name");
}

TEST_F(ConfigTest, AddressesAreHostAndPort) {
    Keys k = master_keys();
    k["peer.listen"] = quote("localhost");
    expect_error(k, ": peer.listen: 'localhost' is not HOST:PORT (no port)");

    k = master_keys();
    k["replication.listen"] = quote("127.0.0.1:99999");
    expect_error(k, ": replication.listen: '127.0.0.1:99999' is not HOST:PORT (the port is above 65535)");

    k = master_keys();
    k["peer.advertise"] = quote("0.0.0.0:7401");
    expect_error(k, ": peer.advertise: '0.0.0.0:7401' is not an address others can reach");

    k = replica_keys();
    k["master.address"] = quote("::1:7401");
    expect_error(k, ": master.address: '::1:7401' is not HOST:PORT (an IPv6 address goes in brackets");

    k = replica_keys();
    k["master.address"] = quote(":7401");
    expect_error(k, ": master.address: ':7401' names no host");

    k = replica_keys();
    k["master.name"] = quote("cache01");
    expect_error(k, ": master.name: 'cache01' is this node's own name");
}

TEST_F(ConfigTest, SizesTakeUnitsOrBytes) {
    Keys k = master_keys();
    k["replication.bandwidth_limit"] = quote("50M");
    k["replication.checkpoint_interval"] = quote("512K");
    NodeConfig c = parse_ok(k);
    EXPECT_EQ(c.bandwidth_limit, 50u << 20);
    EXPECT_EQ(c.checkpoint_interval, 512u << 10);
    k["replication.bandwidth_limit"] = quote("1GiB");
    EXPECT_EQ(parse_ok(k).bandwidth_limit, 1u << 30);

    k["replication.bandwidth_limit"] = quote("50X");
    expect_error(k, ": replication.bandwidth_limit: '50X' is not a size");
    k["replication.bandwidth_limit"] = "-5";
    expect_error(k, ": replication.bandwidth_limit: -5 is negative");
    k["replication.bandwidth_limit"] = quote("99999999999T");
    expect_error(k, ": replication.bandwidth_limit: '99999999999T' is not a size");

    k = master_keys();
    k["replication.checkpoint_interval"] = "0";
    expect_error(k, ": replication.checkpoint_interval: zero");

    k = replica_keys();
    k["clients.cache_size"] = quote("512K");
    expect_error(k, ": clients.cache_size: 524288 bytes is below 1M (0 = no cache)");
}

TEST(ParseDuration, UnitsAndBareSeconds) {
    EXPECT_EQ(*parse_duration("10s"), 10s);
    EXPECT_EQ(*parse_duration("500ms"), 500ms);
    EXPECT_EQ(*parse_duration("2m"), 2min);
    EXPECT_EQ(*parse_duration("1h"), 1h);
    EXPECT_EQ(*parse_duration("7"), 7s);
    EXPECT_EQ(*parse_duration("0"), 0s);
    for (const char* bad : {"", "s", "10x", "-1", "1.5s", "10 s", "99999999999999999999h"}) {
        auto r = parse_duration(bad);
        ASSERT_FALSE(r) << bad;
        std::string expected = "'";
        expected += bad;
        expected += "' is not a duration";  // built by appending: GCC 12's -Wrestrict misfires on "'" + string
        EXPECT_EQ(r.status().message().rfind(expected, 0), 0u) << r.status().message();
    }
}

TEST_F(ConfigTest, DurationsAndCountsAreChecked) {
    Keys k = master_keys();
    k["membership.keepalive_interval"] = quote("ten");
    expect_error(k, ": membership.keepalive_interval: 'ten' is not a duration");
    k["membership.keepalive_interval"] = quote("0s");
    expect_error(k, ": membership.keepalive_interval: '0s' is zero");

    k = master_keys();
    k["membership.keepalive_tries"] = "0";
    expect_error(k, ": membership.keepalive_tries: 0 is not in 1..1000");

    k = replica_keys();
    k["tgt.control_port"] = "-1";
    expect_error(k, ": tgt.control_port: -1 is not in 0..65535");

    k = replica_keys();
    k["clients.reconcile_interval"] = "0";
    expect_error(k, ": clients.reconcile_interval: '0' is zero");
}

TEST_F(ConfigTest, CompressionLevelsAreThoseAPushAccepts) {
    Keys k = master_keys();
    k["replication.compression_level"] = "19";
    EXPECT_EQ(parse_ok(k).compression_level, 19);
    k["replication.compression_level"] = "30";
    expect_error(k, ": replication.compression_level: zstd level 30 is not in");

    k["replication.compression"] = quote("lz4");
    k["replication.compression_level"] = "0";
    expect_error(k, ": replication.compression_level: lz4 acceleration 0 is not in 1..65537");

    k["replication.compression"] = quote("none");
    k["replication.compression_level"] = "1";
    expect_error(k, ": replication.compression_level: compression none has no level");

    k["replication.compression"] = quote("auto");
    expect_error(k, ": replication.compression_level: compression auto chooses its own levels");
    k.erase("replication.compression_level");
    EXPECT_EQ(parse_ok(k).compression, "auto");
}

TEST_F(ConfigTest, PathsNamesAndPatternsAreChecked) {
    Keys k = master_keys();
    k["state_dir"] = quote("var/lib/icbd");
    expect_error(k, ": state_dir: 'var/lib/icbd' is not an absolute path");

    k = master_keys();
    k["control.group"] = quote("no-such-group-icbd");
    expect_error(k, ": control.group: no group 'no-such-group-icbd' on this system");

    k = master_keys();
    k["control.socket"] = quote("/run/" + std::string(120, 's') + ".sock");
    expect_error(k, ": control.socket: socket path");

    k = replica_keys();
    k["subscribe.images"] = R"(["win10", "../etc"])";
    expect_error(k, ": subscribe.images[1]: '../etc' is not an image name or pattern");
    k["subscribe.images"] = "[]";
    expect_error(k, ": subscribe.images: empty");

    k = replica_keys();
    k["tgt.iqn_prefix"] = quote("IQN.2026-12.org.icbd");
    expect_error(k, ": tgt.iqn_prefix: 'IQN.2026-12.org.icbd' is not an iSCSI name prefix");
}

// [metrics] (docs/metrics.md): /metrics on loopback unless told otherwise;
// "" or "off" turns it off; the address and directory are checked like others.
TEST_F(ConfigTest, MetricsListenDefaultsToLoopbackAndCanBeTurnedOff) {
    NodeConfig c = parse_ok(master_keys());
    EXPECT_EQ(c.metrics_listen, "127.0.0.1:9474");
    EXPECT_EQ(c.metrics_dir, "/run/icbd/luns");

    Keys k = replica_keys();
    k["metrics.listen"] = quote("[::1]:9100");
    k["metrics.dir"] = quote("/run/icbd/other/");
    c = parse_ok(k);
    EXPECT_EQ(c.metrics_listen, "[::1]:9100");
    EXPECT_EQ(c.metrics_dir, "/run/icbd/other/");

    for (const char* off : {"", "off"}) {
        k = master_keys();
        k["metrics.listen"] = quote(off);
        EXPECT_EQ(parse_ok(k).metrics_listen, "") << "'" << off << "' disables /metrics";
    }

    k = master_keys();
    k["metrics.listen"] = quote("9474");
    expect_error(k, ": metrics.listen: '9474' is not HOST:PORT");
    k = master_keys();
    k["metrics.dir"] = quote("run/luns");
    expect_error(k, ": metrics.dir: 'run/luns' is not an absolute path");
    k = master_keys();
    k["metrics.port"] = "9474";
    expect_error(k, ": metrics.port: unknown key (known: listen, dir)");
}

// [prefetch] (docs/blockd.md, "Boot sets"): on and unlimited unless told otherwise.
TEST_F(ConfigTest, PrefetchIsOnByDefaultAndTakesARate) {
    NodeConfig c = parse_ok(replica_keys());
    EXPECT_TRUE(c.prefetch_enabled);
    EXPECT_EQ(c.prefetch_max_rate, 0u);
    EXPECT_TRUE(c.prefetch_adaptive);  // gives way to others on the disk unless told not to

    Keys k = replica_keys();
    k["prefetch.enabled"] = "false";
    k["prefetch.max_rate"] = quote("200M");
    k["prefetch.adaptive"] = "false";
    c = parse_ok(k);
    EXPECT_FALSE(c.prefetch_enabled);
    EXPECT_EQ(c.prefetch_max_rate, 200ull << 20);
    EXPECT_FALSE(c.prefetch_adaptive);

    k = replica_keys();
    k["prefetch.enabled"] = quote("yes");
    expect_error(k, ": prefetch.enabled: expected true or false");
    k = replica_keys();
    k["prefetch.max_rate"] = "-1";
    expect_error(k, ": prefetch.max_rate: -1 is negative");
    k = replica_keys();
    k["prefetch.rate"] = "1";
    expect_error(k, ": prefetch.rate: unknown key (known: enabled, max_rate, adaptive)");
}

}  // namespace
}  // namespace icbd::node
