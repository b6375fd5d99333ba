// SCSI data-path commands over the LUN's data layers. tgtd's SBC layer has
// already checked LBA ranges, read-only state and the CDB basics; what is left
// here is the data semantics of each opcode (see docs/scsi-commands.md).
#include "command_runner.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "boot_recorder.hpp"
#include "icbd/endian.hpp"
#include "overlay_map.hpp"
#include "scsi.hpp"
#include "sense.hpp"

namespace icbd {
namespace {

constexpr uint64_t chunk_bytes = 1u << 20;  // WRITE SAME / VERIFY work unit

// Offset of the first differing byte, or n when equal.
uint64_t first_difference(const uint8_t* a, const uint8_t* b, uint64_t n) {
    if (std::memcmp(a, b, n) == 0) return n;
    uint64_t i = 0;
    while (a[i] == b[i]) ++i;
    return i;
}

ScsiResult miscompare_at(uint64_t offset) {
    ScsiResult r = check_condition(scsi::key::miscompare, scsi::asc::miscompare_during_verify);
    r.has_info = true;
    r.info = offset;
    return r;
}

}  // namespace

CommandRunner::CommandRunner(IoQueue& io, DataLayer& top, const LunHost& host) : io_(io), top_(&top), host_(host) {}

CommandRunner::~CommandRunner() = default;

// Throws (std::bad_alloc) with nothing changed. The lists a task index goes
// to later keep room for every task, so that finishing never allocates.
CommandRunner::Task& CommandRunner::alloc_task() {
    uint32_t idx;
    if (free_.empty()) {
        idx = static_cast<uint32_t>(tasks_.size());
        auto task = std::make_unique<Task>();
        free_.reserve(tasks_.size() + 1);
        deferred_.reserve(tasks_.size() + 1);
        ready_.reserve(tasks_.size() + 1);
        tasks_.push_back(std::move(task));
        tasks_.back()->index = idx;
        tasks_.back()->runner = this;
    } else {
        idx = free_.back();
        free_.pop_back();
    }
    Task& t = *tasks_[idx];
    t.busy = true;
    t.running = t.abandoned = false;
    t.next = Next::finish;
    t.holds_range = t.rewrites_blocks = false;
    t.cursor = t.chunk = 0;
    t.result = {};
    t.extents.clear();
    return t;
}

void CommandRunner::submit(const LunCommand& cmd) {
    // Any path that finishes the command right away (a zero-length VERIFY, a
    // failed buffer allocation, a layer failing at once) lands in finish(),
    // which defers it while this flag is set: the contract is "never complete
    // from inside submit()".
    struct InSubmit {
        bool& flag;
        explicit InSubmit(bool& f) : flag(f) { flag = true; }
        ~InSubmit() { flag = false; }
    } in_submit(in_submit_);
    Task& t = alloc_task();
    t.cmd = cmd;
    ++active_;
    try {
        submit_inner(t);
    } catch (...) {
        abandon(t);
        throw;
    }
}

// The command cannot be taken after all (an exception while it was parked or
// started, std::bad_alloc in practice): it leaves the books. I/O it already
// queued may still be in flight, towards its buffers; the caller answers the
// command as soon as submit() returns and may free them, so the I/O is waited
// for here (other commands' completions met meanwhile are deferred to
// submit_batch(), as always inside submit()). Its task is never reused: a
// layer may still hold its Done.
void CommandRunner::abandon(Task& t) {
    if (t.holds_range) --range_holders_;
    const bool started = t.running;
    t.holds_range = t.running = false;
    t.abandoned = true;
    --active_;
    if (metrics_) metrics::set(metrics_->counters().queue_depth, active_);
    if (!started) {  // nothing of it reached a layer: the task is reusable
        t.busy = false;
        free_.push_back(t.index);
        return;
    }
    io_.submit();
    while (io_.in_flight() > 0) {
        io_.wait();
        io_.reap();
        io_.submit();
    }
}

void CommandRunner::submit_inner(Task& t) {
    const LunCommand& cmd = t.cmd;
    if (metrics_) {
        t.start_ns = LunMetrics::now_ns();
        metrics::set(metrics_->counters().queue_depth, active_);
    }
    const uint8_t op = cmd.cdb[0];
    if (scsi::is_read(op)) t.kind = Kind::read;
    else if (scsi::is_plain_write(op)) t.kind = Kind::write;
    else if (scsi::is_write_verify(op)) t.kind = Kind::write_verify;
    else if (op == scsi::op::orwrite_16) t.kind = Kind::orwrite;
    else if (op == scsi::op::compare_and_write) t.kind = Kind::compare_and_write;
    else if (op == scsi::op::synchronize_cache_10 || op == scsi::op::synchronize_cache_16) t.kind = Kind::sync;
    else if (op == scsi::op::write_same_10 || op == scsi::op::write_same_16) t.kind = Kind::write_same;
    else if (op == scsi::op::unmap) t.kind = Kind::unmap;
    else if (op == scsi::op::pre_fetch_10 || op == scsi::op::pre_fetch_16) t.kind = Kind::prefetch;
    else if (op == scsi::op::verify_10 || op == scsi::op::verify_12 || op == scsi::op::verify_16) {
        t.kind = Kind::verify;
        // tgtd's sbc_verify() checks the range but never sets cmd->tl.
        t.cmd.tl = scsi::transfer_length(cmd.cdb) << cmd.blk_shift;
    }
    else t.kind = Kind::invalid;

    // The byte range a writing command touches, for read-modify-write exclusion.
    t.range_start = cmd.offset;
    switch (t.kind) {
        case Kind::write:
        case Kind::write_verify:
        case Kind::orwrite: t.range_end = cmd.offset + std::min(cmd.out_len, cmd.tl); break;
        case Kind::compare_and_write:
        case Kind::write_same: t.range_end = cmd.offset + cmd.tl; break;
        case Kind::unmap:  // descriptors may be anywhere
            t.range_start = 0;
            t.range_end = cmd.lun_size;
            break;
        default: t.range_end = t.range_start; break;
    }
    // A write that copies up (overlay) or fills (cache) rewrites whole
    // blocks: it must own them (and UNMAP, which may zero partial blocks,
    // owns everything, as above).
    if (writes(t.kind) && (t.kind == Kind::unmap ? top_->unmap_rewrites_blocks()
                                                 : top_->write_rewrites_blocks(t.range_start,
                                                                               t.range_end - t.range_start))) {
        constexpr uint64_t bs = OverlayMap::block_size;
        t.rewrites_blocks = true;
        t.range_start -= t.range_start % bs;
        t.range_end += (bs - t.range_end % bs) % bs;
    }
    if (conflicts(t)) {
        parked_.push_back(t.index);
        return;
    }
    start(t);
}

// A read-modify-write command (ORWRITE, COMPARE AND WRITE, a write that
// rewrites whole blocks) must not interleave with another write to the same
// blocks; everything else runs freely.
bool CommandRunner::conflicts(const Task& t) const {
    if (!writes(t.kind)) return false;
    const bool rmw = t.kind == Kind::orwrite || t.kind == Kind::compare_and_write || t.rewrites_blocks;
    if (!rmw && range_holders_ == 0) return false;
    for (const auto& p : tasks_) {
        const Task& o = *p;
        if (&o == &t || !o.running || !writes(o.kind)) continue;
        if (!rmw && !o.holds_range) continue;
        if (o.range_start < t.range_end && t.range_start < o.range_end) return true;
    }
    return false;
}

void CommandRunner::start(Task& t) {
    t.running = true;
    const LunCommand& c = t.cmd;
    if (t.kind == Kind::orwrite || t.kind == Kind::compare_and_write || t.rewrites_blocks) {
        t.holds_range = true;
        ++range_holders_;
    }
    const bool dsync = scsi::fua(c.cdb) || !c.write_cache_enabled;
    switch (t.kind) {
        case Kind::read: {
            uint32_t len = std::min(c.in_len, c.tl);
            if (len == 0) return fail(t, 0, 0);
            if (recorder_) recorder_->on_read(c.offset, len);
            return top_->read(c.in_buf, len, c.offset, done_for(t, Next::finish));
        }
        case Kind::write:
        case Kind::write_verify: {
            uint32_t len = std::min(c.out_len, c.tl);
            if (len == 0) return fail(t, 0, 0);
            // WRITE AND VERIFY checks the medium, so the data must be there first.
            if (t.kind == Kind::write_verify) return top_->write(c.out_buf, len, c.offset, true, done_for(t, Next::read_back));
            return top_->write(c.out_buf, len, c.offset, dsync, done_for(t, Next::finish));
        }
        case Kind::orwrite:
        case Kind::compare_and_write: {
            uint32_t len = t.kind == Kind::orwrite ? c.out_len : c.out_len / 2;
            if (t.kind == Kind::compare_and_write &&
                (c.out_len % 2 || len != c.tl ||
                 (c.max_compare_and_write_blocks && (c.tl >> c.blk_shift) > c.max_compare_and_write_blocks)))
                return fail(t, scsi::key::illegal_request, scsi::asc::invalid_field_in_cdb);
            if (len == 0) return fail(t, 0, 0);
            uint8_t* buf = t.scratch.reserve(len);
            if (!buf) return fail(t, scsi::key::hardware_error, scsi::asc::internal_target_failure);
            return top_->read(buf, len, c.offset,
                              done_for(t, t.kind == Kind::orwrite ? Next::or_and_write : Next::compare_and_write));
        }
        case Kind::sync: return top_->sync(done_for(t, Next::finish));
        case Kind::write_same: return start_write_same(t);
        case Kind::unmap: return start_unmap(t);
        case Kind::prefetch: {
            uint64_t len = c.tl ? c.tl : c.lun_size - c.offset;
            return top_->prefetch(c.offset, len, done_for(t, Next::finish));
        }
        case Kind::verify: {
            unsigned bytchk = (c.cdb[1] >> 1) & 3;
            if (bytchk == 0) return fail(t, 0, 0);  // tgtd answers these itself
            if (bytchk == 2) return fail(t, scsi::key::illegal_request, scsi::asc::invalid_field_in_cdb);
            return next_verify_chunk(t);
        }
        case Kind::invalid: return fail(t, scsi::key::illegal_request, scsi::asc::invalid_field_in_cdb);
    }
}

void CommandRunner::layer_done(void* ctx, int error, IoOp failed) {
    Task& t = *static_cast<Task*>(ctx);
    if (t.abandoned) return;  // its caller answered it already
    if (error) {
        t.result = sense_for_errno(error, failed);
        return t.runner->finish(t);
    }
    t.runner->proceed(t);
}

void CommandRunner::proceed(Task& t) {
    const LunCommand& c = t.cmd;
    const bool dsync = scsi::fua(c.cdb) || !c.write_cache_enabled;
    switch (t.next) {
        case Next::finish: return finish(t);
        case Next::read_back: {
            uint32_t len = std::min(c.out_len, c.tl);
            uint8_t* buf = t.scratch.reserve(len);
            if (!buf) return fail(t, scsi::key::hardware_error, scsi::asc::internal_target_failure);
            return top_->read(buf, len, c.offset, done_for(t, Next::compare_read_back));
        }
        case Next::compare_read_back: {
            uint32_t len = std::min(c.out_len, c.tl);
            uint64_t d = first_difference(c.out_buf, t.scratch.get(), len);
            if (d != len) t.result = miscompare_at(d);
            return finish(t);
        }
        case Next::or_and_write: {
            uint8_t* old = t.scratch.get();
            for (uint32_t i = 0; i < c.out_len; ++i) old[i] |= c.out_buf[i];
            return top_->write(old, c.out_len, c.offset, dsync, done_for(t, Next::finish));
        }
        case Next::compare_and_write: {
            uint32_t half = c.out_len / 2;
            uint64_t d = first_difference(c.out_buf, t.scratch.get(), half);
            if (d != half) {
                t.result = miscompare_at(d);
                return finish(t);
            }
            return top_->write(c.out_buf + half, half, c.offset, dsync, done_for(t, Next::finish));
        }
        case Next::write_same_chunk: return next_write_same_chunk(t);
        case Next::verify_chunk:
            if (!compare_verify_chunk(t)) return finish(t);
            return next_verify_chunk(t);
        case Next::unmap_extent: return next_unmap_extent(t);
    }
}

void CommandRunner::start_write_same(Task& t) {
    const LunCommand& c = t.cmd;
    const uint64_t block = 1ull << c.blk_shift;
    const bool unmap = c.cdb[1] & 0x08;
    const unsigned lb = c.cdb[1] & 0x06;  // 0x02 LBDATA, 0x04 PBDATA
    const uint8_t* pattern = c.out_len >= block ? c.out_buf : nullptr;  // NDOB: zeros
    if (c.tl == 0) return fail(t, 0, 0);
    // UNMAP bit on a thin LUN: deallocate, whatever the data block holds. SBC-3
    // lets the device server unmap instead of writing; the blocks then read as
    // zeros (LBPRZ), which is what initiators (and libiscsi's conformance
    // tests, and tgt's rdwr) expect.
    if (unmap && c.thin_provisioning && lb == 0)
        return top_->unmap(c.offset, c.tl, !c.write_cache_enabled, done_for(t, Next::finish));
    t.chunk = std::min<uint64_t>(c.tl, chunk_bytes);
    uint8_t* buf = t.scratch.reserve(t.chunk);
    if (!buf) return fail(t, scsi::key::hardware_error, scsi::asc::internal_target_failure);
    for (uint64_t o = 0; o < t.chunk; o += block) {
        if (pattern) std::memcpy(buf + o, pattern, block);
        else std::memset(buf + o, 0, block);
    }
    t.cursor = 0;
    next_write_same_chunk(t);
}

void CommandRunner::next_write_same_chunk(Task& t) {
    const LunCommand& c = t.cmd;
    if (t.cursor >= c.tl) return finish(t);
    const uint64_t block = 1ull << c.blk_shift;
    const unsigned lb = c.cdb[1] & 0x06;
    uint64_t n = std::min<uint64_t>(t.chunk, c.tl - t.cursor);
    uint8_t* buf = t.scratch.get();
    if (lb) {  // each block carries its own LBA
        uint64_t lba = (c.offset + t.cursor) >> c.blk_shift;
        for (uint64_t o = 0; o < n; o += block, ++lba) {
            if (lb == 0x02) store_be32(buf + o, static_cast<uint32_t>(lba));
            else store_be64(buf + o, lba);
        }
    }
    uint64_t off = c.offset + t.cursor;
    t.cursor += n;
    top_->write(buf, n, off, !c.write_cache_enabled, done_for(t, Next::write_same_chunk));
}

void CommandRunner::start_unmap(Task& t) {
    const LunCommand& c = t.cmd;
    if (!c.thin_provisioning) return fail(t, scsi::key::illegal_request, scsi::asc::invalid_field_in_cdb);
    if (c.cdb[1] & 0x01)  // ANCHOR: not supported (ANC_SUP=0)
        return fail(t, scsi::key::illegal_request, scsi::asc::invalid_field_in_cdb);
    if (c.out_len == 0) return fail(t, 0, 0);
    if (c.out_len < 8) return fail(t, scsi::key::illegal_request, scsi::asc::parameter_list_length_error);
    const uint8_t* p = c.out_buf;
    uint32_t descs = std::min<uint32_t>(load_be16(p + 2), c.out_len - 8) / 16;
    const uint64_t blocks = c.lun_size >> c.blk_shift;
    // Validate every descriptor before touching anything: all or nothing.
    for (uint32_t i = 0; i < descs; ++i) {
        const uint8_t* d = p + 8 + 16 * i;
        uint64_t lba = load_be64(d), n = load_be32(d + 8);
        if (lba + n < lba || lba + n > blocks)
            return fail(t, scsi::key::illegal_request, scsi::asc::lba_out_of_range);
    }
    for (uint32_t i = 0; i < descs; ++i) {
        const uint8_t* d = p + 8 + 16 * i;
        uint64_t lba = load_be64(d), n = load_be32(d + 8);
        if (n) t.extents.emplace_back(lba << c.blk_shift, n << c.blk_shift);
    }
    if (!top_->unmap_rewrites_blocks()) {  // holes only (a raw LUN): every descriptor at once
        t.extents_done.begin(done_for(t, Next::finish));
        for (const auto& [offset, len] : t.extents)
            top_->unmap(offset, len, !c.write_cache_enabled, t.extents_done.child());
        return t.extents_done.seal();
    }
    t.cursor = 0;
    next_unmap_extent(t);
}

// One descriptor at a time: descriptors may share a block, whose partial
// zeros (overlay, cache) must not race.
void CommandRunner::next_unmap_extent(Task& t) {
    if (t.cursor >= t.extents.size()) return finish(t);
    const auto [offset, len] = t.extents[t.cursor++];
    top_->unmap(offset, len, !t.cmd.write_cache_enabled, done_for(t, Next::unmap_extent));
}

void CommandRunner::next_verify_chunk(Task& t) {
    const LunCommand& c = t.cmd;
    if (t.cursor >= c.tl) return finish(t);
    t.chunk = std::min<uint64_t>(c.tl - t.cursor, chunk_bytes);
    uint8_t* buf = t.scratch.reserve(t.chunk);
    if (!buf) return fail(t, scsi::key::hardware_error, scsi::asc::internal_target_failure);
    top_->read(buf, t.chunk, c.offset + t.cursor, done_for(t, Next::verify_chunk));
}

// Compares the chunk just read with the data-out buffer; false on a miscompare
// (result set) or a short data-out buffer.
bool CommandRunner::compare_verify_chunk(Task& t) {
    const LunCommand& c = t.cmd;
    const uint8_t* got = t.scratch.get();
    if ((c.cdb[1] & 0x06) == 0x06) {  // BYTCHK=11b: one block, compared against each
        const uint64_t block = 1ull << c.blk_shift;
        if (c.out_len < block) {
            t.result = check_condition(scsi::key::illegal_request, scsi::asc::parameter_list_length_error);
            return false;
        }
        for (uint64_t o = 0; o < t.chunk; o += block) {
            uint64_t d = first_difference(c.out_buf, got + o, block);
            if (d != block) {
                t.result = miscompare_at(t.cursor + o + d);
                return false;
            }
        }
    } else {
        if (c.out_len < t.cursor + t.chunk) {
            t.result = check_condition(scsi::key::illegal_request, scsi::asc::parameter_list_length_error);
            return false;
        }
        uint64_t d = first_difference(c.out_buf + t.cursor, got, t.chunk);
        if (d != t.chunk) {
            t.result = miscompare_at(t.cursor + d);
            return false;
        }
    }
    t.cursor += t.chunk;
    return true;
}

// Ends a command without (more) I/O; key 0 means success. Called inside
// submit(), finish() defers the completion to submit_batch().
void CommandRunner::fail(Task& t, uint8_t key, uint16_t asc) {
    if (key) t.result = check_condition(key, asc);
    finish(t);
}

void CommandRunner::finish(Task& t) {
    if (t.abandoned) return;  // its caller answered it already
    if (in_submit_) {
        deferred_.push_back(t.index);
        io_.kick();
        return;
    }
    void* cookie = t.cmd.cookie;
    ScsiResult result = t.result;
    if (t.holds_range) --range_holders_;
    const bool was_writer = writes(t.kind);
    if (metrics_) record_completion(t);
    t.holds_range = t.running = t.busy = false;
    free_.push_back(t.index);
    --active_;
    if (metrics_) metrics::set(metrics_->counters().queue_depth, active_);
    // The host may submit new commands from inside complete(): t is free by now.
    host_.complete(host_.ctx, cookie, result);
    if (was_writer && !parked_.empty()) wake_parked();
}

// Direction and bytes as docs/metrics.md defines them.
void CommandRunner::record_completion(const Task& t) {
    const LunCommand& c = t.cmd;
    unsigned dir = metrics::dir_other;
    uint64_t bytes = 0;
    if (t.kind == Kind::read) {
        dir = metrics::dir_read;
        bytes = std::min(c.in_len, c.tl);
    } else if (t.kind != Kind::unmap && writes(t.kind)) {  // WRITE SAME with UNMAP counts as a write
        dir = metrics::dir_write;
        bytes = c.tl;
    }
    metrics_->record(dir, bytes, LunMetrics::now_ns() - t.start_ns, t.result.status, t.result.sense_key);
}

void CommandRunner::wake_parked() {
    for (size_t n = parked_.size(); n > 0; --n) {
        uint32_t idx = parked_.front();
        parked_.pop_front();
        Task& p = *tasks_[idx];
        if (conflicts(p)) parked_.push_back(idx);
        else start(p);
    }
}

void CommandRunner::submit_batch() {
    io_.submit();
    // Whatever completed during submit (cached reads served inline, io_uring
    // reads that found their data cached) completes now, in this loop pass,
    // rather than after another wake-up of the host's event loop.
    io_.reap();
    if (!deferred_.empty()) {
        ready_.swap(deferred_);
        for (uint32_t idx : ready_) finish(*tasks_[idx]);
        ready_.clear();
    }
}

void CommandRunner::process_completions() { io_.reap(); }

void CommandRunner::drain() {
    auto pump = [&] {
        submit_batch();
        if (io_.in_flight() > 0) io_.wait();
        process_completions();
    };
    while (active_ > 0 || io_.in_flight() > 0) pump();
}

}  // namespace icbd
