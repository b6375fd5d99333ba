// icbd-iscsi-load: a small iSCSI load generator on libiscsi's asynchronous API.
//
// One session, N commands in flight (READ16 or WRITE16), fixed transfer size,
// random (aligned to the transfer size) or sequential offsets, for a fixed time.
// Prints IOPS, MB/s (10^6 bytes/s) and completion latency percentiles.
// libiscsi's iscsi-perf only reads; this tool also writes, with or without FUA,
// and can flush like a guest filesystem (--sync-every: SYNCHRONIZE CACHE(16)),
// or run at a fixed rate like a desktop that is already up (--rate).
//
// Exit status: 0 success; 1 SCSI error, connection failure or lost session;
// 2 bad command line.
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void on_signal(int) { g_interrupted = 1; }

uint64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

struct Options {
    std::string url;
    bool write = false;
    bool random = true;
    uint64_t bs = 4096;
    unsigned qd = 1;
    double seconds = 5.0;
    bool fua = false;
    bool json = false;
    uint64_t span = 0;  // bytes of the LUN to address from LBA 0; 0: all of it
    uint64_t sync_every = 0;  // writes per SYNCHRONIZE CACHE(16); 0: never
    double rate = 0;          // commands per second, paced from the start; 0: as fast as --qd allows
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    std::string initiator = "iqn.2024-01.org.icbd:load";
};

[[noreturn]] void usage(int rc) {
    std::FILE* f = rc ? stderr : stdout;
    std::fprintf(f,
                 "usage: icbd-iscsi-load --url iscsi://HOST[:PORT]/IQN/LUN [options]\n"
                 "  --rw read|write        direction (default read)\n"
                 "  --pattern random|seq   offsets: random, aligned to --bs, or sequential (default random)\n"
                 "  --bs BYTES             transfer size, a multiple of the LUN's block size (default 4096;\n"
                 "                         suffixes k, m: 4k, 128k)\n"
                 "  --qd N                 commands in flight, 1..1024 (default 1)\n"
                 "  --seconds S            duration, may be fractional (default 5)\n"
                 "  --fua                  set FUA on writes (durable on completion)\n"
                 "  --sync-every N         with --rw write: after every N writes, stop issuing, wait for the\n"
                 "                         writes in flight, send SYNCHRONIZE CACHE(16) for the whole LUN and\n"
                 "                         wait for it before writing on (as fio's fsync=N, or a guest's\n"
                 "                         journal commit, does); IOPS count writes only, the flushes'\n"
                 "                         time included; flush latency is reported apart (default 0: never)\n"
                 "  --rate N               issue N commands per second at most (paced from the start; a\n"
                 "                         command waits for a free slot when --qd are in flight), so\n"
                 "                         latency is that of a load below the device's limit (default 0:\n"
                 "                         as fast as --qd allows)\n"
                 "  --span BYTES           address only the first BYTES of the LUN (default: whole LUN)\n"
                 "  --seed N               random seed (default fixed, so runs are repeatable)\n"
                 "  --initiator IQN        initiator name (default %s)\n"
                 "  --json                 one JSON object on stdout instead of text\n"
                 "exit status: 0 ok, 1 SCSI/connection error, 2 bad usage\n",
                 Options{}.initiator.c_str());
    std::exit(rc);
}

[[noreturn]] void bad_option(const char* fmt, const char* arg) {
    std::fprintf(stderr, "icbd-iscsi-load: ");
    std::fprintf(stderr, fmt, arg);
    std::fprintf(stderr, "\n(see icbd-iscsi-load --help)\n");
    std::exit(2);
}

// Parses a byte count with an optional k/m/g suffix (powers of 1024).
bool parse_bytes(const char* s, uint64_t* out) {
    errno = 0;
    char* end = nullptr;
    unsigned long long v = std::strtoull(s, &end, 10);
    if (errno || end == s || *s == '-') return false;
    uint64_t mul = 1;
    if (*end) {
        switch (*end) {
            case 'k': case 'K': mul = 1ull << 10; break;
            case 'm': case 'M': mul = 1ull << 20; break;
            case 'g': case 'G': mul = 1ull << 30; break;
            default: return false;
        }
        ++end;
        if (*end == 'i' || *end == 'I') ++end;
        if (*end == 'b' || *end == 'B') ++end;
        if (*end) return false;
    }
    if (v > UINT64_MAX / mul) return false;
    *out = v * mul;
    return true;
}

