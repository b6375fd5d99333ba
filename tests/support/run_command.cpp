// run_command: external programs for tests, spawned without fork() (safe while
// other threads of the test run) and never allowed to hang a test.
#include "run_command.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>

#include "icbd/unique_fd.hpp"

extern char** environ;

namespace icbd::test {
namespace {

std::string quote(const std::string& s) {
    if (!s.empty() && s.find_first_of(" \t'\"\\;$&|<>*?()") == std::string::npos) return s;
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}


}  // namespace

std::string join_command(const std::vector<std::string>& argv) {
    std::string out;
    for (const auto& a : argv) {
        if (!out.empty()) out += ' ';
        out += quote(a);
    }
    return out;
}

std::string CommandResult::describe() const {
    std::string s = "`" + command + "` ";
    if (timed_out)
        s += "timed out and was killed";
    else if (exit_code < 0)
        s += "could not be started";
    else if (exit_code >= 128)
        s += "was killed by signal " + std::to_string(exit_code - 128);
    else
        s += "exited with " + std::to_string(exit_code);
    if (!output.empty()) s += ": " + output;
    return s;
}

std::vector<char*> make_environment(const Env& extra, std::vector<std::string>& storage) {
    std::map<std::string, std::string> vars;
    for (char** e = environ; e && *e; ++e) {
        std::string kv(*e);
        size_t eq = kv.find('=');
        if (eq != std::string::npos) vars[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    for (const auto& [k, v] : extra) vars[k] = v;
    storage.clear();
    storage.reserve(vars.size());
    for (const auto& [k, v] : vars) storage.push_back(k + "=" + v);
    std::vector<char*> out;
    for (auto& s : storage) out.push_back(s.data());
    out.push_back(nullptr);
    return out;
}

CommandResult run_command(const std::vector<std::string>& argv, const Env& env, std::chrono::milliseconds timeout) {
    CommandResult r;
    r.command = join_command(argv);
    if (argv.empty()) return r;

    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        r.output = std::string("pipe: ") + std::strerror(errno);
        return r;
    }
    UniqueFd rd(p[0]), wr(p[1]);

    SpawnActions fa;
    posix_spawn_file_actions_addopen(&fa.a, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa.a, wr.get(), 1);
    posix_spawn_file_actions_adddup2(&fa.a, wr.get(), 2);
    posix_spawn_file_actions_addclosefrom_np(&fa.a, 3);

    // The child gets default SIGPIPE handling although the test process ignores
    // it (IscsiClient does), and no blocked signals.
    SpawnAttr attr;
    sigset_t pipe, none;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr.a, &pipe);
    posix_spawnattr_setsigmask(&attr.a, &none);
    posix_spawnattr_setflags(&attr.a, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

    std::vector<std::string> args(argv);
    std::vector<char*> cargs;
    for (auto& a : args) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    std::vector<std::string> env_storage;
    std::vector<char*> cenv = make_environment(env, env_storage);

    pid_t pid = -1;
    int err = posix_spawnp(&pid, cargs[0], &fa.a, &attr.a, cargs.data(), cenv.data());
    wr.reset();
    if (err != 0) {
        r.output = std::string("spawn: ") + std::strerror(err);
        return r;
    }

    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            r.timed_out = true;
            kill(pid, SIGKILL);  // our own child, by PID
            break;
        }
        pollfd pfd{rd.get(), POLLIN, 0};
        int n = poll(&pfd, 1, static_cast<int>(left.count()));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) continue;
        ssize_t got = read(rd.get(), buf, sizeof buf);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        r.output.append(buf, static_cast<size_t>(got));
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status))
        r.exit_code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        r.exit_code = 128 + WTERMSIG(status);
    while (!r.output.empty() && (r.output.back() == '\n' || r.output.back() == ' ')) r.output.pop_back();
    return r;
}

CommandResult run_checked(const std::vector<std::string>& argv, const Env& env, std::chrono::milliseconds timeout) {
    CommandResult r = run_command(argv, env, timeout);
    if (!r.ok()) throw std::runtime_error(r.describe());
    return r;
}

bool have_program(const std::string& program) {
    if (program.find('/') != std::string::npos) return access(program.c_str(), X_OK) == 0;
    const char* path = std::getenv("PATH");
    std::string dirs = path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    size_t start = 0;
    while (start <= dirs.size()) {
        size_t end = dirs.find(':', start);
        std::string dir = dirs.substr(start, end == std::string::npos ? std::string::npos : end - start);
        std::string full = (dir.empty() ? "." : dir) + "/" + program;
        struct stat st {};
        if (stat(full.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(full.c_str(), X_OK) == 0) return true;
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return false;
}

}  // namespace icbd::test
