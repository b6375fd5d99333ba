// TgtAdmin: runs Debian's tgtadm (fork/exec, no shell) against one tgtd and
// turns its text into targets, LUNs, ACLs, accounts and session counts.
#include "tgt_admin.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>
#include <thread>

#include "icbd/unique_fd.hpp"

namespace icbd::node {

namespace {

using namespace std::chrono_literals;

// A tgtd stuck in a module must not hang blockd's control path.
constexpr std::chrono::seconds kCommandTimeout{30};

bool contains(const std::string& haystack, const char* needle) { return haystack.find(needle) != std::string::npos; }

std::string trim(const std::string& s) {
    size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return {};
    size_t e = s.find_last_not_of(" \t\r\n");
    return s.substr(b, e - b + 1);
}

size_t indent_of(const std::string& line) {
    size_t n = line.find_first_not_of(' ');
    return n == std::string::npos ? line.size() : n;
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// tgtadm's messages (usr/tgtadm.c) mapped to errno so callers can tell
// "already there" and "busy" from real failures.
int errno_of(const std::string& text) {
    if (contains(text, "already exists")) return EEXIST;
    if (contains(text, "can't find") || contains(text, "does not exist")) return ENOENT;
    if (contains(text, "still active")) return EBUSY;
    if (contains(text, "unknown parameter") || contains(text, "invalid request") || contains(text, "not supported"))
        return EINVAL;
    if (contains(text, "tgt daemon") || contains(text, "can't connect") || contains(text, "connect to"))
        return ECONNREFUSED;
    if (contains(text, "out of memory")) return ENOMEM;
    return EIO;
}

std::string one_line(const std::string& text) {
    std::string t = trim(text);
    std::replace(t.begin(), t.end(), '\n', ' ');
    return t.empty() ? std::string("no output") : t;
}

std::string target_label(int tid) { return "tgt target " + std::to_string(tid); }

bool is_hex(const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isxdigit(c) != 0; });
}

Status invalid_name(const std::string& name, const std::string& why) {
    return Status::error(EINVAL, "iSCSI name '" + name + "': " + why);
}

// "YYYY-MM" of an iqn: the month the naming authority owned its domain.
bool valid_year_month(const std::string& s) {
    if (s.size() != 7 || s[4] != '-') return false;
    for (size_t i : {0, 1, 2, 3, 5, 6})
        if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
    int month = (s[5] - '0') * 10 + (s[6] - '0');
    return month >= 1 && month <= 12;
}

Status validate_iqn(const std::string& name) {
    // iqn.YYYY-MM.reversed.domain[:unique]
    const std::string rest = name.substr(4);
    if (rest.size() < 9 || !valid_year_month(rest.substr(0, 7)) || rest[7] != '.')
        return invalid_name(name, "expected 'iqn.YYYY-MM.reversed.domain[:name]' (RFC 3720 3.2.6.3.1)");
    const size_t colon = rest.find(':');
    const std::string domain = rest.substr(8, colon == std::string::npos ? std::string::npos : colon - 8);
    if (domain.empty()) return invalid_name(name, "no naming authority (reversed domain name) after the date");
    std::istringstream labels(domain);
    for (std::string label; std::getline(labels, label, '.');) {
        if (label.empty()) return invalid_name(name, "empty label in the naming authority '" + domain + "'");
        for (unsigned char c : label)
            if (!std::islower(c) && !std::isdigit(c) && c != '-')
                return invalid_name(name, "naming authority '" + domain + "' may hold only a-z, 0-9, '-' and '.'");
    }
    if (domain.back() == '.') return invalid_name(name, "naming authority ends with '.'");
    if (colon != std::string::npos && colon + 1 == rest.size()) return invalid_name(name, "nothing after ':'");
    return Status::ok();
}

}  // namespace

TgtAdmin::TgtAdmin(int control_port, std::string tgtadm) : control_port_(control_port), tgtadm_(std::move(tgtadm)) {}

