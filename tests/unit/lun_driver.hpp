// Drives a Lun without tgtd: builds SCSI commands as tgtd's SBC layer hands
// them over, runs them to completion and checks the completion contract
// (exactly once, never inside submit()). Shared by the LUN and overlay tests.
#pragma once

#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <vector>

#include "icbd/lun.hpp"
#include "scsi.hpp"

namespace icbd::test {

struct Recorder {
    std::map<void*, ScsiResult> done;
    int duplicates = 0;
    int kicks = 0;
    bool inside_submit = false;
    int completed_inside_submit = 0;

    static void complete(void* ctx, void* cookie, const ScsiResult& r) {
        auto* self = static_cast<Recorder*>(ctx);
        if (self->inside_submit) ++self->completed_inside_submit;
        if (!self->done.emplace(cookie, r).second) ++self->duplicates;
    }
    static void kick(void* ctx) { ++static_cast<Recorder*>(ctx)->kicks; }
    LunHost host() { return {complete, kick, this}; }
};

// One SCSI command with its CDB and buffers kept alive.
struct Cmd {
    std::vector<uint8_t> cdb = std::vector<uint8_t>(16);
    std::vector<uint8_t> in, out;
    LunCommand lc;
};

// A 16-byte-CDB command; tl and offset as tgtd's SBC layer computes them.
inline Cmd make_cmd(uint8_t op, uint64_t lba, uint32_t blocks, uint64_t lun_size, unsigned shift = 9,
                    uint8_t byte1 = 0) {
    Cmd c;
    c.cdb[0] = op;
    c.cdb[1] = byte1;
    store_be(&c.cdb[2], lba, 8);
    store_be(&c.cdb[10], blocks, 4);
    c.lc.cdb = c.cdb.data();
    c.lc.offset = lba << shift;
    // tgtd's sbc_verify() leaves tl at 0 (regression: every VERIFY with
    // BYTCHK passed without comparing anything).
    const bool verify = op == scsi::op::verify_10 || op == scsi::op::verify_12 || op == scsi::op::verify_16;
    c.lc.tl = verify ? 0 : static_cast<uint32_t>(uint64_t(blocks) << shift);
    c.lc.lun_size = lun_size;
    c.lc.blk_shift = shift;
    c.lc.thin_provisioning = true;
    return c;
}

inline ScsiResult run_cmd(Lun& lun, Recorder& rec, Cmd& c) {
    c.lc.cookie = &c;
    c.lc.in_buf = c.in.data();
    c.lc.in_len = static_cast<uint32_t>(c.in.size());
    c.lc.out_buf = c.out.data();
    c.lc.out_len = static_cast<uint32_t>(c.out.size());
    rec.inside_submit = true;
    lun.submit(c.lc);
    rec.inside_submit = false;
    for (int i = 0; i < 100000 && !rec.done.count(&c); ++i) {  // at most ~10 s
        lun.submit_batch();
        lun.process_completions();
        if (!rec.done.count(&c)) usleep(100);
    }
    EXPECT_TRUE(rec.done.count(&c)) << "command never completed";
    EXPECT_EQ(rec.completed_inside_submit, 0);
    EXPECT_EQ(rec.duplicates, 0);
    ScsiResult r = rec.done[&c];
    rec.done.erase(&c);
    return r;
}

// The everyday commands of a LUN of `size` bytes with 512-byte blocks, run to
// completion; each expects GOOD status.
struct LunOps {
    Lun& lun;
    Recorder& rec;
    uint64_t size;

    std::vector<uint8_t> read(uint64_t lba, uint32_t blocks) {
        Cmd r = make_cmd(scsi::op::read_16, lba, blocks, size);
        r.in.resize(uint64_t(blocks) * 512);
        EXPECT_EQ(run_cmd(lun, rec, r).status, scsi::status_good) << "read lba " << lba;
        return r.in;
    }
    void write(uint64_t lba, const std::vector<uint8_t>& data, bool fua = false) {
        Cmd w = make_cmd(scsi::op::write_16, lba, static_cast<uint32_t>(data.size() / 512), size, 9, fua ? 0x08 : 0);
        w.out = data;
        EXPECT_EQ(run_cmd(lun, rec, w).status, scsi::status_good) << "write lba " << lba;
    }
    void unmap(uint64_t lba, uint32_t blocks) {  // one descriptor
        Cmd c = make_cmd(scsi::op::unmap, 0, 0, size);
        c.cdb.assign(10, 0);
        c.cdb[0] = scsi::op::unmap;
        c.lc.cdb = c.cdb.data();
        c.lc.tl = 24;
        c.out.assign(24, 0);
        store_be(&c.out[0], 22, 2);
        store_be(&c.out[2], 16, 2);
        store_be(&c.out[8], lba, 8);
        store_be(&c.out[16], blocks, 4);
        EXPECT_EQ(run_cmd(lun, rec, c).status, scsi::status_good) << "unmap lba " << lba;
    }
    void sync() {
        Cmd c = make_cmd(scsi::op::synchronize_cache_16, 0, 0, size);
        EXPECT_EQ(run_cmd(lun, rec, c).status, scsi::status_good);
    }
};

}  // namespace icbd::test
