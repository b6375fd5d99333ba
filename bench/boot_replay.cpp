// icbd-boot-replay: replays a recorded boot's READs for N simulated clients,
// each on its own iSCSI LUN, all at once, and reports when the last one is done.
//
// The trace (made by bench/boot_trace.py from a real guest's boot) is text, one
// request a line, '#' lines ignored:
//     ISSUE_US  COMPLETE_US  OFFSET_BYTES  LENGTH_BYTES  R|W
// times in microseconds from the trace's start. Only READs are replayed (the
// guest's root is read-only; writes, if any, are counted and skipped).
//
// Order, sizes and concurrency are the trace's: read i is issued once every
// read that had completed before i was issued in the trace has completed in the
// replay (so a read the guest sent only after another one came back waits for
// it here too, and reads the guest had in flight together are in flight
// together here). The guest's think time between them (its CPU, which under
// TCG emulation is mostly the emulator's) is left out unless --think-scale
// says otherwise: a storm of clients that ask as fast as their dependencies
// allow, which is what the disk and the page cache see at 8:00.
//
// Exit status: 0 success; 1 SCSI error, connection failure or lost session;
// 2 bad command line or trace.
#include <getopt.h>
#include <poll.h>
#include <sys/resource.h>
#include <time.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

namespace {

uint64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

struct Read {
    uint64_t issue_us = 0, complete_us = 0, offset = 0, length = 0;
    uint64_t deps = 0;      // reads of the trace completed before this one was issued
    uint64_t think_ns = 0;  // the guest's idle time before issuing it, once it could
};

struct Trace {
    std::vector<Read> reads;            // in issue order
    std::vector<uint32_t> by_complete;  // indices into reads, in trace completion order
    uint64_t writes = 0;
};

[[noreturn]] void die_usage(const std::string& msg) {
    std::fprintf(stderr, "icbd-boot-replay: %s\n(see icbd-boot-replay --help)\n", msg.c_str());
    std::exit(2);
}

Trace load_trace(const std::string& path) {
    std::ifstream in(path);
    if (!in) die_usage("cannot open trace '" + path + "': " + std::strerror(errno));
    Trace t;
    std::string line;
    size_t lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        if (line.empty() || line[0] == '#') continue;
        std::istringstream ls(line);
        Read r;
        std::string op;
        if (!(ls >> r.issue_us >> r.complete_us >> r.offset >> r.length >> op) || r.complete_us < r.issue_us ||
            r.length == 0 || (op != "R" && op != "W"))
            die_usage("trace '" + path + "' line " + std::to_string(lineno) + ": expected 'ISSUE_US COMPLETE_US OFFSET LENGTH R|W', got '" + line + "'");
        if (op == "W") {
            ++t.writes;
            continue;
        }
        t.reads.push_back(r);
    }
    if (t.reads.empty()) die_usage("trace '" + path + "' has no READ");
    std::stable_sort(t.reads.begin(), t.reads.end(), [](const Read& a, const Read& b) { return a.issue_us < b.issue_us; });
    t.by_complete.resize(t.reads.size());
    std::iota(t.by_complete.begin(), t.by_complete.end(), 0u);
    std::stable_sort(t.by_complete.begin(), t.by_complete.end(),
                     [&](uint32_t a, uint32_t b) { return t.reads[a].complete_us < t.reads[b].complete_us; });
    // deps(i) = completions strictly before i's issue: a prefix of by_complete,
    // and non-decreasing in i since issues are sorted.
    size_t c = 0;
    for (size_t i = 0; i < t.reads.size(); ++i) {
        Read& r = t.reads[i];
        while (c < t.by_complete.size() && t.reads[t.by_complete[c]].complete_us < r.issue_us) ++c;
        r.deps = c;
        uint64_t ready = i ? t.reads[i - 1].issue_us : 0;
        if (c) ready = std::max(ready, t.reads[t.by_complete[c - 1]].complete_us);
        r.think_ns = r.issue_us > ready ? (r.issue_us - ready) * 1000 : 0;
    }
    return t;
}

struct Options {
    std::string trace;
    std::vector<std::string> urls;
    double think_scale = 0;
    bool json = false;
    std::string initiator = "iqn.2024-01.org.icbd:boot-replay";
};

class Client;

struct Pending {
    Client* client = nullptr;
    uint32_t index = 0;
    uint64_t started = 0;
};

