// extern "C" face of Lun for the tgtd glue. No exception crosses it: every
// entry point runs its body through guarded(), which turns one into the
// call's error return and a log line naming the LUN and the cause (contract
// per function in include/icbd/lun_c_api.h).
#include "icbd/lun_c_api.h"

#include <sys/resource.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <system_error>

#include "icbd/journal_log.hpp"
#include "icbd/log.hpp"
#include "icbd/lun.hpp"
#include "lun_c_api_seams.hpp"

struct icbd_lun {
    std::unique_ptr<icbd::Lun> lun;
    icbd_lun_host host{};
    // Every call into the LUN logs under a LogScope of these: each line names
    // target and LUN (tgtd's log), with TARGET= and LUN= in the journal.
    std::string log_label;
    icbd::LogFields log_fields;
    // An exception left the LUN's code: new commands are refused from then on
    // (what it was doing may be half done); those it took still complete.
    bool failed = false;
    unsigned exceptions_logged = 0;
};

namespace {

icbd::LunSeams g_seams;  // tests only (lun_c_api_seams.hpp)

// io_uring, its eventfd, the cache's idle timer, the overlay (or backing file)
// and the cache; the golden file is one for every LUN over it.
constexpr int kLunDescriptors = 5;

// Out of descriptors is an operator's problem, not the LUN's: say which limit
// was hit and what to raise, since the failing call alone (an eventfd, a cache
// file) does not tell that every other LUN holds descriptors too.
std::string descriptor_hint(int code) {
    if (code == ENFILE) return " (the system-wide limit of open files, sysctl fs.file-max, is reached)";
    if (code != EMFILE) return {};
    rlimit rl{};
    std::string limit = ::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                            ? std::to_string(rl.rlim_cur)
                            : "?";
    return " (tgtd has reached its limit of " + limit + " open files, RLIMIT_NOFILE; each icbd LUN holds up to " +
           std::to_string(kLunDescriptors) + ", each iSCSI session one more: raise LimitNOFILE of tgt.service)";
}

void copy_error(const icbd::Status& s, char* err, size_t errlen) {
    if (err && errlen)
        std::snprintf(err, errlen, "%s%s", s.message().c_str(), descriptor_hint(s.code()).c_str());
}

void (*g_c_sink)(int, const char*) = nullptr;
void c_sink_adapter(icbd::LogLevel level, const char* msg) { g_c_sink(static_cast<int>(level), msg); }

// tgtd under systemd (its stderr the journal's stream): the LUNs' lines go to
// the journal as tgtd's own, with their TARGET= and LUN= fields; the host's
// sink (tgtd's log) when journald does not take them.
void journal_sink(icbd::LogLevel level, std::string_view message, const icbd::LogFields& fields) {
    std::string line = "bs_icbd: " + std::string(message);
    if (icbd::send_to_journal(icbd::journal_fields(level, line, fields, "tgtd"))) return;
    g_c_sink(static_cast<int>(level), std::string(message).c_str());
}

// bs_icbd names a LUN "tgt T lun L"; T is tgtd's tid.
icbd::LogFields fields_of(const std::string& name) {
    unsigned tid = 0;
    unsigned long long lun = 0;
    int used = 0;
    if (std::sscanf(name.c_str(), "tgt %u lun %llu%n", &tid, &lun, &used) == 2 && name[used] == '\0')
        return {.target = std::to_string(tid), .lun = lun};
    return {};
}

icbd::LogScope log_scope(const icbd_lun* l) { return icbd::LogScope(l->log_fields, l->log_label); }

void complete_adapter(void* ctx, void* cookie, const icbd::ScsiResult& r) {
    auto* l = static_cast<icbd_lun*>(ctx);
    icbd_result out{r.status, r.sense_key, r.asc, r.has_info, r.info};
    l->host.complete(l->host.ctx, cookie, &out);
}

void kick_adapter(void* ctx) {
    auto* l = static_cast<icbd_lun*>(ctx);
    l->host.kick(l->host.ctx);
}

// A LUN whose code keeps throwing (say, on every completion pass) must not
// flood tgtd's log.
constexpr unsigned kMaxExceptionLines = 10;

// The exception being handled as an errno and words. Allocates nothing: it
// runs when memory may be gone.
int describe_current_exception(const char** cause) noexcept {
    try {
        throw;
    } catch (const std::bad_alloc&) {
        *cause = "out of memory (std::bad_alloc)";
        return ENOMEM;
    } catch (const std::system_error& e) {
        *cause = e.what();
        const int v = e.code().value();
        const bool is_errno = e.code().category() == std::generic_category() ||
                              e.code().category() == std::system_category();
        return is_errno && v > 0 ? v : EIO;
    } catch (const std::exception& e) {
        *cause = e.what();
    } catch (...) {
        *cause = "an exception of unknown type";
    }
    return EIO;
}

// Logs the exception being handled, naming the LUN (`label`), the C call and
// what follows from it; returns its errno. Never throws: when logging itself
// fails, the line goes to the host's sink or stderr as it is.
int contain_exception(icbd_lun* lun, const char* label, const char* call, const char* consequence) noexcept {
    const char* cause = "";
    const int code = describe_current_exception(&cause);
    if (lun) {
        lun->failed = true;
        if (lun->exceptions_logged >= kMaxExceptionLines) return code;
        ++lun->exceptions_logged;
    }
    const bool last = lun && lun->exceptions_logged == kMaxExceptionLines;
    char line[768];
    std::snprintf(line, sizeof line, "%s: %s: internal error: %s; %s%s", label && *label ? label : "LUN", call, cause,
                  consequence, last ? " (further internal errors of this LUN are not logged)" : "");
    try {
        icbd::log(icbd::LogLevel::error, line, lun ? lun->log_fields : icbd::LogFields{});
    } catch (...) {
        if (g_c_sink) g_c_sink(ICBD_LOG_ERROR, line);
        else std::fprintf(stderr, "icbd error: %s\n", line);
    }
    return code;
}

// The one wrapper of every entry point that can throw: runs `body`; an
// exception becomes `on_error(errno)` (the call's error return) after one
// log line (contain_exception).
template <class Body, class OnError>
auto guarded(icbd_lun* lun, const char* label, const char* call, const char* consequence, Body&& body,
             OnError&& on_error) noexcept -> decltype(body()) {
    try {
        return body();
    } catch (...) {
        return on_error(contain_exception(lun, label, call, consequence));
    }
}

// For the calls that return nothing: the log line is all the caller gets.
constexpr auto nothing = [](int) noexcept {};

// For the calls that report through `err`: -errno, and the words there too.
auto failing_with(char* err, size_t errlen) {
    return [err, errlen](int code) noexcept {
        if (err && errlen) std::snprintf(err, errlen, "internal error: %s", std::strerror(code));
        return -code;
    };
}

}  // namespace

