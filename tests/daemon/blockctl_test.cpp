// blockctl as an operator runs it: the built binary against a ControlServer
// with a fake handler in this process. What it sends for each command, exit
// codes, --json output, human tables, errors and progress on a terminal.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "control_protocol.hpp"
#include "icbd/unique_fd.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"

#ifndef BLOCKCTL_BIN
#error "BLOCKCTL_BIN (path of the built blockctl) must be defined by the build"
#endif

namespace icbd::node {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

struct CtlRun {
    int exit_code = -1;
    std::string out, err;
};

// Runs blockctl with separate stdout and stderr (stderr may be a terminal
// given as `stderr_fd`); killed after 20 s so a hang fails instead of blocking.
CtlRun blockctl(const std::vector<std::string>& args, const test::Env& env = {}, int stderr_fd = -1) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) return {};
    std::vector<std::string> argv = {BLOCKCTL_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    std::vector<std::string> storage;
    auto envp = test::make_environment(env, storage);

    test::SpawnActions actions;
    posix_spawn_file_actions_addopen(&actions.a, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions.a, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions.a, stderr_fd >= 0 ? stderr_fd : err[1], 2);
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, argv[0].c_str(), &actions.a, nullptr, cargv.data(), envp.data());
    ::close(out[1]);
    ::close(err[1]);
    UniqueFd out_r(out[0]), err_r(err[0]);
    CtlRun r;
    if (rc != 0) {
        r.err = std::string("posix_spawn: ") + std::strerror(rc);
        return r;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    bool out_open = true, err_open = true;
    char buf[65536];
    while ((out_open || err_open) && std::chrono::steady_clock::now() < deadline) {
        pollfd p[2] = {{out_open ? out_r.get() : -1, POLLIN, 0}, {err_open ? err_r.get() : -1, POLLIN, 0}};
        if (::poll(p, 2, 500) <= 0) continue;
        for (int i = 0; i < 2; ++i) {
            if (!(p[i].revents & (POLLIN | POLLHUP))) continue;
            ssize_t n = ::read(p[i].fd, buf, sizeof(buf));
            if (n <= 0) {
                (i == 0 ? out_open : err_open) = false;
                continue;
            }
            (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
        }
    }
    if (out_open || err_open) ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
}

// What blockd would answer, per command; the calls are recorded.
class BlockctlTest : public ::testing::Test {
protected:
    void SetUp() override {
        auto s = ControlServer::start(sock_, "", [this](const std::string& cmd, const json& args,
                                                        const ProgressFn& progress) -> Result<json> {
            std::lock_guard lk(mu_);
            calls_.emplace_back(cmd, args);
            if (cmd == "image.import")
                for (uint64_t i = 1; i <= 4; ++i) progress("importing 'win10'", i, 4);
            auto it = answers_.find(cmd);
            if (it == answers_.end()) return Status::error(EINVAL, "unknown command '" + cmd + "'");
            return it->second;
        });
        ASSERT_TRUE(s) << s.status().message();
        server_ = std::move(*s);
    }

    void answer(const std::string& cmd, Result<json> r) {
        std::lock_guard lk(mu_);
        answers_.insert_or_assign(cmd, std::move(r));
    }
    std::vector<std::pair<std::string, json>> calls() {
        std::lock_guard lk(mu_);
        return calls_;
    }
    // blockctl --socket SOCK ARGS...
    CtlRun ctl(std::vector<std::string> args, const test::Env& env = {}, int stderr_fd = -1) {
        args.insert(args.begin(), {"--socket", sock_.string()});
        return blockctl(args, env, stderr_fd);
    }
    // Runs a command that must succeed and returns the args blockd received.
    json sent(const std::vector<std::string>& args, const std::string& cmd) {
        answer(cmd, json::object());
        size_t before = calls().size();
        CtlRun r = ctl(args);
        EXPECT_EQ(r.exit_code, 0) << r.err;
        auto c = calls();
        if (c.size() != before + 1) {
            ADD_FAILURE() << "blockd got " << c.size() - before << " requests";
            return nullptr;
        }
        EXPECT_EQ(c.back().first, cmd);
        return c.back().second;
    }

    test::TempDir dir_;
    fs::path sock_ = dir_ / "blockd.sock";
    std::mutex mu_;
    std::map<std::string, Result<json>> answers_;
    std::vector<std::pair<std::string, json>> calls_;
    std::unique_ptr<ControlServer> server_;
};

const json kImages = json::parse(R"([
  {"image":"win10","versions":[1,2,3,5],"newest":5,"production":3,"test":5,"checkout":null},
  {"image":"ubuntu-24.04-lts","versions":[1],"newest":1,"production":1,"test":1,"checkout":1}])");

