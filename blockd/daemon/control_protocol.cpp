// The local control socket between blockctl and blockd: ControlServer (one
// thread per request, peer credentials checked) and control_call (the client).
// Wire format: docs/blockd-control-protocol.md.
#include "control_protocol.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include "icbd/unique_fd.hpp"

namespace icbd::node {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kRequestTimeoutMs = 30'000;  // a connected client must send its request by then
constexpr int kSendTimeoutS = 10;          // a client that stops reading this long is gone
constexpr size_t kMaxAnswerLine = 256u << 20;  // client side: a listing of thousands of clients fits

std::string dump(const json& j) {
    // Handler messages may carry file names that are not UTF-8: never throw on them.
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<sockaddr_un> unix_address(const fs::path& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string& s = path.native();
    if (s.empty() || s.size() >= sizeof(addr.sun_path))
        return Status::error(ENAMETOOLONG, "control socket '" + s + "': path empty or longer than " +
                                               std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
    std::memcpy(addr.sun_path, s.data(), s.size());
    return addr;
}

int connect_to(int fd, const sockaddr_un& addr) {
    for (;;) {
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) return 0;
        if (errno != EINTR) return errno;
    }
}

// Writes all of `data`; false when the peer is gone (or stopped reading).
bool send_all(int fd, const std::string& data, int* err = nullptr) {
    size_t off = 0;
    while (off < data.size()) {
        ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (err) *err = errno;
            return false;
        }
        off += static_cast<size_t>(n);
    }
    return true;
}

json error_answer(const Status& st) {
    return json{{"ok", false}, {"error", st.message()}, {"kind", error_kind(st.code())}};
}

// A stale socket (blockd was killed) is removed; a live one means another
// blockd, which we must not steal the path from.
Status clear_stale_socket(const fs::path& path, const sockaddr_un& addr) {
    struct stat st{};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return Status::ok();
        return Status::from_errno(errno, "control socket " + path.string());
    }
    if (!S_ISSOCK(st.st_mode))
        return Status::error(EEXIST, "control socket " + path.string() + ": exists and is not a socket (left alone)");
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!probe.valid()) return Status::from_errno(errno, "control socket " + path.string() + ": socket");
    int err = connect_to(probe.get(), addr);
    if (err == 0) return Status::error(EADDRINUSE, "another blockd is running on " + path.string());
    if (err != ECONNREFUSED)
        return Status::from_errno(err, "control socket " + path.string() + ": probing the existing socket");
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        return Status::from_errno(errno, "control socket " + path.string() + ": removing the stale socket");
    return Status::ok();
}

Result<gid_t> lookup_group(const std::string& name) {
    std::vector<char> buf(16384);
    group gr{};
    group* found = nullptr;
    for (;;) {
        int rc = ::getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found);
        if (rc == ERANGE && buf.size() < (1u << 22)) {
            buf.resize(buf.size() * 4);
            continue;
        }
        if (rc != 0) return Status::from_errno(rc, "control group '" + name + "'");
        break;
    }
    if (!found) return Status::error(EINVAL, "control group '" + name + "': no such group");
    return gr.gr_gid;
}

// The peer's supplementary groups: its /proc status (what the kernel uses for
// file access), else the group database for its user.
std::vector<gid_t> supplementary_groups(pid_t pid, uid_t uid, gid_t gid) {
    std::vector<gid_t> out;
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("Groups:", 0) != 0) continue;
        std::istringstream ss(line.substr(7));
        for (unsigned long g; ss >> g;) out.push_back(static_cast<gid_t>(g));
        return out;
    }
    std::vector<char> buf(16384);
    passwd pw{};
    passwd* found = nullptr;
    if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) != 0 || !found) return out;
    int n = 64;
    out.resize(static_cast<size_t>(n));
    if (::getgrouplist(pw.pw_name, gid, out.data(), &n) < 0) {
        out.resize(static_cast<size_t>(n));
        if (::getgrouplist(pw.pw_name, gid, out.data(), &n) < 0) n = 0;
    }
    out.resize(static_cast<size_t>(std::max(n, 0)));
    return out;
}

