// TgtdInstance: a private tgtd (Debian's /usr/sbin/tgtd) running the uninstalled
// bs_icbd module from the build tree, with its own portal and control socket,
// so several can run side by side with other people's tgtd on the machine.
// Knows its targets and LUNs so it can be killed with SIGKILL and restarted with
// the same configuration (the crash test). Stopped in the destructor; and if
// the test program itself is killed, tgtd dies with the thread that started it
// (PR_SET_PDEATHSIG in icbd_tgtd_launcher): create it on a thread that outlives it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "run_command.hpp"
#include "temp_dir.hpp"

namespace icbd::test {

struct TgtdOptions {
    Env env;                   // extra environment for tgtd only
    bool no_io_uring = false;  // io_uring_setup(2) refused by seccomp, as in many containers
};

struct LunSpec {
    LunSpec() = default;
    LunSpec(int t, int l, std::filesystem::path p, std::string opts = {}, std::string prms = {},
            std::string type = "icbd")
        : tid(t),
          lun(l),
          path(std::move(p)),
          bstype(std::move(type)),
          bsopts(std::move(opts)),
          params(std::move(prms)) {}

    int tid = 1;
    int lun = 1;
    std::filesystem::path path;
    std::string bstype = "icbd";
    std::string bsopts;  // --bsopts, omitted when empty
    std::string params;  // applied with `--op update --params` after creation, e.g. "thin_provisioning=1"
};

class TgtdInstance {
public:
    // Why no tgtd can run here (not root, tgt not installed, module not built,
    // ICBD_BUILD unset), or nullopt.
    static std::optional<std::string> unavailable();
    // $ICBD_BUILD/modules: bs_icbd.so and libicbd_tgt_preload.so.
    static std::filesystem::path module_dir();

    // Starts tgtd and waits until it answers tgtadm; throws if it does not.
    explicit TgtdInstance(TgtdOptions options = {});
    ~TgtdInstance();
    TgtdInstance(const TgtdInstance&) = delete;
    TgtdInstance& operator=(const TgtdInstance&) = delete;

    // New target `iqn` as `tid`, open to every initiator. Throws on failure.
    void add_target(int tid, const std::string& iqn);
    // New LUN (+ params). Returns tgtadm's result; the LUN is remembered only
    // if it was created. Error-path tests look at the result themselves.
    CommandResult try_add_lun(const LunSpec& spec);
    // As try_add_lun, but throws with tgtadm's output and the log's tail.
    void add_lun(const LunSpec& spec);

    // Deletes a LUN / a target, retrying while tgtd says it is still active
    // (tgtd refuses while commands are queued), for at most `patience`.
    // Returns the last tgtadm result; `attempts` gets the number of tries.
    CommandResult delete_lun(int tid, int lun, std::chrono::milliseconds patience = std::chrono::seconds(10),
                             int* attempts = nullptr);
    CommandResult delete_target(int tid, bool force, std::chrono::milliseconds patience = std::chrono::seconds(10),
                                int* attempts = nullptr);

    // tgtadm -C <control port> --lld iscsi ARGS (adm) or without --lld (adm_sys).
    CommandResult adm(const std::vector<std::string>& args) const;
    CommandResult adm_sys(const std::vector<std::string>& args) const;

    const std::string& iqn(int tid) const;
    // iscsi://127.0.0.1:PORT/IQN/LUN
    std::string url(int tid, int lun) const;
    int port() const { return port_; }
    int control_port() const { return ctl_; }
    pid_t pid() const { return pid_; }
    // True while the process runs (reaps it when it has died).
    bool alive();

    const std::filesystem::path& log_path() const { return log_path_; }
    // tgtd's stdout+stderr over all its runs (restarts append).
    std::string log() const;
    // The log from byte `offset` on (offset = an earlier log().size()).
    std::string log_since(size_t offset) const;
    std::string log_tail(size_t lines = 40) const;

    // SIGKILL by PID and reap: a crash with no shutdown at all.
    void kill9();
    // Starts tgtd again after kill9() or stop(), on the same portal and control
    // port when they are still free (else new ones: use url() again), and
    // re-creates every target and LUN it had.
    void restart();
    // Orderly stop: force-delete each target, delete the system, wait; SIGKILL
    // if tgtd has not exited after 10 s.
    void stop();

private:
    struct Target {
        std::string iqn;
        std::map<int, LunSpec> luns;
    };

    void start(bool same_ports);
    bool spawn_and_wait(std::string* why);
    void reap(std::chrono::milliseconds patience);
    CommandResult tgtadm(const std::vector<std::string>& args, bool lld) const;

    TgtdOptions options_;
    TempDir dir_;  // control socket, its lock file and the log
    std::filesystem::path log_path_;
    int port_ = 0;
    int ctl_ = 0;
    pid_t pid_ = -1;
    std::map<int, Target> targets_;
};

}  // namespace icbd::test
