// The reader of a push: reads each change of a group's plan once from the
// source version and encodes it into the group's FrameWindow, DATA compressed
// by a pool of workers (and, under --compress auto, at the setting the
// controller picks per window).
#include <fcntl.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <future>

#include "compression_pool.hpp"
#include "digests.hpp"
#include "failure_code.hpp"
#include "icbd/checksum.hpp"
#include "push_session.hpp"

namespace icbd::repl {

using Clock = std::chrono::steady_clock;

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
        if (!p) {
            g.reader_code = ErrorCode::internal;  // the options were checked before anything connected
            return g.window->finish(p.status());
        }
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
    Status status;  // the first failure; its code goes to g.reader_code
    bool receivers_left = true;
    // Moves the oldest pending change into the window (waiting for its frame);
    // a failure sets `status`, a window nobody reads any more `receivers_left`.
    auto put_oldest = [&] {
        Pending p = std::move(pending.front());
        pending.pop_front();
        auto f = p.frame.get();
        if (!f) {
            status = f.status();
            // DATA: compressing or framing our own chunk failed, a bug; another
            // frame: the version holds what the protocol cannot carry, or a bug.
            g.reader_code = p.item->data_bytes ? ErrorCode::internal : code_for_unsendable_frame(status);
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
        ErrorCode err_code = ErrorCode::internal;  // ...and what the replicas are told
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
                    err_code = code_for_local_failure(err.code());
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
                err_code = code_for_local_failure(err.code());
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
            g.reader_code = err_code;
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

}  // namespace icbd::repl