struct Request {
    std::string cmd;
    json args;
};

Status bad_request(const std::string& why) { return Status::error(EINVAL, "request: " + why); }

Result<Request> parse_request(const std::string& line) {
    json j;
    try {
        j = json::parse(line);
    } catch (const json::parse_error& e) {
        return bad_request(std::string("not JSON (") + e.what() + ")");
    }
    if (!j.is_object()) return bad_request("not a JSON object");
    for (const auto& [key, value] : j.items()) {
        if (key != "v" && key != "cmd" && key != "args") return bad_request("unknown field '" + key + "'");
    }
    if (!j.contains("v")) return bad_request("field 'v' (protocol version) is missing");
    if (!j["v"].is_number_integer()) return bad_request("field 'v' must be an integer");
    if (j["v"].get<int64_t>() != kControlProtocolVersion)
        return bad_request("protocol version " + std::to_string(j["v"].get<int64_t>()) +
                           " is not supported (blockd speaks " + std::to_string(kControlProtocolVersion) + ")");
    if (!j.contains("cmd") || !j["cmd"].is_string() || j["cmd"].get<std::string>().empty())
        return bad_request("field 'cmd' must be a non-empty string");
    Request r{j["cmd"].get<std::string>(), json::object()};
    if (j.contains("args") && !j["args"].is_null()) {
        if (!j["args"].is_object()) return bad_request("field 'args' must be an object");
        r.args = j["args"];
    }
    return r;
}

// What reading the request line came to.
enum class ReadEnd { line, gone, too_large };

// Reads up to the first '\n' (or EOF after some bytes), giving up when the
// server stops, the client is silent too long or the line passes the limit.
ReadEnd read_request_line(int fd, int wake_fd, std::string& line) {
    std::string buf;
    char chunk[65536];
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kRequestTimeoutMs);
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return ReadEnd::gone;
        pollfd p[2] = {{fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
        int n = ::poll(p, 2, static_cast<int>(left.count()));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || (p[1].revents & POLLIN)) return ReadEnd::gone;
        ssize_t got = ::recv(fd, chunk, sizeof(chunk), 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return ReadEnd::gone;
        if (got == 0) {
            // A client that shut down its side after a line without '\n' still asked.
            if (buf.empty()) return ReadEnd::gone;
            line = std::move(buf);
            return ReadEnd::line;
        }
        size_t old = buf.size();
        buf.append(chunk, static_cast<size_t>(got));
        size_t nl = buf.find('\n', old);
        if (nl != std::string::npos) {
            if (nl > kMaxControlRequest) return ReadEnd::too_large;
            buf.resize(nl);
            line = std::move(buf);
            return ReadEnd::line;
        }
        if (buf.size() > kMaxControlRequest) return ReadEnd::too_large;
    }
}

// One connection's answer side: progress may come from any thread of the
// handler, and a client that went away only stops the lines, not the work.
class Answer {
public:
    explicit Answer(int fd) : fd_(fd) {}
    void line(const json& j) {
        std::lock_guard lk(mu_);
        if (gone_) return;
        if (!send_all(fd_, dump(j) + "\n")) gone_ = true;
    }

private:
    int fd_;
    std::mutex mu_;
    bool gone_ = false;
};

}  // namespace

std::string error_kind(int err) {
    switch (err) {
        case ENOENT: return "not_found";
        case EINVAL: return "invalid";
        case EEXIST: return "exists";
        case EBUSY: return "in_use";
        case EACCES:
        case EPERM: return "denied";
        case ENOSYS:
        case ENOTSUP: return "unsupported";
        default: break;
    }
#if EOPNOTSUPP != ENOTSUP
    if (err == EOPNOTSUPP) return "unsupported";
#endif
    return "failed";
}

