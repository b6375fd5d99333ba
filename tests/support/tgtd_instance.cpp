// TgtdInstance: spawn, readiness, tgtadm, kill -9 / restart, orderly stop.
//
// The control socket lives in a private directory (tgtd and tgtadm both honour
// TGT_IPC_SOCKET), so our -C number can never collide with another tgtd on the
// machine and nothing is left in /var/run/tgtd. The portal is a TCP port the
// kernel just handed out; if someone takes it before tgtd binds it, tgtd says so
// in its log and we start over on another one.
#include "tgtd_instance.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "icbd/unique_fd.hpp"

namespace icbd::test {
namespace {

using namespace std::chrono_literals;

constexpr const char* kTgtd = "/usr/sbin/tgtd";

int free_tcp_port() {
    UniqueFd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s.valid()) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) < 0)
        throw std::runtime_error(std::string("bind 127.0.0.1:0: ") + std::strerror(errno));
    socklen_t len = sizeof a;
    getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
    return ntohs(a.sin_port);
}

std::string read_file(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void append_file(const std::filesystem::path& p, const std::string& text) {
    std::ofstream out(p, std::ios::app);
    out << text;
}

bool contains(const std::string& haystack, const char* needle) { return haystack.find(needle) != std::string::npos; }


}  // namespace

std::filesystem::path TgtdInstance::module_dir() {
    const char* b = std::getenv("ICBD_BUILD");
    return b && *b ? std::filesystem::path(b) / "modules" : std::filesystem::path();
}

std::optional<std::string> TgtdInstance::unavailable() {
    if (geteuid() != 0) return "needs root (tgtd)";
    if (access(kTgtd, X_OK) != 0) return std::string(kTgtd) + " is not installed (package tgt)";
    if (access(ICBD_TGTD_LAUNCHER, X_OK) != 0) return std::string(ICBD_TGTD_LAUNCHER) + " is not built";
    if (!have_program("tgtadm")) return std::string("tgtadm is not installed (package tgt)");
    auto mods = module_dir();
    if (mods.empty()) return std::string("ICBD_BUILD is not set (run the test through ctest)");
    for (const char* f : {"bs_icbd.so", "libicbd_tgt_preload.so"})
        if (access((mods / f).c_str(), R_OK) != 0) return (mods / f).string() + " is not built";
    return std::nullopt;
}

TgtdInstance::TgtdInstance(TgtdOptions options) : options_(std::move(options)), dir_("/tmp", "icbd-tgtd-") {
    log_path_ = dir_ / "tgtd.log";
    start(false);
}

TgtdInstance::~TgtdInstance() {
    try {
        stop();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "TgtdInstance: stop: %s\n", e.what());
    }
    // Kept on request, for post-mortems of CI runs.
    if (const char* keep = std::getenv("ICBD_TGTD_LOG_DIR"); keep && *keep) {
        std::error_code ec;
        std::filesystem::copy_file(log_path_, std::filesystem::path(keep) / ("tgtd-" + std::to_string(port_) + ".log"),
                                   std::filesystem::copy_options::overwrite_existing, ec);
    }
}

void TgtdInstance::start(bool same_ports) {
    std::string why;
    for (int attempt = 0; attempt < 5; ++attempt) {
        if (!same_ports || attempt > 0 || port_ == 0) {
            port_ = free_tcp_port();
            ctl_ = port_ % 30000 + 1000;  // -C is a C short
        }
        if (spawn_and_wait(&why)) return;
    }
    throw std::runtime_error("tgtd did not start: " + why);
}