const json kClients = json::parse(R"([
  {"name":"pc01","image":"win10","channel":"production","initiator":"iqn.1991-05.com.microsoft:pc01",
   "chap_user":"","persistent":false,"tid":1,"lun":1,"target":"iqn.2026-12.org.icbd:pc01","version":3,
   "desired_version":5,"behind":true,"sessions":1,"exported":true,"overlay_blocks":0,"overlay_path":"/o",
   "cache_path":"","state":"ready","created_ms":1767225600000},
  {"name":"lab-desktop-17","image":"win10","channel":"test","initiator":"iqn.1991-05.com.microsoft:lab17",
   "chap_user":"u","persistent":true,"tid":2,"lun":1,"target":"iqn.2026-12.org.icbd:lab-desktop-17","version":5,
   "desired_version":5,"behind":false,"sessions":-1,"exported":true,"overlay_blocks":9,"overlay_path":"/o2",
   "cache_path":"/c2","state":"ready","created_ms":1767225600000}])");

// The column of each header word in the header line equals the column of that
// field in every row.
void expect_aligned(const std::string& table, const std::vector<std::string>& headers,
                    const std::vector<std::vector<std::string>>& rows) {
    std::vector<std::string> lines;
    std::istringstream in(table);
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    ASSERT_EQ(lines.size(), rows.size() + 1) << table;
    std::vector<size_t> col;
    size_t from = 0;
    for (const auto& h : headers) {
        size_t at = lines[0].find(h, from);
        ASSERT_NE(at, std::string::npos) << "header " << h << " in: " << lines[0];
        col.push_back(at);
        from = at + h.size();
    }
    for (size_t r = 0; r < rows.size(); ++r)
        for (size_t c = 0; c < headers.size(); ++c)
            EXPECT_EQ(lines[r + 1].compare(col[c], rows[r][c].size(), rows[r][c]), 0)
                << "row " << r << " column " << headers[c] << " expected '" << rows[r][c] << "' in: " << lines[r + 1];
}

