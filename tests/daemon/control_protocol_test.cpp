// The control socket between blockctl and blockd: a ControlServer with a fake
// handler and control_call in one process (plus forked children that drop to
// uid 65534 for the access checks). docs/blockd-control-protocol.md.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "control_protocol.hpp"
#include "icbd/unique_fd.hpp"
#include "temp_dir.hpp"

namespace icbd::node {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

bool skips_forbidden() {
    const char* v = std::getenv("ICBD_FORBID_SKIP");
    return v && *v && std::strcmp(v, "0") != 0;
}

#define REQUIRE_OR_SKIP(cond, why)                                \
    do {                                                          \
        if (!(cond)) {                                            \
            if (skips_forbidden()) FAIL() << "prerequisite missing: " << why; \
            GTEST_SKIP() << why;                                  \
        }                                                         \
    } while (0)

// A raw connection, for what control_call would never send.
UniqueFd raw_connect(const fs::path& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return UniqueFd();
    return fd;
}

void write_all(int fd, const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
        ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return;  // the server may stop reading: that is what some tests check
        off += static_cast<size_t>(n);
    }
}

// Every line the server sent until it closed the connection.
std::vector<json> read_lines(int fd) {
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string buf;
    char chunk[4096];
    for (;;) {
        ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
        if (n <= 0) break;
        buf.append(chunk, static_cast<size_t>(n));
    }
    std::vector<json> out;
    size_t pos = 0;
    for (size_t nl; (nl = buf.find('\n', pos)) != std::string::npos; pos = nl + 1)
        out.push_back(json::parse(buf.substr(pos, nl - pos)));
    return out;
}

std::vector<json> converse(const fs::path& path, const std::string& request) {
    UniqueFd fd = raw_connect(path);
    if (!fd.valid()) return {};
    write_all(fd.get(), request);
    return read_lines(fd.get());
}

// A socket file nobody listens on any more: what a killed blockd leaves.
void make_stale_socket(const fs::path& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
    ASSERT_EQ(::listen(fd.get(), 1), 0);
}

struct Seen {
    std::mutex mu;
    std::vector<std::pair<std::string, json>> calls;
    size_t count() {
        std::lock_guard lk(mu);
        return calls.size();
    }
};

// The fake blockd: "echo" returns its args, "progress" reports five steps,
// "missing"/"busy" fail like the real handlers, "throw" throws.
ControlHandler fake_handler(Seen& seen) {
    return [&seen](const std::string& cmd, const json& args, const ProgressFn& progress) -> Result<json> {
        {
            std::lock_guard lk(seen.mu);
            seen.calls.emplace_back(cmd, args);
        }
        if (cmd == "echo") return json{{"cmd", cmd}, {"args", args}};
        if (cmd == "progress") {
            for (uint64_t i = 1; i <= 5; ++i) progress("step " + std::to_string(i), i, 5);
            return json{{"done", true}};
        }
        if (cmd == "missing") return Status::error(ENOENT, "image 'win10' version 7: no such version");
        if (cmd == "busy") return Status::error(EBUSY, "image 'win10' version 3: in use by client 'pc01'");
        if (cmd == "unsupported") return Status::error(ENOTSUP, "image 'win10': prefetch is not implemented yet");
        if (cmd == "throw") throw std::runtime_error("boom");
        return Status::error(EINVAL, "unknown command '" + cmd + "'");
    };
}

class ControlProtocolTest : public ::testing::Test {
protected:
    void SetUp() override {
        auto s = ControlServer::start(sock_, "", fake_handler(seen_));
        ASSERT_TRUE(s) << s.status().message();
        server_ = std::move(*s);
    }

    test::TempDir dir_;
    fs::path sock_ = dir_ / "blockd.sock";
    Seen seen_;
    std::unique_ptr<ControlServer> server_;
};