namespace icbd {
void set_c_api_lun_seams(LunSeams seams) { g_seams = std::move(seams); }
}  // namespace icbd

extern "C" {

void icbd_set_log_sink(void (*sink)(int level, const char* msg)) noexcept {
    guarded(nullptr, "libblockd", "icbd_set_log_sink", "the previous log sink stays", [&] {
        g_c_sink = sink;
        if (sink && icbd::stderr_is_journal())
            icbd::set_log_fields_sink(journal_sink);
        else
            icbd::set_log_sink(sink ? c_sink_adapter : nullptr);
    }, nothing);
}

int icbd_lun_create(const char* name, const char* bsopts, const icbd_lun_host* host, icbd_lun** out, char* err,
                    size_t errlen) noexcept {
    return guarded(nullptr, name, "icbd_lun_create", "the LUN is not created", [&]() -> int {
        auto opts = icbd::parse_bsopts(bsopts ? bsopts : "");
        if (!opts) {
            copy_error(opts.status(), err, errlen);
            return -opts.status().code();
        }
        auto l = std::make_unique<icbd_lun>();
        l->host = *host;
        l->log_label = name ? name : "";
        l->log_fields = fields_of(l->log_label);
        auto scope = log_scope(l.get());
        icbd::LunHost h{complete_adapter, kick_adapter, l.get()};
        auto lun = icbd::Lun::create(*opts, h, name ? name : "", g_seams);
        if (!lun) {
            copy_error(lun.status(), err, errlen);
            return -lun.status().code();
        }
        l->lun = std::move(*lun);
        *out = l.release();
        return 0;
    }, failing_with(err, errlen));
}

void icbd_lun_destroy(icbd_lun* lun) noexcept {
    if (!lun) return;
    // Closing is where a destroy can throw (the cache's last write-back, the
    // boot set's merge thread); ~Lun then finds nothing left to close.
    guarded(lun, lun->log_label.c_str(), "icbd_lun_destroy", "closing stopped there; the LUN is freed", [&] {
        auto scope = log_scope(lun);  // the cache's last write-back logs
        lun->lun->close();
    }, nothing);
    {
        auto scope = log_scope(lun);
        lun->lun.reset();
    }
    delete lun;
}

// These three only read a member: nothing to throw.
const char* icbd_lun_engine_name(const icbd_lun* lun) noexcept { return lun->lun->engine_name(); }
int icbd_lun_event_fd(const icbd_lun* lun) noexcept { return lun->lun->event_fd(); }
int icbd_lun_timer_fd(const icbd_lun* lun) noexcept { return lun->lun->timer_fd(); }

void icbd_lun_timer(icbd_lun* lun) noexcept {
    guarded(lun, lun->log_label.c_str(), "icbd_lun_timer", "the LUN refuses new commands", [&] {
        auto scope = log_scope(lun);
        lun->lun->on_timer();
    }, nothing);
}

int icbd_lun_open(icbd_lun* lun, const char* path, int extra_oflags, int* fd, uint64_t* size, int* readonly,
                  char* err, size_t errlen) noexcept {
    const char* consequence = "the LUN is not opened and refuses commands";
    return guarded(lun, lun->log_label.c_str(), "icbd_lun_open", consequence, [&]() -> int {
        auto scope = log_scope(lun);
        auto r = lun->lun->open(path, extra_oflags);
        if (!r) {
            copy_error(r.status(), err, errlen);
            return -r.status().code();
        }
        *fd = lun->lun->fd();
        *size = *r;
        *readonly = lun->lun->readonly();
        return 0;
    }, failing_with(err, errlen));
}

void icbd_lun_close(icbd_lun* lun) noexcept {
    guarded(lun, lun->log_label.c_str(), "icbd_lun_close", "closing stopped there", [&] {
        auto scope = log_scope(lun);
        lun->lun->close();
    }, nothing);
}

int icbd_lun_submit(icbd_lun* lun, const icbd_cmd* c) noexcept {
    if (lun->failed) return -EIO;  // said once, when it failed
    return guarded(lun, lun->log_label.c_str(), "icbd_lun_submit",
                   "the command is refused and so is every later one", [&]() -> int {
        icbd::LunCommand cmd;
        cmd.cookie = c->cookie;
        cmd.cdb = c->cdb;
        cmd.offset = c->offset;
        cmd.tl = c->tl;
        cmd.in_buf = static_cast<uint8_t*>(c->in_buf);
        cmd.in_len = c->in_len;
        cmd.out_buf = static_cast<uint8_t*>(c->out_buf);
        cmd.out_len = c->out_len;
        cmd.lun_size = c->lun_size;
        cmd.blk_shift = c->blk_shift;
        cmd.write_cache_enabled = c->write_cache_enabled;
        cmd.thin_provisioning = c->thin_provisioning;
        cmd.max_compare_and_write_blocks = c->max_compare_and_write_blocks;
        auto scope = log_scope(lun);
        lun->lun->submit(cmd);
        return 0;
    }, [](int code) noexcept { return -code; });
}

void icbd_lun_submit_batch(icbd_lun* lun) noexcept {
    guarded(lun, lun->log_label.c_str(), "icbd_lun_submit_batch", "the LUN refuses new commands", [&] {
        auto scope = log_scope(lun);
        lun->lun->submit_batch();
    }, nothing);
}

void icbd_lun_process_completions(icbd_lun* lun) noexcept {
    guarded(lun, lun->log_label.c_str(), "icbd_lun_process_completions", "the LUN refuses new commands", [&] {
        auto scope = log_scope(lun);
        lun->lun->process_completions();
    }, nothing);
}

}  // extern "C"
