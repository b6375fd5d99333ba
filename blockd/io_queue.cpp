// IoQueue: requests of the data layers as engine operations, and their
// completions back to the layers.
#include "io_queue.hpp"

#include <cerrno>
#include <cstring>
#include <iterator>

#include "icbd/log.hpp"

namespace icbd {
namespace {

constexpr uintptr_t dio_align = 512;

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
    s.done = done;
    if (r.direct && ((reinterpret_cast<uintptr_t>(r.buf) | r.len | r.offset) & (dio_align - 1))) {
        // O_DIRECT needs aligned memory; tgtd's buffers usually are, this is the rare path.
        uint8_t* b = s.bounce.reserve(r.len);
        if (!b) {
            free_.push_back(index);
            return done(ENOMEM, r.op);
        }
        if (r.op == IoOp::write) std::memcpy(b, r.buf, r.len);
        else s.copy_to = r.buf, s.copy_len = r.len;
        s.req.buf = b;
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
    if (s.copy_to && !error) std::memcpy(s.copy_to, s.bounce.get(), s.copy_len);
    Done done = s.done;
    const IoOp op = r.op;
    free_.push_back(index);
    done(error, op);
}

}  // namespace icbd