TEST(ControlErrorKinds, MapBothWays) {
    EXPECT_EQ(error_kind(ENOENT), "not_found");
    EXPECT_EQ(error_kind(EINVAL), "invalid");
    EXPECT_EQ(error_kind(EEXIST), "exists");
    EXPECT_EQ(error_kind(EBUSY), "in_use");
    EXPECT_EQ(error_kind(EACCES), "denied");
    EXPECT_EQ(error_kind(ENOTSUP), "unsupported");
    EXPECT_EQ(error_kind(EIO), "failed");
    EXPECT_EQ(error_kind(ENOSPC), "failed");
    for (int e : {ENOENT, EINVAL, EEXIST, EBUSY, EACCES, ENOTSUP}) EXPECT_EQ(error_errno(error_kind(e)), e);
    EXPECT_EQ(error_errno("failed"), EIO);
    EXPECT_EQ(error_errno("a_kind_from_the_future"), EIO);
}

TEST_F(ControlProtocolTest, ResultAndArgsArriveUnchanged) {
    json args{{"image", "win10"}, {"version", 7}, {"message", "ünïcode \"quoted\"\nline"}, {"force", true}};
    auto r = control_call(sock_, "echo", args);
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ((*r)["cmd"], "echo");
    EXPECT_EQ((*r)["args"], args);
}

TEST_F(ControlProtocolTest, ProgressLinesArriveInOrderBeforeTheResult) {
    std::vector<std::tuple<std::string, uint64_t, uint64_t>> got;
    auto r = control_call(sock_, "progress", json::object(), [&](const std::string& t, uint64_t d, uint64_t n) {
        got.emplace_back(t, d, n);
    });
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(*r, (json{{"done", true}}));
    ASSERT_EQ(got.size(), 5u);
    for (uint64_t i = 1; i <= 5; ++i) EXPECT_EQ(got[i - 1], std::make_tuple("step " + std::to_string(i), i, 5ull));

    // On the wire: five progress lines, then exactly one final line.
    auto lines = converse(sock_, R"({"v":1,"cmd":"progress"})" "\n");
    ASSERT_EQ(lines.size(), 6u);
    for (size_t i = 0; i < 5; ++i) EXPECT_EQ(lines[i]["progress"]["done"], i + 1);
    EXPECT_EQ(lines[5], (json{{"ok", true}, {"result", {{"done", true}}}}));
}

TEST_F(ControlProtocolTest, ErrorsCarryTheMessageAndAnErrnoOfTheirKind) {
    auto r = control_call(sock_, "missing", json::object());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), ENOENT);
    EXPECT_EQ(r.status().message(), "image 'win10' version 7: no such version");

    r = control_call(sock_, "busy", json::object());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), EBUSY);
    EXPECT_EQ(r.status().message(), "image 'win10' version 3: in use by client 'pc01'");

    r = control_call(sock_, "unsupported", json::object());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), ENOTSUP);

    auto lines = converse(sock_, R"({"v":1,"cmd":"busy","args":{}})" "\n");
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0], (json{{"ok", false}, {"error", "image 'win10' version 3: in use by client 'pc01'"},
                              {"kind", "in_use"}}));
}

TEST_F(ControlProtocolTest, AThrowingHandlerFailsOnlyItsRequest) {
    auto r = control_call(sock_, "throw", json::object());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), EIO);
    EXPECT_NE(r.status().message().find("boom"), std::string::npos) << r.status().message();
    auto ok = control_call(sock_, "echo", json::object());
    EXPECT_TRUE(ok) << ok.status().message();
}

TEST_F(ControlProtocolTest, BadRequestsAreAnsweredAndTheServerKeepsServing) {
    struct Case {
        std::string line;
        std::string says;
    };
    std::vector<Case> cases = {
        {"garbage\n", "not JSON"},
        {"[1,2,3]\n", "not a JSON object"},
        {R"({"v":1,"cmd":"echo","bogus":1})" "\n", "unknown field 'bogus'"},
        {R"({"v":2,"cmd":"echo"})" "\n", "protocol version 2 is not supported (blockd speaks 1)"},
        {R"({"cmd":"echo"})" "\n", "field 'v'"},
        {R"({"v":1,"cmd":""})" "\n", "field 'cmd'"},
        {R"({"v":1,"cmd":"echo","args":[1]})" "\n", "field 'args' must be an object"},
        {"\xff\xfe\n", "not JSON"},
    };
    for (const Case& c : cases) {
        auto lines = converse(sock_, c.line);
        ASSERT_EQ(lines.size(), 1u) << c.line;
        EXPECT_EQ(lines[0]["ok"], false) << c.line;
        EXPECT_EQ(lines[0]["kind"], "invalid") << c.line;
        std::string error = lines[0]["error"];
        EXPECT_NE(error.find(c.says), std::string::npos) << c.line << " -> " << error;
    }
    EXPECT_EQ(seen_.count(), 0u) << "a bad request reached the handler";

    // Still serving, and an unknown command is the handler's to refuse.
    auto r = control_call(sock_, "echo", json{{"x", 1}});
    ASSERT_TRUE(r) << r.status().message();
    r = control_call(sock_, "image.frobnicate", json::object());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), EINVAL);
}

