// The master side of a push (docs/replication-protocol.md, sections 3-5): per
// replica the handshake and negotiation, then per distinct base one reader that
// reads and encodes each change once into a shared window, and one writer per
// replica that streams it with checkpoints, END and RESULT.
#include "icbd/replicator/sender.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "icbd/checksum.hpp"
#include "icbd/replicator/image_path.hpp"
#include "icbd/replicator/repository.hpp"
#include "compression_pool.hpp"
#include "digests.hpp"
#include "entry_stat.hpp"
#include "frame_codec.hpp"
#include "messages.hpp"
#include "name_rules.hpp"
#include "rate_limiter.hpp"
#include "tree_manifest.hpp"

namespace icbd::repl {

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string parent_of(const std::string& path) {
    auto slash = path.rfind('/');
    return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

// ---- frames on a blocking stream ----

Status write_frame_bytes(Stream& s, const Bytes& frame) { return s.write_all(frame); }

template <typename M>
Status send_message(Stream& s, const M& m) {
    auto f = make_frame(m);
    if (!f) return f.status();
    return s.write_all(*f);
}

Result<Frame> read_frame(Stream& s, FrameDecoder& d, std::string_view waiting_for) {
    std::array<uint8_t, 16384> buf;
    for (;;) {
        auto f = d.next();
        if (!f) return f.status();
        if (f->has_value()) return std::move(**f);
        size_t want = std::clamp<size_t>(d.bytes_wanted(), 1, buf.size());
        auto n = s.read_some(std::span<uint8_t>(buf.data(), want));
        if (!n) return n.status();
        if (*n == 0) {
            Status fin = d.finish();
            if (!fin) return fin;
            return Status::error(ECONNRESET, "the replica closed the connection while we waited for " +
                                                 std::string(waiting_for));
        }
        d.feed(std::span<const uint8_t>(buf.data(), *n));
    }
}

// ---- the shared window of one diff ----

struct EncodedChange {
    uint64_t seq = 0;
    uint64_t chain_after = 0;  // c_seq
    uint64_t data_bytes = 0;   // uncompressed DATA length
    std::optional<CodecSetting> codec;  // DATA: the setting it was encoded with
    int step = -1;                      // ...its index in codec_ladder() under --compress auto
    Bytes frame;
};
using ChangePtr = std::shared_ptr<const EncodedChange>;

// One producer (the reader), several consumers (the writers). Items stay until
// every active consumer is past them; the producer waits when they add up to
// the limit, and drops the slowest consumer when that lasts too long.
class FrameWindow {
public:
    // `lead_limit`: bytes the producer may be ahead of the most advanced
    // consumer (0: only `limit` counts). Adaptive compression keeps it small,
    // so that frames are encoded with a setting chosen from what the link did
    // a moment ago, not seconds ago.
    FrameWindow(uint64_t limit, size_t consumers, uint64_t lead_limit = 0)
        : limit_(limit), lead_limit_(lead_limit), cons_(consumers) {}

    // false: no consumer is left, stop producing. `waited`: time spent waiting for room.
    bool put(ChangePtr item, std::chrono::milliseconds max_stall, const std::function<void(size_t)>& drop,
             Clock::duration* waited = nullptr) {
        std::unique_lock lk(mu_);
        const auto wait_start = Clock::now();
        auto stall_start = wait_start;
        struct Waited {
            Clock::duration* out;
            Clock::time_point start;
            ~Waited() {
                if (out) *out += Clock::now() - start;
            }
        } note{waited, wait_start};
        for (;;) {
            if (active_count() == 0) return false;
            if (items_.empty() || (bytes_ + item->frame.size() <= limit_ &&
                                   (lead_limit_ == 0 || lead_bytes() + item->frame.size() <= lead_limit_)))
                break;
            auto deadline = stall_start + max_stall;
            if (cv_.wait_until(lk, deadline) == std::cv_status::timeout && Clock::now() >= deadline) {
                uint64_t slowest = UINT64_MAX;
                for (const auto& c : cons_)
                    if (c.active) slowest = std::min(slowest, c.next);
                for (size_t i = 0; i < cons_.size(); ++i) {
                    if (cons_[i].active && cons_[i].next == slowest) {
                        cons_[i].active = false;
                        cons_[i].dropped = true;
                        drop(i);
                    }
                }
                trim();
                cv_.notify_all();
                stall_start = Clock::now();
            }
        }
        bytes_ += item->frame.size();
        starts_.push_back(produced_);
        produced_ += item->frame.size();
        items_.push_back(std::move(item));
        cv_.notify_all();
        return true;
    }

    void finish(Status reader_status) {
        std::lock_guard lk(mu_);
        finished_ = true;
        reader_status_ = std::move(reader_status);
        cv_.notify_all();
    }

    // The item at absolute `index` for consumer `c` (which is done with every
    // item before it); nullptr at the end of the stream or once `c` left.
    // `waited`: time spent waiting for the producer.
    ChangePtr get(size_t c, uint64_t index, Clock::duration* waited = nullptr) {
        std::unique_lock lk(mu_);
        cons_[c].next = index;
        trim();
        cv_.notify_all();
        auto ready = [&] { return !cons_[c].active || finished_ || index < first_ + items_.size(); };
        if (!ready()) {
            const auto t0 = Clock::now();
            cv_.wait(lk, ready);
            if (waited) *waited += Clock::now() - t0;
        }
        if (!cons_[c].active || index >= first_ + items_.size()) return nullptr;
        return items_[index - first_];
    }

    void leave(size_t c) {
        std::lock_guard lk(mu_);
        cons_[c].active = false;
        trim();
        cv_.notify_all();
    }

    bool dropped(size_t c) {
        std::lock_guard lk(mu_);
        return cons_[c].dropped;
    }
    Status reader_status() {
        std::lock_guard lk(mu_);
        return reader_status_;
    }

private:
    size_t active_count() const {
        return static_cast<size_t>(std::count_if(cons_.begin(), cons_.end(), [](const C& c) { return c.active; }));
    }
    void trim() {
        uint64_t keep_from = UINT64_MAX;
        for (const auto& c : cons_)
            if (c.active) keep_from = std::min(keep_from, c.next);
        while (!items_.empty() && first_ < keep_from) {
            bytes_ -= items_.front()->frame.size();
            items_.pop_front();
            starts_.pop_front();
            ++first_;
        }
    }
    // Bytes put but not yet taken by the most advanced active consumer.
    uint64_t lead_bytes() const {
        uint64_t ahead = 0;
        for (const auto& c : cons_)
            if (c.active) ahead = std::max(ahead, c.next);
        if (ahead < first_) return bytes_;
        if (ahead >= first_ + items_.size()) return 0;
        return produced_ - starts_[ahead - first_];
    }

    struct C {
        uint64_t next = 0;
        bool active = true;
        bool dropped = false;
    };
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<ChangePtr> items_;
    std::deque<uint64_t> starts_;  // per item: bytes produced before it
    uint64_t produced_ = 0;
    uint64_t first_ = 0;  // absolute index of items_.front()
    uint64_t bytes_ = 0;
    uint64_t limit_;
    uint64_t lead_limit_;
    std::vector<C> cons_;
    bool finished_ = false;
    Status reader_status_;
};

// ---- one replica ----

enum class State : int { connecting, negotiating, streaming, finishing, done, failed };
const char* state_name(State s) {
    switch (s) {
    case State::connecting: return "connecting";
    case State::negotiating: return "negotiating";
    case State::streaming: return "streaming";
    case State::finishing: return "finishing";
    case State::done: return "done";
    case State::failed: return "failed";
    }
    return "?";
}

struct Group;

struct Session {
    HostPort target;
    Stream stream;
    FrameDecoder decoder;
    Need need;
    ReplicaReport report;
    Group* group = nullptr;
    size_t consumer = 0;
    std::atomic<int> state{static_cast<int>(State::connecting)};
    std::atomic<uint64_t> payload_total{0};
    std::atomic<uint64_t> payload_sent{0};
    std::atomic<bool> stream_open{false};
    std::mutex drop_mu;
    std::string drop_reason;
    // What the writer saw, for the compression controller (nanoseconds, bytes).
    // Link figures count only DATA frames of the controller's current setting:
    // right after a change the socket still carries frames of the previous one.
    std::atomic<uint64_t> link_ns{0}, starved_ns{0}, link_bytes{0}, link_raw{0};
    Clock::time_point started = Clock::now();

    std::string what() const {
        return "image '" + report.image + "' version " + std::to_string(report.version) + " to replica " +
               (report.peer.empty() ? target.text() : report.peer);
    }
    void set_state(State s) { state.store(static_cast<int>(s)); }

    // Records the failure (first one wins) and, when we detected it, tells the replica.
    void fail(const Status& s, ErrorCode code, bool tell_peer) {
        if (report.status.is_ok()) {
            report.status = Status::error(s.code() ? s.code() : EIO, what() + ": " + s.message());
            report.code = static_cast<uint16_t>(code);
        }
        if (tell_peer && stream.is_open()) {
            Error e;
            e.code = static_cast<uint16_t>(code == ErrorCode::ok ? ErrorCode::internal : code);
            e.message = clamp_message(report.status.message());
            (void)send_message(stream, e);
        }
        stream.close();
        set_state(State::failed);
    }

    // Reads the next frame, expecting M; an ERROR from the replica becomes the failure.
    template <typename M>
    Result<M> expect(std::string_view waiting_for) {
        auto f = read_frame(stream, decoder, waiting_for);
        if (!f) return f.status();
        if (f->type == FrameType::error) {
            auto e = Error::decode(f->payload);
            if (!e) return e.status();
            remote_code = e->code;
            return Status::error(EREMOTEIO, "replica reported " + error_code_name(e->code) + ": " + e->message);
        }
        if (f->type != M::kType) {
            protocol_violation = true;
            return Status::error(EPROTO, std::string("expected ") + frame_type_name(M::kType) + ", got " +
                                             frame_type_name(f->type));
        }
        auto m = M::decode(f->payload);
        if (!m) protocol_violation = true;
        return m;
    }
    // The failure after expect() failed: the replica's code, or protocol/io on our side.
    void fail_after_read(const Status& s) {
        if (remote_code) fail(s, static_cast<ErrorCode>(remote_code), false);
        else if (protocol_violation || s.code() == EPROTO || s.code() == EBADMSG || s.code() == EMSGSIZE)
            fail(s, ErrorCode::protocol, true);
        else fail(s, ErrorCode::io_error, false);
    }
    uint16_t remote_code = 0;
    bool protocol_violation = false;
    uint32_t receiver_caps = 0;

    // After a failed write: the replica usually said why in an ERROR before it
    // closed (it drains our frames for a moment so that we can read it).
    Status reason_for_write_failure(const Status& w) {
        stream.set_io_timeout(std::chrono::milliseconds(2000));
        auto e = expect<Error>("ERROR");
        return remote_code ? e.status() : w;
    }
};

// The replicas that need the same diff (same base), and its reader.
struct Group {
    uint64_t base = 0;
    std::vector<Session*> sessions;
    std::vector<PlannedChange> plan;
    uint64_t start_seq = 0;
    uint64_t start_chain = 0;
    std::unique_ptr<FrameWindow> window;
    std::atomic<uint64_t> bytes_read{0};
    std::vector<std::string> codec_decisions;  // written by the reader, read after it is joined
    std::atomic<int> codec_step{-1};           // the controller's current setting (index), -1: pinned
};

struct PushContext {
    explicit PushContext(const PushOptions& o) : opt(o), limiter(o.bandwidth_limit) {}
    const PushOptions& opt;
    fs::path version_dir;
    TreeManifest manifest;
    Offer offer;
    RateLimiter limiter;
    std::string node_name;
};

std::string host_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "master";
    std::string n;
    for (char c : std::string(buf))
        if (c > 0x20 && c < 0x7f) n += c;
    return n.empty() ? "master" : n.substr(0, kMaxNodeName);
}

// Handshake and negotiation (sections 3, 4.1, 4.2).
void negotiate(PushContext& ctx, Session& s) {
    auto st = connect(s.target.host, s.target.port, ctx.opt.tls);
    if (!st) return s.fail(st.status(), ErrorCode::io_error, false);
    s.stream = std::move(st.value());
    s.stream_open = true;
    s.report.peer = s.stream.peer().describe();
    s.set_state(State::negotiating);

    Hello ours;
    ours.role = Role::sender;
    ours.capabilities = 0;  // a sender decompresses nothing
    ours.node_name = ctx.node_name;
    if (Status w = send_message(s.stream, ours); !w) return s.fail(w, ErrorCode::io_error, false);
    auto theirs = s.expect<Hello>("HELLO");
    if (!theirs) return s.fail_after_read(theirs.status());
    if (theirs->role != Role::receiver)
        return s.fail(Status::error(EPROTO, "the peer's HELLO does not have the receiver role"), ErrorCode::protocol,
                      true);
    auto v = negotiate_version(ours, *theirs);
    if (!v || theirs->min_version != theirs->max_version)
        return s.fail(v ? Status::error(EPROTO, "the replica's HELLO does not pick one version") : v.status(),
                      v ? ErrorCode::protocol : ErrorCode::unsupported_version, true);
    s.report.peer = theirs->node_name + " (" + s.stream.peer().address + ")";
    s.receiver_caps = theirs->capabilities;

    if (Status w = send_message(s.stream, ctx.offer); !w) return s.fail(w, ErrorCode::io_error, false);
    auto need = s.expect<Need>("NEED");
    if (!need) return s.fail_after_read(need.status());
    if (Status c = need->check_against(ctx.offer); !c) return s.fail(c, ErrorCode::protocol, true);
    s.need = *need;
    s.report.kind = need->kind;
    s.report.base = need->base;
    s.report.resume_seq = need->resume_seq;
    s.report.timeline.negotiated = seconds_since(s.started);
}

// Reads and encodes the change frames of a group, once, into its window. The
// reader keeps the order (the change chain, the window); DATA frames are
// compressed by a pool of workers meanwhile, a bounded number ahead.
void run_reader(PushContext& ctx, Group& g) {
    ChangeChain chain(g.start_seq, g.start_chain);
    // Compress only with an algorithm every replica of the group can decompress.
    uint32_t caps = kKnownCapabilities;
    for (Session* s : g.sessions) caps &= s->receiver_caps;
    const bool adaptive = ctx.opt.compress_auto;
    Compression alg = ctx.opt.compression;
    if ((caps & capability_bit(alg)) != capability_bit(alg)) alg = Compression::none;
    const unsigned workers = ctx.opt.compression_workers ? ctx.opt.compression_workers : default_compression_workers();
    std::unique_ptr<CompressionPool> pool;
    std::optional<CodecSetting> pinned;  // the setting of every chunk when not adaptive
    if (adaptive || alg != Compression::none) {
        auto p = CompressionPool::create(adaptive ? Compression::none : alg, ctx.opt.compression_level, workers);
        if (!p) return g.window->finish(p.status());
        pool = std::move(p.value());
    }
    if (!adaptive) {
        if (alg == Compression::none) pinned = CodecSetting{Compression::none, 0};
        else if (auto c = Compressor::create(alg, ctx.opt.compression_level)) pinned = CodecSetting{alg, c->level()};
    }
    const auto ladder = codec_ladder();
    CodecControl control;
    while (control.step > 0 &&
           (caps & capability_bit(ladder[control.step].algorithm)) != capability_bit(ladder[control.step].algorithm))
        --control.step;
    size_t& step = control.step;
    // The controller's window: what the workers, the writers and this reader did since it opened.
    const auto push_start = Clock::now();
    auto win_start = push_start;
    Clock::duration put_wait{};
    PoolStats acc;
    struct Seen {
        uint64_t link_ns = 0, starved_ns = 0, link_bytes = 0, link_raw = 0;
    };
    std::vector<Seen> seen(g.sessions.size());
    auto maybe_decide = [&] {
        const auto now = Clock::now();
        const double secs = std::chrono::duration<double>(now - win_start).count();
        PoolStats fresh = pool->take_stats();
        for (size_t i = 0; i < acc.steps.size(); ++i) {
            acc.steps[i].chunks += fresh.steps[i].chunks;
            acc.steps[i].raw_bytes += fresh.steps[i].raw_bytes;
            acc.steps[i].coded_bytes += fresh.steps[i].coded_bytes;
            acc.steps[i].busy_seconds += fresh.steps[i].busy_seconds;
        }
        const auto& cur = acc.steps[step];
        if (secs < 0.05 || (cur.raw_bytes < (2u << 20) && secs < 0.25)) return;
        CodecObservation o;
        o.seconds = secs;
        o.workers = pool->workers();
        o.raw_bytes = cur.raw_bytes;
        o.coded_bytes = cur.coded_bytes;
        o.compress_seconds = cur.busy_seconds;
        o.producer_blocked_seconds = std::chrono::duration<double>(put_wait).count();
        o.link_limit = static_cast<double>(ctx.opt.bandwidth_limit);
        bool any = false;
        for (size_t i = 0; i < g.sessions.size(); ++i) {
            Session* s = g.sessions[i];
            Seen now_seen{s->link_ns.load(), s->starved_ns.load(), s->link_bytes.load(), s->link_raw.load()};
            Seen d{now_seen.link_ns - seen[i].link_ns, now_seen.starved_ns - seen[i].starved_ns,
                   now_seen.link_bytes - seen[i].link_bytes, now_seen.link_raw - seen[i].link_raw};
            seen[i] = now_seen;
            if (static_cast<State>(s->state.load()) != State::streaming) continue;
            double ls = d.link_ns / 1e9, ss = d.starved_ns / 1e9;
            // The slowest replica: the most time in the socket per byte; a writer
            // that starved least tells whether the frames come too slowly for all.
            if (!any || ls * o.link_bytes > o.link_seconds * d.link_bytes) {
                o.link_seconds = ls;
                o.link_bytes = d.link_bytes;
                o.link_raw_bytes = d.link_raw;
            }
            o.starved_seconds = any ? std::min(o.starved_seconds, ss) : ss;
            any = true;
        }
        const size_t before = step;
        CodecDecision next = next_codec_step(o, control, caps);
        if (next.step != before) {
            char when[32];
            std::snprintf(when, sizeof when, "%.2f s: ", std::chrono::duration<double>(now - push_start).count());
            g.codec_decisions.push_back(when + ladder[before].name() + " -> " + ladder[next.step].name() + " (" +
                                        next.reason + ")");
            g.codec_step = static_cast<int>(step);
        }
        acc = PoolStats{};
        put_wait = {};
        win_start = now;
    };
    auto drop = [&](size_t i) {
        Session* s = g.sessions[i];
        {
            std::lock_guard lk(s->drop_mu);
            s->drop_reason = "dropped from this push: it kept the shared window of " +
                             std::to_string(ctx.opt.window_bytes) + " bytes full for more than " +
                             std::to_string(ctx.opt.max_stall.count()) +
                             " ms (the others go on; it resumes from its last checkpoint on the next push)";
        }
        s->stream.interrupt();
    };

    // Changes encoded but not yet in the window, in seq order; a DATA frame
    // may still be in the pool. Bounded so that memory stays a few chunks.
    struct Pending {
        std::shared_ptr<EncodedChange> item;
        std::future<Result<Bytes>> frame;
    };
    std::deque<Pending> pending;
    const size_t max_pending = pool ? pool->max_in_flight() : 1;
    Status status;
    bool receivers_left = true;
    // Moves the oldest pending change into the window (waiting for its frame);
    // a failure sets `status`, a window nobody reads any more `receivers_left`.
    auto put_oldest = [&] {
        Pending p = std::move(pending.front());
        pending.pop_front();
        auto f = p.frame.get();
        if (!f) {
            status = f.status();
            return;
        }
        p.item->frame = std::move(f.value());
        if (!g.window->put(std::move(p.item), ctx.opt.max_stall, drop, &put_wait)) receivers_left = false;
    };
    // A frame built right here, in the same shape as the pool's.
    auto ready = [](Result<Bytes> r) {
        std::promise<Result<Bytes>> pr;
        pr.set_value(std::move(r));
        return pr.get_future();
    };

    std::optional<ChildFileReader> reader;
    // Readahead: the kernel hears about the next ranges of the file while this
    // one is compressed and sent, so a scattered update is read with many
    // requests in flight instead of one pread at a time (regression: a 60 MiB
    // update in 2000 pieces read at ~70 MB/s from a cold cache).
    constexpr uint64_t readahead_window = 32u << 20;
    uint64_t prefetch_seq = 0, prefetched = 0, consumed = 0;
    Bytes raw;  // the chunk being read; handed to the pool, or reused when not compressing
    for (uint64_t seq = g.start_seq + 1; seq <= g.plan.size() && status && receivers_left; ++seq) {
        const PlannedChange& pc = g.plan[seq - 1];
        auto item = std::make_shared<EncodedChange>();
        item->seq = seq;
        std::optional<std::future<Result<Bytes>>> frame;
        Status err;  // set: the frame cannot be made
        auto emit = [&](const auto& m) {  // a frame without data: encoded here, chained
            frame = ready(make_frame(m));
            err = chain.add(m);
        };
        switch (pc.type) {
        case FrameType::del: emit(Delete{seq, pc.path}); break;
        case FrameType::truncate: emit(Truncate{seq, pc.length, pc.path}); break;
        case FrameType::hole: emit(Hole{seq, pc.offset, pc.length, pc.path}); break;
        case FrameType::file: emit(FileEntry{seq, pc.path, pc.attrs}); break;
        case FrameType::data: {
            if (!reader || reader->path() != (ctx.version_dir.string() + "/" + pc.path)) {
                auto r = ChildFileReader::open(ctx.version_dir, pc.path);
                if (!r) {
                    err = r.status();
                    break;
                }
                reader.emplace(std::move(r.value()));
            }
            if (prefetch_seq <= seq) {
                prefetch_seq = seq;
                prefetched = consumed;
            }
            for (; prefetch_seq <= g.plan.size() && prefetched - consumed < readahead_window; ++prefetch_seq) {
                const PlannedChange& ahead = g.plan[prefetch_seq - 1];
                if (ahead.type != FrameType::data) continue;
                if (ahead.path != pc.path) break;
                posix_fadvise(reader->fd(), static_cast<off_t>(ahead.offset), static_cast<off_t>(ahead.length),
                              POSIX_FADV_WILLNEED);
                prefetched += ahead.length;
            }
            consumed += pc.length;
            if (pool) raw = pool->take_buffer(pc.length);
            else raw.resize(pc.length);
            if (Status rs = reader->read_at(pc.offset, raw); !rs) {
                err = rs;
                break;
            }
            g.bytes_read += pc.length;
            Data m;
            m.seq = seq;
            m.offset = pc.offset;
            m.length = static_cast<uint32_t>(pc.length);
            m.path = pc.path;
            m.bytes = raw;
            // The chain hashes the uncompressed bytes: how a chunk travels does not change it.
            err = chain.add(m, xxh3_64(raw.data(), raw.size()));
            if (!err) break;
            if (adaptive) {
                if (g.codec_step < 0) g.codec_step = static_cast<int>(step);
                maybe_decide();
                item->codec = ladder[step];
                item->step = static_cast<int>(step);
                frame = pool->encode(std::move(m), std::move(raw), ladder[step]);
            } else {
                item->codec = pinned;
                if (pool) frame = pool->encode(std::move(m), std::move(raw));
                else frame = ready(make_frame(m));
            }
            item->data_bytes = pc.length;
            break;
        }
        default: err = Status::error(EINVAL, "internal: bad planned frame type");
        }
        if (!err) {
            status = err;
            break;
        }
        item->chain_after = chain.value();
        pending.push_back(Pending{std::move(item), std::move(*frame)});
        while (status && receivers_left &&
               (pending.size() >= max_pending ||
                (!pending.empty() &&
                 pending.front().frame.wait_for(std::chrono::seconds(0)) == std::future_status::ready)))
            put_oldest();
    }
    while (status && receivers_left && !pending.empty()) put_oldest();
    pending.clear();  // after a failure: the pool finishes what it holds; nobody reads it
    g.window->finish(std::move(status));
}

// Streams the group's window to one replica, then END and RESULT (4.3-4.5).
void run_writer(PushContext& ctx, Session& s) {
    Group& g = *s.group;
    s.set_state(State::streaming);
    const uint64_t n = g.plan.size();
    uint64_t last_seq = s.need.resume_seq, last_chain = s.need.resume_chain;
    std::optional<std::pair<uint64_t, uint64_t>> pending;  // outstanding checkpoint: seq, expected chain
    uint64_t since_checkpoint = 0;  // stream bytes (or frame bytes with a fixed interval)
    const bool by_frames = ctx.opt.checkpoint_interval != 0;
    uint64_t stream_left = 0;  // stream bytes still to send
    for (uint64_t q = s.need.resume_seq; q < n; ++q)
        stream_left += g.plan[q].type == FrameType::data ? g.plan[q].length : 64 + g.plan[q].path.size();
    const CheckpointSchedule schedule = checkpoint_schedule(ctx.opt, stream_left);
    std::optional<CodecSetting> last_codec;

    auto read_ack = [&]() -> Status {
        auto ack = s.expect<CheckpointAck>("CHECKPOINT_ACK");
        if (!ack) return ack.status();
        if (ack->seq != pending->first) {
            s.protocol_violation = true;
            return Status::error(EPROTO, "CHECKPOINT_ACK for seq " + std::to_string(ack->seq) + ", expected " +
                                             std::to_string(pending->first));
        }
        if (ack->chain != pending->second) {
            s.remote_code = 0;
            return Status::error(EBADMSG, "checkpoint at change " + std::to_string(ack->seq) +
                                              ": the replica's change chain differs from ours");
        }
        pending.reset();
        ++s.report.checkpoints;
        return Status::ok();
    };
    auto fail_stream = [&](const Status& st) {
        g.window->leave(s.consumer);
        if (st.code() == EBADMSG && !s.remote_code && !s.protocol_violation)
            return s.fail(st, ErrorCode::digest_mismatch, true);
        s.fail_after_read(st);
    };

    auto last_checkpoint = std::chrono::steady_clock::now();
    for (uint64_t idx = 0;; ++idx) {
        Clock::duration starved{};
        ChangePtr item = g.window->get(s.consumer, idx, &starved);
        s.starved_ns += static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(starved).count());
        if (!item) break;
        if (item->seq <= s.need.resume_seq) continue;
        const auto write_start = Clock::now();
        ctx.limiter.acquire(item->frame.size());
        Status w = write_frame_bytes(s.stream, item->frame);
        if (item->step >= 0 && item->step == g.codec_step.load()) {
            s.link_ns += static_cast<uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - write_start).count());
            s.link_bytes += item->frame.size();
            s.link_raw += item->data_bytes;
        }
        if (!w) {
            g.window->leave(s.consumer);
            std::string why;
            {
                std::lock_guard lk(s.drop_mu);
                why = s.drop_reason;
            }
            s.report.dropped = true;
            if (!why.empty()) return s.fail(Status::error(ETIMEDOUT, why), ErrorCode::cancelled, false);
            Status reason = s.reason_for_write_failure(w);
            if (s.remote_code) return s.fail(reason, static_cast<ErrorCode>(s.remote_code), false);
            return s.fail(reason, ErrorCode::io_error, false);
        }
        if (!s.report.changes_sent) s.report.timeline.first_frame = seconds_since(s.started);
        ++s.report.changes_sent;
        s.report.frame_bytes += item->frame.size();
        s.report.payload_bytes += item->data_bytes;
        s.payload_sent += item->data_bytes;
        if (item->codec) {
            if (last_codec && *last_codec != *item->codec) ++s.report.codec_switches;
            last_codec = item->codec;
            const std::string name = item->codec->name();
            auto it = std::find_if(s.report.codecs.begin(), s.report.codecs.end(),
                                   [&](const CodecUse& u) { return u.setting == name; });
            if (it == s.report.codecs.end()) it = s.report.codecs.insert(s.report.codecs.end(), CodecUse{name});
            ++it->chunks;
            it->raw_bytes += item->data_bytes;
            it->frame_bytes += item->frame.size();
        }
        last_seq = item->seq;
        last_chain = item->chain_after;
        const uint64_t stream_bytes = item->data_bytes ? item->data_bytes : item->frame.size();
        since_checkpoint += by_frames ? item->frame.size() : stream_bytes;
        stream_left -= std::min(stream_left, stream_bytes);
        // No checkpoint just before END: the replica syncs for END anyway.
        if (last_seq < n && stream_left >= schedule.every_bytes / 4 &&
            checkpoint_due(schedule, since_checkpoint, std::chrono::steady_clock::now() - last_checkpoint)) {
            last_checkpoint = std::chrono::steady_clock::now();
            if (pending)
                if (Status a = read_ack(); !a) return fail_stream(a);
            if (Status w = send_message(s.stream, Checkpoint{last_seq}); !w) return fail_stream(s.reason_for_write_failure(w));
            pending = std::make_pair(last_seq, last_chain);
            since_checkpoint = 0;
        }
    }
    g.window->leave(s.consumer);
    if (g.window->dropped(s.consumer)) {
        std::lock_guard lk(s.drop_mu);
        s.report.dropped = true;
        return s.fail(Status::error(ETIMEDOUT, s.drop_reason), ErrorCode::cancelled, true);
    }
    if (Status rs = g.window->reader_status(); !rs) {
        ErrorCode code = error_code_for(rs);
        if (code == ErrorCode::bad_name && rs.code() != EINVAL) code = ErrorCode::io_error;
        return s.fail(Status::error(rs.code(), "reading the source: " + rs.message()), code, true);
    }
    if (last_seq != n) {
        return s.fail(Status::error(EIO, "internal: the stream ended at change " + std::to_string(last_seq) +
                                             " of " + std::to_string(n)),
                      ErrorCode::internal, true);
    }
    s.set_state(State::finishing);
    s.report.timeline.last_frame = seconds_since(s.started);
    if (pending)
        if (Status a = read_ack(); !a) return fail_stream(a);
    End end;
    end.change_count = n;
    end.chain = last_chain;
    end.entry_count = ctx.manifest.entry_count;
    end.manifest_hash = ctx.manifest.hash;
    end.digest = version_digest(ctx.opt.version, g.base, n, last_chain, ctx.manifest.entry_count, ctx.manifest.hash);
    if (Status w = send_message(s.stream, end); !w) return fail_stream(s.reason_for_write_failure(w));
    auto result = s.expect<PushResult>("RESULT");
    if (!result) return s.fail_after_read(result.status());
    if (!result->ok()) {
        s.remote_code = result->code;
        return s.fail(Status::error(EREMOTEIO, "replica reported " + error_code_name(result->code) + ": " +
                                                   result->message),
                      static_cast<ErrorCode>(result->code), false);
    }
    s.report.timeline.result = seconds_since(s.started);
    (void)s.stream.shutdown();
    s.set_state(State::done);
}