Options parse_args(int argc, char** argv) {
    enum { o_url = 256, o_rw, o_pattern, o_bs, o_qd, o_seconds, o_fua, o_json, o_span, o_seed, o_init, o_sync, o_rate, o_help };
    static const option longopts[] = {
        {"url", required_argument, nullptr, o_url},         {"rw", required_argument, nullptr, o_rw},
        {"pattern", required_argument, nullptr, o_pattern}, {"bs", required_argument, nullptr, o_bs},
        {"qd", required_argument, nullptr, o_qd},           {"seconds", required_argument, nullptr, o_seconds},
        {"fua", no_argument, nullptr, o_fua},               {"json", no_argument, nullptr, o_json},
        {"span", required_argument, nullptr, o_span},       {"seed", required_argument, nullptr, o_seed},
        {"initiator", required_argument, nullptr, o_init},  {"help", no_argument, nullptr, o_help},
        {"sync-every", required_argument, nullptr, o_sync}, {"rate", required_argument, nullptr, o_rate},
        {nullptr, 0, nullptr, 0},
    };
    Options o;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, nullptr)) != -1) {
        switch (c) {
            case o_url: o.url = optarg; break;
            case o_rw:
                if (!std::strcmp(optarg, "read")) o.write = false;
                else if (!std::strcmp(optarg, "write")) o.write = true;
                else bad_option("--rw must be 'read' or 'write', not '%s'", optarg);
                break;
            case o_pattern:
                if (!std::strcmp(optarg, "random") || !std::strcmp(optarg, "rand")) o.random = true;
                else if (!std::strcmp(optarg, "seq") || !std::strcmp(optarg, "sequential")) o.random = false;
                else bad_option("--pattern must be 'random' or 'seq', not '%s'", optarg);
                break;
            case o_bs:
                if (!parse_bytes(optarg, &o.bs) || o.bs == 0 || o.bs % 512 || o.bs > (16u << 20))
                    bad_option("--bs must be a positive multiple of 512 bytes, at most 16 MiB, not '%s'", optarg);
                break;
            case o_qd: {
                char* end = nullptr;
                long v = std::strtol(optarg, &end, 10);
                if (end == optarg || *end || v < 1 || v > 1024) bad_option("--qd must be 1..1024, not '%s'", optarg);
                o.qd = static_cast<unsigned>(v);
                break;
            }
            case o_seconds: {
                char* end = nullptr;
                double v = std::strtod(optarg, &end);
                if (end == optarg || *end || !(v > 0) || v > 86400)
                    bad_option("--seconds must be a number of seconds > 0, not '%s'", optarg);
                o.seconds = v;
                break;
            }
            case o_fua: o.fua = true; break;
            case o_json: o.json = true; break;
            case o_span:
                if (!parse_bytes(optarg, &o.span) || o.span == 0)
                    bad_option("--span must be a positive byte count, not '%s'", optarg);
                break;
            case o_seed:
                if (!parse_bytes(optarg, &o.seed)) bad_option("--seed must be a non-negative integer, not '%s'", optarg);
                break;
            case o_init: o.initiator = optarg; break;
            case o_sync: {
                char* end = nullptr;
                errno = 0;
                unsigned long long v = std::strtoull(optarg, &end, 10);
                if (errno || end == optarg || *end || *optarg == '-' || v > (1ull << 32))
                    bad_option("--sync-every must be a number of writes from 0 to 2^32, not '%s'", optarg);
                o.sync_every = v;
                break;
            }
            case o_rate: {
                char* end = nullptr;
                double v = std::strtod(optarg, &end);
                if (end == optarg || *end || !(v > 0) || v > 1e7)
                    bad_option("--rate must be a number of commands per second > 0, not '%s'", optarg);
                o.rate = v;
                break;
            }
            case o_help:
            case 'h': usage(0);
            case ':': bad_option("option '%s' needs a value", argv[optind - 1]);
            default: bad_option("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) bad_option("unexpected argument '%s'", argv[optind]);
    if (o.url.empty()) bad_option("%s", "--url iscsi://HOST[:PORT]/IQN/LUN is required");
    if (o.fua && !o.write) bad_option("%s", "--fua applies to --rw write only");
    if (o.sync_every && !o.write) bad_option("%s", "--sync-every applies to --rw write only");
    if (o.sync_every && o.rate > 0) bad_option("%s", "--rate and --sync-every do not go together");
    return o;
}

// Why a portal ("host", "host:port", "[v6]:port") does not take a TCP
// connection, or an empty string when it does: libiscsi's own message after a
// refused connection is about reconnecting, which hides the cause.
std::string tcp_problem(const std::string& portal) {
    std::string host = portal, port = "3260";
    if (!host.empty() && host[0] == '[') {
        size_t close = host.find(']');
        if (close != std::string::npos) {
            if (close + 1 < host.size() && host[close + 1] == ':') port = host.substr(close + 2);
            host = host.substr(1, close - 1);
        }
    } else if (size_t colon = host.rfind(':'); colon != std::string::npos && host.find(':') == colon) {
        port = host.substr(colon + 1);
        host = host.substr(0, colon);
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int r = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); r != 0)
        return "cannot resolve " + host + ": " + gai_strerror(r);
    std::string why = "no address";
    for (addrinfo* a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            why = std::strerror(errno);
            continue;
        }
        int r = ::connect(fd, a->ai_addr, a->ai_addrlen);
        int err = errno;
        close(fd);
        if (r == 0) {
            why.clear();
            break;
        }
        why = "TCP connection to " + host + ":" + port + ": " + std::strerror(err);
    }
    freeaddrinfo(res);
    return why;
}

