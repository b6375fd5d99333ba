// libFuzzer target: arbitrary data-path CDBs and Data-Out buffers against a
// real Lun over a small temporary file. Whatever tgtd's SBC layer would have
// let through or not, every command must complete exactly once, never inside
// submit(), and never touch memory outside its buffers (ASan).
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "icbd/lun.hpp"
#include "scsi.hpp"

namespace {

constexpr uint64_t kSize = 1 << 20;
constexpr unsigned kShift = 9;

struct Host {
    int completions = 0;
    bool inside_submit = false;
    static void complete(void* ctx, void*, const icbd::ScsiResult&) {
        auto* h = static_cast<Host*>(ctx);
        if (h->inside_submit) std::abort();
        ++h->completions;
    }
    static void kick(void*) {}
};

struct Fixture {
    Host host;
    std::unique_ptr<icbd::Lun> lun;
    std::string path;
    Fixture() {
        char name[] = "/tmp/icbd-fuzz-XXXXXX";
        int fd = mkstemp(name);
        if (fd < 0 || ftruncate(fd, kSize) != 0) std::abort();
        close(fd);
        path = name;
        auto l = icbd::Lun::create({}, {Host::complete, Host::kick, &host});
        if (!l) std::abort();
        lun = std::move(*l);
        if (!lun->open(path, 0)) std::abort();
        unlink(name);  // the open fd keeps it alive; nothing left behind
    }
};

const uint8_t kOps[] = {
    icbd::scsi::op::read_10, icbd::scsi::op::read_16, icbd::scsi::op::write_10, icbd::scsi::op::write_16,
    icbd::scsi::op::write_verify_16, icbd::scsi::op::orwrite_16, icbd::scsi::op::compare_and_write,
    icbd::scsi::op::synchronize_cache_16, icbd::scsi::op::write_same_16, icbd::scsi::op::unmap,
    icbd::scsi::op::pre_fetch_16, icbd::scsi::op::verify_16, 0x00 /* not a data-path opcode */};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static Fixture f;
    if (size < 20) return 0;
    std::vector<uint8_t> cdb(data, data + 16);
    cdb[0] = kOps[data[16] % sizeof(kOps)];
    // tgtd has already range-checked offset/tl; keep them inside the file so
    // the fuzzer explores the module's own parsing, not tgtd's.
    uint64_t lba = (static_cast<uint64_t>(data[17]) << 8 | data[18]) % (kSize >> kShift);
    uint32_t blocks = data[19] % 64;
    if (lba + blocks > (kSize >> kShift)) blocks = static_cast<uint32_t>((kSize >> kShift) - lba);
    std::vector<uint8_t> out(data + 20, data + size);
    std::vector<uint8_t> in(blocks << kShift);
    icbd::LunCommand c;
    c.cdb = cdb.data();
    c.offset = lba << kShift;
    c.tl = blocks << kShift;
    c.in_buf = in.data();
    c.in_len = static_cast<uint32_t>(in.size());
    c.out_buf = out.data();
    c.out_len = static_cast<uint32_t>(out.size());
    c.lun_size = kSize;
    c.blk_shift = kShift;
    c.thin_provisioning = data[17] & 1;
    c.max_compare_and_write_blocks = 128;
    c.cookie = &c;
    const int before = f.host.completions;
    f.host.inside_submit = true;
    f.lun->submit(c);
    f.host.inside_submit = false;
    for (int i = 0; i < 100000 && f.host.completions == before; ++i) {
        f.lun->submit_batch();
        f.lun->process_completions();
    }
    if (f.host.completions != before + 1) std::abort();
    return 0;
}