std::vector<ReplicaProgress> snapshot_progress(const std::vector<std::unique_ptr<Session>>& sessions) {
    std::vector<ReplicaProgress> out;
    for (const auto& s : sessions) {
        ReplicaProgress p;
        p.peer = s->target.text();
        p.state = state_name(static_cast<State>(s->state.load()));
        p.payload_total = s->payload_total;
        p.payload_sent = s->payload_sent;
        if (s->stream_open) p.wire_sent = s->stream.counters().wire_sent;
        double secs = seconds_since(s->started);
        if (secs > 0) p.rate_bytes_per_s = p.wire_sent / secs;
        double payload_rate = secs > 0 ? p.payload_sent / secs : 0;
        if (p.payload_sent >= p.payload_total) p.eta_seconds = 0;
        else if (payload_rate > 0) p.eta_seconds = (p.payload_total - p.payload_sent) / payload_rate;
        out.push_back(std::move(p));
    }
    return out;
}

}  // namespace

// ---- public helpers ----

std::string HostPort::text() const {
    return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Result<HostPort> parse_host_port(std::string_view text) {
    auto bad = [&](const char* why) {
        return Status::error(EINVAL, "'" + std::string(text) + "' is not HOST:PORT (" + why + ")");
    };
    HostPort hp;
    std::string_view port;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
            return bad("an IPv6 address goes in brackets: [::1]:7000");
        hp.host = std::string(text.substr(1, close - 1));
        port = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos) return bad("no port");
        hp.host = std::string(text.substr(0, colon));
        port = text.substr(colon + 1);
        if (hp.host.find(':') != std::string::npos) return bad("an IPv6 address goes in brackets: [::1]:7000");
    }
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return bad("the port is not a number");
    unsigned long p = std::stoul(std::string(port));
    if (p > 65535) return bad("the port is above 65535");
    hp.port = static_cast<uint16_t>(p);
    return hp;
}