class Load;

struct Slot {
    Load* load = nullptr;
    uint64_t started = 0;
    uint64_t lba = 0;
    bool sync = false;  // this slot's command is the SYNCHRONIZE CACHE(16)
    bool busy = false;
};

class Load {
public:
    explicit Load(const Options& o) : o_(o) {}
    ~Load() {
        if (iscsi_) {
            if (logged_in_) iscsi_logout_sync(iscsi_);
            iscsi_destroy_context(iscsi_);
        }
    }

    int connect() {
        iscsi_ = iscsi_create_context(o_.initiator.c_str());
        if (!iscsi_) {
            std::fprintf(stderr, "icbd-iscsi-load: cannot create an iSCSI context\n");
            return 1;
        }
        iscsi_url* u = iscsi_parse_full_url(iscsi_, o_.url.c_str());
        if (!u) {
            std::fprintf(stderr, "icbd-iscsi-load: bad URL '%s': %s\n", o_.url.c_str(), iscsi_get_error(iscsi_));
            return 2;
        }
        iscsi_set_targetname(iscsi_, u->target);
        iscsi_set_session_type(iscsi_, ISCSI_SESSION_NORMAL);
        iscsi_set_header_digest(iscsi_, ISCSI_HEADER_DIGEST_NONE);
        if (u->user[0] && iscsi_set_initiator_username_pwd(iscsi_, u->user, u->passwd) != 0) {
            std::fprintf(stderr, "icbd-iscsi-load: %s: cannot set CHAP credentials: %s\n", o_.url.c_str(),
                         iscsi_get_error(iscsi_));
            iscsi_destroy_url(u);
            return 1;
        }
        // A benchmark must see a broken session, not hide it behind a reconnect.
        iscsi_set_noautoreconnect(iscsi_, 1);
        iscsi_set_timeout(iscsi_, 10);
        lun_ = u->lun;
        const std::string portal = u->portal;
        int r = iscsi_full_connect_sync(iscsi_, u->portal, u->lun);
        iscsi_destroy_url(u);
        if (r != 0) {
            std::string why = tcp_problem(portal);
            std::fprintf(stderr, "icbd-iscsi-load: cannot connect to %s: %s\n", o_.url.c_str(),
                         why.empty() ? iscsi_get_error(iscsi_) : why.c_str());
            return 1;
        }
        logged_in_ = true;
        iscsi_set_timeout(iscsi_, 0);

        scsi_task* t = iscsi_readcapacity16_sync(iscsi_, lun_);
        if (!t || t->status != SCSI_STATUS_GOOD) {
            std::fprintf(stderr, "icbd-iscsi-load: %s: READ CAPACITY(16) failed: %s\n", o_.url.c_str(),
                         t ? describe(t).c_str() : iscsi_get_error(iscsi_));
            if (t) scsi_free_scsi_task(t);
            return 1;
        }
        auto* rc16 = static_cast<scsi_readcapacity16*>(scsi_datain_unmarshall(t));
        if (!rc16) {
            std::fprintf(stderr, "icbd-iscsi-load: %s: cannot parse READ CAPACITY(16) data\n", o_.url.c_str());
            scsi_free_scsi_task(t);
            return 1;
        }
        block_ = rc16->block_length;
        blocks_ = rc16->returned_lba + 1;
        scsi_free_scsi_task(t);
        if (block_ == 0 || o_.bs % block_) {
            std::fprintf(stderr, "icbd-iscsi-load: --bs %" PRIu64 " is not a multiple of the LUN's block size %u\n",
                         o_.bs, block_);
            return 2;
        }
        per_io_ = o_.bs / block_;
        uint64_t span_blocks = o_.span ? std::min<uint64_t>(o_.span / block_, blocks_) : blocks_;
        units_ = span_blocks / per_io_;  // transfer-size units addressed
        if (units_ == 0) {
            std::fprintf(stderr, "icbd-iscsi-load: %s: the LUN (%" PRIu64 " bytes) is smaller than --bs\n",
                         o_.url.c_str(), blocks_ * block_);
            return 2;
        }
        return 0;
    }