class Client {
public:
    Client(const Trace& t, const Options& o, std::string url, unsigned number)
        : t_(t), o_(o), url_(std::move(url)), number_(number), done_(t.reads.size(), 0) {}
    ~Client() {
        if (iscsi_) {
            if (logged_in_) iscsi_logout_sync(iscsi_);
            iscsi_destroy_context(iscsi_);
        }
    }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    bool connect() {
        // One initiator name per client, as N desktops have.
        std::string name = o_.initiator + "-" + std::to_string(number_);
        iscsi_ = iscsi_create_context(name.c_str());
        if (!iscsi_) return fail("cannot create an iSCSI context");
        iscsi_url* u = iscsi_parse_full_url(iscsi_, url_.c_str());
        if (!u) return fail(std::string("bad URL: ") + iscsi_get_error(iscsi_));
        iscsi_set_targetname(iscsi_, u->target);
        iscsi_set_session_type(iscsi_, ISCSI_SESSION_NORMAL);
        iscsi_set_header_digest(iscsi_, ISCSI_HEADER_DIGEST_NONE);
        iscsi_set_noautoreconnect(iscsi_, 1);  // a lost session is a failed run, not a hidden retry
        lun_ = u->lun;
        int r = iscsi_full_connect_sync(iscsi_, u->portal, u->lun);
        iscsi_destroy_url(u);
        if (r != 0) return fail(std::string("cannot log in: ") + iscsi_get_error(iscsi_));
        logged_in_ = true;
        scsi_task* task = iscsi_readcapacity16_sync(iscsi_, lun_);
        if (!task || task->status != SCSI_STATUS_GOOD) {
            if (task) scsi_free_scsi_task(task);
            return fail(std::string("READ CAPACITY(16) failed: ") + iscsi_get_error(iscsi_));
        }
        auto* rc16 = static_cast<scsi_readcapacity16*>(scsi_datain_unmarshall(task));
        if (rc16) {
            block_ = rc16->block_length;
            size_ = (rc16->returned_lba + 1) * uint64_t(rc16->block_length);
        }
        scsi_free_scsi_task(task);
        if (!rc16 || block_ == 0) return fail("cannot parse READ CAPACITY(16) data");
        for (const Read& rd : t_.reads) {
            if (rd.offset % block_ || rd.length % block_)
                return fail("trace read at " + std::to_string(rd.offset) + "+" + std::to_string(rd.length) +
                            " is not aligned to the LUN's block size " + std::to_string(block_));
            if (rd.offset + rd.length > size_)
                return fail("trace read at " + std::to_string(rd.offset) + "+" + std::to_string(rd.length) +
                            " lies past the LUN's end (" + std::to_string(size_) + " bytes)");
        }
        return true;
    }

    // Issues every read whose dependencies are met and whose think time has
    // passed; returns the time the next one is due (0: none waits on time).
    uint64_t pump(uint64_t now) {
        while (!failed_ && next_ < t_.reads.size() && t_.reads[next_].deps <= prefix_) {
            const Read& rd = t_.reads[next_];
            if (o_.think_scale > 0) {
                if (!ready_since_) ready_since_ = now;
                uint64_t due = ready_since_ + static_cast<uint64_t>(static_cast<double>(rd.think_ns) * o_.think_scale);
                if (now < due) return due;
            }
            auto p = std::make_unique<Pending>(Pending{this, static_cast<uint32_t>(next_), now});
            scsi_task* task = iscsi_read16_task(iscsi_, lun_, rd.offset / block_, static_cast<uint32_t>(rd.length),
                                                static_cast<int>(block_), 0, 0, 0, 0, 0, &Client::on_done, p.get());
            if (!task) {
                fail(std::string("cannot queue READ(16): ") + iscsi_get_error(iscsi_));
                return 0;
            }
            p.release();  // owned by the callback from here on
            ++in_flight_;
            max_in_flight_ = std::max(max_in_flight_, in_flight_);
            ++next_;
            ready_since_ = 0;
        }
        return 0;
    }

    bool finished() const { return failed_ || completed_ == t_.reads.size(); }
    bool failed() const { return failed_; }
    int fd() const { return iscsi_get_fd(iscsi_); }
    short events() const { return static_cast<short>(iscsi_which_events(iscsi_)); }
    bool service(short revents) {
        if (iscsi_service(iscsi_, revents) < 0) {
            logged_in_ = false;
            return fail(std::string("session failed: ") + iscsi_get_error(iscsi_));
        }
        return true;
    }
    uint64_t done_at() const { return done_at_; }
    unsigned max_in_flight() const { return max_in_flight_; }
    std::vector<uint32_t>& latencies() { return lat_; }

private:
    bool fail(const std::string& why) {
        if (!failed_) std::fprintf(stderr, "icbd-boot-replay: client %u (%s): %s\n", number_, url_.c_str(), why.c_str());
        failed_ = true;
        return false;
    }

