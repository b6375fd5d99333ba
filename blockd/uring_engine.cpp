// IoEngine over one io_uring. Completions signal an eventfd registered with the
// ring, which the host watches in its event loop.
#include <fcntl.h>
#include <liburing.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <vector>

#include "icbd/io_engine.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd {
namespace {

// From this many cached-read candidates in one submit() (several sessions'
// commands in one loop pass), one io_uring_enter serves them all instead of
// one preadv2 each: io_uring reads page-cache hits inline during the call
// (IOCB_NOWAIT) and hands only misses to its workers. The completions are
// in the ring when the call returns, but they signal the event fd, which
// costs the host one wake-up and one read per batch: below this size the
// system calls saved do not pay for it (bench/RESULTS.md, issue 14 item 5).
constexpr size_t ring_batch_min = 4;

class UringEngine final : public IoEngine {
public:
    ~UringEngine() override {
        if (ring_ok_) io_uring_queue_exit(&ring_);
    }

    Status init(unsigned depth) {
        io_uring_params p{};
        // One thread (tgtd's) creates and submits: the kernel may skip locking.
        p.flags = IORING_SETUP_SINGLE_ISSUER;
        int r = io_uring_queue_init_params(depth, &ring_, &p);
        if (r == -EINVAL) {  // kernel older than 6.0
            p = {};
            r = io_uring_queue_init_params(depth, &ring_, &p);
        }
        if (r < 0) return Status::from_errno(-r, "io_uring_setup (queue depth " + std::to_string(depth) + ")");
        ring_ok_ = true;
        efd_.reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
        if (!efd_.valid()) return Status::from_errno(errno, "eventfd");
        r = io_uring_register_eventfd(&ring_, efd_.get());
        if (r < 0) return Status::from_errno(-r, "io_uring_register_eventfd");
        return {};
    }

    void prepare(const IoRequest& req) override {
        // Counted only once queued: a push that throws (out of memory)
        // leaves nothing behind for a drain to wait on forever.
        if (req.inline_ok && req.op == IoOp::read) inline_.push_back(req);
        else enqueue(req);
        ++in_flight_;
    }

    int submit() override {
        if (inline_.size() >= ring_batch_min) {
            for (const IoRequest& req : inline_) enqueue(req);
        } else {
            // Cached reads first, on this thread; what is not cached joins the ring.
            for (const IoRequest& req : inline_) {
                int32_t res;
                if (reader_.try_read(req, &res)) done_.push_back({req.tag, res});
                else enqueue(req);
            }
        }
        inline_.clear();
        // More than one enter happens only when the batch exceeded the ring.
        for (;;) {
            if (io_uring_sq_ready(&ring_) > 0) {
                int r = io_uring_submit(&ring_);
                if (r < 0) return r;
            }
            if (backlog_.empty()) return 0;
            size_t moved = 0;
            while (!backlog_.empty() && fill(backlog_.front())) {
                backlog_.pop_front();
                ++moved;
            }
            if (moved == 0) return static_cast<int>(backlog_.size());
        }
    }

    size_t reap(std::span<IoCompletion> out) override {
        io_uring_cqe* cqes[64];
        size_t n = 0;
        while (n < out.size() && !done_.empty()) {
            out[n++] = done_.front();
            done_.pop_front();
        }
        in_flight_ -= n;
        const size_t inline_done = n;
        while (n < out.size()) {
            unsigned want = static_cast<unsigned>(std::min<size_t>(64, out.size() - n));
            // Only an empty peek looks at the kernel's overflow list, so keep
            // peeking until one comes back empty.
            unsigned got = io_uring_peek_batch_cqe(&ring_, cqes, want);
            if (got == 0) break;
            for (unsigned i = 0; i < got; ++i) out[n++] = {cqes[i]->user_data, cqes[i]->res};
            io_uring_cq_advance(&ring_, got);
        }
        in_flight_ -= n - inline_done;
        in_kernel_ -= n - inline_done;
        return n;
    }

    void wait() override {
        if (io_uring_sq_ready(&ring_) > 0 || !backlog_.empty() || !inline_.empty()) submit();
        if (!done_.empty() || in_kernel_ == 0) return;
        io_uring_cqe* cqe = nullptr;
        io_uring_wait_cqe(&ring_, &cqe);
    }

    int event_fd() const override { return efd_.get(); }
    const char* name() const override { return "io_uring"; }
    size_t in_flight() const override { return in_flight_; }

private:
    void enqueue(const IoRequest& req) {
        if (!backlog_.empty() || !fill(req)) backlog_.push_back(req);
    }

    bool fill(const IoRequest& req) {
        // Never more in the kernel than the completion ring holds: overflowed
        // completions raise no new eventfd edge, and an edge-triggered host
        // would wait for them forever (this hung iscsi-test-cu once).
        if (in_kernel_ >= ring_.cq.ring_entries) return false;
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (!sqe) return false;
        ++in_kernel_;
        switch (req.op) {
            case IoOp::read:
                io_uring_prep_read(sqe, req.fd, req.buf, static_cast<unsigned>(req.len), req.offset);
                break;
            case IoOp::write:
                io_uring_prep_write(sqe, req.fd, req.buf, static_cast<unsigned>(req.len), req.offset);
                if (req.dsync) sqe->rw_flags = RWF_DSYNC;
                break;
            case IoOp::fdatasync:
                io_uring_prep_fsync(sqe, req.fd, IORING_FSYNC_DATASYNC);
                break;
            case IoOp::punch_hole:
                io_uring_prep_fallocate(sqe, req.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                        static_cast<off_t>(req.offset), static_cast<off_t>(req.len));
                break;
            case IoOp::prefetch:
                io_uring_prep_fadvise(sqe, req.fd, req.offset, static_cast<off_t>(req.len), POSIX_FADV_WILLNEED);
                break;
        }
        io_uring_sqe_set_data64(sqe, req.tag);
        return true;
    }

    io_uring ring_{};
    bool ring_ok_ = false;
    UniqueFd efd_;
    std::deque<IoRequest> backlog_;
    std::vector<IoRequest> inline_;    // cached-read candidates, tried in submit()
    std::deque<IoCompletion> done_;    // served inline, handed out by reap() first
    InlineReader reader_;
    size_t in_flight_ = 0;  // prepared and not yet reaped, backlog included
    size_t in_kernel_ = 0;  // in the rings: bounded by the completion ring
};

}  // namespace

Result<std::unique_ptr<IoEngine>> make_uring_engine(unsigned queue_depth) {
    auto e = std::make_unique<UringEngine>();
    if (Status s = e->init(queue_depth); !s) return s;
    return std::unique_ptr<IoEngine>(std::move(e));
}

}  // namespace icbd
