// SCSI data-path commands as asynchronous I/O chains. tgtd's SBC layer has
// already checked LBA ranges, read-only state and the CDB basics; what is left
// here is the data semantics of each opcode (see docs/scsi-commands.md).
#include "command_runner.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "icbd/log.hpp"
#include "icbd/scsi.hpp"
#include "icbd/sense.hpp"

namespace icbd {
namespace {

constexpr uint64_t chunk_bytes = 1u << 20;  // WRITE SAME / VERIFY work unit
constexpr uintptr_t dio_align = 512;

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }
uint64_t be64(const uint8_t* p) { return uint64_t(be32(p)) << 32 | be32(p + 4); }
void put_be32(uint8_t* p, uint32_t v) {
    for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
void put_be64(uint8_t* p, uint64_t v) {
    for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}

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
                             bool direct_writes, std::string name, OverlayMap* overlay, WriteBackCache* cache)
    : engine_(engine),
      host_(host),
      fd_(fd),
      write_fd_(write_fd),
      direct_reads_(direct_reads),
      direct_writes_(direct_writes),
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
    Task& t = alloc_task();
    t.cmd = cmd;
    ++active_;
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
    SubOp s{op, dsync, overlay_data, cache_run, fd, offset, buf, len, offset, buf, nullptr, 0};
    if (needs_alignment(op) && ((reinterpret_cast<uintptr_t>(buf) | len | offset) & (dio_align - 1))) {
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
        overlay_->mark_present(lun_start, lun_len);
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
            if (lb == 0x02) put_be32(buf + o, static_cast<uint32_t>(lba));
            else put_be64(buf + o, lba);
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
    uint32_t descs = std::min<uint32_t>(be16(p + 2), c.out_len - 8) / 16;
    const uint64_t blocks = c.lun_size >> c.blk_shift;
    // Validate every descriptor before touching anything: all or nothing.
    for (uint32_t i = 0; i < descs; ++i) {
        const uint8_t* d = p + 8 + 16 * i;
        uint64_t lba = be64(d), n = be32(d + 8);
        if (lba + n < lba || lba + n > blocks)
            return fail(t, scsi::key::illegal_request, scsi::asc::lba_out_of_range);
    }
    for (uint32_t i = 0; i < descs; ++i) {
        const uint8_t* d = p + 8 + 16 * i;
        uint64_t lba = be64(d), n = be32(d + 8);
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

// --- LUN-level operations ----------------------------------------------------
// Three layers (docs/overlay-format.md, docs/write-back-cache.md): the
// write-back cache when there is one, then the overlay or the raw file.

void CommandRunner::read_lun(Task& t, uint8_t* buf, uint64_t len, uint64_t offset) {
    if (cache_) return cache_read(t, buf, len, offset);
    read_lower(t, buf, len, offset);
}

void CommandRunner::write_lun(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync) {
    if (cache_) return cache_write(t, buf, len, offset, dsync);
    write_lower(t, buf, len, offset, dsync);
}

void CommandRunner::sync_lun(Task& t) {
    if (cache_) {
        // Acknowledged writes are durable once committed in the cache; what
        // went below directly (UNMAP) needs an fdatasync below as well.
        t.commit_barrier = cache_->map().last_seq();
        if (!lower_dirty_) {
            t.phase = 2;
            return cache_commit(t, t.commit_barrier);
        }
        lower_dirty_ = false;
    }
    sync_lower(t);
}

void CommandRunner::read_lower(Task& t, uint8_t* buf, uint64_t len, uint64_t offset) {
    if (!overlay_) return issue(t, IoOp::read, buf, len, offset);
    overlay_->for_each_run(offset, len, [&](bool in_overlay, uint64_t off, uint64_t n) {
        if (in_overlay) issue(t, IoOp::read, buf + (off - offset), n, overlay_->data_offset() + off, false, fd_);
        else issue(t, IoOp::read, buf + (off - offset), n, off, false, overlay_->golden_fd());
    });
}

void CommandRunner::write_lower(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync) {
    if (!overlay_) return issue(t, IoOp::write, const_cast<uint8_t*>(buf), len, offset, dsync);
    if (!overlay_->needs_copy_up(offset, len))
        return issue(t, IoOp::write, const_cast<uint8_t*>(buf), len, overlay_->data_offset() + offset, dsync, fd_,
                     true);
    start_fill(t, buf, len, offset, dsync, false);
}

void CommandRunner::punch_lower(Task& t, uint64_t len, uint64_t offset) {
    if (overlay_) issue(t, IoOp::punch_hole, nullptr, len, overlay_->data_offset() + offset, false, fd_, true);
    else issue(t, IoOp::punch_hole, nullptr, len, offset);
}

void CommandRunner::sync_lower(Task& t) {
    if (overlay_) t.snapshot = overlay_->snapshot_unsynced();
    issue(t, IoOp::fdatasync, nullptr, 0, 0);
}

// Everything written below before the fdatasync started is durable: so are
// the overlay map bits snapshotted then, which may now go to disk.
void CommandRunner::after_lower_sync(Task& t) {
    if (!overlay_) return;
    overlay_->apply_durable(t.snapshot);
    t.map_write_needed = true;
}

// Reads the edge blocks a write covers only partly (from wherever they live
// now), then writes whole blocks: to the overlay (copy-up) or to the cache.
// The task holds these blocks (see submit_inner), so nothing else writes them
// meanwhile.
void CommandRunner::start_fill(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync,
                               bool to_cache) {
    constexpr uint64_t bs = OverlayMap::block_size;
    const uint64_t start = offset - offset % bs, end = (offset + len + bs - 1) / bs * bs;
    const uint64_t size = t.cmd.lun_size;
    uint8_t* b = t.copy_buf.reserve(end - start);
    if (!b) {
        t.error = ENOMEM;
        if (t.pending == 0) fail(t, scsi::key::hardware_error, scsi::asc::internal_target_failure);
        return;
    }
    t.copy_active = true;
    t.copy_to_cache = to_cache;
    t.copy_src = buf;
    t.copy_off = offset;
    t.copy_len = len;
    t.copy_start = start;
    t.copy_span = end - start;
    t.copy_dsync = dsync;
    std::memset(b, 0, bs);
    std::memset(b + (end - start) - bs, 0, bs);
    auto covered = [&](uint64_t block_off) {
        return offset <= block_off && offset + len >= std::min(block_off + bs, size);
    };
    auto read_block = [&](uint64_t block_off) {
        uint64_t n = std::min(bs, size - block_off);  // a final short block
        if (to_cache) read_lun(t, b + (block_off - start), n, block_off);
        else read_lower(t, b + (block_off - start), n, block_off);
    };
    if (!covered(start)) read_block(start);
    if (end - bs != start && !covered(end - bs)) read_block(end - bs);
    if (t.pending == 0) finish_copy_up(t);  // nothing to read (cannot happen; stay safe)
}

void CommandRunner::finish_copy_up(Task& t) {
    t.copy_active = false;
    uint8_t* b = t.copy_buf.get();
    std::memcpy(b + (t.copy_off - t.copy_start), t.copy_src, t.copy_len);
    if (t.copy_to_cache)
        return cache_write_blocks(t, b, t.copy_start / OverlayMap::block_size, t.copy_span / OverlayMap::block_size,
                                  t.copy_dsync);
    issue(t, IoOp::write, b, t.copy_span, overlay_->data_offset() + t.copy_start, t.copy_dsync, fd_, true);
}

// Map pages are written RWF_DSYNC, one batch at a time for the whole LUN: a
// later batch is always a superset of an earlier one (the durable map only
// grows), so whichever lands last on disk is right.
void CommandRunner::write_map(Task& t) {
    if (overlay_->map_writer_busy) {
        map_waiters_.push_back(t.index);
        return;
    }
    t.map_writes = overlay_->take_unwritten_pages(t.map_buf);
    if (t.map_writes.empty()) return advance(t);
    overlay_->map_writer_busy = true;
    t.owns_map_writer = true;
    for (const auto& w : t.map_writes) issue(t, IoOp::write, t.map_buf.data() + w.buf_offset, w.len, w.file_offset, true, fd_);
}

void CommandRunner::release_map_writer(Task& t) {
    t.owns_map_writer = false;
    overlay_->map_writer_busy = false;
    if (t.error) overlay_->requeue_pages(t.map_writes);
    if (!map_waiters_.empty()) {
        uint32_t idx = map_waiters_.front();
        map_waiters_.pop_front();
        write_map(*tasks_[idx]);
    }
}

void CommandRunner::plan_unmap(Task& t, uint64_t offset, uint64_t len) {
    if (cache_) plan_cached_unmap(t, offset, len);
    else plan_overlay_unmap(t, offset, len);
}

// UNMAP on an overlay: whole blocks are punched and marked present (they read
// as zeros, not as golden data); partial blocks get zeros written.
void CommandRunner::plan_overlay_unmap(Task& t, uint64_t offset, uint64_t len) {
    constexpr uint64_t bs = OverlayMap::block_size;
    const uint64_t end = offset + len;
    const uint64_t a = (offset + bs - 1) / bs * bs;
    const uint64_t b = end == overlay_->size() ? (end + bs - 1) / bs * bs : end / bs * bs;
    if (a >= b) {
        for (uint64_t o = offset; o < end;) {  // within one or two blocks, no whole one
            uint64_t n = std::min(end, (o / bs + 1) * bs) - o;
            t.pieces.push_back({false, o, n});
            o += n;
        }
        return;
    }
    if (offset < a) t.pieces.push_back({false, offset, a - offset});
    t.pieces.push_back({true, a, b - a});
    if (b < end) t.pieces.push_back({false, b, end - b});
}

// UNMAP on a cached LUN: a block with data in the cache gets zeros written
// into the cache (the newest version of a block must read as zeros, whatever
// older versions the cache or the device below hold); the others are
// deallocated below directly. Partial blocks get zeros written.
void CommandRunner::plan_cached_unmap(Task& t, uint64_t offset, uint64_t len) {
    constexpr uint64_t bs = OverlayMap::block_size;
    constexpr uint64_t zero_chunk = 256 * bs;  // the zero source buffer's size
    const uint64_t end = offset + len;
    const uint64_t a = std::min(end, (offset + bs - 1) / bs * bs), b = std::max(a, end / bs * bs);
    if (offset < a) t.pieces.push_back({false, offset, a - offset});
    for (uint64_t o = a; o < b;) {
        const bool cached = cache_->map().lookup(o / bs).has_value();
        uint64_t e = o + bs;
        while (e < b && cache_->map().lookup(e / bs).has_value() == cached && (!cached || e - o < zero_chunk)) e += bs;
        t.pieces.push_back({!cached, o, e - o});
        o = e;
    }
    if (b < end && b >= a) t.pieces.push_back({false, b, end - b});
}

void CommandRunner::next_unmap_piece(Task& t) {
    static const uint8_t zeros[256 * OverlayMap::block_size] = {};
    if (t.cursor >= t.pieces.size()) return finish(t);
    const Task::Piece p = t.pieces[t.cursor++];
    if (p.punch) {
        if (cache_) lower_dirty_ = true;
        return punch_lower(t, p.len, p.offset);
    }
    write_lun(t, zeros, p.len, p.offset, !t.cmd.write_cache_enabled);
}

// --- write-back cache ----------------------------------------------------------

void CommandRunner::cache_read(Task& t, uint8_t* buf, uint64_t len, uint64_t offset) {
    constexpr uint64_t bs = OverlayMap::block_size;
    CacheMap& m = cache_->map();
    // Coalesce: consecutive cached blocks in consecutive slots are one read,
    // consecutive uncached blocks one read below.
    uint64_t seg_off = offset, seg_len = 0, seg_file = 0;
    bool seg_cached = false;
    auto flush_segment = [&]() {
        if (!seg_len) return;
        if (seg_cached) issue(t, IoOp::read, buf + (seg_off - offset), seg_len, seg_file, false, cache_->fd());
        else read_lower(t, buf + (seg_off - offset), seg_len, seg_off);
        seg_len = 0;
    };
    for (uint64_t o = offset, end = offset + len; o < end;) {
        const uint64_t block = o / bs, n = std::min(end, (block + 1) * bs) - o;
        auto slot = m.acquire_read(block);
        const uint64_t file = slot ? m.block_offset(*slot) + o % bs : 0;
        if (slot) t.pins.push_back(*slot);
        const bool joins = seg_len && seg_cached == slot.has_value() && (!slot || seg_file + seg_len == file);
        if (!joins) {
            flush_segment();
            seg_off = o;
            seg_cached = slot.has_value();
            seg_file = file;
        }
        seg_len += n;
        o += n;
    }
    flush_segment();
}

void CommandRunner::cache_write(Task& t, const uint8_t* buf, uint64_t len, uint64_t offset, bool dsync) {
    constexpr uint64_t bs = OverlayMap::block_size;
    if (cache_->failed) {
        t.error = EIO;
        t.error_op = IoOp::write;
        if (t.pending == 0) advance(t);
        return;
    }
    if ((offset | len) % bs) return start_fill(t, buf, len, offset, dsync, true);
    cache_write_blocks(t, buf, offset / bs, len / bs, dsync);
}

void CommandRunner::cache_write_blocks(Task& t, const uint8_t* buf, uint64_t first_block, uint64_t blocks, bool dsync) {
    t.cw_buf = buf;
    t.cw_lba = first_block;
    t.cw_blocks = blocks;
    t.cw_next = 0;
    t.cw_dsync = dsync;
    t.cruns.clear();
    t.entry_buf.assign(blocks * kCacheEntrySize, 0);  // never reallocated while its writes fly
    cache_write_continue(t);
}

// Allocates a slot per block and writes data and entries, one write each per
// run of consecutive slots; parks the task when the cache has no free slot
// (the flusher makes room), so a full cache slows writes down instead of
// failing them.
void CommandRunner::cache_write_continue(Task& t) {
    CacheMap& m = cache_->map();
    bool open_run = false;
    while (t.cw_next < t.cw_blocks) {
        auto a = m.allocate(t.cw_lba + t.cw_next);
        if (!a) break;
        t.cw_max_seq = std::max(t.cw_max_seq, a->seq);
        auto image = m.entry_image(a->slot);
        std::memcpy(t.entry_buf.data() + t.cw_next * kCacheEntrySize, image.data(), kCacheEntrySize);
        if (open_run && a->slot == t.cruns.back().first_slot + t.cruns.back().count) {
            ++t.cruns.back().count;
        } else {
            if (open_run) issue_cache_run(t, t.cruns.size() - 1);
            t.cruns.push_back({a->slot, 1, t.cw_next, 2, false});
            open_run = true;
        }
        ++t.cw_next;
    }
    if (open_run) issue_cache_run(t, t.cruns.size() - 1);
    if (t.cw_next < t.cw_blocks) {
        t.cache_parked = true;
        cache_waiters_.push_back(t.index);
        kick_background();
        return;
    }
    if (t.cw_dsync) t.commit_wanted = true;
    if (t.pending == 0) advance(t);  // cannot happen (a run was just issued); stay safe
}

void CommandRunner::issue_cache_run(Task& t, size_t run) {
    constexpr uint64_t bs = OverlayMap::block_size;
    CacheMap& m = cache_->map();
    const Task::CacheRun& r = t.cruns[run];
    const auto idx = static_cast<int32_t>(run);
    issue(t, IoOp::write, const_cast<uint8_t*>(t.cw_buf) + r.first_block * bs, uint64_t(r.count) * bs,
          m.block_offset(r.first_slot), false, cache_->fd(), false, idx);
    // The entries of exactly these slots: no other write in flight covers them.
    issue(t, IoOp::write, t.entry_buf.data() + r.first_block * kCacheEntrySize, uint64_t(r.count) * kCacheEntrySize,
          m.entry_offset(r.first_slot), false, cache_->fd(), false, idx);
}

void CommandRunner::cache_run_done(Task& t, size_t run) {
    CacheMap& m = cache_->map();
    const Task::CacheRun& r = t.cruns[run];
    for (uint32_t k = 0; k < r.count; ++k) {
        if (r.failed) m.write_failed(r.first_slot + k);
        else m.mark_written(r.first_slot + k);
    }
    cache_changed();
}

// One commit at a time (fdatasync, superblock RWF_DSYNC); a task whose writes
// are not committable yet, or that finds a commit running, waits and is
// looked at again whenever the cache changes.
void CommandRunner::cache_commit(Task& t, uint64_t barrier, bool force) {
    CacheMap& m = cache_->map();
    if (cache_->failed) {
        t.error = EIO;
        t.error_op = IoOp::fdatasync;
        return advance(t);
    }
    if (m.committed_seq() >= barrier && !(force && m.needs_commit() && !m.commit_in_progress())) return advance(t);
    if (m.commit_in_progress() || m.committable_seq() < barrier) {
        t.commit_barrier = barrier;
        commit_waiters_.push_back(t.index);
        return;
    }
    t.ticket = m.begin_commit();
    t.commit_stage = 1;
    issue(t, IoOp::fdatasync, nullptr, 0, 0, false, cache_->fd());
}

void CommandRunner::cache_commit_step(Task& t) {
    CacheMap& m = cache_->map();
    if (t.error) {
        m.commit_failed(t.ticket);
        t.commit_stage = 0;
        cache_->failed = true;
        log(LogLevel::error, "cache '" + cache_->path() + "': commit failed: " + std::strerror(t.error) +
                                 "; the cache refuses writes from now on");
        cache_changed();
        return advance(t);
    }
    if (t.commit_stage == 1) {
        t.commit_stage = 2;
        return issue(t, IoOp::write, t.ticket.superblock.data(), t.ticket.superblock.size(), t.ticket.superblock_offset,
                     true, cache_->fd());
    }
    t.commit_stage = 0;
    m.commit_done(t.ticket);
    cache_changed();
    advance(t);
}

void CommandRunner::cache_changed() {
    if (!commit_waiters_.empty() && !cache_->map().commit_in_progress()) {
        std::vector<uint32_t> waiting;
        waiting.swap(commit_waiters_);
        for (uint32_t idx : waiting) {
            Task& w = *tasks_[idx];
            cache_commit(w, w.commit_barrier, w.kind == Kind::flush);
        }
    }
    for (size_t n = cache_waiters_.size(); n > 0 && !cache_waiters_.empty(); --n) {
        uint32_t idx = cache_waiters_.front();
        cache_waiters_.pop_front();
        Task& w = *tasks_[idx];
        if (!flush_error_.empty() && !flusher_running_) {  // nothing will make room: fail it clearly
            w.cache_parked = false;
            if (!w.error) w.error = flush_error_.find("No space") != std::string::npos ? ENOSPC : EIO;
            w.error_op = IoOp::write;
            if (w.pending == 0) advance(w);
            continue;
        }
        w.cache_parked = false;
        cache_write_continue(w);  // may park it again
    }
    kick_background();
}

// The flusher: one internal task at a time, started when the cache is above
// its low watermark, when writes wait for slots, or when draining. Each round:
// commit what is committable, write a batch of committed dirty blocks below in
// LBA order (coalesced), fdatasync below, then free their slots (FREE entries,
// fdatasync of the cache).
void CommandRunner::kick_background() {
    if (!cache_ || flusher_running_ || cache_->failed) return;
    CacheMap& m = cache_->map();
    const bool want = draining_ || !cache_waiters_.empty() || m.free_entries_pending() ||
                      m.urgency(cache_->watermarks) != FlushUrgency::none;
    if (!want) return;
    if (!flush_error_.empty() && !draining_ && cache_waiters_.empty()) return;  // wait for the next host write
    Task& t = alloc_task();
    t.internal = true;
    t.running = true;
    t.kind = Kind::flush;
    t.phase = 0;
    flusher_running_ = true;
    ++internal_active_;
    flush_step(t);
}

void CommandRunner::flush_step(Task& t) {
    constexpr uint64_t bs = OverlayMap::block_size;
    constexpr uint64_t batch_bytes = 4u << 20;
    CacheMap& m = cache_->map();
    if (t.error) {
        if (t.phase == 7 || t.phase == 8) {  // FREE entries could not be made durable
            cache_->failed = true;
            log(LogLevel::error, "cache '" + cache_->path() + "': writing FREE entries: " + std::strerror(t.error) +
                                     "; the cache refuses writes from now on");
        }
        if (t.phase >= 2 && t.phase <= 6 && t.phase != 5) m.flush_failed(t.batch);
        flush_error_ = std::strerror(t.error);
        log(LogLevel::error, "cache '" + cache_->path() + "': writing back: " + flush_error_ + " (" +
                                 std::to_string(m.counts().dirty) + " dirty blocks stay in the cache)");
        flusher_running_ = false;
        t.error = 0;
        finish(t);
        cache_changed();
        return;
    }
    switch (t.phase) {
        case 0:  // commit, so that flushing has committed blocks to work on
            t.phase = 1;
            t.cursor = 0;  // I/O done this round
            if (m.needs_commit()) {
                t.cursor = 1;
                return cache_commit(t, m.committable_seq(), true);
            }
            [[fallthrough]];
        case 1: {
            // Below the low watermark only FREE entries are written (a round
            // may start just for them): write-back waits for need or close.
            const bool write_back = draining_ || !cache_waiters_.empty() ||
                                    m.urgency(cache_->watermarks) != FlushUrgency::none;
            t.batch = write_back ? m.select_flush(batch_bytes) : FlushBatch{};
            if (t.batch.empty()) {
                t.phase = 5;
                return flush_step(t);
            }
            uint8_t* b = t.flush_buf.reserve(t.batch.blocks * bs);
            if (!b) {
                m.flush_failed(t.batch);
                t.error = ENOMEM;
                t.phase = 0;
                return flush_step(t);
            }
            t.phase = 2;
            uint64_t pos = 0;
            for (const FlushRun& r : t.batch.runs)
                for (size_t i = 0; i < r.slots.size(); ++pos) {
                    size_t k = 1;  // consecutive slots: one read
                    while (i + k < r.slots.size() && r.slots[i + k] == r.slots[i] + k) ++k;
                    issue(t, IoOp::read, b + pos * bs, k * bs, m.block_offset(r.slots[i]), false, cache_->fd());
                    pos += k - 1;
                    i += k;
                }
            return;
        }
        case 2: {  // read: write each run below
            t.phase = 3;
            uint64_t pos = 0;
            for (const FlushRun& r : t.batch.runs) {
                write_lower(t, t.flush_buf.get() + pos * bs, r.slots.size() * bs, r.first_lba * bs, false);
                pos += r.slots.size();
            }
            return;
        }
        case 3:  // written: make it durable below
            t.phase = 4;
            return sync_lower(t);
        case 4:
            t.phase = 6;
            after_lower_sync(t);  // an overlay's map goes to disk (advance's map hook) before we go on
            return advance(t);
        case 6:
            m.flush_done(t.batch);
            t.batch = {};
            [[fallthrough]];
        case 5: {  // FREE entries of flushed and superseded slots
            t.free_slots = m.take_free_entry_writes();
            if (!t.free_slots.empty()) {
                t.phase = 7;
                std::sort(t.free_slots.begin(), t.free_slots.end());
                t.free_buf.resize(t.free_slots.size() * kCacheEntrySize);
                for (size_t i = 0; i < t.free_slots.size(); ++i) {
                    auto image = m.entry_image(t.free_slots[i]);
                    std::memcpy(t.free_buf.data() + i * kCacheEntrySize, image.data(), kCacheEntrySize);
                }
                for (size_t i = 0; i < t.free_slots.size();) {
                    size_t k = 1;
                    while (i + k < t.free_slots.size() && t.free_slots[i + k] == t.free_slots[i] + k) ++k;
                    issue(t, IoOp::write, t.free_buf.data() + i * kCacheEntrySize, k * kCacheEntrySize,
                          m.entry_offset(t.free_slots[i]), false, cache_->fd());
                    i += k;
                }
                return;
            }
            if (m.free_entries_pending()) {
                t.phase = 8;
                t.sync_token = m.begin_cache_sync();
                return issue(t, IoOp::fdatasync, nullptr, 0, 0, false, cache_->fd());
            }
            t.phase = 9;
            return flush_step(t);
        }
        case 7:
            for (uint32_t slot : t.free_slots) m.free_entry_written(slot);
            t.phase = 8;
            t.sync_token = m.begin_cache_sync();
            return issue(t, IoOp::fdatasync, nullptr, 0, 0, false, cache_->fd());
        case 8:
            t.cursor = 1;
            m.end_cache_sync(t.sync_token);
            flush_error_.clear();
            [[fallthrough]];
        default: {  // another round, or done
            // A round without I/O ends the flusher without re-kicking it:
            // what it waits for is in flight, and its completion kicks again.
            const bool did_io = t.phase == 8 || t.cursor;
            const bool more = !cache_waiters_.empty() || m.urgency(cache_->watermarks) != FlushUrgency::none ||
                              (draining_ && m.counts().used() > 0) || m.free_entries_pending();
            if (did_io && more) {
                t.phase = 0;
                return flush_step(t);
            }
            flusher_running_ = false;
            finish(t);
            if (did_io) cache_changed();
        }
    }
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
    t.holds_range = t.running = t.busy = false;
    free_.push_back(t.index);
    --active_;
    // The host may submit new commands from inside complete(): t is free by now.
    host_.complete(host_.ctx, cookie, result);
    if (was_writer && !parked_.empty()) wake_parked();
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
    if (!cache_ || cache_->failed) {
        while (internal_active_ > 0 || engine_.in_flight() > 0) pump();
        return;
    }
    // Write everything in the cache down, with progress in the log.
    CacheMap& m = cache_->map();
    const uint64_t total = m.counts().used();
    const auto t0 = Clock::now();
    auto last = t0;
    if (total)
        log(LogLevel::info, "cache '" + cache_->path() + "': writing back " + std::to_string(total) +
                                " blocks (" + std::to_string(total * OverlayMap::block_size >> 20) + " MiB) before closing");
    draining_ = true;
    while (m.counts().used() > 0 || internal_active_ > 0 || engine_.in_flight() > 0) {
        kick_background();
        if (!flusher_running_ && engine_.in_flight() == 0 && m.counts().used() > 0) {
            log(LogLevel::error, "cache '" + cache_->path() + "': " + std::to_string(m.counts().used()) +
                                     " blocks could not be written back (" +
                                     (flush_error_.empty() ? std::string("no progress") : flush_error_) +
                                     "); they stay in the cache and are written back when it is opened again");
            break;
        }
        pump();
        if (Clock::now() - last > std::chrono::seconds(1)) {
            last = Clock::now();
            log(LogLevel::info, "cache '" + cache_->path() + "': " + std::to_string(m.counts().used()) + " of " +
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