    static void on_done(iscsi_context* iscsi, int status, void* command_data, void* private_data) {
        std::unique_ptr<Pending> p(static_cast<Pending*>(private_data));
        Client& c = *p->client;
        auto* task = static_cast<scsi_task*>(command_data);
        uint64_t now = now_ns();
        --c.in_flight_;
        if (status != SCSI_STATUS_GOOD) {
            const Read& rd = c.t_.reads[p->index];
            c.fail("READ(16) of " + std::to_string(rd.length) + " bytes at " + std::to_string(rd.offset) +
                   " failed: " + iscsi_get_error(iscsi));
        } else {
            c.lat_.push_back(static_cast<uint32_t>(std::min<uint64_t>(now - p->started, UINT32_MAX)));
            c.done_[p->index] = 1;
            ++c.completed_;
            while (c.prefix_ < c.t_.by_complete.size() && c.done_[c.t_.by_complete[c.prefix_]]) ++c.prefix_;
            if (c.completed_ == c.t_.reads.size()) c.done_at_ = now;
        }
        if (task) scsi_free_scsi_task(task);
    }

    const Trace& t_;
    const Options& o_;
    std::string url_;
    unsigned number_;
    iscsi_context* iscsi_ = nullptr;
    bool logged_in_ = false, failed_ = false;
    int lun_ = 0;
    uint32_t block_ = 0;
    uint64_t size_ = 0;
    std::vector<uint8_t> done_;  // per read of the trace
    size_t next_ = 0;            // next read to issue
    size_t prefix_ = 0;          // reads of by_complete, from its start, all done
    size_t completed_ = 0;
    unsigned in_flight_ = 0, max_in_flight_ = 0;
    uint64_t ready_since_ = 0, done_at_ = 0;
    std::vector<uint32_t> lat_;  // ns
};

[[noreturn]] void usage(int rc) {
    std::fprintf(rc ? stderr : stdout,
                 "usage: icbd-boot-replay --trace FILE [options] URL...\n"
                 "  replays the trace's READs on each iscsi://HOST[:PORT]/IQN/LUN at once, one client per URL\n"
                 "  --trace FILE        the boot trace (ISSUE_US COMPLETE_US OFFSET LENGTH R|W per line)\n"
                 "  --urls-file FILE    more URLs, one a line\n"
                 "  --think-scale F     wait F x the guest's think time before each read (default 0: none)\n"
                 "  --json              one JSON object on stdout\n"
                 "exit status: 0 ok, 1 SCSI/connection error, 2 bad usage or trace\n");
    std::exit(rc);
}

Options parse_args(int argc, char** argv) {
    enum { o_trace = 256, o_urls, o_think, o_json, o_help };
    static const option longopts[] = {
        {"trace", required_argument, nullptr, o_trace}, {"urls-file", required_argument, nullptr, o_urls},
        {"think-scale", required_argument, nullptr, o_think}, {"json", no_argument, nullptr, o_json},
        {"help", no_argument, nullptr, o_help}, {nullptr, 0, nullptr, 0},
    };
    Options o;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, nullptr)) != -1) {
        switch (c) {
            case o_trace: o.trace = optarg; break;
            case o_urls: {
                std::ifstream in(optarg);
                if (!in) die_usage(std::string("cannot open --urls-file '") + optarg + "': " + std::strerror(errno));
                std::string u;
                while (std::getline(in, u))
                    if (!u.empty()) o.urls.push_back(u);
                break;
            }
            case o_think: {
                char* end = nullptr;
                o.think_scale = std::strtod(optarg, &end);
                if (end == optarg || *end || !(o.think_scale >= 0) || o.think_scale > 1000)
                    die_usage(std::string("--think-scale must be a number from 0 to 1000, not '") + optarg + "'");
                break;
            }
            case o_json: o.json = true; break;
            case o_help:
            case 'h': usage(0);
            case ':': die_usage(std::string("option '") + argv[optind - 1] + "' needs a value");
            default: die_usage(std::string("unknown option '") + argv[optind - 1] + "'");
        }
    }
    for (int i = optind; i < argc; ++i) o.urls.emplace_back(argv[i]);
    if (o.trace.empty()) die_usage("--trace FILE is required");
    if (o.urls.empty()) die_usage("no URL: give one iscsi:// URL per client");
    return o;
}

