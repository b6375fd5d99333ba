// run_command: runs an external program (tgtadm, losetup, mkfs, mount...) and
// captures its exit code and combined output, for tests and their helpers.
#pragma once

#include <spawn.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace icbd::test {

struct CommandResult {
    std::string command;  // the command line, for messages
    int exit_code = -1;   // exit status; 128+N when killed by signal N; -1 when it could not start
    std::string output;   // stdout and stderr, interleaved as the program wrote them
    bool timed_out = false;

    bool ok() const { return exit_code == 0; }
    // "`cmd` exited with N: output" — what a failure message should say.
    std::string describe() const;
};

using Env = std::vector<std::pair<std::string, std::string>>;

// posix_spawn's attributes and file actions as RAII objects (run_command and
// TgtdInstance both spawn).
struct SpawnAttr {
    posix_spawnattr_t a;
    SpawnAttr() { posix_spawnattr_init(&a); }
    ~SpawnAttr() { posix_spawnattr_destroy(&a); }
    SpawnAttr(const SpawnAttr&) = delete;
    SpawnAttr& operator=(const SpawnAttr&) = delete;
};
struct SpawnActions {
    posix_spawn_file_actions_t a;
    SpawnActions() { posix_spawn_file_actions_init(&a); }
    ~SpawnActions() { posix_spawn_file_actions_destroy(&a); }
    SpawnActions(const SpawnActions&) = delete;
    SpawnActions& operator=(const SpawnActions&) = delete;
};

// Runs argv[0] (looked up in PATH) with extra environment variables `env`.
// The program gets /dev/null as stdin and none of our other file descriptors
// (so a tgtd or a pipe of another thread never leaks into it). It is killed
// with SIGKILL if it runs longer than `timeout`: a helper that hangs must not
// hang the test.
CommandResult run_command(const std::vector<std::string>& argv, const Env& env = {},
                          std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Like run_command, but throws std::runtime_error(describe()) unless it exits 0.
CommandResult run_checked(const std::vector<std::string>& argv, const Env& env = {},
                          std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Quotes argv for messages: a b 'c d'.
std::string join_command(const std::vector<std::string>& argv);

// The process environment plus `extra` (later entries win), as posix_spawn wants it.
// `storage` keeps the strings the returned pointers point into.
std::vector<char*> make_environment(const Env& extra, std::vector<std::string>& storage);

// True if `program` is an executable found in PATH (or an absolute path that is).
bool have_program(const std::string& program);

}  // namespace icbd::test