    int run() {
        if (o_.write) {
            wbuf_.resize(o_.bs);
            uint64_t x = o_.seed | 1;
            for (size_t i = 0; i + 8 <= wbuf_.size(); i += 8) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                std::memcpy(&wbuf_[i], &x, 8);
            }
        }
        rng_ = o_.seed | 1;
        slots_.resize(o_.qd);
        lat_.reserve(1u << 20);

        struct sigaction sa {};
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, nullptr);
        sigaction(SIGTERM, &sa, nullptr);

        start_ = now_ns();
        deadline_ = start_ + static_cast<uint64_t>(o_.seconds * 1e9);
        for (auto& s : slots_) s.load = this;
        sync_slot_.load = this;
        sync_slot_.sync = true;
        for (auto& s : slots_) {
            if (!may_issue() || o_.rate > 0) break;
            if (!issue(s)) return finish_with_error();
        }
        uint64_t drain_limit = 0;
        while (in_flight_ > 0 || (o_.rate > 0 && !stopping_)) {
            if (!stopping_ && (g_interrupted || failed_ || now_ns() >= deadline_)) stopping_ = true;
            if (stopping_ && drain_limit == 0) drain_limit = now_ns() + 30ull * 1000000000u;
            // Wake at least every 100 ms to notice the deadline when the target stalls.
            uint64_t wait_ns = 100000000;
            if (o_.rate > 0 && !stopping_) {
                uint64_t due = pace();
                if (failed_) continue;
                uint64_t now = now_ns();
                if (due) wait_ns = std::min(wait_ns, due > now ? due - now : 0);
            }
            pollfd pfd{iscsi_get_fd(iscsi_), static_cast<short>(iscsi_which_events(iscsi_)), 0};
            timespec ts{static_cast<time_t>(wait_ns / 1000000000u), static_cast<long>(wait_ns % 1000000000u)};
            int r = ppoll(&pfd, 1, &ts, nullptr);
            if (r < 0 && errno != EINTR) {
                std::fprintf(stderr, "icbd-iscsi-load: poll: %s\n", std::strerror(errno));
                return 1;
            }
            if (iscsi_service(iscsi_, r > 0 ? pfd.revents : 0) < 0) {
                std::fprintf(stderr, "icbd-iscsi-load: %s: session failed: %s\n", o_.url.c_str(),
                             iscsi_get_error(iscsi_));
                logged_in_ = false;
                return 1;
            }
            if (drain_limit && now_ns() > drain_limit) {
                std::fprintf(stderr, "icbd-iscsi-load: %s: %u commands still in flight 30 s after the end\n",
                             o_.url.c_str(), in_flight_);
                return 1;
            }
        }
        end_ = last_done_ ? last_done_ : now_ns();
        if (failed_) return finish_with_error();
        if (g_interrupted) {
            std::fprintf(stderr, "icbd-iscsi-load: interrupted\n");
            return 1;
        }
        report();
        return 0;
    }