double pct(std::vector<uint32_t>& v, double p) {
    if (v.empty()) return 0;
    size_t k = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
    std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
    return v[k] / 1000.0;
}

}  // namespace

int main(int argc, char** argv) {
    Options o = parse_args(argc, argv);
    Trace t = load_trace(o.trace);
    std::vector<std::unique_ptr<Client>> clients;
    for (size_t i = 0; i < o.urls.size(); ++i) {
        clients.push_back(std::make_unique<Client>(t, o, o.urls[i], static_cast<unsigned>(i + 1)));
        if (!clients.back()->connect()) return 1;
    }
    // All clients logged in; the storm starts now, for every one at once.
    const uint64_t start = now_ns();
    std::vector<pollfd> pfds(clients.size());
    bool failed = false;
    for (;;) {
        uint64_t now = now_ns(), next_due = 0;
        size_t running = 0;
        for (auto& c : clients) {
            if (c->finished()) continue;
            uint64_t due = c->pump(now);
            if (due && (!next_due || due < next_due)) next_due = due;
            if (c->failed()) failed = true;
            ++running;
        }
        if (failed || running == 0) break;
        for (size_t i = 0; i < clients.size(); ++i)
            pfds[i] = {clients[i]->finished() ? -1 : clients[i]->fd(), clients[i]->events(), 0};
        int timeout_ms = 100;  // also notices a target that stalls
        if (next_due) timeout_ms = static_cast<int>(std::min<uint64_t>(100, (next_due > now ? next_due - now : 0) / 1000000));
        int r = poll(pfds.data(), pfds.size(), timeout_ms);
        if (r < 0 && errno != EINTR) {
            std::fprintf(stderr, "icbd-boot-replay: poll: %s\n", std::strerror(errno));
            return 1;
        }
        for (size_t i = 0; i < clients.size(); ++i) {
            if (pfds[i].fd < 0) continue;
            if (!clients[i]->service(r > 0 ? pfds[i].revents : 0)) failed = true;
        }
        if (failed) break;
    }
    if (failed) {
        std::fprintf(stderr, "icbd-boot-replay: the run failed (see above)\n");
        return 1;
    }
    uint64_t first = UINT64_MAX, last = 0;
    unsigned max_if = 0;
    std::vector<uint32_t> lat;
    lat.reserve(t.reads.size() * clients.size());
    for (auto& c : clients) {
        first = std::min(first, c->done_at());
        last = std::max(last, c->done_at());
        max_if = std::max(max_if, c->max_in_flight());
        lat.insert(lat.end(), c->latencies().begin(), c->latencies().end());
    }
    uint64_t bytes = 0;
    for (const Read& rd : t.reads) bytes += rd.length;
    double wall = static_cast<double>(last - start) / 1e9, first_s = static_cast<double>(first - start) / 1e9;
    double mean = 0;
    for (uint32_t v : lat) mean += v;
    mean = lat.empty() ? 0 : mean / static_cast<double>(lat.size()) / 1000.0;
    double mx = lat.empty() ? 0 : *std::max_element(lat.begin(), lat.end()) / 1000.0;
    double p50 = pct(lat, 50), p99 = pct(lat, 99), p999 = pct(lat, 99.9);
    // Our own CPU: on a small machine the initiators' side can bound a warm storm.
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    double cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                 static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    if (o.json) {
        std::printf("{\"clients\":%zu,\"reads_per_client\":%zu,\"bytes_per_client\":%" PRIu64
                    ",\"writes_skipped\":%" PRIu64 ",\"think_scale\":%g,\"wall_s\":%.3f,\"first_done_s\":%.3f,"
                    "\"max_in_flight\":%u,\"cpu_s\":%.2f,\"lat_us\":{\"mean\":%.1f,\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f}}\n",
                    clients.size(), t.reads.size(), bytes, t.writes, o.think_scale, wall, first_s, max_if, cpu, mean, p50,
                    p99, p999, mx);
    } else {
        std::printf("%zu clients x %zu reads (%.1f MiB each): last done %.3f s, first %.3f s, max in flight %u, CPU %.2f s\n",
                    clients.size(), t.reads.size(), static_cast<double>(bytes) / 1048576.0, wall, first_s, max_if, cpu);
        std::printf("  read latency us: p50 %.1f  p99 %.1f  p99.9 %.1f  mean %.1f  max %.1f\n", p50, p99, p999, mean, mx);
    }
    return 0;
}