TEST_F(ControlProtocolTest, ARequestOver1MiBIsRefusedWithoutReadingIt) {
    // Just under the limit is a request like any other.
    std::string head = R"({"v":1,"cmd":"echo","args":{"blob":")";
    std::string tail = R"("}})";
    std::string fits = head + std::string(kMaxControlRequest - head.size() - tail.size(), 'a') + tail;
    ASSERT_EQ(fits.size(), kMaxControlRequest);
    auto lines = converse(sock_, fits + "\n");
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0]["ok"], true);

    // One byte more is refused, also through control_call (whose send may
    // fail once the server stops reading: it still reads the answer).
    std::string over = head + std::string(kMaxControlRequest - head.size() - tail.size() + 1, 'a') + tail;
    lines = converse(sock_, over + "\n");
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0]["kind"], "invalid");
    EXPECT_NE(lines[0]["error"].get<std::string>().find("larger than 1 MiB"), std::string::npos) << lines[0];

    auto r = control_call(sock_, "echo", json{{"blob", std::string(3u << 20, 'b')}});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), EINVAL);
    EXPECT_NE(r.status().message().find("larger than 1 MiB"), std::string::npos) << r.status().message();

    // A line that never ends is cut off at the limit, not buffered forever.
    UniqueFd fd = raw_connect(sock_);
    ASSERT_TRUE(fd.valid());
    std::thread writer([&] { write_all(fd.get(), std::string(8u << 20, 'x')); });
    auto answer = read_lines(fd.get());
    ::shutdown(fd.get(), SHUT_RDWR);
    writer.join();
    ASSERT_EQ(answer.size(), 1u);
    EXPECT_EQ(answer[0]["kind"], "invalid");
    EXPECT_EQ(seen_.count(), 1u) << "only the request that fitted reached the handler";
}

TEST_F(ControlProtocolTest, RequestsRunConcurrently) {
    // "first" waits until "second" has run: with one thread for both, it never would.
    std::mutex mu;
    std::condition_variable cv;
    bool second_ran = false;
    server_.reset();
    auto s = ControlServer::start(sock_, "", [&](const std::string& cmd, const json&, const ProgressFn&) -> Result<json> {
        std::unique_lock lk(mu);
        if (cmd == "second") {
            second_ran = true;
            cv.notify_all();
            return json{{"who", "second"}};
        }
        bool ok = cv.wait_for(lk, 10s, [&] { return second_ran; });
        return json{{"who", "first"}, {"saw_second", ok}};
    });
    ASSERT_TRUE(s) << s.status().message();
    Result<json> first = Status::error(EIO, "not run");
    std::thread t([&] { first = control_call(sock_, "first", json::object()); });
    std::this_thread::sleep_for(100ms);
    auto second = control_call(sock_, "second", json::object());
    t.join();
    ASSERT_TRUE(second) << second.status().message();
    ASSERT_TRUE(first) << first.status().message();
    EXPECT_EQ((*first)["saw_second"], true);
    (*s)->stop();
}