bool TgtdInstance::spawn_and_wait(std::string* why) {
    const auto mods = module_dir();
    const size_t log_start = log().size();
    append_file(log_path_, "=== icbd test: starting tgtd -C " + std::to_string(ctl_) +
                               " portal 127.0.0.1:" + std::to_string(port_) + " ===\n");

    SpawnActions fa;
    posix_spawn_file_actions_addopen(&fa.a, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa.a, 1, log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa.a, 1, 2);
    // Our sockets to other tgtds, our pipes: none of tgtd's business.
    posix_spawn_file_actions_addclosefrom_np(&fa.a, 3);
    SpawnAttr attr;
    sigset_t none, pipe;
    sigemptyset(&none);
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    posix_spawnattr_setsigmask(&attr.a, &none);
    posix_spawnattr_setsigdefault(&attr.a, &pipe);  // the test ignores SIGPIPE; tgtd decides for itself
    // Own session, like `setsid`: a Ctrl-C meant for the test runner is not for tgtd.
    posix_spawnattr_setflags(&attr.a, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    Env env = options_.env;
    env.emplace_back("ICBD_TGTD_LD_PRELOAD", (mods / "libicbd_tgt_preload.so").string());  // launcher: LD_PRELOAD
    env.emplace_back("ICBD_TGT_MODULES", (mods / "bs_icbd.so").string());
    env.emplace_back("TGT_IPC_SOCKET", (dir_ / "socket").string());
    std::vector<std::string> env_storage;
    std::vector<char*> cenv = make_environment(env, env_storage);
    // Through the launcher: tgtd dies with this process even if it is killed
    // (CTest timeout), and gets a seccomp filter when asked.
    std::vector<std::string> args = {ICBD_TGTD_LAUNCHER};
    if (options_.no_io_uring) args.emplace_back("--no-io-uring");
    args.insert(args.end(),
                {kTgtd, "-f", "-C", std::to_string(ctl_), "--iscsi", "portal=127.0.0.1:" + std::to_string(port_)});
    std::vector<char*> cargs;
    for (auto& a : args) cargs.push_back(a.data());
    cargs.push_back(nullptr);

    int err = posix_spawn(&pid_, cargs[0], &fa.a, &attr.a, cargs.data(), cenv.data());
    if (err != 0) {
        pid_ = -1;
        *why = "spawn " + args[0] + ": " + std::strerror(err);
        return false;
    }

    const auto deadline = std::chrono::steady_clock::now() + 15s;
    while (std::chrono::steady_clock::now() < deadline) {
        if (!alive()) {
            *why = "tgtd exited during start-up; its log:\n" + log_since(log_start);
            return false;
        }
        CommandResult r = tgtadm({"--op", "show", "--mode", "sys"}, false);
        if (r.ok()) {
            std::string l = log_since(log_start);
            if (contains(l, "unable to bind server socket") || contains(l, "failed to create/bind to portal")) {
                *why = "portal 127.0.0.1:" + std::to_string(port_) + " was taken; log:\n" + l;
                kill9();
                return false;
            }
            return true;
        }
        std::this_thread::sleep_for(50ms);
    }
    *why = "tgtd did not answer tgtadm within 15 s; its log:\n" + log_since(log_start);
    kill9();
    return false;
}

bool TgtdInstance::alive() {
    if (pid_ <= 0) return false;
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == 0) return true;
    if (r == pid_ || (r < 0 && errno == ECHILD)) {
        // Reaped: forget the PID so it can never be signalled after reuse.
        std::string how = r == pid_ && WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                          : r == pid_                      ? "exit " + std::to_string(WEXITSTATUS(status))
                                                           : std::string("unknown status");
        append_file(log_path_, "=== icbd test: tgtd " + std::to_string(pid_) + " ended (" + how + ") ===\n");
        pid_ = -1;
        return false;
    }
    return true;
}