int error_errno(const std::string& kind) {
    static const std::map<std::string, int> kinds = {
        {"not_found", ENOENT}, {"invalid", EINVAL}, {"exists", EEXIST},       {"in_use", EBUSY},
        {"denied", EACCES},    {"unsupported", ENOTSUP}, {"failed", EIO},
    };
    auto it = kinds.find(kind);
    return it == kinds.end() ? EIO : it->second;
}

struct ControlServer::Requests {
    std::mutex mu;
    uint64_t next_id = 0;
    std::map<uint64_t, std::thread> running;
    std::vector<std::thread> finished;  // ended, waiting to be joined

    void reap() {
        std::vector<std::thread> done;
        {
            std::lock_guard lk(mu);
            done.swap(finished);
        }
        for (auto& t : done) t.join();
    }
};

Result<std::unique_ptr<ControlServer>> ControlServer::start(const fs::path& socket_path, const std::string& group,
                                                            ControlHandler handler) {
    std::unique_ptr<ControlServer> s(new ControlServer());  // private constructor: make_unique cannot
    s->path_ = socket_path;
    s->handler_ = std::move(handler);
    s->requests_ = std::make_unique<Requests>();
    if (!group.empty()) {
        auto gid = lookup_group(group);
        if (!gid) return gid.status();
        s->group_ = *gid;
        s->group_set_ = true;
        s->group_name_ = group;
    }
    auto addr = unix_address(socket_path);
    if (!addr) return addr.status();
    const std::string what = "control socket " + socket_path.string();

    std::error_code ec;
    if (socket_path.has_parent_path()) fs::create_directories(socket_path.parent_path(), ec);
    if (ec) return Status::error(ec.value(), what + ": creating its directory: " + ec.message());
    if (auto st = clear_stale_socket(socket_path, *addr); !st) return st;

    // The server owns its descriptors from the start: on any failure below its
    // destructor closes them.
    s->listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->listen_fd_ < 0) return Status::from_errno(errno, what + ": socket");
    if (::bind(s->listen_fd_, reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
        if (errno == EADDRINUSE) return Status::error(EADDRINUSE, "another blockd is running on " + socket_path.string());
        return Status::from_errno(errno, what + ": bind");
    }
    // From here on the file is ours: remove it again on any failure. Nobody can
    // connect before listen(), so setting its mode after bind() leaves no window.
    auto fail = [&](int err, const std::string& step) {
        ::unlink(socket_path.c_str());
        return Status::from_errno(err, what + ": " + step);
    };
    if (::chmod(socket_path.c_str(), 0660) != 0) return fail(errno, "chmod 0660");
    if (s->group_set_ && ::chown(socket_path.c_str(), static_cast<uid_t>(-1), s->group_) != 0)
        return fail(errno, "chown to group '" + group + "'");
    struct stat st{};
    if (::stat(socket_path.c_str(), &st) != 0) return fail(errno, "stat");
    if (::listen(s->listen_fd_, SOMAXCONN) != 0) return fail(errno, "listen");
    s->wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
    if (s->wake_fd_ < 0) return fail(errno, "eventfd");
    try {
        s->thread_ = std::thread([srv = s.get()] { srv->accept_loop(); });
    } catch (const std::system_error& e) {
        return fail(e.code().value(), "starting the accept thread");
    }
    s->socket_dev_ = st.st_dev;
    s->socket_ino_ = st.st_ino;
    return s;
}

ControlServer::~ControlServer() { stop(); }

void ControlServer::accept_loop() {
    while (!stopping_.load()) {
        pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
        int n = ::poll(p, 2, 1000);
        int poll_err = errno;
        requests_->reap();
        if (n < 0 && poll_err != EINTR) return;
        if (n <= 0) continue;
        if (p[1].revents & POLLIN) return;
        if (!(p[0].revents & POLLIN)) continue;
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
            // Out of descriptors or memory: back off instead of spinning; the
            // connection waits in the backlog.
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                pollfd w{wake_fd_, POLLIN, 0};
                ::poll(&w, 1, 100);
            }
            continue;
        }
        std::lock_guard lk(requests_->mu);
        uint64_t id = requests_->next_id++;
        try {
            requests_->running.emplace(id, std::thread([this, fd, id] {
                                           serve(fd);
                                           std::lock_guard done(requests_->mu);
                                           auto it = requests_->running.find(id);
                                           // stop() may have taken the handle already to join it.
                                           if (it == requests_->running.end()) return;
                                           requests_->finished.push_back(std::move(it->second));
                                           requests_->running.erase(it);
                                       }));
        } catch (const std::system_error&) {
            ::close(fd);  // no thread for it: the client sees the connection close
        }
    }
}