private:
    static std::string describe(scsi_task* t) {
        char buf[256];
        if (t->status == SCSI_STATUS_CHECK_CONDITION)
            std::snprintf(buf, sizeof buf, "CHECK CONDITION, sense key %s (0x%x), %s (0x%04x)",
                          scsi_sense_key_str(t->sense.key), t->sense.key, scsi_sense_ascq_str(t->sense.ascq),
                          t->sense.ascq);
        else
            std::snprintf(buf, sizeof buf, "SCSI status 0x%02x", t->status);
        return buf;
    }

    uint64_t next_lba() {
        uint64_t unit;
        if (o_.random) {
            rng_ ^= rng_ << 13, rng_ ^= rng_ >> 7, rng_ ^= rng_ << 17;
            unit = rng_ % units_;
        } else {
            unit = seq_++;
            if (seq_ >= units_) seq_ = 0;
        }
        return unit * per_io_;
    }

    // With --rate: issues every command that is due and has a free slot;
    // returns when the next one is due (0: none, all slots busy).
    uint64_t pace() {
        uint64_t now = now_ns();
        for (auto& s : slots_) {
            if (s.busy) continue;
            if (now >= deadline_ || g_interrupted) return 0;
            uint64_t due = start_ + static_cast<uint64_t>(static_cast<double>(issued_) * 1e9 / o_.rate);
            if (now < due) return due;
            if (!issue(s)) return 0;
        }
        return 0;
    }

    // With --sync-every N, no write is issued while N writes await their flush.
    bool may_issue() const { return !o_.sync_every || since_sync_ < o_.sync_every; }

    // Called whenever a command completes: once the N writes of a flush
    // period are all done, sends the flush; once it is done, refills the queue.
    void pump(Slot& done) {
        if (stopping_ || failed_ || g_interrupted || now_ns() >= deadline_) return;
        if (o_.rate > 0) return;  // the main loop's pace() refills
        if (!o_.sync_every) {
            issue(done);
            return;
        }
        if (since_sync_ >= o_.sync_every) {
            if (in_flight_ == 0) issue_sync();
            return;
        }
        for (auto& s : slots_)
            if (!s.busy && may_issue() && !issue(s)) return;
    }

    void issue_sync() {
        sync_slot_.started = now_ns();
        // LBA 0 and 0 blocks: the whole medium; not IMMED, so it completes when durable.
        scsi_task* t = iscsi_synchronizecache16_task(iscsi_, lun_, 0, 0, 0, 0, &Load::on_done, &sync_slot_);
        if (!t) {
            std::fprintf(stderr, "icbd-iscsi-load: %s: cannot queue SYNCHRONIZE CACHE(16): %s\n", o_.url.c_str(),
                         iscsi_get_error(iscsi_));
            failed_ = true;
            return;
        }
        sync_slot_.busy = true;
        ++in_flight_;
    }

    bool issue(Slot& s) {
        s.lba = next_lba();
        s.started = now_ns();
        scsi_task* t;
        if (o_.write)
            t = iscsi_write16_task(iscsi_, lun_, s.lba, wbuf_.data(), static_cast<uint32_t>(o_.bs),
                                   static_cast<int>(block_), 0, 0, o_.fua ? 1 : 0, 0, 0, &Load::on_done, &s);
        else
            t = iscsi_read16_task(iscsi_, lun_, s.lba, static_cast<uint32_t>(o_.bs), static_cast<int>(block_), 0, 0, 0,
                                  0, 0, &Load::on_done, &s);
        if (!t) {
            std::fprintf(stderr, "icbd-iscsi-load: %s: cannot queue %s: %s\n", o_.url.c_str(),
                         o_.write ? "WRITE(16)" : "READ(16)", iscsi_get_error(iscsi_));
            failed_ = true;
            return false;
        }
        s.busy = true;
        ++in_flight_;
        ++since_sync_;
        ++issued_;
        return true;
    }

    static void on_done(iscsi_context* iscsi, int status, void* command_data, void* private_data) {
        auto* s = static_cast<Slot*>(private_data);
        Load& l = *s->load;
        auto* t = static_cast<scsi_task*>(command_data);
        uint64_t now = now_ns();
        --l.in_flight_;
        s->busy = false;
        const char* what_op = s->sync ? "SYNCHRONIZE CACHE(16)" : l.o_.write ? "WRITE(16)" : "READ(16)";
        if (status != SCSI_STATUS_GOOD) {
            if (!l.failed_) {
                std::string what = t ? describe(t) : std::string(iscsi_get_error(iscsi));
                if (status != SCSI_STATUS_CHECK_CONDITION && t && t->status == SCSI_STATUS_GOOD)
                    what = iscsi_get_error(iscsi);
                std::fprintf(stderr, "icbd-iscsi-load: %s: %s at LBA %" PRIu64 " failed: %s\n", l.o_.url.c_str(),
                             what_op, s->sync ? uint64_t{0} : s->lba, what.c_str());
            }
            ++l.errors_;
            l.failed_ = true;
        } else if (s->sync) {
            ++l.syncs_;
            l.last_done_ = now;
            l.since_sync_ = 0;
            l.sync_lat_.push_back(static_cast<uint32_t>(std::min<uint64_t>(now - s->started, UINT32_MAX)));
        } else {
            ++l.ops_;
            l.last_done_ = now;
            uint64_t d = now - s->started;
            l.lat_.push_back(static_cast<uint32_t>(std::min<uint64_t>(d, UINT32_MAX)));
        }
        if (t) scsi_free_scsi_task(t);
        l.pump(*s);
    }

    int finish_with_error() {
        std::fprintf(stderr, "icbd-iscsi-load: %s: stopped after %" PRIu64 " good and %" PRIu64 " failed commands\n",
                     o_.url.c_str(), ops_, errors_);
        return 1;
    }

    double pct(std::vector<uint32_t>& v, double p) {
        if (v.empty()) return 0;
        size_t k = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
        std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
        return v[k] / 1000.0;
    }

    void report() {
        double secs = static_cast<double>(end_ - start_) / 1e9;
        double iops = secs > 0 ? static_cast<double>(ops_) / secs : 0;
        double mbps = iops * static_cast<double>(o_.bs) / 1e6;
        double mean = 0;
        for (uint32_t v : lat_) mean += v;
        mean = lat_.empty() ? 0 : mean / static_cast<double>(lat_.size()) / 1000.0;
        double mx = lat_.empty() ? 0 : *std::max_element(lat_.begin(), lat_.end()) / 1000.0;
        double p50 = pct(lat_, 50), p99 = pct(lat_, 99), p999 = pct(lat_, 99.9);
        double s50 = pct(sync_lat_, 50), s99 = pct(sync_lat_, 99);
        double smax = sync_lat_.empty() ? 0 : *std::max_element(sync_lat_.begin(), sync_lat_.end()) / 1000.0;
        const char* rw = o_.write ? "write" : "read";
        const char* pat = o_.random ? "random" : "seq";
        if (o_.json) {
            std::printf("{\"url\":\"%s\",\"rw\":\"%s\",\"pattern\":\"%s\",\"bs\":%" PRIu64
                        ",\"qd\":%u,\"fua\":%s,\"seconds\":%.3f,\"ops\":%" PRIu64
                        ",\"iops\":%.1f,\"mb_per_s\":%.2f,\"lat_us\":{\"mean\":%.1f,\"p50\":%.1f,\"p99\":%.1f,"
                        "\"p999\":%.1f,\"max\":%.1f},\"sync_every\":%" PRIu64 ",\"syncs\":%" PRIu64
                        ",\"sync_lat_us\":{\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f}}\n",
                        o_.url.c_str(), rw, pat, o_.bs, o_.qd, o_.fua ? "true" : "false", secs, ops_, iops, mbps, mean,
                        p50, p99, p999, mx, o_.sync_every, syncs_, s50, s99, smax);
        } else {
            std::printf("%s %s bs=%" PRIu64 " qd=%u%s: %" PRIu64 " ops in %.2f s\n", pat, rw, o_.bs, o_.qd,
                        o_.fua ? " fua" : "", ops_, secs);
            std::printf("  IOPS %.0f   MB/s %.1f   latency us: p50 %.1f  p99 %.1f  p99.9 %.1f  mean %.1f  max %.1f\n",
                        iops, mbps, p50, p99, p999, mean, mx);
            if (o_.sync_every)
                std::printf("  %" PRIu64 " SYNCHRONIZE CACHE(16), one per %" PRIu64
                            " writes; latency us: p50 %.1f  p99 %.1f  max %.1f\n",
                            syncs_, o_.sync_every, s50, s99, smax);
        }
        std::fflush(stdout);
    }

    const Options o_;
    iscsi_context* iscsi_ = nullptr;
    bool logged_in_ = false;
    int lun_ = 0;
    uint32_t block_ = 0;
    uint64_t blocks_ = 0, per_io_ = 0, units_ = 0;
    uint64_t rng_ = 0, seq_ = 0;
    std::vector<unsigned char> wbuf_;
    std::vector<Slot> slots_;
    Slot sync_slot_;
    std::vector<uint32_t> lat_;       // completion latency, ns
    std::vector<uint32_t> sync_lat_;  // SYNCHRONIZE CACHE latency, ns
    uint64_t since_sync_ = 0, syncs_ = 0;  // writes issued since the last flush completed; flushes
    unsigned in_flight_ = 0;
    uint64_t ops_ = 0, errors_ = 0, issued_ = 0;
    bool failed_ = false, stopping_ = false;
    uint64_t start_ = 0, deadline_ = 0, end_ = 0, last_done_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
    Options o = parse_args(argc, argv);
    Load load(o);
    if (int rc = load.connect()) return rc;
    return load.run();
}
