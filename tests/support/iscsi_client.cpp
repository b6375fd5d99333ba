// IscsiClient: libiscsi sessions for tests. The sense INFORMATION field is not
// in libiscsi's parsed `struct scsi_sense`; libiscsi leaves the raw sense of a
// CHECK CONDITION in task->datain (2-byte length, then the sense bytes), and we
// decode it from there, fixed and descriptor format alike.
#include "iscsi_client.hpp"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <stdexcept>

extern "C" {
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
}

#include "icbd/endian.hpp"

namespace icbd::test {
namespace {

std::string hex(uint64_t v, int width) {
    char b[32];
    std::snprintf(b, sizeof b, "0x%0*llx", width, static_cast<unsigned long long>(v));
    return b;
}

const char* status_name(int s) {
    switch (s) {
        case SCSI_STATUS_GOOD:
            return "GOOD";
        case SCSI_STATUS_CHECK_CONDITION:
            return "CHECK CONDITION";
        case SCSI_STATUS_BUSY:
            return "BUSY";
        case SCSI_STATUS_RESERVATION_CONFLICT:
            return "RESERVATION CONFLICT";
        case SCSI_STATUS_TASK_SET_FULL:
            return "TASK SET FULL";
        case SCSI_STATUS_TASK_ABORTED:
            return "TASK ABORTED";
        case SCSI_STATUS_CANCELLED:
            return "CANCELLED (libiscsi)";
        case SCSI_STATUS_ERROR:
            return "ERROR (libiscsi: transport failure)";
        case SCSI_STATUS_TIMEOUT:
            return "TIMEOUT (libiscsi)";
        case -1:
            return "NOT SENT";
        default:
            return "?";
    }
}

// Fills info/info_valid from raw sense bytes (SPC-4 4.5).
void decode_sense_info(ScsiResult& r) {
    const auto& s = r.sense;
    if (s.empty()) return;
    const int code = s[0] & 0x7f;
    if ((code == 0x70 || code == 0x71) && s.size() >= 7) {
        r.info_valid = (s[0] & 0x80) != 0;
        r.info = load_be32(&s[3]);
    } else if ((code == 0x72 || code == 0x73) && s.size() >= 8) {
        size_t end = std::min<size_t>(s.size(), 8u + s[7]);
        for (size_t d = 8; d + 2 <= end; d += 2u + s[d + 1]) {
            if (s[d] == 0x00 && d + 12 <= end) {  // information descriptor
                r.info_valid = (s[d + 2] & 0x80) != 0;
                r.info = load_be64(&s[d + 4]);
                break;
            }
        }
    }
}

std::string blocks_text(uint64_t lba, uint64_t blocks) {
    return "lba " + std::to_string(lba) + ", " + std::to_string(blocks) + " block" + (blocks == 1 ? "" : "s");
}

// scsi_task* owned until scsi_free_scsi_task.
struct TaskDeleter {
    void operator()(scsi_task* t) const { scsi_free_scsi_task(t); }
};
using TaskPtr = std::unique_ptr<scsi_task, TaskDeleter>;

struct UrlDeleter {
    void operator()(iscsi_url* u) const { iscsi_destroy_url(u); }
};

}  // namespace

std::string ScsiResult::describe() const {
    std::ostringstream os;
    os << command << " on " << url << ": " << status_name(status);
    if (status >= 0 && status < 0x100 && status != SCSI_STATUS_GOOD && status != SCSI_STATUS_CHECK_CONDITION)
        os << " (" << hex(static_cast<uint64_t>(status), 2) << ")";
    if (status == SCSI_STATUS_CHECK_CONDITION) {
        os << ", sense key " << hex(static_cast<uint64_t>(sense_key), 1) << " " << scsi_sense_key_str(sense_key)
           << ", ASC/ASCQ " << hex(asc, 4) << " " << scsi_sense_ascq_str(asc);
        if (info_valid) os << ", INFORMATION " << info;
    }
    if (!error.empty()) os << " [" << error << "]";
    return os.str();
}

std::ostream& operator<<(std::ostream& os, const ScsiResult& r) { return os << r.describe(); }
void PrintTo(const ScsiResult& r, std::ostream* os) { *os << r.describe(); }

std::vector<uint8_t> pattern(size_t n, uint64_t seed) {
    std::vector<uint8_t> v(n);
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    for (size_t i = 0; i < n; ++i) {
        if (i % 8 == 0) {  // splitmix64
            x += 0x9e3779b97f4a7c15ull;
            uint64_t z = x;
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            x = z ^ (z >> 31);
        }
        v[i] = static_cast<uint8_t>(x >> (8 * (i % 8)));
        if (i % 512 == 0) v[i] |= 1;  // never an all-zero block
    }
    return v;
}

IscsiClient::IscsiClient(const std::string& url, std::chrono::seconds timeout) : url_(url) {
    // A target that dies (the crash test kills it) must show up as an error on
    // the session, not as SIGPIPE killing the test program.
    signal(SIGPIPE, SIG_IGN);
    std::string initiator = "iqn.2026-01.org.icbd:test-initiator-" + std::to_string(getpid());
    ctx_ = iscsi_create_context(initiator.c_str());
    if (!ctx_) throw std::runtime_error("iscsi_create_context failed (connecting to " + url + ")");
    std::unique_ptr<iscsi_url, UrlDeleter> u(iscsi_parse_full_url(ctx_, url.c_str()));
    auto fail = [&](const std::string& what) {
        std::string msg = what + " " + url + ": " + iscsi_get_error(ctx_);
        iscsi_destroy_context(ctx_);
        ctx_ = nullptr;
        throw std::runtime_error(msg);
    };
    if (!u) fail("cannot parse iSCSI URL");
    lun_ = u->lun;
    iscsi_set_targetname(ctx_, u->target);
    iscsi_set_session_type(ctx_, ISCSI_SESSION_NORMAL);
    iscsi_set_header_digest(ctx_, ISCSI_HEADER_DIGEST_NONE_CRC32C);
    iscsi_set_noautoreconnect(ctx_, 1);
    iscsi_set_timeout(ctx_, static_cast<int>(timeout.count()));
    if (iscsi_full_connect_sync(ctx_, u->portal, u->lun) != 0) fail("cannot log in to");
    ScsiResult cap = readcapacity16();
    if (!cap.good()) {
        std::string msg = "READ CAPACITY(16) after login failed: " + cap.describe();
        iscsi_destroy_context(ctx_);
        ctx_ = nullptr;
        throw std::runtime_error(msg);
    }
    capacity_ = parse_capacity(cap);
}

IscsiClient::~IscsiClient() {
    if (!ctx_) return;
    // Outstanding async commands: libiscsi cancels them while tearing down; their
    // callbacks must not run into a test that has moved on.
    closing_ = true;
    if (pending_.empty() && iscsi_is_logged_in(ctx_)) iscsi_logout_sync(ctx_);
    iscsi_destroy_context(ctx_);
    for (auto& [id, p] : pending_)
        if (p->task) scsi_free_scsi_task(p->task);  // libiscsi never called back for these
    pending_.clear();
}

std::string IscsiClient::last_error() const { return ctx_ ? iscsi_get_error(ctx_) : "no context"; }

ScsiResult IscsiClient::finish(scsi_task* raw_task, std::string command) {
    ScsiResult r;
    r.command = std::move(command);
    r.url = url_;
    TaskPtr task(raw_task);
    if (!task) {
        r.error = iscsi_get_error(ctx_);
        return r;
    }
    r.status = task->status;
    if (task->status == SCSI_STATUS_CHECK_CONDITION) {
        r.sense_key = task->sense.key;
        r.asc = static_cast<uint16_t>(task->sense.ascq);
        if (task->datain.data && task->datain.size > 2) {
            size_t len = std::min<size_t>(load_be16(task->datain.data), static_cast<size_t>(task->datain.size) - 2);
            r.sense.assign(task->datain.data + 2, task->datain.data + 2 + len);
            decode_sense_info(r);
        }
    } else if (task->status == SCSI_STATUS_GOOD && task->datain.data && task->datain.size > 0) {
        r.data.assign(task->datain.data, task->datain.data + task->datain.size);
    } else if (task->status != SCSI_STATUS_GOOD) {
        r.error = iscsi_get_error(ctx_);
    }
    return r;
}

template <class F>
ScsiResult IscsiClient::retry_unit_attention(F&& f) {
    ScsiResult r;
    for (int i = 0; i < 4; ++i) {
        r = f();
        if (!(r.status == SCSI_STATUS_CHECK_CONDITION && r.sense_key == SCSI_SENSE_UNIT_ATTENTION)) break;
    }
    return r;
}

ScsiResult IscsiClient::read10(uint32_t lba, uint32_t blocks) {
    const uint32_t bs = block_size() ? block_size() : 512;
    return retry_unit_attention([&] {
        return finish(iscsi_read10_sync(ctx_, lun_, lba, blocks * bs, static_cast<int>(bs), 0, 0, 0, 0, 0),
                      "READ(10) " + blocks_text(lba, blocks));
    });
}

ScsiResult IscsiClient::read16(uint64_t lba, uint32_t blocks) {
    const uint32_t bs = block_size() ? block_size() : 512;
    return retry_unit_attention([&] {
        return finish(iscsi_read16_sync(ctx_, lun_, lba, blocks * bs, static_cast<int>(bs), 0, 0, 0, 0, 0),
                      "READ(16) " + blocks_text(lba, blocks));
    });
}

ScsiResult IscsiClient::write10(uint32_t lba, std::span<const uint8_t> data, bool fua) {
    const uint32_t bs = block_size();
    auto* d = const_cast<uint8_t*>(data.data());  // libiscsi's API is not const-correct; it only reads
    return retry_unit_attention([&] {
        return finish(iscsi_write10_sync(ctx_, lun_, lba, d, static_cast<uint32_t>(data.size()), static_cast<int>(bs),
                                         0, 0, fua, 0, 0),
                      "WRITE(10) " + blocks_text(lba, data.size() / bs) + (fua ? ", FUA" : ""));
    });
}

ScsiResult IscsiClient::write16(uint64_t lba, std::span<const uint8_t> data, bool fua) {
    const uint32_t bs = block_size();
    auto* d = const_cast<uint8_t*>(data.data());
    return retry_unit_attention([&] {
        return finish(iscsi_write16_sync(ctx_, lun_, lba, d, static_cast<uint32_t>(data.size()), static_cast<int>(bs),
                                         0, 0, fua, 0, 0),
                      "WRITE(16) " + blocks_text(lba, data.size() / bs) + (fua ? ", FUA" : ""));
    });
}

ScsiResult IscsiClient::sync_cache10(uint32_t lba, uint32_t blocks) {
    return retry_unit_attention([&] {
        return finish(iscsi_synchronizecache10_sync(ctx_, lun_, static_cast<int>(lba), static_cast<int>(blocks), 0, 0),
                      "SYNCHRONIZE CACHE(10) " + blocks_text(lba, blocks));
    });
}

ScsiResult IscsiClient::sync_cache16(uint64_t lba, uint32_t blocks) {
    return retry_unit_attention([&] {
        return finish(iscsi_synchronizecache16_sync(ctx_, lun_, lba, blocks, 0, 0),
                      "SYNCHRONIZE CACHE(16) " + blocks_text(lba, blocks));
    });
}

ScsiResult IscsiClient::unmap(const std::vector<std::pair<uint64_t, uint32_t>>& ranges) {
    std::vector<unmap_list> list;
    std::string text = "UNMAP";
    for (auto [lba, n] : ranges) {
        list.push_back({lba, n});
        text += " [" + blocks_text(lba, n) + "]";
    }
    return retry_unit_attention(
        [&] { return finish(iscsi_unmap_sync(ctx_, lun_, 0, 0, list.data(), static_cast<int>(list.size())), text); });
}

ScsiResult IscsiClient::write_same16(uint64_t lba, uint32_t blocks, std::span<const uint8_t> block, bool unmap) {
    auto* d = const_cast<uint8_t*>(block.data());
    return retry_unit_attention([&] {
        return finish(
            iscsi_writesame16_sync(ctx_, lun_, lba, d, static_cast<uint32_t>(block.size()), blocks, 0, unmap, 0, 0),
            "WRITE SAME(16) " + blocks_text(lba, blocks) + (unmap ? ", UNMAP" : ""));
    });
}

ScsiResult IscsiClient::compare_and_write(uint64_t lba, std::span<const uint8_t> compare,
                                          std::span<const uint8_t> write) {
    const uint32_t bs = block_size();
    std::vector<uint8_t> both(compare.begin(), compare.end());
    both.insert(both.end(), write.begin(), write.end());
    return retry_unit_attention([&] {
        return finish(iscsi_compareandwrite_sync(ctx_, lun_, lba, both.data(), static_cast<uint32_t>(both.size()),
                                                 static_cast<int>(bs), 0, 0, 0, 0, 0),
                      "COMPARE AND WRITE " + blocks_text(lba, compare.size() / bs));
    });
}

ScsiResult IscsiClient::orwrite16(uint64_t lba, std::span<const uint8_t> data) {
    const uint32_t bs = block_size();
    auto* d = const_cast<uint8_t*>(data.data());
    return retry_unit_attention([&] {
        return finish(iscsi_orwrite_sync(ctx_, lun_, lba, d, static_cast<uint32_t>(data.size()), static_cast<int>(bs),
                                         0, 0, 0, 0, 0),
                      "ORWRITE(16) " + blocks_text(lba, data.size() / bs));
    });
}

ScsiResult IscsiClient::write_verify16(uint64_t lba, std::span<const uint8_t> data, bool bytchk) {
    const uint32_t bs = block_size();
    auto* d = const_cast<uint8_t*>(data.data());
    return retry_unit_attention([&] {
        return finish(iscsi_writeverify16_sync(ctx_, lun_, lba, d, static_cast<uint32_t>(data.size()),
                                               static_cast<int>(bs), 0, 0, bytchk, 0),
                      "WRITE AND VERIFY(16) " + blocks_text(lba, data.size() / bs) + (bytchk ? ", BYTCHK" : ""));
    });
}

ScsiResult IscsiClient::verify16(uint64_t lba, uint32_t blocks, std::span<const uint8_t> data) {
    const uint32_t bs = block_size();
    const int bytchk = data.empty() ? 0 : 1;
    auto* d = const_cast<uint8_t*>(data.data());
    // libiscsi derives the transfer length from datalen (in blocks of `bs`).
    const uint32_t len = bytchk ? static_cast<uint32_t>(data.size()) : blocks * bs;
    return retry_unit_attention([&] {
        return finish(
            iscsi_verify16_sync(ctx_, lun_, bytchk ? d : nullptr, len, lba, 0, 0, bytchk, static_cast<int>(bs)),
            "VERIFY(16) " + blocks_text(lba, blocks) + (bytchk ? ", BYTCHK=1" : ", BYTCHK=0"));
    });
}

ScsiResult IscsiClient::prefetch16(uint64_t lba, uint32_t blocks) {
    return retry_unit_attention([&] {
        return finish(iscsi_prefetch16_sync(ctx_, lun_, lba, static_cast<int>(blocks), 0, 0),
                      "PRE-FETCH(16) " + blocks_text(lba, blocks));
    });
}

ScsiResult IscsiClient::readcapacity16() {
    return retry_unit_attention([&] { return finish(iscsi_readcapacity16_sync(ctx_, lun_), "READ CAPACITY(16)"); });
}

ScsiResult IscsiClient::get_lba_status(uint64_t lba, uint32_t alloc_len) {
    return retry_unit_attention([&] {
        return finish(iscsi_get_lba_status_sync(ctx_, lun_, lba, alloc_len),
                      "GET LBA STATUS lba " + std::to_string(lba));
    });
}

ScsiResult IscsiClient::raw(std::span<const uint8_t> cdb, std::span<const uint8_t> out, uint32_t in_len,
                            const std::string& name) {
    return retry_unit_attention([&] {
        std::vector<uint8_t> c(cdb.begin(), cdb.end());
        const int dir = !out.empty() ? SCSI_XFER_WRITE : in_len ? SCSI_XFER_READ : SCSI_XFER_NONE;
        const int xfer = !out.empty() ? static_cast<int>(out.size()) : static_cast<int>(in_len);
        scsi_task* t = scsi_create_task(static_cast<int>(c.size()), c.data(), dir, xfer);
        if (!t) {
            ScsiResult r;
            r.command = name;
            r.url = url_;
            r.error = "scsi_create_task failed";
            return r;
        }
        iscsi_data d{out.size(), const_cast<uint8_t*>(out.data())};
        scsi_task* done = iscsi_scsi_command_sync(ctx_, lun_, t, out.empty() ? nullptr : &d);
        if (!done) {
            scsi_free_scsi_task(t);
            return finish(nullptr, name);
        }
        return finish(done, name);
    });
}

Capacity IscsiClient::parse_capacity(const ScsiResult& r) {
    Capacity c;
    if (r.data.size() < 14) return c;
    c.blocks = load_be64(&r.data[0]) + 1;
    c.block_size = load_be32(&r.data[8]);
    if (r.data.size() > 14) {
        c.lbpme = (r.data[14] & 0x80) != 0;
        c.lbprz = (r.data[14] & 0x40) != 0;
    }
    return c;
}

std::vector<LbaStatus> IscsiClient::parse_lba_status(const ScsiResult& r) {
    std::vector<LbaStatus> out;
    if (r.data.size() < 8) return out;
    size_t end = std::min<size_t>(r.data.size(), 4u + load_be32(&r.data[0]));
    for (size_t o = 8; o + 16 <= end; o += 16)
        out.push_back({load_be64(&r.data[o]), load_be32(&r.data[o + 8]), r.data[o + 12] & 0x0f});
    return out;
}

// --- asynchronous path

void IscsiClient::on_complete(iscsi_context*, int status, void*, void* private_data) {
    auto* p = static_cast<Pending*>(private_data);
    IscsiClient* self = p->client;
    auto it = self->pending_.find(p->id);
    if (it == self->pending_.end()) return;  // cannot happen: one callback per command
    std::unique_ptr<Pending> owned = std::move(it->second);
    self->pending_.erase(it);
    scsi_task* task = owned->task;
    // Cut off by the transport (status ERROR/CANCELLED/TIMEOUT): the task never
    // got a SCSI status of its own; report libiscsi's.
    if (status != SCSI_STATUS_GOOD && status != SCSI_STATUS_CHECK_CONDITION) task->status = status;
    ScsiResult r = self->finish(task, owned->command);  // frees the task
    if (!self->closing_ && owned->cb) owned->cb(r);
}

template <class Make>
bool IscsiClient::queue(std::string command, std::vector<uint8_t> data, Callback cb, Make&& make) {
    auto p = std::make_unique<Pending>();
    p->client = this;
    p->id = next_id_++;
    p->command = std::move(command);
    p->data = std::move(data);
    p->cb = std::move(cb);
    Pending* raw = p.get();
    pending_.emplace(raw->id, std::move(p));
    raw->task = make(*raw);
    if (!raw->task) {
        pending_.erase(raw->id);
        return false;
    }
    return true;
}

bool IscsiClient::async_write16(uint64_t lba, std::vector<uint8_t> data, bool fua, Callback cb) {
    const uint32_t bs = block_size();
    std::string text = "WRITE(16) " + blocks_text(lba, data.size() / bs) + (fua ? ", FUA" : "");
    return queue(std::move(text), std::move(data), std::move(cb), [&](Pending& p) {
        return iscsi_write16_task(ctx_, lun_, lba, p.data.data(), static_cast<uint32_t>(p.data.size()),
                                  static_cast<int>(bs), 0, 0, fua, 0, 0, on_complete, &p);
    });
}

bool IscsiClient::async_read16(uint64_t lba, uint32_t blocks, Callback cb) {
    const uint32_t bs = block_size();
    return queue("READ(16) " + blocks_text(lba, blocks), {}, std::move(cb), [&](Pending& p) {
        return iscsi_read16_task(ctx_, lun_, lba, blocks * bs, static_cast<int>(bs), 0, 0, 0, 0, 0, on_complete, &p);
    });
}

bool IscsiClient::async_sync_cache16(Callback cb) {
    return queue("SYNCHRONIZE CACHE(16)", {}, std::move(cb),
                 [&](Pending& p) { return iscsi_synchronizecache16_task(ctx_, lun_, 0, 0, 0, 0, on_complete, &p); });
}

bool IscsiClient::service(std::chrono::milliseconds timeout) {
    pollfd pfd{iscsi_get_fd(ctx_), static_cast<short>(iscsi_which_events(ctx_)), 0};
    int n = poll(&pfd, 1, static_cast<int>(timeout.count()));
    if (n < 0) return errno == EINTR;
    // Also with no events: lets libiscsi time out commands that got no answer.
    return iscsi_service(ctx_, n > 0 ? pfd.revents : 0) == 0;
}

}  // namespace icbd::test
