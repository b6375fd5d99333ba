// The fixture replication_test.cpp and relay_test.cpp share: comparing a
// replica's tree with the master's, a TCP proxy that cuts or stalls a
// connection, and `icbd-replicate serve` as a separate process.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "icbd/replicator/host_port.hpp"
#include "icbd/replicator/transport.hpp"
#include "icbd/unique_fd.hpp"
#include "loop_fs.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"

namespace icbd::repl::fixture {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

inline constexpr uint64_t MiB = 1024 * 1024;

inline void sh(const std::string& script) { test::run_checked({"sh", "-ec", script}, {}, std::chrono::seconds(120)); }

// ---- trees ----

inline std::string describe_entry(const fs::path& p) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) return "<missing>";
    std::ostringstream o;
    o << (S_ISDIR(st.st_mode) ? "d" : S_ISLNK(st.st_mode) ? "l" : "f") << " mode " << std::oct << (st.st_mode & 07777)
      << std::dec << " uid " << st.st_uid << " gid " << st.st_gid << " mtime " << st.st_mtim.tv_sec << "."
      << st.st_mtim.tv_nsec;
    if (S_ISREG(st.st_mode)) o << " size " << st.st_size;
    if (S_ISLNK(st.st_mode)) o << " -> " << fs::read_symlink(p).string();
    return o.str();
}

inline bool same_content(const fs::path& a, const fs::path& b, std::string& why) {
    std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
    std::vector<char> ba(1 << 20), bb(1 << 20);
    uint64_t off = 0;
    for (;;) {
        fa.read(ba.data(), ba.size());
        fb.read(bb.data(), bb.size());
        if (fa.gcount() != fb.gcount()) {
            why = "lengths differ near offset " + std::to_string(off);
            return false;
        }
        if (std::memcmp(ba.data(), bb.data(), fa.gcount()) != 0) {
            why = "bytes differ in the MiB at offset " + std::to_string(off);
            return false;
        }
        if (fa.gcount() == 0) return true;
        off += fa.gcount();
    }
}

// Every entry of `want` exists in `got` with the same type, mode, owner, mtime,
// size, target and bytes, and holes stay holes (allocation not above the source's
// plus a little). Nothing more in `got`.
inline ::testing::AssertionResult same_tree(const fs::path& got, const fs::path& want) {
    std::set<std::string> seen;
    for (auto it = fs::recursive_directory_iterator(want); it != fs::recursive_directory_iterator(); ++it) {
        std::string rel = it->path().lexically_relative(want).string();
        seen.insert(rel);
        fs::path g = got / rel;
        std::string dw = describe_entry(it->path()), dg = describe_entry(g);
        if (dw != dg) return ::testing::AssertionFailure() << rel << ": replica '" << dg << "', source '" << dw << "'";
        if (it->is_regular_file() && !it->is_symlink()) {
            std::string why;
            if (!same_content(g, it->path(), why)) return ::testing::AssertionFailure() << rel << ": " << why;
            uint64_t aw = test::allocated_bytes(it->path()), ag = test::allocated_bytes(g);
            if (ag > aw + 1 * MiB)
                return ::testing::AssertionFailure()
                       << rel << ": " << ag << " bytes allocated on the replica, " << aw << " on the source (holes lost)";
        }
    }
    for (auto it = fs::recursive_directory_iterator(got); it != fs::recursive_directory_iterator(); ++it) {
        std::string rel = it->path().lexically_relative(got).string();
        if (!seen.count(rel)) return ::testing::AssertionFailure() << rel << ": only on the replica";
    }
    return ::testing::AssertionSuccess();
}

// ---- a TCP proxy that cuts or stalls the connection ----