TEST_F(ControlProtocolTest, StopWaitsForARunningRequestButNotForAnIdleConnection) {
    server_.reset();
    std::atomic<bool> finished{false};
    auto s = ControlServer::start(sock_, "", [&](const std::string&, const json&, const ProgressFn&) -> Result<json> {
        std::this_thread::sleep_for(500ms);
        finished = true;
        return json::object();
    });
    ASSERT_TRUE(s) << s.status().message();
    UniqueFd idle = raw_connect(sock_);  // connected, never sends a request
    ASSERT_TRUE(idle.valid());
    Result<json> r = Status::error(EIO, "not run");
    std::thread t([&] { r = control_call(sock_, "slow", json::object()); });
    std::this_thread::sleep_for(150ms);
    auto t0 = std::chrono::steady_clock::now();
    (*s)->stop();
    auto took = std::chrono::steady_clock::now() - t0;
    t.join();
    EXPECT_TRUE(finished.load()) << "stop() returned before the request in progress ended";
    EXPECT_TRUE(r) << r.status().message();
    EXPECT_LT(took, 5s) << "stop() waited for the idle connection";
    EXPECT_FALSE(fs::exists(fs::symlink_status(sock_))) << "stop() left the socket file";
}

TEST_F(ControlProtocolTest, NotRunningGivesAClearMessage) {
    fs::path nowhere = dir_ / "no-such.sock";
    auto r = control_call(nowhere, "echo", json::object());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().message(), "blockd is not running (no answer on " + nowhere.string() + ")");

    server_->stop();  // the file is gone: same message
    r = control_call(sock_, "echo", json::object());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().message(), "blockd is not running (no answer on " + sock_.string() + ")");

    fs::path stale = dir_ / "stale.sock";  // a file nobody accepts on (blockd was killed)
    make_stale_socket(stale);
    r = control_call(stale, "echo", json::object());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().message(), "blockd is not running (no answer on " + stale.string() + ")");
}

TEST_F(ControlProtocolTest, AStaleSocketIsReplacedButALiveServerIsNotStolen) {
    // Another server on the same path is refused, and the first one keeps its socket.
    Seen other;
    auto second = ControlServer::start(sock_, "", fake_handler(other));
    ASSERT_FALSE(second);
    EXPECT_EQ(second.status().code(), EADDRINUSE);
    EXPECT_EQ(second.status().message(), "another blockd is running on " + sock_.string());
    auto r = control_call(sock_, "echo", json::object());
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(other.count(), 0u);

    // A stale socket file (a killed blockd's) is replaced.
    fs::path stale = dir_ / "stale.sock";
    make_stale_socket(stale);
    auto s = ControlServer::start(stale, "", fake_handler(other));
    ASSERT_TRUE(s) << s.status().message();
    r = control_call(stale, "echo", json::object());
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(other.count(), 1u);
    (*s)->stop();

    // A path that is not a socket is never removed.
    fs::path file = dir_ / "not-a-socket";
    std::ofstream(file) << "keep me";
    auto f = ControlServer::start(file, "", fake_handler(other));
    ASSERT_FALSE(f);
    EXPECT_EQ(f.status().code(), EEXIST);
    std::ifstream in(file);
    std::string content;
    std::getline(in, content);
    EXPECT_EQ(content, "keep me");
}

TEST_F(ControlProtocolTest, AnUnknownGroupIsRefusedAtStart) {
    auto s = ControlServer::start(dir_ / "g.sock", "no-such-group-icbd", fake_handler(seen_));
    ASSERT_FALSE(s);
    EXPECT_EQ(s.status().code(), EINVAL);
    EXPECT_NE(s.status().message().find("no-such-group-icbd"), std::string::npos) << s.status().message();
}

// ---- access: children that drop to uid 65534 ----

struct ChildCall {
    bool ok = false;
    int code = 0;
    std::string message;
};

