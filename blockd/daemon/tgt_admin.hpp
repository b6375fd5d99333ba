// Drives a tgtd through Debian's `tgtadm` (the only stable control interface
// tgt offers): targets, LUNs, initiator ACLs, CHAP accounts, and the sessions
// a target has. Errors name the target and carry tgtadm's own message.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "icbd/status.hpp"

namespace icbd::node {

struct TgtLun {
    int lun = 0;
    std::string backing_store;  // path ("None" for LUN 0 is skipped)
    std::string bstype;         // "icbd", "rdwr", ...
    std::string bsopts;         // empty: tgt 1.0.85's show does not print --bsopts
    std::string bsoflags;       // "Backing store flags" (--bsoflags: "sync", "direct")
};

struct TgtTarget {
    int tid = 0;
    std::string iqn;
    std::vector<TgtLun> luns;              // LUN 0 (the controller) excluded
    std::vector<std::string> acl;          // initiator addresses/names bound ("ALL" included)
    std::vector<std::string> initiator_names;  // bound initiator names (-Q)
    std::vector<std::string> accounts;     // incoming CHAP users bound
    int sessions = 0;                      // I_T nexuses (iSCSI sessions) now
};

class TgtAdmin {
public:
    // control_port: tgtadm -C N (0: the default control socket of the system tgtd).
    explicit TgtAdmin(int control_port, std::string tgtadm = "/usr/sbin/tgtadm");

    // True when tgtd answers (tgtadm --op show --mode sys).
    bool reachable() const;
    // Every target with its LUNs, ACLs, accounts and session count.
    Result<std::vector<TgtTarget>> targets() const;
    Result<std::optional<TgtTarget>> target(int tid) const;

    Status create_target(int tid, const std::string& iqn);
    // Deletes the target; refuses (EBUSY) while it has a session unless force.
    Status delete_target(int tid, bool force = false);
    // bsopts may be empty. Errors carry tgtadm's text (e.g. the module's reason).
    Status create_lun(int tid, int lun, const std::string& backing_store, const std::string& bstype,
                      const std::string& bsopts);
    // Retries while tgtd answers "this logical unit is still active" for up to `patience`.
    Status delete_lun(int tid, int lun, std::chrono::milliseconds patience = std::chrono::seconds(30));
    // ACL by initiator name (tgtadm --op bind -Q IQN).
    Status bind_initiator_name(int tid, const std::string& initiator);
    Status unbind_initiator_name(int tid, const std::string& initiator);
    // Incoming CHAP: creates the account if missing (or updates its secret) and binds it.
    Status bind_chap(int tid, const std::string& user, const std::string& secret);
    Status unbind_chap(int tid, const std::string& user);
    // Deletes an account (after unbinding it everywhere).
    Status delete_account(const std::string& user);
    // Every CHAP account tgtd knows (bound or not).
    Result<std::vector<std::string>> accounts() const;

    int control_port() const { return control_port_; }

private:
    struct Output {
        int status = -1;
        std::string text;  // stdout + stderr
    };
    Output run(const std::vector<std::string>& args, bool lld = true) const;
    int control_port_;
    std::string tgtadm_;
};

// Parses `tgtadm --lld iscsi --op show --mode target` output (tests feed text).
std::vector<TgtTarget> parse_target_show(const std::string& text);

// iSCSI name syntax (RFC 3720 3.2.6): "iqn.YYYY-MM.reversed.domain[:anything]" or
// "eui.<16 hex>" or "naa.<16|32 hex>"; lower-case, no spaces. Error says why.
Status validate_iscsi_name(const std::string& name);

}  // namespace icbd::node
