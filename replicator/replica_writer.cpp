// The writer of a push, one per replica: streams the group's window with
// checkpoints, then END and RESULT (docs/replication-protocol.md, 4.3-4.5).
#include <algorithm>

#include "checkpoint_schedule.hpp"
#include "digests.hpp"
#include "push_session.hpp"
#include "short_push.hpp"

namespace icbd::repl {

using Clock = std::chrono::steady_clock;

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

    // Reads the outstanding CHECKPOINT_ACK. false: the session failed (recorded).
    auto read_ack = [&]() -> bool {
        auto ack = s.expect<CheckpointAck>("CHECKPOINT_ACK");
        if (!ack) {
            g.window->leave(s.consumer);
            s.fail_after_read(ack.status());
            return false;
        }
        if (ack->seq != pending->first) {
            g.window->leave(s.consumer);
            s.fail(Status::error(EPROTO, "CHECKPOINT_ACK for seq " + std::to_string(ack->seq) + ", expected " +
                                             std::to_string(pending->first)),
                   ErrorCode::protocol, true);
            return false;
        }
        if (ack->chain != pending->second) {
            g.window->leave(s.consumer);
            s.fail(Status::error(EBADMSG, "checkpoint at change " + std::to_string(ack->seq) +
                                              ": the replica's change chain differs from ours"),
                   ErrorCode::digest_mismatch, true);
            return false;
        }
        pending.reset();
        ++s.report.checkpoints;
        return true;
    };
    // A write failed: the replica's ERROR says why, when it sent one.
    auto fail_after_write = [&](const Status& w) {
        g.window->leave(s.consumer);
        s.fail_after_read(s.reason_for_write_failure(w));
    };

    auto last_checkpoint = std::chrono::steady_clock::now();
    const auto stream_start = last_checkpoint;
    uint64_t stream_sent = 0;  // stream bytes sent by this attempt
    // Only a fresh push with the default schedule: a resumed one keeps its
    // checkpoints (its cuts are what the schedule is for), a fixed interval is
    // the operator's.
    const bool may_skip = !by_frames && s.need.resume_seq == 0;
    for (uint64_t idx = 0;; ++idx) {
        Clock::duration starved{};
        ChangePtr item = g.window->get(s.consumer, idx, &starved);
        s.starved_ns += static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(starved).count());
        if (!item) break;
        if (item->seq <= s.need.resume_seq) continue;
        const auto write_start = Clock::now();
        ctx.limiter.acquire(item->frame.size());
        Status w = s.stream.write_all(item->frame);
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
            if (s.remote_code != ErrorCode::ok) return s.fail(reason, s.remote_code, false);
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
        stream_sent += stream_bytes;
        // No checkpoint just before END: the replica syncs for END anyway.
        if (last_seq < n && stream_left >= schedule.every_bytes / 4 &&
            checkpoint_due(schedule, since_checkpoint, std::chrono::steady_clock::now() - last_checkpoint) &&
            !(may_skip && short_push(stream_sent, stream_left, Clock::now() - stream_start))) {
            last_checkpoint = std::chrono::steady_clock::now();
            if (pending && !read_ack()) return;
            if (Status w = send_message(s.stream, Checkpoint{last_seq}); !w) return fail_after_write(w);
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
    if (Status rs = g.window->reader_status(); !rs)  // the reader decided the code (change_encoder.cpp)
        return s.fail(Status::error(rs.code(), "reading the source: " + rs.message()), g.reader_code, true);
    if (last_seq != n) {
        return s.fail(Status::error(EIO, "internal: the stream ended at change " + std::to_string(last_seq) +
                                             " of " + std::to_string(n)),
                      ErrorCode::internal, true);
    }
    s.set_state(State::finishing);
    s.report.timeline.last_frame = seconds_since(s.started);
    if (pending && !read_ack()) return;
    End end;
    end.change_count = n;
    end.chain = last_chain;
    end.entry_count = ctx.manifest.entry_count;
    end.manifest_hash = ctx.manifest.hash;
    end.digest = version_digest(ctx.opt.version, g.base, n, last_chain, ctx.manifest.entry_count, ctx.manifest.hash);
    if (Status w = send_message(s.stream, end); !w) return fail_after_write(w);
    auto result = s.expect<PushResult>("RESULT");
    if (!result) return s.fail_after_read(result.status());
    if (!result->ok()) {
        s.remote_code = result->code;
        return s.fail(Status::error(EREMOTEIO, "replica reported " + error_code_name(result->code) + ": " +
                                                   result->message),
                      result->code, false);
    }
    s.report.timeline.result = seconds_since(s.started);
    (void)s.stream.shutdown();
    s.set_state(State::done);
}

}  // namespace icbd::repl