TEST(Blockctl, VersionPrintsTheProjectVersion) {
    CtlRun r = blockctl({"--version"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    // "blockctl 0.1.0 (commit abc1234)": what a bug report needs.
    EXPECT_EQ(r.out.rfind(std::string("blockctl ") + ICBD_VERSION + " (commit ", 0), 0u) << r.out;
}

TEST(Blockctl, HelpExitsZero) {
    CtlRun r = blockctl({"--help"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_NE(r.out.find("client"), std::string::npos) << r.out;
    r = blockctl({"client", "add", "--help"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_NE(r.out.find("--initiator"), std::string::npos) << r.out;
}

TEST_F(BlockctlTest, UsageErrorsExit2WithoutAskingBlockd) {
    const std::vector<std::vector<std::string>> bad = {
        {},                                                              // no command
        {"image"},                                                       // no verb
        {"image", "frobnicate"},                                         // unknown command
        {"image", "list", "--bogus"},                                    // unknown option
        {"--bogus", "status"},
        {"image", "versions"},                                           // missing IMAGE
        {"image", "import", "win10"},                                    // missing --from
        {"image", "import", "win10", "--from"},                          // option without its value
        {"image", "delete", "win10"},                                    // missing VERSION
        {"image", "delete", "win10", "seven"},                           // VERSION not a number
        {"image", "delete", "win10", "0"},                               // not positive
        {"image", "promote", "win10", "1.5"},
        {"image", "prefetch", "win10", "-3"},
        {"image", "prune", "win10"},                                     // missing --keep
        {"image", "prune", "win10", "--keep", "x"},
        {"client", "add", "pc01", "--image", "win10"},                   // missing --initiator
        {"client", "add", "pc01", "--image", "win10", "--initiator", "iqn.x", "--chap", "nocolon"},
        {"client", "add", "pc01", "--image", "win10", "--initiator", "iqn.x", "--channel", "beta"},
        {"push", "list", "--limit", "0"},
        {"status", "extra"},
    };
    for (const auto& args : bad) {
        CtlRun r = ctl(args);
        std::string line = test::join_command(args);
        EXPECT_EQ(r.exit_code, 2) << line << ": " << r.err;
        EXPECT_EQ(r.err.rfind("blockctl: ", 0), 0u) << line << ": " << r.err;
        EXPECT_EQ(r.out, "") << line;
    }
    EXPECT_TRUE(calls().empty()) << "a usage error reached blockd: " << calls().front().first;
}

TEST_F(BlockctlTest, EachCommandSendsItsControlCommandAndArgs) {
    EXPECT_EQ(sent({"status"}, "status"), json::object());
    EXPECT_EQ(sent({"image", "list"}, "image.list"), json::object());
    EXPECT_EQ(sent({"image", "versions", "win10"}, "image.versions"), (json{{"image", "win10"}}));
    EXPECT_EQ(sent({"image", "import", "win10", "--from", "/srv/disk.raw", "--message", "first"}, "image.import"),
              (json{{"image", "win10"}, {"from", "/srv/disk.raw"}, {"message", "first"}}));
    // A relative path means blockctl's working directory, not blockd's.
    EXPECT_EQ(sent({"image", "import", "win10", "--from", "disk.raw"}, "image.import"),
              (json{{"image", "win10"}, {"from", (fs::current_path() / "disk.raw").string()}}));
    EXPECT_EQ(sent({"image", "checkout", "win10"}, "image.checkout"), (json{{"image", "win10"}}));
    EXPECT_EQ(sent({"image", "commit", "win10"}, "image.commit"), (json{{"image", "win10"}}));
    EXPECT_EQ(sent({"image", "commit", "win10", "--message", "KB5034441"}, "image.commit"),
              (json{{"image", "win10"}, {"message", "KB5034441"}}));
    EXPECT_EQ(sent({"image", "discard", "win10"}, "image.discard"), (json{{"image", "win10"}}));
    EXPECT_EQ(sent({"image", "delete", "win10", "7"}, "image.delete"), (json{{"image", "win10"}, {"version", 7}}));
    EXPECT_EQ(sent({"image", "prune", "win10", "--keep", "0"}, "image.prune"), (json{{"image", "win10"}, {"keep", 0}}));
    EXPECT_EQ(sent({"image", "promote", "win10", "4"}, "image.promote"), (json{{"image", "win10"}, {"version", 4}}));
    EXPECT_EQ(sent({"image", "rollback", "win10"}, "image.rollback"), (json{{"image", "win10"}}));
    EXPECT_EQ(sent({"image", "prefetch", "win10"}, "image.prefetch"), (json{{"image", "win10"}}));
    EXPECT_EQ(sent({"image", "prefetch", "win10", "9"}, "image.prefetch"), (json{{"image", "win10"}, {"version", 9}}));
    EXPECT_EQ(sent({"node", "list"}, "node.list"), json::object());
    EXPECT_EQ(sent({"node", "show", "cache01"}, "node.show"), (json{{"name", "cache01"}}));
    EXPECT_EQ(sent({"node", "remove", "cache01"}, "node.remove"), (json{{"name", "cache01"}}));
    EXPECT_EQ(sent({"client", "add", "pc01", "--image", "win10", "--initiator", "iqn.1991-05.com.microsoft:pc01"},
                   "client.add"),
              (json{{"name", "pc01"}, {"image", "win10"}, {"initiator", "iqn.1991-05.com.microsoft:pc01"},
                    {"persistent", false}}));
    EXPECT_EQ(sent({"client", "add", "pc01", "--image", "win10", "--initiator", "iqn.x:pc01", "--chap",
                    "pc01:s3cr:et", "--persistent", "--channel", "test"},
                   "client.add"),
              (json{{"name", "pc01"}, {"image", "win10"}, {"initiator", "iqn.x:pc01"}, {"chap_user", "pc01"},
                    {"chap_secret", "s3cr:et"}, {"persistent", true}, {"channel", "test"}}));
    EXPECT_EQ(sent({"client", "list"}, "client.list"), json::object());
    EXPECT_EQ(sent({"client", "show", "pc01"}, "client.show"), (json{{"name", "pc01"}}));
    EXPECT_EQ(sent({"client", "reset", "pc01"}, "client.reset"), (json{{"name", "pc01"}}));
    EXPECT_EQ(sent({"client", "remove", "pc01"}, "client.remove"), (json{{"name", "pc01"}, {"force", false}}));
    EXPECT_EQ(sent({"client", "remove", "pc01", "--force"}, "client.remove"), (json{{"name", "pc01"}, {"force", true}}));
    EXPECT_EQ(sent({"push", "list"}, "push.list"), json::object());
    EXPECT_EQ(sent({"push", "list", "--limit", "5"}, "push.list"), (json{{"limit", 5}}));
}

TEST_F(BlockctlTest, JsonPrintsTheResultAsBlockdSentIt) {
    answer("image.list", kImages);
    for (auto args : std::vector<std::vector<std::string>>{{"--json", "image", "list"}, {"image", "list", "--json"}}) {
        CtlRun r = ctl(args);
        ASSERT_EQ(r.exit_code, 0) << r.err;
        EXPECT_EQ(r.err, "");
        ASSERT_FALSE(r.out.empty());
        EXPECT_EQ(r.out.back(), '\n');
        EXPECT_EQ(json::parse(r.out), kImages);
    }
    answer("client.show", kClients[0]);
    CtlRun r = ctl({"client", "show", "pc01", "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out), kClients[0]);
}

TEST_F(BlockctlTest, ListingsAreAlignedTables) {
    answer("image.list", kImages);
    CtlRun r = ctl({"image", "list"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    expect_aligned(r.out, {"IMAGE", "VERSIONS", "NEWEST", "PRODUCTION", "TEST"},
                   {{"win10", "1-3,5", "5", "3", "5"}, {"ubuntu-24.04-lts", "1", "1", "1", "1"}});

    answer("client.list", kClients);
    r = ctl({"client", "list"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    expect_aligned(r.out, {"NAME", "IMAGE", "CHANNEL", "VERSION", "BEHIND", "SESSIONS", "PERSISTENT", "INITIATOR"},
                   {{"pc01", "win10", "production", "3", "yes (5)", "1", "no", "iqn.1991-05.com.microsoft:pc01"},
                    {"lab-desktop-17", "win10", "test", "5", "no", "?", "yes", "iqn.1991-05.com.microsoft:lab17"}});

    answer("node.list", json::parse(R"([
      {"name":"cache01","state":"alive","last_seen_ms":0,"registered_ms":0,"missed":0,"address":"127.0.0.1:7401",
       "replication_address":"127.0.0.1:7402","subscribe":["*"],
       "images":{"win10":{"newest":3,"versions":[3],"lag_versions":1,"lag_bytes":10}},
       "push":{"image":"win10","version":4,"peer":"cache01","state":"streaming","payload_total":200,
               "payload_sent":50,"wire_sent":20,"rate_bytes_per_s":1.5,"eta_seconds":2.0}},
      {"name":"cache02","state":"dead","last_seen_ms":0,"registered_ms":0,"missed":3,"address":"127.0.0.1:7501",
       "replication_address":"127.0.0.1:7502","subscribe":["win10"],"images":{},"push":null}])"));
    r = ctl({"node", "list"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    expect_aligned(r.out, {"NAME", "STATE", "LAST-SEEN", "ADDRESS", "IMAGES(img:vN lag K)", "PUSH"},
                   {{"cache01", "alive", "never", "127.0.0.1:7401", "win10:v3 lag 1", "win10 v4 25%"},
                    {"cache02", "dead", "never", "127.0.0.1:7501", "-", "-"}});
}

TEST_F(BlockctlTest, SingleResultsAreOneLine) {
    answer("image.commit", json{{"image", "win10"}, {"version", 4}, {"message", ""}, {"created_ms", 1},
                                {"size_bytes", 1}, {"delta_bytes", 3u << 20}});
    CtlRun r = ctl({"image", "commit", "win10"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "image 'win10' version 4 committed (delta 3 MiB)\n");

    answer("image.promote", json{{"image", "win10"}, {"production", 4}, {"test", 4}, {"previous_production", 3}});
    r = ctl({"image", "promote", "win10", "4"});
    EXPECT_EQ(r.out, "image 'win10': production 4 (previous 3), test 4\n");

    answer("image.prune", json{{"image", "win10"}, {"deleted", {1, 2}}, {"kept_in_use", {"version 3: client 'pc01'"}}});
    r = ctl({"image", "prune", "win10", "--keep", "1"});
    EXPECT_EQ(r.out, "image 'win10': deleted versions 1, 2\nkept: version 3: client 'pc01'\n");

    answer("client.remove", json{{"name", "pc01"}});
    r = ctl({"client", "remove", "pc01"});
    EXPECT_EQ(r.out, "client 'pc01' removed\n");
}

TEST_F(BlockctlTest, ErrorsAreBlockdsMessageOnStderrAndExit1) {
    answer("image.versions", Status::error(ENOENT, "image 'win10': no such image"));
    CtlRun r = ctl({"image", "versions", "win10"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, "blockctl: image 'win10': no such image\n");
    EXPECT_EQ(r.out, "");

    answer("image.delete", Status::error(EBUSY, "image 'win10' version 3: in use by client 'pc01'"));
    r = ctl({"--json", "image", "delete", "win10", "3"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, "blockctl: image 'win10' version 3: in use by client 'pc01'\n");
    EXPECT_EQ(r.out, "");

    answer("image.prefetch", Status::error(ENOTSUP, "image 'win10': prefetch is not implemented yet"));
    r = ctl({"image", "prefetch", "win10"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, "blockctl: image 'win10': prefetch is not implemented yet\n");
}

TEST_F(BlockctlTest, BlockdNotRunningIsAClearFailure) {
    fs::path nowhere = dir_ / "nowhere.sock";
    CtlRun r = blockctl({"--socket", nowhere.string(), "status"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, "blockctl: blockd is not running (no answer on " + nowhere.string() + ")\n");
}

TEST_F(BlockctlTest, TheSocketComesFromTheEnvironmentToo) {
    answer("status", json{{"name", "master01"}, {"role", "master"}});
    CtlRun r = blockctl({"status"}, {{"BLOCKCTL_SOCKET", sock_.string()}});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "name: master01\nrole: master\n");
}

TEST_F(BlockctlTest, ProgressIsNotPrintedWhenStderrIsNotATerminal) {
    answer("image.import", json{{"image", "win10"}, {"version", 1}, {"message", ""}, {"created_ms", 1},
                                {"size_bytes", 20ull << 30}, {"delta_bytes", 20ull << 30}});
    CtlRun r = ctl({"image", "import", "win10", "--from", "/srv/disk.raw"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(r.out, "image 'win10' version 1 imported (20.0 GiB)\n");
}

TEST_F(BlockctlTest, ProgressIsRewrittenInPlaceOnATerminal) {
    answer("image.import", json{{"image", "win10"}, {"version", 1}, {"size_bytes", 1}});
    int master = -1, slave = -1;
    ASSERT_EQ(::openpty(&master, &slave, nullptr, nullptr, nullptr), 0) << std::strerror(errno);
    UniqueFd m(master), s(slave);
    CtlRun r = ctl({"image", "import", "win10", "--from", "/srv/disk.raw"}, {}, s.get());
    s.reset();  // only the child's copy kept the terminal open
    std::string tty;
    char buf[4096];
    for (;;) {
        pollfd p{m.get(), POLLIN, 0};
        if (::poll(&p, 1, 1000) <= 0) break;
        ssize_t n = ::read(m.get(), buf, sizeof(buf));
        if (n <= 0) break;  // EIO once the last slave descriptor is closed
        tty.append(buf, static_cast<size_t>(n));
    }
    ASSERT_EQ(r.exit_code, 0) << tty;
    for (int i = 1; i <= 4; ++i)
        EXPECT_NE(tty.find("\rimporting 'win10' " + std::to_string(i) + "/4"), std::string::npos) << tty;
    EXPECT_EQ(tty.find('\n'), tty.size() - 1) << "one line, ended once";
    EXPECT_EQ(r.out, "image 'win10' version 1 imported (1 B)\n");

    // --json: no progress even on a terminal.
    ASSERT_EQ(::openpty(&master, &slave, nullptr, nullptr, nullptr), 0);
    UniqueFd m2(master), s2(slave);
    r = ctl({"--json", "image", "import", "win10", "--from", "/srv/disk.raw"}, {}, s2.get());
    s2.reset();
    pollfd p{m2.get(), POLLIN, 0};
    ssize_t n = ::poll(&p, 1, 300) > 0 ? ::read(m2.get(), buf, sizeof(buf)) : 0;
    EXPECT_LE(n, 0) << std::string(buf, static_cast<size_t>(std::max<ssize_t>(n, 0)));
    EXPECT_EQ(r.exit_code, 0);
}

}  // namespace
}  // namespace icbd::node