// Forwards one connection at a time to 127.0.0.1:`to`. The client->server
// direction stops after `limit` bytes: the proxy then closes both sides (a cut)
// or, with `stall`, stops reading (a replica that falls behind).
class Proxy {
public:
    explicit Proxy(uint16_t to) : to_(to) {
        lfd_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(lfd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) || ::listen(lfd_.get(), 8))
            throw std::runtime_error("proxy: bind/listen");
        socklen_t len = sizeof a;
        ::getsockname(lfd_.get(), reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
        thread_ = std::jthread([this] { loop(); });
    }
    ~Proxy() {
        stop_ = true;
        thread_.join();
    }
    uint16_t port() const { return port_; }
    HostPort target() const { return HostPort{"127.0.0.1", port_}; }
    void arm(uint64_t limit, bool stall = false) {
        limit_ = limit;
        stall_ = stall;
    }
    uint64_t bytes_up() const { return up_; }  // client -> server, all connections
    // Later connections go to `to` (a proxy made before its server, e.g. for a cycle).
    void retarget(uint16_t to) { to_ = to; }

private:
    void loop() {
        while (!stop_) {
            pollfd p{lfd_.get(), POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            UniqueFd c(::accept4(lfd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (!c.valid()) continue;
            UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            a.sin_port = htons(to_);
            if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) continue;
            forward(c.get(), s.get());
        }
    }
    static bool write_all(int fd, const char* b, size_t n) {
        while (n) {
            ssize_t w = ::send(fd, b, n, MSG_NOSIGNAL);
            if (w <= 0) return false;
            b += w;
            n -= w;
        }
        return true;
    }
    void forward(int c, int s) {
        uint64_t limit = limit_, done = 0;
        bool stall = stall_, reading_client = true;
        std::vector<char> buf(64 * 1024);
        while (!stop_) {
            pollfd p[2] = {{c, short(reading_client ? POLLIN : 0), 0}, {s, POLLIN, 0}};
            if (::poll(p, 2, 50) <= 0) continue;
            if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
                size_t want = std::min<uint64_t>(buf.size(), limit - done);
                ssize_t n = ::read(c, buf.data(), want);
                if (n <= 0) break;
                done += n;
                up_ += n;
                if (!write_all(s, buf.data(), n)) break;
                if (done >= limit) {
                    if (!stall) break;  // the cut: both sides closed at once
                    reading_client = false;
                }
            }
            if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t n = ::read(s, buf.data(), buf.size());
                if (n <= 0) break;
                if (!write_all(c, buf.data(), n)) break;
            }
        }
    }

    std::atomic<uint16_t> to_;
    uint16_t port_ = 0;
    UniqueFd lfd_;
    std::atomic<uint64_t> limit_{UINT64_MAX};
    std::atomic<bool> stall_{false};
    std::atomic<uint64_t> up_{0};
    std::atomic<bool> stop_{false};
    std::jthread thread_;
};


// `icbd-replicate serve` as its own process on 127.0.0.1 (port 0), then `extra`;
// the port it printed, its stderr, its exit code; killed (SIGKILL) at the end.
struct ToolServer {
    pid_t pid = -1;
    uint16_t port = 0;
    test::TempDir out{"/tmp", "icbd-repl-tool-"};
    static fs::path tool() {
        return fs::read_symlink("/proc/self/exe").parent_path().parent_path().parent_path() / "replicator/icbd-replicate";
    }
    ToolServer(const fs::path& root, const TlsConfig& tls, std::vector<std::string> extra = {}) {
        fs::create_directories(root);
        std::vector<std::string> argv = {tool().string(), "serve", "--root", root.string(), "--listen", "127.0.0.1:0",
                                         "--ca", tls.ca_file, "--cert", tls.cert_file, "--key", tls.key_file};
        argv.insert(argv.end(), extra.begin(), extra.end());
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        test::SpawnActions fa;
        std::string so = (out.path() / "stdout").string(), se = (out.path() / "stderr").string();
        posix_spawn_file_actions_addopen(&fa.a, 1, so.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        posix_spawn_file_actions_addopen(&fa.a, 2, se.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (posix_spawn(&pid, args[0], &fa.a, nullptr, args.data(), environ) != 0)
            throw std::runtime_error("cannot start " + argv[0] + ": " + strerror(errno));
        for (int i = 0; i < 500 && !port; ++i) {
            std::ifstream in(so);
            std::string line;
            if (std::getline(in, line) && line.rfind("listening on ", 0) == 0)
                port = static_cast<uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
            else std::this_thread::sleep_for(10ms);
        }
        if (!port) throw std::runtime_error("icbd-replicate serve did not start: " + stderr_text());
    }
    std::string stderr_text() const {
        std::ifstream in(out.path() / "stderr");
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }
    // The exit code (waits up to 20 s, then kills it).
    int wait() {
        for (int i = 0; i < 2000; ++i) {
            int st = 0;
            pid_t r = ::waitpid(pid, &st, WNOHANG);
            if (r == pid) {
                pid = -1;
                return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            }
            std::this_thread::sleep_for(10ms);
        }
        return -1;
    }
    HostPort target() const { return HostPort{"127.0.0.1", port}; }
    void kill9() {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
            pid = -1;
        }
    }
    ~ToolServer() { kill9(); }
};

}  // namespace icbd::repl::fixture
