// Test-side harness for whole-system tests of blockd: each node is its own
// blockd process with its own BTRFS repository on a loop device, its own
// ports, state directory and (replicas) its own tgtd; blockctl drives them
// exactly as an operator would, through the node's control socket.
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "loop_fs.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"
#include "tgtd_instance.hpp"

namespace icbd::test {

// In CI (ICBD_FORBID_SKIP=1) a missing prerequisite fails the test instead of skipping it.
inline bool skips_forbidden() {
    const char* v = std::getenv("ICBD_FORBID_SKIP");
    return v && *v && std::string(v) != "0";
}

// Whole-system tests need BTRFS on loop devices and tgtd.
#define REQUIRE_SYSTEM()                                                                         \
    do {                                                                                         \
        std::optional<std::string> why = LoopFs::unavailable(LoopFs::Type::btrfs);               \
        if (!why) why = TgtdInstance::unavailable();                                             \
        if (why) {                                                                               \
            if (skips_forbidden()) FAIL() << "prerequisite missing: " << *why;                   \
            GTEST_SKIP() << *why;                                                                \
        }                                                                                        \
    } while (0)

// Membership settings that notice a dead replica within seconds.
inline constexpr const char* kFastKeepalive = "[membership]\nkeepalive_interval = \"1s\"\nkeepalive_tries = 3\n";

inline std::filesystem::path build_dir() {
    const char* b = std::getenv("ICBD_BUILD");
    if (!b) throw std::runtime_error("ICBD_BUILD is not set (ctest sets it)");
    return b;
}
inline std::filesystem::path blockd_bin() { return build_dir() / "blockd/daemon/blockd"; }
inline std::filesystem::path blockctl_bin() { return build_dir() / "blockd/daemon/blockctl"; }

// A TCP port nobody listens on now (the kernel's pick for port 0).
int pick_free_port();

// Polls `cond` every 100 ms until true or `deadline` passes.
inline bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds deadline) {
    auto end = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < end) {
        if (cond()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return cond();
}

struct CtlResult {
    int exit_code = -1;
    nlohmann::json json;  // parsed stdout when --json and exit 0
    std::string output;
};

class BlockdNode {
public:
    enum class Role { master, replica };
    // `certs`: a directory made by scripts/make-certs.sh holding NAME.crt/.key and ca.crt.
    BlockdNode(Role role, std::string name, const std::filesystem::path& certs, uint64_t fs_size = 768ull << 20);
    ~BlockdNode();
    BlockdNode(const BlockdNode&) = delete;
    BlockdNode& operator=(const BlockdNode&) = delete;

    // Replicas: the master they register with.
    void set_master(const BlockdNode& master);
    // Extra TOML lines appended to the config (e.g. "[membership]\nkeepalive_interval = \"1s\"").
    void set_extra_config(std::string toml) { extra_ = std::move(toml); }
    // Replicas: where client caches go (default: on the node's repository filesystem).
    void set_cache_dir(std::filesystem::path dir) { cache_dir_ = std::move(dir); }

    void start();  // writes the config, spawns blockd, waits until `blockctl status` answers
    void kill9();  // SIGKILL by PID, reaped
    void stop();   // SIGTERM, wait (SIGKILL after 20 s)
    bool running();

    // blockctl --socket S --json ARGS...
    CtlResult ctl(const std::vector<std::string>& args, std::chrono::seconds timeout = std::chrono::seconds(120)) const;
    // Like ctl, but throws with blockctl's output unless it exits 0.
    nlohmann::json ctl_ok(const std::vector<std::string>& args) const;

    const std::string& name() const { return name_; }
    std::filesystem::path repository() const { return fs_->mount_point() / "repo"; }
    std::filesystem::path version_file(const std::string& image, uint64_t v, const std::string& file = "disk.raw") const {
        return repository() / "images" / image / std::to_string(v) / file;
    }
    const std::filesystem::path& socket() const { return socket_; }
    int peer_port() const { return peer_port_; }
    int replication_port() const { return repl_port_; }
    TgtdInstance* tgtd() { return tgtd_.get(); }
    std::string log() const;
    std::filesystem::path config_file() const { return dir_.path() / "blockd.toml"; }
    void write_config();

private:
    Role role_;
    std::string name_;
    std::filesystem::path certs_;
    TempDir dir_;  // state, runtime, config, log
    std::unique_ptr<LoopFs> fs_;
    std::unique_ptr<TgtdInstance> tgtd_;
    std::filesystem::path socket_;
    int peer_port_ = 0;
    int repl_port_ = 0;
    std::string master_address_, master_name_;
    std::string extra_;
    std::filesystem::path cache_dir_;
    pid_t pid_ = -1;
};

// Certificates for `names` (and a CA) in `dir`, via scripts/make-certs.sh.
void make_certs(const std::filesystem::path& dir, const std::vector<std::string>& names);

// sha256 of a file (sha256sum).
std::string sha256_of(const std::filesystem::path& file);

}  // namespace icbd::test
