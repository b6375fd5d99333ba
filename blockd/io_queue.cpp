// IoQueue: requests of the data layers as engine operations, and their
// completions back to the layers.
#include "io_queue.hpp"

#include <cerrno>
#include <cstring>
#include <iterator>

#include "icbd/log.hpp"

namespace icbd {
namespace {

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

}  // namespace

IoQueue::IoQueue(IoEngine& engine, const LunHost& host, std::string name)
    : engine_(engine), host_(host), name_(std::move(name)) {}

IoQueue::~IoQueue() = default;

void IoQueue::start(const Request& r, Done done) {
    uint32_t index;
    if (free_.empty()) {
        index = static_cast<uint32_t>(slots_.size());
        slots_.push_back(std::make_unique<Slot>());
    } else {
        index = free_.back();
        free_.pop_back();
    }
    Slot& s = *slots_[index];
    s.req = r;
    s.start = r.offset;
    s.copy_to = nullptr;
    s.copy_len = 0;
    s.copy_skip = 0;
    s.rmw_write = false;
    s.op = r.op;
    s.dsync = r.dsync;
    s.done = done;
    const bool rw = r.op == IoOp::read || r.op == IoOp::write;
    const uint64_t dio_align = r.align > 512 ? r.align : 512;
    if (rw && r.direct && ((reinterpret_cast<uintptr_t>(r.buf) | r.len | r.offset) & (dio_align - 1))) {
        // O_DIRECT needs aligned memory, offset and length. tgtd's buffers
        // usually are aligned; lengths are not when an initiator's expected
        // transfer length is shorter than the CDB's (iSCSI residuals): the
        // transfer then covers the whole blocks around it, and a write reads
        // them first so that the bytes beside it stay as they were.
        const uint64_t first = r.offset & ~(dio_align - 1);
        const uint64_t end = (r.offset + r.len + dio_align - 1) & ~(dio_align - 1);
        uint8_t* b = s.bounce.reserve(end - first);
        if (!b) {
            free_.push_back(index);
            return done(ENOMEM, r.op);
        }
        s.copy_skip = r.offset - first;
        s.req.buf = b;
        s.req.offset = first;
        s.req.len = end - first;
        if (r.op == IoOp::write && s.req.len == r.len) {
            std::memcpy(b, r.buf, r.len);  // only the memory was unaligned
        } else {
            // A read, or the read half of a read-modify-write.
            s.copy_to = r.buf, s.copy_len = r.len;
            s.rmw_write = r.op == IoOp::write;
            s.req.op = IoOp::read;
            s.req.dsync = false;
        }
    }
    prepare(index);
}

void IoQueue::prepare(uint32_t index) {
    const Request& r = slots_[index]->req;
    // Buffered reads may be served from the page cache by the engine's submit().
    const bool inline_ok = r.op == IoOp::read && !r.direct;
    engine_.prepare({r.op, r.dsync, r.fd, r.buf, r.len, r.offset, index, inline_ok});
    kick();
}

void IoQueue::kick() {
    if (!kicked_) {
        kicked_ = true;
        host_.kick(host_.ctx);
    }
}

void IoQueue::submit() {
    kicked_ = false;
    int r = engine_.submit();
    backlog_ = r != 0;
    if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR)
        log(LogLevel::error, "LUN '" + name_ + "': submitting I/O: " + std::strerror(-r) + " (will retry)");
    if (r < 0) kick();
}

void IoQueue::reap() {
    IoCompletion done[64];
    for (;;) {
        size_t n = engine_.reap(done);
        for (size_t i = 0; i < n; ++i) complete(static_cast<uint32_t>(done[i].tag), done[i].res);
        if (n < std::size(done)) break;
    }
    if (backlog_) kick();
}

void IoQueue::complete(uint32_t index, int32_t res) {
    Slot& s = *slots_[index];
    Request& r = s.req;
    int error = 0;
    if (res < 0) {
        error = -res;
        log(LogLevel::error, "LUN '" + name_ + "': " + op_name(r.op) + " at offset " + std::to_string(r.offset) +
                                 " length " + std::to_string(r.len) + ": " + std::strerror(error));
    } else if ((r.op == IoOp::read || r.op == IoOp::write) && static_cast<uint64_t>(res) < r.len) {
        if (res == 0) {
            if (r.op == IoOp::read) std::memset(r.buf, 0, r.len);  // past the end of a file that shrank: zeros
            else error = EIO;
        } else {
            // Short transfer: continue where the kernel stopped, same slot.
            r.buf += res;
            r.len -= static_cast<uint64_t>(res);
            r.offset += static_cast<uint64_t>(res);
            return prepare(index);
        }
    }
    if (s.rmw_write && !error) {
        // The blocks around an unaligned write are in the bounce buffer: lay
        // the caller's bytes over them and write the blocks back.
        std::memcpy(s.bounce.get() + s.copy_skip, s.copy_to, s.copy_len);
        const uint64_t dio_align = r.align > 512 ? r.align : 512;
        const uint64_t len = (s.copy_skip + s.copy_len + dio_align - 1) & ~(dio_align - 1);
        r = Request{IoOp::write, r.fd, s.bounce.get(), len, s.start - s.copy_skip, s.dsync, r.direct, r.align};
        s.copy_to = nullptr;
        s.rmw_write = false;
        return prepare(index);
    }
    if (s.copy_to && !error) std::memcpy(s.copy_to, s.bounce.get() + s.copy_skip, s.copy_len);
    Done done = s.done;
    const IoOp op = s.op;
    free_.push_back(index);
    done(error, op);
}

}  // namespace icbd
