// SCSI data-path commands as asynchronous I/O chains. tgtd's SBC layer has
// already checked LBA ranges, read-only state and the CDB basics; what is left
// here is the data semantics of each opcode (see docs/scsi-commands.md).
#include "command_runner.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "icbd/endian.hpp"
#include "icbd/file_io.hpp"
#include "icbd/log.hpp"
#include "scsi.hpp"
#include "sense.hpp"

namespace icbd {
namespace {

constexpr uint64_t chunk_bytes = 1u << 20;  // WRITE SAME / VERIFY work unit
constexpr uintptr_t dio_align = 512;

uint64_t tag_of(uint32_t task, uint32_t op) { return uint64_t(task) << 32 | op; }

const char* op_name(IoOp op) {
    switch (op) {
        case IoOp::read: return "read";
        case IoOp::write: return "write";
        case IoOp::fdatasync: return "fdatasync";
        case IoOp::punch_hole: return "punch hole";
        case IoOp::prefetch: return "prefetch";
    }
    return "?";
}

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

CommandRunner::CommandRunner(IoEngine& engine, const LunHost& host, int fd, int write_fd, bool direct_reads,
                             std::string name, OverlayMap* overlay, WriteBackCache* cache)
    : engine_(engine),
      host_(host),
      fd_(fd),
      write_fd_(write_fd),
      direct_reads_(direct_reads),
      direct_writes_(direct_reads || write_fd >= 0),
      write_align_(write_fd >= 0 ? dio_offset_alignment(write_fd) : static_cast<uint32_t>(dio_align)),
      name_(std::move(name)),
      overlay_(overlay),
      cache_(cache) {}

CommandRunner::~CommandRunner() = default;

CommandRunner::Task& CommandRunner::alloc_task() {
    uint32_t idx;
    if (free_.empty()) {
        idx = static_cast<uint32_t>(tasks_.size());
        tasks_.push_back(std::make_unique<Task>());
        tasks_.back()->index = idx;
    } else {
        idx = free_.back();
        free_.pop_back();
    }
    Task& t = *tasks_[idx];
    t.busy = true;
    t.running = false;
    t.phase = 0;
    t.pending = 0;
    t.error = 0;
    t.holds_range = false;
    t.cursor = t.chunk = 0;
    t.result = {};
    t.ops.clear();
    t.copy_up_hold = t.map_write_needed = t.owns_map_writer = t.copy_active = false;
    t.pieces.clear();
    t.copy_to_cache = t.internal = t.cache_parked = t.cw_dsync = t.commit_wanted = false;
    t.commit_stage = 0;
    t.cw_max_seq = 0;
    t.cruns.clear();
    t.pins.clear();
    return t;
}


void CommandRunner::submit(const LunCommand& cmd) {
    // Any path that finishes the command right away (a zero-length VERIFY, a
    // failed buffer allocation) lands in finish(), which defers it while this
    // flag is set: the contract is "never complete from inside submit()".
    in_submit_ = true;
    submit_inner(cmd);
    in_submit_ = false;
}

void CommandRunner::submit_inner(const LunCommand& cmd) {
    host_active_ = true;
    idle_ = false;  // the host is back: idle write-back stops after its round
    if (idle_timer_fd_ >= 0 && !idle_timer_armed_) arm_idle_timer();
    Task& t = alloc_task();
    t.cmd = cmd;
    ++active_;
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
    if ((overlay_ || cache_) && writes(t.kind)) {
        // A write that copies up (overlay) or fills (cache) rewrites whole
        // blocks: it must own them (and UNMAP, which may zero partial blocks,
        // owns everything, as above).
        const uint64_t len = t.range_end - t.range_start;
        const bool partial = (t.range_start | t.range_end) % OverlayMap::block_size != 0;
        if (t.kind == Kind::unmap || (cache_ && partial) || (overlay_ && overlay_->needs_copy_up(t.range_start, len))) {
            t.copy_up_hold = true;
            t.range_start -= t.range_start % OverlayMap::block_size;
            t.range_end += (OverlayMap::block_size - t.range_end % OverlayMap::block_size) % OverlayMap::block_size;
        }
    }
    if (conflicts(t)) {
        parked_.push_back(t.index);
        return;
    }
    start(t);
}

// A read-modify-write command (ORWRITE, COMPARE AND WRITE) must not interleave
// with another write to the same blocks; everything else runs freely.
bool CommandRunner::conflicts(const Task& t) const {
    if (!writes(t.kind)) return false;
    const bool rmw = t.kind == Kind::orwrite || t.kind == Kind::compare_and_write || t.copy_up_hold;
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
    if (t.kind == Kind::orwrite || t.kind == Kind::compare_and_write || t.copy_up_hold) {
        t.holds_range = true;
        ++range_holders_;
    }
    const bool dsync = scsi::fua(c.cdb) || !c.write_cache_enabled;
    switch (t.kind) {
        case Kind::read: {
            uint32_t len = std::min(c.in_len, c.tl);
            if (len == 0) return fail(t, 0, 0);
            return read_lun(t, c.in_buf, len, c.offset);
        }
        case Kind::write:
        case Kind::write_verify: {
            uint32_t len = std::min(c.out_len, c.tl);
            if (len == 0) return fail(t, 0, 0);
            // WRITE AND VERIFY checks the medium, so the data must be there first.
            return write_lun(t, c.out_buf, len, c.offset, dsync || t.kind == Kind::write_verify);
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
            return read_lun(t, buf, len, c.offset);
        }
        case Kind::sync: return sync_lun(t);
        case Kind::write_same: return start_write_same(t);
        case Kind::unmap: return start_unmap(t);
        case Kind::prefetch: {
            uint64_t len = c.tl ? c.tl : c.lun_size - c.offset;
            // On an overlay LUN, warm the shared golden file: that is where a
            // client's unwritten blocks come from.
            return issue(t, IoOp::prefetch, nullptr, len, c.offset, false, overlay_ ? overlay_->golden_fd() : -1);
        }
        case Kind::verify: {
            unsigned bytchk = (c.cdb[1] >> 1) & 3;
            if (bytchk == 0) return fail(t, 0, 0);  // tgtd answers these itself
            if (bytchk == 2) return fail(t, scsi::key::illegal_request, scsi::asc::invalid_field_in_cdb);
            t.phase = 1;
            return next_verify_chunk(t);
        }
        case Kind::invalid: return fail(t, scsi::key::illegal_request, scsi::asc::invalid_field_in_cdb);
        case Kind::flush: return;  // started by kick_background, never by a host
    }
}

void CommandRunner::issue(Task& t, IoOp op, uint8_t* buf, uint64_t len, uint64_t offset, bool dsync, int fd,
                          bool overlay_data, int32_t cache_run) {
    if (fd < 0) fd = fd_for(op);
    bool direct = needs_alignment(op);
    if (fd == write_fd_ && write_fd_ >= 0 && ((len | offset) & (write_align_ - 1))) {
        // direct=writes: O_DIRECT takes whole blocks only. A data-out that is
        // not (an iSCSI underflow: fewer bytes than the CDB's blocks) goes
        // through the page cache; the kernel writes those pages back before a
        // later direct write of the range and drops them after it.
        fd = fd_;
        direct = false;
    }
    SubOp s{op, dsync, overlay_data, cache_run, fd, offset, buf, len, offset, buf, nullptr, 0};
    if (direct && ((reinterpret_cast<uintptr_t>(buf) | len | offset) & (dio_align - 1))) {
        // O_DIRECT needs aligned memory; tgtd's buffers usually are, this is the rare path.
        uint8_t* b = t.bounce.reserve(len);
        if (!b) {
            t.error = ENOMEM;
            if (t.pending == 0) fail(t, scsi::key::hardware_error, scsi::asc::internal_target_failure);
            return;
        }
        if (op == IoOp::write) std::memcpy(b, buf, len);
        else s.copy_to = buf, s.copy_len = len;
        s.buf = s.base = b;
    }
    uint32_t idx = static_cast<uint32_t>(t.ops.size());
    t.ops.push_back(s);
    ++t.pending;
    // Buffered reads may be served from the page cache by the engine's submit().
    const bool inline_ok = op == IoOp::read && !direct_reads_;
    engine_.prepare({op, dsync, fd, s.buf, len, offset, tag_of(t.index, idx), inline_ok});
    kick();
}

void CommandRunner::on_io(Task& t, uint32_t op_index, int32_t res) {
    SubOp& s = t.ops[op_index];
    if (res < 0) {
        if (!t.error) {
            t.error = -res;
            t.error_op = s.op;
            log(LogLevel::error, "LUN '" + name_ + "': " + op_name(s.op) + " at offset " + std::to_string(s.offset) +
                                     " length " + std::to_string(s.len) + ": " + std::strerror(-res));
        }
    } else if ((s.op == IoOp::read || s.op == IoOp::write) && static_cast<uint64_t>(res) < s.len) {
        if (res == 0) {
            if (s.op == IoOp::read) {
                std::memset(s.buf, 0, s.len);  // past the end of a file that shrank: zeros
            } else if (!t.error) {
                t.error = EIO;
                t.error_op = s.op;
            }
        } else {
            // Short transfer: continue where the kernel stopped, same slot.
            s.buf += res;
            s.len -= static_cast<uint64_t>(res);
            s.offset += static_cast<uint64_t>(res);
            engine_.prepare({s.op, s.dsync, s.fd, s.buf, s.len, s.offset, tag_of(t.index, op_index),
                             s.op == IoOp::read && !direct_reads_});
            kick();
            return;
        }
    }
    if (s.copy_to && !t.error) std::memcpy(s.copy_to, s.base, s.copy_len);
    if (s.overlay_data && res >= 0 && !(s.op == IoOp::write && res == 0)) {
        uint64_t lun_start = s.start - overlay_->data_offset();
        uint64_t lun_len = s.offset + s.len - s.start;  // the whole range, whatever short transfers happened
        // Blocks that become present (copy-ups and first writes) come from the
        // map's own bit setting, not a second walk over the range.
        uint64_t fresh = overlay_->mark_present(lun_start, lun_len);
        if (metrics_ && s.op == IoOp::write && fresh) metrics::add(metrics_->counters().overlay_blocks_written, fresh);
        if (s.dsync) {  // durable data: its bits may go to disk now, and must before the command completes
            overlay_->mark_durable(lun_start, lun_len);
            t.map_write_needed = true;
        }
    }
    if (s.cache_run >= 0) {
        if (res < 0) t.cruns[s.cache_run].failed = true;
        if (--t.cruns[s.cache_run].ops_left == 0) cache_run_done(t, static_cast<size_t>(s.cache_run));
    }
    if (--t.pending == 0) advance(t);
}

void CommandRunner::advance(Task& t) {
    if (t.cache_parked) return;  // cache_write_continue resumes it
    if (!t.pins.empty()) {
        for (uint32_t slot : t.pins) cache_->map().release_read(slot);
        t.pins.clear();
        cache_changed();
    }
    if (t.commit_stage) return cache_commit_step(t);
    if (t.owns_map_writer) release_map_writer(t);
    if (t.copy_active && !t.error) return finish_copy_up(t);
    if (t.map_write_needed && !t.error) {
        t.map_write_needed = false;
        if (overlay_->has_unwritten_pages()) return write_map(t);
    }
    if (t.commit_wanted && !t.error) {  // FUA (or WCE=0) on a cached LUN
        t.commit_wanted = false;
        return cache_commit(t, t.cw_max_seq);
    }
    if (t.kind == Kind::flush) return flush_step(t);
    if (t.error) {
        t.result = sense_for_errno(t.error, t.error_op);
        return finish(t);
    }
    const LunCommand& c = t.cmd;
    const bool dsync = scsi::fua(c.cdb) || !c.write_cache_enabled;
    t.ops.clear();
    switch (t.kind) {
        case Kind::write_verify: {
            uint32_t len = std::min(c.out_len, c.tl);
            if (t.phase == 0) {
                t.phase = 1;
                uint8_t* buf = t.scratch.reserve(len);
                if (!buf) return fail(t, scsi::key::hardware_error, scsi::asc::internal_target_failure);
                return read_lun(t, buf, len, c.offset);
            }
            uint64_t d = first_difference(c.out_buf, t.scratch.get(), len);
            if (d != len) t.result = miscompare_at(d);
            return finish(t);
        }
        case Kind::orwrite: {
            if (t.phase == 1) return finish(t);
            t.phase = 1;
            uint8_t* old = t.scratch.get();
            for (uint32_t i = 0; i < c.out_len; ++i) old[i] |= c.out_buf[i];
            return write_lun(t, old, c.out_len, c.offset, dsync);
        }
        case Kind::compare_and_write: {
            if (t.phase == 1) return finish(t);
            uint32_t half = c.out_len / 2;
            uint64_t d = first_difference(c.out_buf, t.scratch.get(), half);
            if (d != half) {
                t.result = miscompare_at(d);
                return finish(t);
            }
            t.phase = 1;
            return write_lun(t, c.out_buf + half, half, c.offset, dsync);
        }
        case Kind::write_same:
            if (t.phase == 2) return finish(t);
            return next_write_same_chunk(t);
        case Kind::verify:
            if (!compare_verify_chunk(t)) return finish(t);
            return next_verify_chunk(t);
        case Kind::sync:
            if (t.phase == 0) {  // the fdatasync below completed
                t.phase = 1;
                after_lower_sync(t);
                return advance(t);
            }
            if (cache_ && t.phase == 1) {
                t.phase = 2;
                return cache_commit(t, t.commit_barrier);
            }
            return finish(t);
        case Kind::unmap:
            if (overlay_ || cache_) return next_unmap_piece(t);
            return finish(t);
        default: return finish(t);
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
    if (unmap && c.thin_provisioning && lb == 0 && (overlay_ || cache_)) {
        t.kind = Kind::unmap;
        plan_unmap(t, c.offset, c.tl);
        return next_unmap_piece(t);
    }
    if (unmap && c.thin_provisioning && lb == 0) {
        t.phase = 2;
        return issue(t, IoOp::punch_hole, nullptr, c.tl, c.offset);
    }
    t.chunk = std::min<uint64_t>(c.tl, chunk_bytes);
    uint8_t* buf = t.scratch.reserve(t.chunk);
    if (!buf) return fail(t, scsi::key::hardware_error, scsi::asc::internal_target_failure);
    for (uint64_t o = 0; o < t.chunk; o += block) {
        if (pattern) std::memcpy(buf + o, pattern, block);
        else std::memset(buf + o, 0, block);
    }
    t.phase = 1;
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
    write_lun(t, buf, n, off, !c.write_cache_enabled);
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
        if (!n) continue;
        if (overlay_ || cache_) plan_unmap(t, lba << c.blk_shift, n << c.blk_shift);
        else issue(t, IoOp::punch_hole, nullptr, n << c.blk_shift, lba << c.blk_shift);
    }
    if (overlay_ || cache_) return next_unmap_piece(t);
    if (t.pending == 0) fail(t, 0, 0);
}

void CommandRunner::next_verify_chunk(Task& t) {
    const LunCommand& c = t.cmd;
    if (t.cursor >= c.tl) return finish(t);
    t.chunk = std::min<uint64_t>(c.tl - t.cursor, chunk_bytes);
    uint8_t* buf = t.scratch.reserve(t.chunk);
    if (!buf) return fail(t, scsi::key::hardware_error, scsi::asc::internal_target_failure);
    read_lun(t, buf, t.chunk, c.offset + t.cursor);
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
    if (in_submit_) {
        deferred_.push_back(t.index);
        kick();
        return;
    }
    if (t.internal) {
        t.internal = t.running = t.busy = false;
        free_.push_back(t.index);
        --internal_active_;
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

void CommandRunner::set_metrics(LunMetrics* m) {
    metrics_ = m;
    if (metrics_ && cache_) publish_cache_counts();
}

// Direction and bytes as docs/metrics.md defines them.
void CommandRunner::record_completion(const Task& t) {
    const LunCommand& c = t.cmd;
    unsigned dir = metrics::dir_other;
    uint64_t bytes = 0;
    if (t.kind == Kind::read) {
        dir = metrics::dir_read;
        bytes = std::min(c.in_len, c.tl);
    } else if (t.kind != Kind::unmap && writes(t.kind)) {
        dir = metrics::dir_write;
        bytes = c.tl;
    } else if (t.kind == Kind::unmap && c.cdb[0] != scsi::op::unmap) {  // WRITE SAME with UNMAP became an unmap
        dir = metrics::dir_write;
        bytes = c.tl;
    }
    metrics_->record(dir, bytes, LunMetrics::now_ns() - t.start_ns, t.result.status, t.result.sense_key);
}

void CommandRunner::publish_cache_counts() {
    CacheCounts n = cache_->map().counts();
    metrics::LunCounters& m = metrics_->counters();
    metrics::set(m.cache_blocks_total, n.total);
    metrics::set(m.cache_blocks_used, n.used());
    metrics::set(m.cache_blocks_dirty, n.writing + n.dirty_uncommitted + n.dirty + n.flushing);
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

void CommandRunner::kick() {
    if (!kicked_) {
        kicked_ = true;
        host_.kick(host_.ctx);
    }
}

void CommandRunner::submit_batch() {
    kicked_ = false;
    int r = engine_.submit();
    engine_backlog_ = r != 0;
    if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR)
        log(LogLevel::error, "LUN '" + name_ + "': submitting I/O: " + std::strerror(-r) + " (will retry)");
    if (r < 0) kick();
    // Whatever completed during submit (cached reads served inline, io_uring
    // reads that found their data cached) completes now, in this loop pass,
    // rather than after another wake-up of the host's event loop.
    reap_completions();
    if (!deferred_.empty()) {
        ready_.swap(deferred_);
        for (uint32_t idx : ready_) finish(*tasks_[idx]);
        ready_.clear();
    }
}

void CommandRunner::process_completions() { reap_completions(); }

void CommandRunner::reap_completions() {
    IoCompletion done[64];
    for (;;) {
        size_t n = engine_.reap(done);
        for (size_t i = 0; i < n; ++i)
            on_io(*tasks_[done[i].tag >> 32], static_cast<uint32_t>(done[i].tag), done[i].res);
        if (n < std::size(done)) break;
    }
    if (engine_backlog_) kick();
}

void CommandRunner::drain() {
    using Clock = std::chrono::steady_clock;
    auto pump = [&] {
        submit_batch();
        if (engine_.in_flight() > 0) engine_.wait();
        process_completions();
    };
    while (active_ > 0 || engine_.in_flight() > 0) pump();
    if (!cache_) return;
    // Write everything in the cache down, with progress in the log.
    CacheMap& m = cache_->map();
    const uint64_t total = m.counts().used();
    const auto t0 = Clock::now();
    auto last = t0;
    if (total)
        log(LogLevel::info, "cache '" + cache_->path() + "': writing back " + std::to_string(total) +
                                " blocks (" + std::to_string(total * OverlayMap::block_size >> 20) + " MiB) before closing");
    draining_ = true;
    // A failed cache is done when nothing committed is left to write back;
    // its slots are not freed (nothing more is written to it).
    auto left = [&] { return cache_->failed ? m.counts().dirty + m.counts().flushing : m.counts().used(); };
    flush_error_.clear();
    while (left() > 0 || internal_active_ > 0 || engine_.in_flight() > 0) {
        // A write-back round that failed (the cache or the device below gives
        // errors) is not retried here: closing must end in bounded time.
        if (flush_error_.empty()) kick_background();
        if (!flusher_running_ && engine_.in_flight() == 0 && left() > 0) {
            log(LogLevel::error, "cache '" + cache_->path() + "': " + std::to_string(left()) +
                                     " blocks could not be written back (" +
                                     (flush_error_.empty() ? std::string("no progress") : flush_error_) +
                                     "); they stay in the cache and are written back when it is opened again");
            break;
        }
        pump();
        if (Clock::now() - last > std::chrono::seconds(1)) {
            last = Clock::now();
            log(LogLevel::info, "cache '" + cache_->path() + "': " + std::to_string(left()) + " of " +
                                    std::to_string(total) + " blocks left to write back");
        }
    }
    draining_ = false;
    if (total)
        log(LogLevel::info, "cache '" + cache_->path() + "': written back in " +
                                std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0)
                                                   .count()) +
                                " ms");
}

}  // namespace icbd