TgtAdmin::Output TgtAdmin::run(const std::vector<std::string>& args, bool lld) const {
    std::vector<std::string> argv = {tgtadm_};
    if (control_port_ != 0) argv.insert(argv.end(), {"-C", std::to_string(control_port_)});
    if (lld) argv.insert(argv.end(), {"--lld", "iscsi"});
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);

    Output out;
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        out.text = std::string("pipe: ") + std::strerror(errno);
        return out;
    }
    UniqueFd rd(p[0]), wr(p[1]);
    const pid_t pid = fork();
    if (pid < 0) {
        out.text = std::string("fork: ") + std::strerror(errno);
        return out;
    }
    if (pid == 0) {
        // Only async-signal-safe calls between fork and exec (blockd has threads).
        int devnull = ::open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        dup2(wr.get(), 1);
        dup2(wr.get(), 2);
        close_range(3, ~0U, 0);
        signal(SIGPIPE, SIG_DFL);
        execv(cargv[0], cargv.data());
        const char msg[] = "tgtadm: exec failed\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        _exit(127);
    }
    wr.reset();

    const auto deadline = std::chrono::steady_clock::now() + kCommandTimeout;
    bool timed_out = false;
    char buf[4096];
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            timed_out = true;
            break;
        }
        pollfd pfd{rd.get(), POLLIN, 0};
        int r = poll(&pfd, 1, static_cast<int>(left.count()));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            timed_out = r == 0;
            break;
        }
        ssize_t n = read(rd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        out.text.append(buf, static_cast<size_t>(n));
    }
    if (timed_out) kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (timed_out) {
        out.status = -1;
        out.text += "\n(tgtadm killed: no answer within " + std::to_string(kCommandTimeout.count()) + " s)";
    } else if (WIFEXITED(status)) {
        out.status = WEXITSTATUS(status);
        if (out.status == 127 && contains(out.text, "exec failed")) out.text = tgtadm_ + ": cannot be executed";
    } else {
        out.status = 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    return out;
}

bool TgtAdmin::reachable() const { return run({"--op", "show", "--mode", "sys"}, false).status == 0; }

Result<std::vector<TgtTarget>> TgtAdmin::targets() const {
    Output o = run({"--op", "show", "--mode", "target"});
    if (o.status != 0)
        return Status::error(errno_of(o.text), "tgtd (control port " + std::to_string(control_port_) +
                                                   "): listing targets: " + one_line(o.text));
    return parse_target_show(o.text);
}

Result<std::optional<TgtTarget>> TgtAdmin::target(int tid) const {
    // `--op show --mode target --tid N` prints the target's parameters, not
    // its LUNs and sessions: filter the full listing instead.
    auto all = targets();
    if (!all) return all.status();
    for (auto& t : *all)
        if (t.tid == tid) return std::optional<TgtTarget>(std::move(t));
    return std::optional<TgtTarget>();
}

Status TgtAdmin::create_target(int tid, const std::string& iqn) {
    if (Status s = validate_iscsi_name(iqn); !s) return s;
    Output o = run({"--op", "new", "--mode", "target", "--tid", std::to_string(tid), "-T", iqn});
    if (o.status != 0)
        return Status::error(errno_of(o.text), target_label(tid) + " (" + iqn + "): creating: " + one_line(o.text));
    return Status::ok();
}

Status TgtAdmin::delete_target(int tid, bool force) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    for (;;) {
        if (!force) {
            auto t = target(tid);
            if (!t) return t.status();
            if (!*t) return Status::error(ENOENT, target_label(tid) + ": deleting: no such target");
            if ((*t)->sessions > 0)
                return Status::error(EBUSY, target_label(tid) + " (" + (*t)->iqn + "): deleting: " +
                                                std::to_string((*t)->sessions) + " iSCSI session(s) open");
        }
        std::vector<std::string> args = {"--op", "delete", "--mode", "target", "--tid", std::to_string(tid)};
        if (force) args.insert(args.begin() + 2, "--force");
        Output o = run(args);
        if (o.status == 0) return Status::ok();
        const int err = errno_of(o.text);
        // "still active": a session logged in, or commands are still queued.
        if (err != EBUSY || std::chrono::steady_clock::now() >= deadline)
            return Status::error(err, target_label(tid) + ": deleting: " + one_line(o.text));
        std::this_thread::sleep_for(20ms);
    }
}

Status TgtAdmin::create_lun(int tid, int lun, const std::string& backing_store, const std::string& bstype,
                            const std::string& bsopts) {
    std::vector<std::string> args = {"--op",  "new", "--mode", "logicalunit", "--tid",    std::to_string(tid),
                                     "--lun", std::to_string(lun), "--backing-store", backing_store};
    if (!bstype.empty()) args.insert(args.end(), {"--bstype", bstype});
    if (!bsopts.empty()) args.insert(args.end(), {"--bsopts", bsopts});
    Output o = run(args);
    if (o.status != 0)
        return Status::error(errno_of(o.text), target_label(tid) + " LUN " + std::to_string(lun) + " (" +
                                                   backing_store + "): creating: " + one_line(o.text) +
                                                   " (tgtd's log has the backing store's reason)");
    return Status::ok();
}

