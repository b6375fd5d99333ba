// Relay (docs/replication-protocol.md, section 11): the children's sessions
// (negotiated as the master's, push_session.cpp), the window of verified frames
// they share, and one writer per child that checkpoints, reconnects a cut child
// to resume from its last acknowledged checkpoint, and ends with END/RESULT.
#include "relay.hpp"

#include <algorithm>
#include <array>
#include <thread>

#include "checkpoint_schedule.hpp"
#include "icbd/log.hpp"
#include "push_session.hpp"

namespace icbd::repl {

using Clock = std::chrono::steady_clock;

namespace {

// Tells the child why it gets nothing more, then lets it read that: our side
// shut, its last frames drained until it closes (a close with its acks
// unread would reset the connection and lose the ERROR on the way).
void cancel_child(Session& s, const Status& why, ErrorCode code) {
    Error e;
    e.code = code;
    e.message = clamp_message(s.what() + ": " + why.message());
    if (send_message(s.stream, e)) {
        (void)s.stream.shutdown();
        s.stream.set_io_timeout(std::chrono::milliseconds(1000));
        std::array<uint8_t, 16384> buf;
        for (int i = 0; i < 256; ++i) {
            auto n = s.stream.read_some(buf);
            if (!n || *n == 0) break;
        }
    }
    s.fail(why, code, false);
}

}  // namespace

struct Relay::Child {
    HostPort target;
    size_t consumer = 0;
    std::unique_ptr<Session> session;
    uint64_t acked = 0;  // the child's last acknowledged (durable) checkpoint
    ReplicaReport report;  // the outcome, kept across reconnections
    std::jthread thread;
};

Relay::Relay(RelaySettings settings, const Offer& offer, const Need& need) : set_(std::move(settings)), need_(need) {
    popt_.tls = set_.tls;
    popt_.node_name = set_.node_name;
    popt_.window_bytes = set_.window_bytes;
    popt_.max_stall = set_.max_stall;
    popt_.image = offer.image;
    popt_.version = offer.version;
    ctx_ = std::make_unique<PushContext>(popt_);
    ctx_->node_name = set_.node_name;
    ctx_->route.nodes = set_.route;
    ctx_->offer = offer;
    // The only stream we can forward is the one from our base.
    ctx_->offer.held.clear();
    if (need.kind == NeedKind::incremental) ctx_->offer.held.push_back(need.base);
    for (const auto& t : set_.children) {
        auto c = std::make_unique<Child>();
        c->target = t;
        c->report.target = t.text();
        c->report.image = offer.image;
        c->report.version = offer.version;
        children_.push_back(std::move(c));
    }
}

Relay::~Relay() {
    abort(Status::error(ECANCELED, "the relay stopped"));
    (void)wait();
}

std::string Relay::what() const {
    return "relay '" + set_.node_name + "' (image '" + popt_.image + "' version " + std::to_string(popt_.version) + ")";
}

std::pair<uint64_t, uint64_t> Relay::start() {
    for (auto& c : children_) {
        c->session = std::make_unique<Session>();
        c->session->target = c->target;
        c->session->report = c->report;
    }
    {
        std::vector<std::jthread> threads;
        for (auto& c : children_) threads.emplace_back([this, s = c->session.get()] { negotiate(*ctx_, *s); });
    }
    uint64_t seq = need_.resume_seq, chain = need_.resume_chain;
    for (auto& c : children_) {
        Session& s = *c->session;
        if (!s.report.status.is_ok()) {
            c->report = s.report;
            log(LogLevel::warning, what() + ": child " + c->target.text() + " not fed: " + s.report.status.message());
            continue;
        }
        if (s.need.kind == NeedKind::nothing) {
            (void)s.stream.shutdown();
            c->report = s.report;
            continue;
        }
        if (s.need.kind != need_.kind || s.need.base != need_.base) {
            cancel_child(s, Status::error(ECANCELED, "the relay receives version " + std::to_string(popt_.version) +
                                                         " from base " + std::to_string(need_.base) +
                                                         " only; the child asked for another stream"),
                         ErrorCode::cancelled);
            c->report = s.report;
            continue;
        }
        if ((s.receiver_caps & set_.capabilities) != set_.capabilities) {
            cancel_child(s, Status::error(ENOTSUP, "the child cannot decompress every codec the relay accepts"),
                         ErrorCode::cancelled);
            c->report = s.report;
            continue;
        }
        c->consumer = fed_.size();
        c->acked = s.need.resume_seq;
        fed_.push_back(c.get());
        if (s.need.resume_seq < seq) {
            seq = s.need.resume_seq;
            chain = s.need.resume_chain;
        }
    }
    start_seq_ = seq;
    if (fed_.empty()) return {seq, chain};
    window_ = std::make_unique<FrameWindow>(set_.window_bytes, fed_.size());
    for (Child* c : fed_) {
        window_->hold(c->consumer, index_of(c->acked + 1));
        c->thread = std::jthread([this, c] { run_child(*c); });
    }
    return {seq, chain};
}

std::vector<RelayChild> Relay::fed_children() const {
    std::vector<RelayChild> out;
    for (const Child* c : fed_) out.push_back(RelayChild{c->target.text(), c->session->peer_name});
    return out;
}

void Relay::forward(const Frame& frame, uint64_t seq, uint64_t chain_after, uint64_t data_bytes) {
    if (!window_ || seq <= start_seq_) return;
    auto item = std::make_shared<EncodedChange>();
    item->seq = seq;
    item->chain_after = chain_after;
    item->data_bytes = data_bytes;
    auto f = encode_frame(frame.type, frame.payload);
    if (!f) return abort(f.status());
    item->frame = std::move(f.value());
    (void)window_->put(std::move(item), set_.max_stall, [this](size_t i) {
        std::lock_guard lk(sess_mu_);
        for (Child* c : fed_)
            if (c->consumer == i && c->session) {
                std::lock_guard dl(c->session->drop_mu);
                c->session->drop_reason = "the child kept the relay's window full for " +
                                          std::to_string(set_.max_stall.count()) + " ms";
                c->session->stream.interrupt();
            }
    });
}

void Relay::finish(const End& end) {
    std::lock_guard lk(mu_);
    if (closed_) return;
    closed_ = true;
    end_ = end;
    if (window_) window_->finish(Status::ok());
}

void Relay::abort(const Status& why) {
    std::lock_guard lk(mu_);
    if (closed_) return;
    closed_ = true;
    if (window_) window_->finish(why.is_ok() ? Status::error(ECANCELED, "cancelled") : why);
}

std::vector<ReplicaReport> Relay::wait() {
    std::vector<ReplicaReport> out;
    for (auto& c : children_)
        if (c->thread.joinable()) c->thread.join();
    for (auto& c : children_) {
        if (!joined_) {
            if (c->report.ok() && c->report.kind != NeedKind::nothing && c->report.timeline.result > 0)
                log(LogLevel::info, what() + ": child " + c->report.peer + " published");
            else if (!c->report.ok())
                log(LogLevel::warning, what() + ": child " + c->target.text() + ": " + c->report.status.message());
        }
        out.push_back(c->report);
    }
    joined_ = true;
    return out;
}

void Relay::run_child(Child& c) {
    run_attempts(c);
    window_->leave(c.consumer);
}

void Relay::run_attempts(Child& c) {
    for (int attempt = 0;; ++attempt) {
        if (stream_to(c)) return;
        // Cut: reconnect and resume from what the child holds, as the master would.
        if (attempt >= set_.reconnect_attempts || window_->dropped(c.consumer)) return;
        log(LogLevel::warning, what() + ": child " + c.target.text() + " cut (" + c.report.status.message() +
                                   "); reconnecting to resume after change " + std::to_string(c.acked));
        std::this_thread::sleep_for(set_.reconnect_delay);
        auto s = std::make_unique<Session>();
        s->target = c.target;
        s->report.target = c.target.text();
        s->report.image = popt_.image;
        s->report.version = popt_.version;
        negotiate(*ctx_, *s);
        if (!s->report.status.is_ok()) {
            c.report = s->report;
            continue;  // e.g. busy while the child notices the cut: try again
        }
        if (s->need.kind != need_.kind || s->need.base != need_.base || s->need.resume_seq < c.acked) {
            s->fail(Status::error(ECANCELED, "the child's resume point (change " + std::to_string(s->need.resume_seq) +
                                                 ") is not in the relay's window"),
                    ErrorCode::cancelled, true);
            c.report = s->report;
            return;
        }
        c.acked = s->need.resume_seq;
        window_->hold(c.consumer, index_of(c.acked + 1));
        {
            std::lock_guard lk(sess_mu_);
            c.session = std::move(s);
        }
        log(LogLevel::info, what() + ": child " + c.session->report.peer + " reconnected, resumes after change " +
                                std::to_string(c.acked));
    }
}

bool Relay::stream_to(Child& c) {
    Session& s = *c.session;
    s.set_state(State::streaming);
    uint64_t last_seq = s.need.resume_seq, last_chain = s.need.resume_chain;
    std::optional<std::pair<uint64_t, uint64_t>> pending;
    uint64_t since = 0;
    PushOptions sched_opt;  // the master's default schedule, for a stream of unknown size
    CheckpointSchedule schedule = checkpoint_schedule(sched_opt, 16 * (16u << 20));
    // The window keeps each child's frames since its last acknowledged
    // checkpoint, with one more outstanding: at most a quarter each, so that a
    // child that keeps up never fills the window (and is never dropped).
    // No minimum gap: on a fast link that would let the span grow past it.
    schedule.every_bytes = std::max<uint64_t>(64u << 10, std::min<uint64_t>(schedule.every_bytes, set_.window_bytes / 4));
    schedule.min_gap = std::chrono::milliseconds(0);
    auto last_cp = Clock::now();
    bool cut = false;
    auto record = [&] { c.report = s.report; };
    // A failure of the stream (not a refusal by the child): worth a reconnection.
    // (After a failed write, the frame read for the child's reason may be an
    // ack it sent before the cut: not a refusal either.)
    auto stream_failed = [&](const Status& st, bool after_write = false) {
        if (window_->dropped(c.consumer)) {  // interrupted by the window's stall rule
            std::lock_guard lk(s.drop_mu);
            s.report.dropped = true;
            s.fail(Status::error(ETIMEDOUT, s.drop_reason.empty() ? "dropped: too slow" : s.drop_reason),
                   ErrorCode::cancelled, false);
            record();
            return true;
        }
        cut = s.remote_code == ErrorCode::ok && (after_write || !s.protocol_violation);
        if (cut) {
            s.report.status = Status::error(st.code() ? st.code() : EIO, s.what() + ": " + st.message());
            s.report.code = ErrorCode::io_error;
            s.stream.close();
        } else {
            s.fail_after_read(st);
        }
        record();
        return !cut;
    };
    auto read_ack = [&]() -> int {  // 1 ok, 0 cut, -1 failed for good
        auto ack = s.expect<CheckpointAck>("CHECKPOINT_ACK");
        if (!ack) return stream_failed(ack.status()) ? -1 : 0;
        if (ack->seq != pending->first || ack->chain != pending->second) {
            s.fail(Status::error(EBADMSG, "checkpoint at change " + std::to_string(pending->first) +
                                              ": the child's chain or seq differs from the relay's"),
                   ErrorCode::digest_mismatch, true);
            record();
            return -1;
        }
        c.acked = pending->first;
        window_->hold(c.consumer, index_of(c.acked + 1));
        pending.reset();
        ++s.report.checkpoints;
        return 1;
    };
    for (uint64_t idx = index_of(s.need.resume_seq + 1);; ++idx) {
        ChangePtr item = window_->get(c.consumer, idx);
        if (!item) break;
        if (Status w = s.stream.write_all(item->frame); !w) {
            std::string why;
            {
                std::lock_guard lk(s.drop_mu);
                why = s.drop_reason;
            }
            if (!why.empty() || window_->dropped(c.consumer)) {
                s.report.dropped = true;
                s.fail(Status::error(ETIMEDOUT, why.empty() ? "dropped: too slow" : why), ErrorCode::cancelled, false);
                record();
                return true;
            }
            return stream_failed(s.reason_for_write_failure(w), true);
        }
        ++s.report.changes_sent;
        s.report.frame_bytes += item->frame.size();
        s.report.payload_bytes += item->data_bytes;
        last_seq = item->seq;
        last_chain = item->chain_after;
        since += item->data_bytes ? item->data_bytes : item->frame.size();
        if (checkpoint_due(schedule, since, Clock::now() - last_cp)) {
            last_cp = Clock::now();
            if (pending) {
                int r = read_ack();
                if (r <= 0) return r < 0;
            }
            if (Status w = send_message(s.stream, Checkpoint{last_seq}); !w)
                return stream_failed(s.reason_for_write_failure(w), true);
            pending = std::make_pair(last_seq, last_chain);
            since = 0;
        }
    }
    // The consumer stays in the window until run_child() is done with it: a
    // child cut during END still finds its frames since the last checkpoint.
    if (window_->dropped(c.consumer)) {
        s.report.dropped = true;
        std::lock_guard lk(s.drop_mu);
        s.fail(Status::error(ETIMEDOUT, s.drop_reason.empty() ? "dropped: too slow" : s.drop_reason),
               ErrorCode::cancelled, true);
        record();
        return true;
    }
    std::optional<End> end;
    {
        std::lock_guard lk(mu_);
        end = end_;
    }
    if (!end) {
        Status rs = window_->reader_status();
        cancel_child(s, Status::error(ECANCELED, "the relay's own stream failed: " + rs.message()), ErrorCode::cancelled);
        record();
        return true;
    }
    if (last_seq != end->change_count) {
        s.fail(Status::error(EIO, "internal: the relay's stream ended at change " + std::to_string(last_seq) + " of " +
                                      std::to_string(end->change_count)),
               ErrorCode::internal, true);
        record();
        return true;
    }
    s.set_state(State::finishing);
    if (pending) {
        int r = read_ack();
        if (r < 0) return true;
        if (r == 0) return false;
    }
    if (Status w = send_message(s.stream, *end); !w) return stream_failed(s.reason_for_write_failure(w), true);
    auto result = s.expect<PushResult>("RESULT");
    if (!result) return stream_failed(result.status());
    if (!result->ok()) {
        s.remote_code = result->code;
        s.fail(Status::error(EREMOTEIO, "child reported " + error_code_name(result->code) + ": " + result->message),
               result->code, false);
        record();
        return true;
    }
    s.report.status = Status::ok();
    s.report.code = ErrorCode::ok;
    s.report.change_count = end->change_count;
    s.report.timeline.result = seconds_since(s.started);
    s.report.wire_bytes_sent = s.stream.counters().wire_sent;
    (void)s.stream.shutdown();
    s.set_state(State::done);
    record();
    return true;
}

}  // namespace icbd::repl