Result<std::vector<PlannedChange>> plan_change_stream(const SnapshotDiff& diff, const fs::path& child) {
    std::vector<const FileChange*> deletions, content;
    std::map<std::string, EntryAttrs> dirs;
    std::set<std::string> touched_parents;  // directories that gain or lose a child
    for (const auto& c : diff.changes) {
        if (c.kind == ChangeKind::deleted) {
            deletions.push_back(&c);
            touched_parents.insert(parent_of(c.path));
            continue;
        }
        if (c.kind == ChangeKind::added) touched_parents.insert(parent_of(c.path));
        if (c.attrs.type == EntryType::directory) {
            EntryAttrs a = c.attrs;
            a.size = 0;
            a.symlink_target.clear();
            dirs[c.path] = a;
        } else {
            content.push_back(&c);
        }
    }
    UniqueFd root(::open(child.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root.valid()) return Status::from_errno(errno, "version '" + child.string() + "'");
    for (const auto& p : touched_parents) {
        if (p.empty() || dirs.count(p)) continue;
        auto fd = open_beneath(root.get(), p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
        if (!fd) continue;  // gone in the new version (a deleted tree): nothing to set
        struct ::stat st;
        if (::fstat(fd->get(), &st) != 0) return Status::from_errno(errno, "version '" + child.string() + "': " + p);
        auto a = entry_attrs_from_stat(p, st);
        if (!a) return a.status();
        dirs[p] = *a;
    }
    auto by_path = [](const FileChange* a, const FileChange* b) { return a->path < b->path; };
    std::sort(deletions.begin(), deletions.end(), [](const FileChange* a, const FileChange* b) { return a->path > b->path; });
    std::sort(content.begin(), content.end(), by_path);

    std::vector<PlannedChange> plan;
    for (const FileChange* c : deletions) plan.push_back(PlannedChange{FrameType::del, c->path, 0, 0, {}});
    for (const FileChange* c : content) {
        if (c->attrs.type == EntryType::regular) {
            if (c->kind == ChangeKind::added || (c->changed & kChangedSize))
                plan.push_back(PlannedChange{FrameType::truncate, c->path, 0, c->attrs.size, {}});
            // DATA cut at every multiple of the chunk size, merged with HOLEs by offset.
            std::vector<PlannedChange> pieces;
            for (const auto& r : c->data) {
                for (uint64_t p = r.offset; p < r.end();) {
                    uint64_t q = std::min(r.end(), (p / kChunkSize + 1) * kChunkSize);
                    pieces.push_back(PlannedChange{FrameType::data, c->path, p, q - p, {}});
                    p = q;
                }
            }
            for (const auto& h : c->holes) pieces.push_back(PlannedChange{FrameType::hole, c->path, h.offset, h.length, {}});
            std::stable_sort(pieces.begin(), pieces.end(),
                             [](const PlannedChange& a, const PlannedChange& b) { return a.offset < b.offset; });
            for (auto& p : pieces) plan.push_back(std::move(p));
        }
        plan.push_back(PlannedChange{FrameType::file, c->path, 0, 0, c->attrs});
    }
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it)
        plan.push_back(PlannedChange{FrameType::file, it->first, 0, 0, it->second});
    return plan;
}

CheckpointSchedule checkpoint_schedule(const PushOptions& o, uint64_t stream_bytes) {
    CheckpointSchedule s;
    s.every_bytes = o.checkpoint_interval ? o.checkpoint_interval
                                          : std::clamp<uint64_t>(stream_bytes / 16, 1u << 20, 64u << 20);
    s.min_gap = o.checkpoint_min_period;
    s.max_gap = o.checkpoint_max_period;
    return s;
}

bool checkpoint_due(const CheckpointSchedule& s, uint64_t bytes_since, std::chrono::nanoseconds since) {
    if (bytes_since == 0) return false;
    if (bytes_since >= s.every_bytes && (since >= s.min_gap || bytes_since >= 16 * s.every_bytes)) return true;
    // A slow link: about max_gap of transfer at most, but not for a few bytes.
    return s.max_gap.count() > 0 && since >= s.max_gap && bytes_since >= std::min<uint64_t>(s.every_bytes, 64u << 10);
}

bool PushReport::all_ok() const {
    return std::all_of(replicas.begin(), replicas.end(), [](const ReplicaReport& r) { return r.ok(); });
}

Result<PushReport> push(const PushOptions& opt) {
    const auto started = Clock::now();
    const std::string what = "image '" + opt.image + "' version " + std::to_string(opt.version);
    if (Status s = validate_image_name(opt.image); !s) return s;
    if (opt.targets.empty()) return Status::error(EINVAL, what + ": no replica to push to");
    auto repo = Repository::open(opt.root);
    if (!repo) return repo.status();
    auto vdir = repo->version_path(opt.image, opt.version);
    if (!vdir) return Status::error(vdir.status().code(), what + ": " + vdir.status().message());
    auto held = repo->list_versions(opt.image);
    if (!held) return held.status();

    PushContext ctx(opt);
    ctx.version_dir = *vdir;
    ctx.node_name = opt.node_name.empty() ? host_name() : opt.node_name;
    if (Status s = validate_node_name(ctx.node_name); !s) return s;
    {
        UniqueFd root(::open(vdir->c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!root.valid()) return Status::from_errno(errno, what + ": open '" + vdir->string() + "'");
        auto m = manifest_of_tree(root.get(), what);
        if (!m) return m.status();
        ctx.manifest = *m;
    }
    ctx.offer.version = opt.version;
    ctx.offer.total_size = ctx.manifest.total_size;
    ctx.offer.entry_count = ctx.manifest.entry_count;
    ctx.offer.held = *held;
    ctx.offer.image = opt.image;
    if (Status s = ctx.offer.validate(); !s) return s;

    std::vector<std::unique_ptr<Session>> sessions;
    for (const auto& t : opt.targets) {
        auto s = std::make_unique<Session>();
        s->target = t;
        s->report.target = t.text();
        s->report.image = opt.image;
        s->report.version = opt.version;
        sessions.push_back(std::move(s));
    }

    std::atomic<bool> all_done{false};
    std::jthread progress;
    if (opt.on_progress) {
        progress = std::jthread([&] {
            while (!all_done.load()) {
                opt.on_progress(snapshot_progress(sessions));
                for (int i = 0; i < 20 && !all_done.load(); ++i)
                    std::this_thread::sleep_for(opt.progress_interval / 20);
            }
        });
    }

    // The diff most pushes need (from the newest version held below this
    // one), computed while the replicas handshake and make their staging
    // snapshots (tens of ms on BTRFS) instead of after.
    struct Planned {
        Status status;
        std::vector<PlannedChange> plan;
    };
    auto plan_for = [&](uint64_t base) -> Planned {
        std::optional<fs::path> base_dir;
        if (base) {
            auto b = repo->version_path(opt.image, base);
            if (!b) return {Status::error(ENOENT, "the base version " + std::to_string(base) + " is not held any more"), {}};
            base_dir = *b;
        }
        auto d = diff_versions(base_dir, *vdir, opt.diff);
        if (!d) return {d.status(), {}};
        auto p = plan_change_stream(*d, *vdir);
        if (!p) return {p.status(), {}};
        return {Status::ok(), std::move(p.value())};
    };
    uint64_t likely_base = 0;
    for (uint64_t v : *held)
        if (v < opt.version) likely_base = v;
    std::future<Planned> speculative;
    if (likely_base) speculative = std::async(std::launch::async, plan_for, likely_base);

    // 1. Handshake and negotiation, all replicas in parallel.
    {
        std::vector<std::jthread> threads;
        for (auto& s : sessions) threads.emplace_back([&ctx, &s] { negotiate(ctx, *s); });
    }

    // 2. One diff per distinct base.
    std::map<uint64_t, std::unique_ptr<Group>> groups;
    for (auto& s : sessions) {
        if (!s->report.status.is_ok()) continue;
        if (s->need.kind == NeedKind::nothing) {
            (void)s->stream.shutdown();
            s->set_state(State::done);
            continue;
        }
        auto& g = groups[s->need.base];
        if (!g) {
            g = std::make_unique<Group>();
            g->base = s->need.base;
        }
        g->sessions.push_back(s.get());
    }
    std::vector<std::jthread> threads;
    for (auto& [base, g] : groups) {
        Planned planned = base == likely_base && speculative.valid() ? speculative.get() : plan_for(base);
        Status gs = planned.status;
        g->plan = std::move(planned.plan);
        if (!gs) {
            const bool base_gone = base && gs.code() == ENOENT && !repo->version_path(opt.image, base);
            ErrorCode code = base_gone ? ErrorCode::unknown_base : error_code_for(gs);
            if (code == ErrorCode::bad_name && gs.code() != EINVAL) code = ErrorCode::io_error;
            if (gs.code() == ENOTSUP) code = ErrorCode::bad_name;
            for (Session* s : g->sessions) s->fail(gs, code, true);
            g->sessions.clear();
            continue;
        }
        // Each replica may resume at its own point; the reader starts at the earliest.
        std::vector<Session*> ok;
        for (Session* s : g->sessions) {
            if (s->need.resume_seq > g->plan.size()) {
                s->fail(Status::error(EPROTO, "NEED resumes after change " + std::to_string(s->need.resume_seq) +
                                                  " but the stream has " + std::to_string(g->plan.size())),
                        ErrorCode::protocol, true);
                continue;
            }
            ok.push_back(s);
        }
        g->sessions = ok;
        if (ok.empty()) continue;
        Session* first = *std::min_element(ok.begin(), ok.end(), [](Session* a, Session* b) {
            return a->need.resume_seq < b->need.resume_seq;
        });
        g->start_seq = first->need.resume_seq;
        g->start_chain = first->need.resume_chain;
        // Adaptive compression: frames are encoded at most 1 MiB ahead of the
        // fastest replica (beyond what the sockets hold), so a new setting
        // reaches the link soon after the link asked for it.
        g->window = std::make_unique<FrameWindow>(opt.window_bytes, ok.size(), opt.compress_auto ? (1u << 20) : 0);
        for (size_t i = 0; i < ok.size(); ++i) {
            ok[i]->group = g.get();
            ok[i]->consumer = i;
            ok[i]->report.change_count = g->plan.size();
            uint64_t total = 0;
            for (uint64_t q = ok[i]->need.resume_seq; q < g->plan.size(); ++q)
                if (g->plan[q].type == FrameType::data) total += g->plan[q].length;
            ok[i]->payload_total = total;
        }
    }
    // 3. Readers and writers.
    for (auto& [base, g] : groups) {
        if (g->sessions.empty()) continue;
        Group* gp = g.get();
        threads.emplace_back([&ctx, gp] { run_reader(ctx, *gp); });
        for (Session* s : g->sessions) threads.emplace_back([&ctx, s] { run_writer(ctx, *s); });
    }
    threads.clear();  // joins
    all_done = true;
    if (progress.joinable()) progress.join();
    if (opt.on_progress) opt.on_progress(snapshot_progress(sessions));

    PushReport report;
    for (auto& [base, g] : groups) report.source_bytes_read += g->bytes_read;
    for (auto& s : sessions) {
        if (s->stream_open) {
            auto c = s->stream.counters();
            s->report.wire_bytes_sent = c.wire_sent;
            s->report.wire_bytes_received = c.wire_received;
        }
        if (s->group) {
            s->report.source_bytes_read = s->group->bytes_read;
            s->report.replicas_sharing_read = s->group->sessions.size();
            s->report.codec_decisions = s->group->codec_decisions;
        }
        s->report.seconds = seconds_since(s->started);
        s->stream.close();
        report.replicas.push_back(std::move(s->report));
    }
    report.seconds = seconds_since(started);
    return report;
}

}  // namespace icbd::repl
