// extern "C" face of Lun for the tgtd glue. Nothing here may throw across the
// C boundary: allocation failures end up as -ENOMEM.
#include "icbd/lun_c_api.h"

#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
#include <new>
#include <string>

#include "icbd/journal_log.hpp"
#include "icbd/log.hpp"
#include "icbd/lun.hpp"

struct icbd_lun {
    std::unique_ptr<icbd::Lun> lun;
    icbd_lun_host host{};
    // Every call into the LUN logs under a LogScope of these: each line names
    // target and LUN (tgtd's log), with TARGET= and LUN= in the journal.
    std::string log_label;
    icbd::LogFields log_fields;
};

namespace {

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

}  // namespace

extern "C" {

void icbd_set_log_sink(void (*sink)(int level, const char* msg)) {
    g_c_sink = sink;
    if (sink && icbd::stderr_is_journal())
        icbd::set_log_fields_sink(journal_sink);
    else
        icbd::set_log_sink(sink ? c_sink_adapter : nullptr);
}

int icbd_lun_create(const char* name, const char* bsopts, const icbd_lun_host* host, icbd_lun** out, char* err,
                    size_t errlen) try {
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
    auto lun = icbd::Lun::create(*opts, h, name ? name : "");
    if (!lun) {
        copy_error(lun.status(), err, errlen);
        return -lun.status().code();
    }
    l->lun = std::move(*lun);
    *out = l.release();
    return 0;
} catch (const std::bad_alloc&) {
    copy_error(icbd::Status::error(ENOMEM, "out of memory"), err, errlen);
    return -ENOMEM;
}

void icbd_lun_destroy(icbd_lun* lun) {
    {
        auto scope = log_scope(lun);  // the cache's last write-back logs
        lun->lun.reset();
    }
    delete lun;
}

const char* icbd_lun_engine_name(const icbd_lun* lun) { return lun->lun->engine_name(); }
int icbd_lun_event_fd(const icbd_lun* lun) { return lun->lun->event_fd(); }
int icbd_lun_timer_fd(const icbd_lun* lun) { return lun->lun->timer_fd(); }
void icbd_lun_timer(icbd_lun* lun) {
    auto scope = log_scope(lun);
    lun->lun->on_timer();
}

int icbd_lun_open(icbd_lun* lun, const char* path, int extra_oflags, int* fd, uint64_t* size, int* readonly,
                  char* err, size_t errlen) try {
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
} catch (const std::bad_alloc&) {
    copy_error(icbd::Status::error(ENOMEM, "out of memory"), err, errlen);
    return -ENOMEM;
}

void icbd_lun_close(icbd_lun* lun) {
    auto scope = log_scope(lun);
    lun->lun->close();
}

void icbd_lun_submit(icbd_lun* lun, const icbd_cmd* c) {
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
}

void icbd_lun_submit_batch(icbd_lun* lun) {
    auto scope = log_scope(lun);
    lun->lun->submit_batch();
}
void icbd_lun_process_completions(icbd_lun* lun) {
    auto scope = log_scope(lun);
    lun->lun->process_completions();
}

}  // extern "C"
