// Engine selection (io_uring where the kernel allows it, libaio otherwise) and
// what both engines share.
#include "icbd/io_engine.hpp"

#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>

#include <cstdint>

#ifdef ICBD_DURABILITY_CONTROL
#include <memory>

#include "faulty_engine.hpp"
#endif

namespace icbd {

bool InlineReader::try_read(const IoRequest& req, int32_t* res) {
    if (!supported_ || !req.inline_ok || req.op != IoOp::read) return false;
    iovec iov{req.buf, req.len};
    ssize_t n = ::preadv2(req.fd, &iov, 1, static_cast<off_t>(req.offset), RWF_NOWAIT);
    if (n >= 0) {
        *res = static_cast<int32_t>(n);
        return true;
    }
    if (errno == EOPNOTSUPP) supported_ = false;
    // EAGAIN (not cached) and real errors alike take the asynchronous path,
    // which reports errors the same way for every read.
    return false;
}

void IoEngine::acknowledge_event() {
    // Non-blocking eventfd: resets the counter, or EAGAIN when already zero.
    uint64_t count;
    (void)!::read(event_fd(), &count, sizeof count);
}

namespace {

Result<std::unique_ptr<IoEngine>> make_chosen_engine(const EngineOptions& opts, std::string* why_fallback) {
    switch (opts.kind) {
        case EngineKind::io_uring: return make_uring_engine(opts.queue_depth);
        case EngineKind::aio: return make_aio_engine(opts.queue_depth);
        case EngineKind::automatic: break;
    }
    auto uring = make_uring_engine(opts.queue_depth);
    if (uring) return uring;
    // io_uring is off on this host (kernel.io_uring_disabled, a seccomp profile,
    // an old kernel): serve the LUN through libaio and say why, once.
    if (why_fallback) *why_fallback = uring.status().message();
    return make_aio_engine(opts.queue_depth);
}

}  // namespace

Result<std::unique_ptr<IoEngine>> make_io_engine(const EngineOptions& opts, std::string* why_fallback) {
    auto engine = make_chosen_engine(opts, why_fallback);
#ifdef ICBD_DURABILITY_CONTROL
    // Only in the crash test's control module (tests/integration/
    // durability_control.cmake), never in the shipped one: SYNCHRONIZE CACHE
    // and FUA become no-ops, and the crash test must notice (docs/testing.md).
    if (engine) {
        auto plan = std::make_shared<test::FaultPlan>();
        plan->drop_durability = true;
        return std::unique_ptr<IoEngine>(std::make_unique<test::FaultyEngine>(std::move(*engine), plan));
    }
#endif
    return engine;
}

}  // namespace icbd