Status TgtAdmin::delete_lun(int tid, int lun, std::chrono::milliseconds patience) {
    const auto deadline = std::chrono::steady_clock::now() + patience;
    for (;;) {
        Output o = run({"--op", "delete", "--mode", "logicalunit", "--tid", std::to_string(tid), "--lun",
                        std::to_string(lun)});
        if (o.status == 0) return Status::ok();
        const int err = errno_of(o.text);
        // tgtd refuses while commands of the LUN are queued: they drain quickly.
        if (err != EBUSY || std::chrono::steady_clock::now() >= deadline)
            return Status::error(err, target_label(tid) + " LUN " + std::to_string(lun) + ": deleting: " +
                                          one_line(o.text));
        std::this_thread::sleep_for(20ms);
    }
}

Status TgtAdmin::bind_initiator_name(int tid, const std::string& initiator) {
    if (Status s = validate_iscsi_name(initiator); !s) return s;
    Output o = run({"--op", "bind", "--mode", "target", "--tid", std::to_string(tid), "-Q", initiator});
    if (o.status != 0)
        return Status::error(errno_of(o.text),
                             target_label(tid) + ": binding initiator '" + initiator + "': " + one_line(o.text));
    return Status::ok();
}

Status TgtAdmin::unbind_initiator_name(int tid, const std::string& initiator) {
    Output o = run({"--op", "unbind", "--mode", "target", "--tid", std::to_string(tid), "-Q", initiator});
    if (o.status != 0)
        return Status::error(errno_of(o.text),
                             target_label(tid) + ": unbinding initiator '" + initiator + "': " + one_line(o.text));
    return Status::ok();
}

Result<std::vector<std::string>> TgtAdmin::accounts() const {
    Output o = run({"--op", "show", "--mode", "account"});
    if (o.status != 0)
        return Status::error(errno_of(o.text), "tgtd (control port " + std::to_string(control_port_) +
                                                   "): listing accounts: " + one_line(o.text));
    std::vector<std::string> users;
    std::istringstream in(o.text);
    for (std::string line; std::getline(in, line);) {
        if (indent_of(line) == 0) continue;  // "Account list:"
        std::string u = trim(line);
        if (!u.empty()) users.push_back(u);
    }
    return users;
}

Status TgtAdmin::bind_chap(int tid, const std::string& user, const std::string& secret) {
    const std::string what = target_label(tid) + ": CHAP user '" + user + "'";
    if (user.empty() || secret.empty()) return Status::error(EINVAL, what + ": user and secret must not be empty");
    auto users = accounts();
    if (!users) return users.status();
    std::vector<int> bound_to;  // where the account must stay bound after a secret change
    if (std::find(users->begin(), users->end(), user) != users->end()) {
        // tgtadm cannot update a password: delete (unbinds everywhere) and
        // re-create, then bind it again where it was.
        auto all = targets();
        if (!all) return all.status();
        for (const auto& t : *all)
            if (t.tid != tid && std::find(t.accounts.begin(), t.accounts.end(), user) != t.accounts.end())
                bound_to.push_back(t.tid);
        if (Status s = delete_account(user); !s) return s;
    }
    Output o = run({"--op", "new", "--mode", "account", "--user", user, "--password", secret});
    if (o.status != 0) return Status::error(errno_of(o.text), what + ": creating the account: " + one_line(o.text));
    bound_to.push_back(tid);
    for (int t : bound_to) {
        Output b = run({"--op", "bind", "--mode", "account", "--tid", std::to_string(t), "--user", user});
        if (b.status != 0)
            return Status::error(errno_of(b.text), target_label(t) + ": binding CHAP user '" + user +
                                                       "': " + one_line(b.text));
    }
    return Status::ok();
}

Status TgtAdmin::unbind_chap(int tid, const std::string& user) {
    Output o = run({"--op", "unbind", "--mode", "account", "--tid", std::to_string(tid), "--user", user});
    if (o.status != 0)
        return Status::error(errno_of(o.text),
                             target_label(tid) + ": unbinding CHAP user '" + user + "': " + one_line(o.text));
    return Status::ok();
}

Status TgtAdmin::delete_account(const std::string& user) {
    Output o = run({"--op", "delete", "--mode", "account", "--user", user});
    if (o.status != 0)
        return Status::error(errno_of(o.text), "CHAP user '" + user + "': deleting: " + one_line(o.text));
    return Status::ok();
}