namespace {

Status check_peer(int fd, bool group_set, gid_t group, const std::string& group_name) {
    ucred cr{};
    socklen_t len = sizeof(cr);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
        return Status::from_errno(errno, "control connection: reading the peer's credentials");
    if (cr.uid == 0) return Status::ok();
    if (group_set) {
        if (cr.gid == group) return Status::ok();
        auto groups = supplementary_groups(cr.pid, cr.uid, cr.gid);
        if (std::find(groups.begin(), groups.end(), group) != groups.end()) return Status::ok();
        return Status::error(EACCES, "permission denied: uid " + std::to_string(cr.uid) +
                                         " is not root and not in blockd's control group '" + group_name + "'");
    }
    return Status::error(EACCES, "permission denied: uid " + std::to_string(cr.uid) +
                                     " is not root (blockd has no control group: root only)");
}

}  // namespace

void ControlServer::serve(int raw_fd) {
    UniqueFd fd(raw_fd);
    timeval tv{kSendTimeoutS, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    Answer answer(fd.get());
    if (auto st = check_peer(fd.get(), group_set_, group_, group_name_); !st) {
        answer.line(error_answer(st));
        return;
    }
    std::string line;
    switch (read_request_line(fd.get(), wake_fd_, line)) {
        case ReadEnd::gone: return;
        case ReadEnd::too_large:
            answer.line(error_answer(bad_request("larger than 1 MiB (" + std::to_string(kMaxControlRequest) +
                                                 " bytes); refused")));
            return;
        case ReadEnd::line: break;
    }
    auto req = parse_request(line);
    if (!req) {
        answer.line(error_answer(req.status()));
        return;
    }
    ProgressFn progress = [&answer](const std::string& text, uint64_t done, uint64_t total) {
        answer.line(json{{"progress", {{"text", text}, {"done", done}, {"total", total}}}});
    };
    Result<json> result = Status::error(EIO, req->cmd + ": blockd has no handler for control requests");
    // A handler that throws (a bad argument type reaching nlohmann, a bug)
    // fails this request only: the server keeps serving.
    try {
        if (handler_) result = handler_(req->cmd, req->args, progress);
    } catch (const json::exception& e) {
        result = Status::error(EINVAL, req->cmd + ": bad arguments (" + e.what() + ")");
    } catch (const std::exception& e) {
        result = Status::error(EIO, req->cmd + ": internal error: " + e.what());
    }
    if (result) {
        answer.line(json{{"ok", true}, {"result", std::move(*result)}});
    } else {
        answer.line(error_answer(result.status()));
    }
}

void ControlServer::stop() {
    if (stopping_.exchange(true)) return;
    if (wake_fd_ >= 0) {
        uint64_t one = 1;
        ssize_t n = ::write(wake_fd_, &one, sizeof(one));
        (void)n;  // an eventfd write of 1 cannot fail short of a counter overflow
    }
    if (thread_.joinable()) thread_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    listen_fd_ = -1;
    // Remove the socket file only if it is still the one we bound (a blockd
    // started after us on the same path keeps its socket).
    struct stat st{};
    if (socket_ino_ != 0 && ::lstat(path_.c_str(), &st) == 0 && st.st_dev == socket_dev_ && st.st_ino == socket_ino_)
        ::unlink(path_.c_str());
    if (requests_) {
        std::vector<std::thread> all;
        {
            std::lock_guard lk(requests_->mu);
            for (auto& [id, t] : requests_->running) all.push_back(std::move(t));
            requests_->running.clear();
            for (auto& t : requests_->finished) all.push_back(std::move(t));
            requests_->finished.clear();
        }
        for (auto& t : all) t.join();
    }
    if (wake_fd_ >= 0) ::close(wake_fd_);
    wake_fd_ = -1;
}

// ---- client ----

namespace {

Result<json> parse_answer(const fs::path& socket_path, const std::string& line) {
    auto garbage = [&](const std::string& why) {
        return Status::error(EBADMSG, "blockd on " + socket_path.string() + " answered garbage: " + why);
    };
    json j;
    try {
        j = json::parse(line);
    } catch (const json::parse_error& e) {
        return garbage(e.what());
    }
    if (!j.is_object()) return garbage("not a JSON object");
    return j;
}

}  // namespace

Result<json> control_call(const fs::path& socket_path, const std::string& cmd, const json& args,
                          const ProgressFn& on_progress) {
    auto addr = unix_address(socket_path);
    if (!addr) return addr.status();
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return Status::from_errno(errno, "control socket " + socket_path.string() + ": socket");
    if (int err = connect_to(fd.get(), *addr); err != 0) {
        if (err == ENOENT || err == ECONNREFUSED || err == ENOTDIR)
            return Status::error(err, "blockd is not running (no answer on " + socket_path.string() + ")");
        if (err == EACCES || err == EPERM)
            return Status::error(err, "permission denied on " + socket_path.string() +
                                          " (blockctl must run as root or as a member of blockd's control group)");
        return Status::from_errno(err, "connecting to blockd on " + socket_path.string());
    }
    json request{{"v", kControlProtocolVersion}, {"cmd", cmd}, {"args", args.is_null() ? json::object() : args}};
    int send_err = 0;
    // A refused request (too large, not allowed) is answered before the server
    // stops reading: on a failed send the answer may still be there to read.
    send_all(fd.get(), dump(request) + "\n", &send_err);

    std::string buf;
    char chunk[65536];
    size_t scanned = 0;
    for (;;) {
        size_t nl = buf.find('\n', scanned);
        if (nl == std::string::npos) {
            scanned = buf.size();
            if (buf.size() > kMaxAnswerLine)
                return Status::error(EBADMSG, "blockd on " + socket_path.string() + " answered a line over " +
                                                  std::to_string(kMaxAnswerLine) + " bytes");
            ssize_t got = ::recv(fd.get(), chunk, sizeof(chunk), 0);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) {
                if (send_err != 0) return Status::from_errno(send_err, "sending the request to blockd on " + socket_path.string());
                return Status::error(ECONNRESET,
                                     "blockd closed the connection on " + socket_path.string() + " before answering");
            }
            buf.append(chunk, static_cast<size_t>(got));
            continue;
        }
        std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        scanned = 0;
        auto j = parse_answer(socket_path, line);
        if (!j) return j.status();
        if (j->contains("progress")) {
            const json& p = (*j)["progress"];
            if (on_progress && p.is_object()) {
                auto num = [&](const char* k) -> uint64_t {
                    return p.contains(k) && p[k].is_number_unsigned() ? p[k].get<uint64_t>() : 0;
                };
                on_progress(p.contains("text") && p["text"].is_string() ? p["text"].get<std::string>() : "",
                            num("done"), num("total"));
            }
            continue;
        }
        if (!j->contains("ok") || !(*j)["ok"].is_boolean())
            return Status::error(EBADMSG, "blockd on " + socket_path.string() + " answered garbage: no 'ok' in " + line);
        if ((*j)["ok"].get<bool>()) return j->contains("result") ? (*j)["result"] : json(nullptr);
        std::string kind = j->contains("kind") && (*j)["kind"].is_string() ? (*j)["kind"].get<std::string>() : "failed";
        std::string message = j->contains("error") && (*j)["error"].is_string() ? (*j)["error"].get<std::string>()
                                                                                 : cmd + ": failed (blockd gave no reason)";
        return Status::error(error_errno(kind), message);
    }
}

}  // namespace icbd::node