void TgtdInstance::reap(std::chrono::milliseconds patience) {
    const auto deadline = std::chrono::steady_clock::now() + patience;
    while (alive() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
}

void TgtdInstance::kill9() {
    if (!alive()) return;
    kill(pid_, SIGKILL);
    reap(std::chrono::hours(1));  // SIGKILL cannot be refused: this ends
}

CommandResult TgtdInstance::tgtadm(const std::vector<std::string>& args, bool lld) const {
    std::vector<std::string> argv = {"tgtadm", "-C", std::to_string(ctl_)};
    if (lld) argv.insert(argv.end(), {"--lld", "iscsi"});
    argv.insert(argv.end(), args.begin(), args.end());
    // Bounded: a tgtd stuck in a module must fail the test, not hang it.
    return run_command(argv, {{"TGT_IPC_SOCKET", (dir_ / "socket").string()}}, 30s);
}

CommandResult TgtdInstance::adm(const std::vector<std::string>& args) const { return tgtadm(args, true); }
CommandResult TgtdInstance::adm_sys(const std::vector<std::string>& args) const { return tgtadm(args, false); }

void TgtdInstance::add_target(int tid, const std::string& iqn) {
    const std::string t = std::to_string(tid);
    for (const auto& args :
         std::vector<std::vector<std::string>>{{"--op", "new", "--mode", "target", "--tid", t, "-T", iqn},
                                               {"--op", "bind", "--mode", "target", "--tid", t, "-I", "ALL"}}) {
        CommandResult r = adm(args);
        if (!r.ok()) throw std::runtime_error(r.describe() + "\ntgtd log:\n" + log_tail());
    }
    targets_[tid].iqn = iqn;
}

CommandResult TgtdInstance::try_add_lun(const LunSpec& spec) {
    const std::string t = std::to_string(spec.tid), l = std::to_string(spec.lun);
    std::vector<std::string> args = {"--op",  "new", "--mode", "logicalunit",      "--tid",    t,
                                     "--lun", l,     "-b",     spec.path.string(), "--bstype", spec.bstype};
    if (!spec.bsopts.empty()) args.insert(args.end(), {"--bsopts", spec.bsopts});
    CommandResult r = adm(args);
    if (!r.ok()) return r;
    if (!spec.params.empty()) {
        CommandResult u =
            adm({"--op", "update", "--mode", "logicalunit", "--tid", t, "--lun", l, "--params", spec.params});
        if (!u.ok()) return u;
    }
    targets_[spec.tid].luns[spec.lun] = spec;
    return r;
}

void TgtdInstance::add_lun(const LunSpec& spec) {
    CommandResult r = try_add_lun(spec);
    if (!r.ok()) throw std::runtime_error(r.describe() + "\ntgtd log:\n" + log_tail());
}

CommandResult TgtdInstance::delete_lun(int tid, int lun, std::chrono::milliseconds patience, int* attempts) {
    const auto deadline = std::chrono::steady_clock::now() + patience;
    int tries = 0;
    for (;;) {
        ++tries;
        if (attempts) *attempts = tries;
        CommandResult r = adm(
            {"--op", "delete", "--mode", "logicalunit", "--tid", std::to_string(tid), "--lun", std::to_string(lun)});
        if (r.ok()) {
            auto it = targets_.find(tid);
            if (it != targets_.end()) it->second.luns.erase(lun);
            return r;
        }
        if (!contains(r.output, "still active") || std::chrono::steady_clock::now() >= deadline) return r;
        std::this_thread::sleep_for(10ms);
    }
}

CommandResult TgtdInstance::delete_target(int tid, bool force, std::chrono::milliseconds patience, int* attempts) {
    const auto deadline = std::chrono::steady_clock::now() + patience;
    int tries = 0;
    for (;;) {
        ++tries;
        if (attempts) *attempts = tries;
        std::vector<std::string> args = {"--op", "delete", "--mode", "target", "--tid", std::to_string(tid)};
        if (force) args.insert(args.begin() + 2, "--force");
        CommandResult r = adm(args);
        if (r.ok()) {
            targets_.erase(tid);
            return r;
        }
        if (!contains(r.output, "still active") || std::chrono::steady_clock::now() >= deadline) return r;
        std::this_thread::sleep_for(10ms);
    }
}

const std::string& TgtdInstance::iqn(int tid) const {
    auto it = targets_.find(tid);
    if (it == targets_.end()) throw std::logic_error("TgtdInstance: no target " + std::to_string(tid));
    return it->second.iqn;
}

std::string TgtdInstance::url(int tid, int lun) const {
    return "iscsi://127.0.0.1:" + std::to_string(port_) + "/" + iqn(tid) + "/" + std::to_string(lun);
}

std::string TgtdInstance::log() const { return read_file(log_path_); }

std::string TgtdInstance::log_since(size_t offset) const {
    std::string l = log();
    return offset < l.size() ? l.substr(offset) : std::string();
}

std::string TgtdInstance::log_tail(size_t lines) const {
    std::string l = log();
    size_t pos = l.size();
    for (size_t n = 0; n <= lines && pos > 0; ++n) {
        size_t nl = l.rfind('\n', pos - 1);
        if (nl == std::string::npos) return l;
        pos = nl;
    }
    return l.substr(pos + 1);
}

void TgtdInstance::restart() {
    if (alive()) throw std::logic_error("TgtdInstance::restart: tgtd " + std::to_string(pid_) + " is still running");
    const auto saved = targets_;
    targets_.clear();
    start(true);
    for (const auto& [tid, target] : saved) {
        add_target(tid, target.iqn);
        for (const auto& [lun, spec] : target.luns) add_lun(spec);
    }
}

void TgtdInstance::stop() {
    if (!alive()) return;
    // Every target tgtd has, not only the ones we remember (a test may have
    // made some with adm()).
    std::set<int> tids;
    for (const auto& [tid, t] : targets_) tids.insert(tid);
    CommandResult show = adm({"--op", "show", "--mode", "target"});
    if (show.timed_out) {
        // tgtd no longer answers its control socket: nothing orderly will work.
        std::fprintf(stderr, "TgtdInstance: tgtd %d does not answer tgtadm; SIGKILL\n", pid_);
        kill9();
        return;
    }
    std::istringstream lines(show.output);
    for (std::string line; std::getline(lines, line);)
        if (line.rfind("Target ", 0) == 0) tids.insert(std::atoi(line.c_str() + 7));
    const auto saved = targets_;  // kept for a later restart()
    for (int tid : tids) {
        CommandResult r = delete_target(tid, true, 10s);
        if (!r.ok()) std::fprintf(stderr, "TgtdInstance: %s\n", r.describe().c_str());
    }
    targets_ = saved;
    adm_sys({"--op", "delete", "--mode", "system"});
    reap(10s);
    if (alive()) {
        std::fprintf(stderr, "TgtdInstance: tgtd %d did not exit 10 s after 'delete system'; SIGKILL\n", pid_);
        kill9();
    }
}

}  // namespace icbd::test