std::vector<TgtTarget> parse_target_show(const std::string& text) {
    enum class Section { none, system, nexus, lun, account, acl, other };
    std::vector<TgtTarget> out;
    Section section = Section::none;
    std::optional<TgtLun> lun;
    auto flush_lun = [&] {
        if (lun && lun->lun != 0 && !out.empty()) out.back().luns.push_back(*lun);
        lun.reset();
    };
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        const size_t indent = indent_of(line);
        const std::string t = trim(line);
        if (t.empty()) continue;
        if (indent == 0) {
            flush_lun();
            section = Section::none;
            // "Target 1: iqn.2026-12.org.icbd:pc01"
            if (starts_with(t, "Target ")) {
                TgtTarget target;
                target.tid = std::atoi(t.c_str() + 7);
                size_t colon = t.find(": ");
                if (colon != std::string::npos) target.iqn = trim(t.substr(colon + 2));
                out.push_back(std::move(target));
            }
            continue;
        }
        if (out.empty()) continue;
        TgtTarget& target = out.back();
        if (indent == 4) {
            flush_lun();
            section = t == "System information:"       ? Section::system
                      : t == "I_T nexus information:" ? Section::nexus
                      : t == "LUN information:"       ? Section::lun
                      : t == "Account information:"   ? Section::account
                      : t == "ACL information:"       ? Section::acl
                                                      : Section::other;
            continue;
        }
        switch (section) {
            case Section::nexus:
                if (indent == 8 && starts_with(t, "I_T nexus:")) ++target.sessions;
                break;
            case Section::lun:
                if (indent == 8 && starts_with(t, "LUN:")) {
                    flush_lun();
                    lun = TgtLun{};
                    lun->lun = std::atoi(t.c_str() + 4);
                } else if (lun) {
                    // Values are taken verbatim after ": " (a path may hold spaces).
                    const std::string rest = line.substr(indent);
                    auto value = [&](const char* key) { return trim(rest.substr(std::strlen(key))); };
                    if (starts_with(rest, "Backing store type:"))
                        lun->bstype = value("Backing store type:");
                    else if (starts_with(rest, "Backing store path:"))
                        lun->backing_store = value("Backing store path:");
                    else if (starts_with(rest, "Backing store flags:"))
                        lun->bsoflags = value("Backing store flags:");
                    else if (starts_with(rest, "Backing store options:") || starts_with(rest, "Bsopts:"))
                        lun->bsopts = trim(rest.substr(rest.find(':') + 1));
                }
                break;
            case Section::account:
                // Outgoing accounts are marked; only incoming ones authenticate initiators.
                if (t.size() < 11 || t.compare(t.size() - 11, 11, " (outgoing)") != 0) target.accounts.push_back(t);
                break;
            case Section::acl:
                // tgt lists addresses (-I) and initiator names (-Q) together.
                target.acl.push_back(t);
                if (starts_with(t, "iqn.") || starts_with(t, "eui.") || starts_with(t, "naa."))
                    target.initiator_names.push_back(t);
                break;
            default:
                break;
        }
    }
    flush_lun();
    return out;
}

Status validate_iscsi_name(const std::string& name) {
    if (name.empty()) return invalid_name(name, "empty");
    if (name.size() > 223) return invalid_name(name, "longer than 223 bytes (RFC 3720 3.2.6.1)");
    for (unsigned char c : name) {
        if (std::isspace(c)) return invalid_name(name, "contains white space");
        if (std::isupper(c) && !starts_with(name, "eui.") && !starts_with(name, "naa."))
            return invalid_name(name, "upper-case letters are not allowed (names are normalised to lower case)");
        if (!std::isalnum(c) && c != '.' && c != '-' && c != ':')
            return invalid_name(name, std::string("character '") + static_cast<char>(c) +
                                          "' is not allowed (only a-z, 0-9, '.', '-', ':')");
    }
    if (starts_with(name, "iqn.")) return validate_iqn(name);
    if (starts_with(name, "eui.")) {
        std::string hex = name.substr(4);
        if (hex.size() != 16 || !is_hex(hex)) return invalid_name(name, "'eui.' must be followed by 16 hex digits");
        return Status::ok();
    }
    if (starts_with(name, "naa.")) {
        std::string hex = name.substr(4);
        if ((hex.size() != 16 && hex.size() != 32) || !is_hex(hex))
            return invalid_name(name, "'naa.' must be followed by 16 or 32 hex digits");
        return Status::ok();
    }
    return invalid_name(name, "must start with 'iqn.', 'eui.' or 'naa.'");
}

}  // namespace icbd::node