// Forks; the child sets its groups, gid and uid, then calls. Only the result
// crosses back, through a pipe.
ChildCall call_as(const fs::path& sock, uid_t uid, gid_t gid, std::vector<gid_t> groups) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return {false, errno, "pipe"};
    pid_t pid = ::fork();
    if (pid == 0) {
        ::close(p[0]);
        std::string out;
        if (::setgroups(groups.size(), groups.data()) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) {
            out = "setup\n" + std::to_string(errno) + "\ncould not drop privileges";
        } else {
            auto r = control_call(sock, "echo", json::object());
            out = (r ? "ok\n0\n" : "err\n" + std::to_string(r.status().code()) + "\n") + r.status().message();
        }
        ssize_t n = ::write(p[1], out.data(), out.size());
        ::_exit(n == static_cast<ssize_t>(out.size()) ? 0 : 1);
    }
    ::close(p[1]);
    std::string got;
    char buf[4096];
    for (ssize_t n; (n = ::read(p[0], buf, sizeof(buf))) > 0;) got.append(buf, static_cast<size_t>(n));
    ::close(p[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ChildCall c;
    size_t a = got.find('\n'), b = got.find('\n', a == std::string::npos ? 0 : a + 1);
    if (a == std::string::npos || b == std::string::npos) return {false, -1, "child said: " + got};
    c.ok = got.substr(0, a) == "ok";
    c.code = std::atoi(got.substr(a + 1, b - a - 1).c_str());
    c.message = got.substr(b + 1);
    return c;
}

class ControlAccessTest : public ::testing::Test {
protected:
    void SetUp() override {
        REQUIRE_OR_SKIP(::geteuid() == 0, "needs root (to drop to uid 65534 in a child)");
        group* g = ::getgrnam("users");
        REQUIRE_OR_SKIP(g != nullptr, "needs the group 'users' (Debian's gid 100) as the control group");
        users_ = g->gr_gid;
        // The temp dir must be reachable by uid 65534 for the socket inside it.
        ::chmod(dir_.path().c_str(), 0755);
        auto s = ControlServer::start(sock_, "users", fake_handler(seen_));
        ASSERT_TRUE(s) << s.status().message();
        server_ = std::move(*s);
    }

    test::TempDir dir_;
    fs::path sock_ = dir_ / "blockd.sock";
    gid_t users_ = 0;
    Seen seen_;
    std::unique_ptr<ControlServer> server_;
};

TEST_F(ControlAccessTest, TheSocketFileIs0660RootAndTheGroup) {
    struct stat st{};
    ASSERT_EQ(::stat(sock_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0660u);
    EXPECT_EQ(st.st_uid, 0u);
    EXPECT_EQ(st.st_gid, users_);
}

TEST_F(ControlAccessTest, AStrangerIsRefusedByTheFileMode) {
    ChildCall c = call_as(sock_, kNobody, kNogroup, {});
    EXPECT_FALSE(c.ok);
    EXPECT_EQ(c.code, EACCES) << c.message;
    EXPECT_EQ(c.message, "permission denied on " + sock_.string() +
                             " (blockctl must run as root or as a member of blockd's control group)");
    EXPECT_EQ(seen_.count(), 0u);
}

TEST_F(ControlAccessTest, AStrangerIsRefusedByPeerCredentialsEvenIfTheFileLetsHimIn) {
    // Somebody loosened the file's mode: the server's own check still holds.
    ASSERT_EQ(::chmod(sock_.c_str(), 0666), 0);
    ChildCall c = call_as(sock_, kNobody, kNogroup, {});
    EXPECT_FALSE(c.ok);
    EXPECT_EQ(c.code, EACCES) << c.message;
    EXPECT_EQ(c.message, "permission denied: uid 65534 is not root and not in blockd's control group 'users'");
    EXPECT_EQ(seen_.count(), 0u);
}

TEST_F(ControlAccessTest, MembersOfTheGroupAreServed) {
    ChildCall primary = call_as(sock_, kNobody, users_, {});
    EXPECT_TRUE(primary.ok) << primary.message;
    ChildCall supplementary = call_as(sock_, kNobody, kNogroup, {users_});
    EXPECT_TRUE(supplementary.ok) << supplementary.message;
    EXPECT_EQ(seen_.count(), 2u);
}

TEST_F(ControlAccessTest, WithoutAGroupOnlyRootIsServed) {
    server_.reset();
    auto s = ControlServer::start(sock_, "", fake_handler(seen_));
    ASSERT_TRUE(s) << s.status().message();
    ASSERT_EQ(::chmod(sock_.c_str(), 0666), 0);
    ChildCall c = call_as(sock_, kNobody, users_, {users_});
    EXPECT_FALSE(c.ok);
    EXPECT_EQ(c.code, EACCES);
    EXPECT_EQ(c.message, "permission denied: uid 65534 is not root (blockd has no control group: root only)");
    auto r = control_call(sock_, "echo", json::object());  // we are root
    EXPECT_TRUE(r) << r.status().message();
    EXPECT_EQ(seen_.count(), 1u);
}

}  // namespace
}  // namespace icbd::node
