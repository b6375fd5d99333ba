// IoEngine over Linux AIO (libaio), for hosts where io_uring is switched off.
// AIO has no fallocate or fadvise: those two run synchronously inside submit()
// (both are short metadata operations) and complete through the same queue.
#include <fcntl.h>
#include <libaio.h>
#include <linux/fs.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <deque>
#include <vector>

#include "icbd/io_engine.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd {
namespace {

class AioEngine final : public IoEngine {
public:
    ~AioEngine() override {
        if (ctx_) io_destroy(ctx_);
    }

    Status init(unsigned depth) {
        depth_ = depth;
        int r = io_setup(static_cast<int>(depth), &ctx_);
        if (r < 0) {
            ctx_ = nullptr;
            return Status::from_errno(-r, "io_setup (queue depth " + std::to_string(depth) + ")");
        }
        efd_.reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
        if (!efd_.valid()) return Status::from_errno(errno, "eventfd");
        slots_.resize(depth);
        tags_.resize(depth);
        for (unsigned i = 0; i < depth; ++i) free_.push_back(depth - 1 - i);
        return {};
    }

    void prepare(const IoRequest& req) override {
        queued_.push_back(req);
        ++in_flight_;  // after the push, which may throw: see UringEngine::prepare
    }

    int submit() override {
        std::vector<iocb*> batch;
        bool synthetic = false;
        while (!queued_.empty()) {
            const IoRequest& req = queued_.front();
            int32_t res;
            if (reader_.try_read(req, &res)) {
                done_.push_back({req.tag, res});  // the owner reaps after submit()
            } else if (req.op == IoOp::punch_hole || req.op == IoOp::prefetch) {
                done_.push_back({req.tag, run_sync(req)});
                synthetic = true;
            } else {
                if (free_.empty()) break;
                unsigned slot = free_.back();
                free_.pop_back();
                fill(&slots_[slot], req);
                tags_[slot] = req.tag;
                batch.push_back(&slots_[slot]);
            }
            queued_.pop_front();
        }
        int rc = 0;
        size_t done = 0;
        while (done < batch.size()) {
            int r = io_submit(ctx_, static_cast<long>(batch.size() - done), batch.data() + done);
            if (r < 0 && r != -EAGAIN && r != -EINTR) {
                // The kernel refused the first iocb itself (bad fd, bad flags):
                // that operation completes with the error; go on with the rest.
                unsigned slot = static_cast<unsigned>(batch[done] - slots_.data());
                done_.push_back({tags_[slot], r});
                free_.push_back(slot);
                synthetic = true;
                ++done;
                continue;
            }
            if (r <= 0) {
                // Put the rest back in order; the caller retries on the next pass.
                for (size_t i = batch.size(); i > done; --i) {
                    iocb* cb = batch[i - 1];
                    unsigned slot = static_cast<unsigned>(cb - slots_.data());
                    queued_.push_front(unfill(cb, tags_[slot]));
                    free_.push_back(slot);
                }
                rc = r < 0 ? r : -EAGAIN;
                break;
            }
            done += static_cast<size_t>(r);
        }
        if (synthetic) {
            uint64_t one = 1;
            (void)!::write(efd_.get(), &one, sizeof one);
        }
        return rc < 0 ? rc : static_cast<int>(queued_.size());
    }

    size_t reap(std::span<IoCompletion> out) override {
        size_t n = 0;
        while (n < out.size() && !done_.empty()) {
            out[n++] = done_.front();
            done_.pop_front();
        }
        // Only ask the kernel when iocbs are out: cached reads served inline
        // leave none, and this runs after every submit.
        if (n < out.size() && free_.size() < depth_) {
            io_event ev[64];
            timespec zero{0, 0};
            long want = static_cast<long>(std::min<size_t>(64, out.size() - n));
            int got = io_getevents(ctx_, 0, want, ev, &zero);
            for (int i = 0; i < got; ++i) {
                unsigned slot = static_cast<unsigned>(ev[i].obj - slots_.data());
                out[n++] = {tags_[slot], static_cast<int32_t>(static_cast<long>(ev[i].res))};
                free_.push_back(slot);
            }
        }
        in_flight_ -= n;
        return n;
    }

    void wait() override {
        if (!queued_.empty()) submit();
        if (!done_.empty()) return;
        io_event ev[64];
        int got = io_getevents(ctx_, 1, 64, ev, nullptr);
        for (int i = 0; i < got; ++i) {
            unsigned slot = static_cast<unsigned>(ev[i].obj - slots_.data());
            done_.push_back({tags_[slot], static_cast<int32_t>(static_cast<long>(ev[i].res))});
            free_.push_back(slot);
        }
    }

    int event_fd() const override { return efd_.get(); }
    const char* name() const override { return "aio"; }
    size_t in_flight() const override { return in_flight_; }

private:
    void fill(iocb* cb, const IoRequest& req) {
        switch (req.op) {
            case IoOp::read: io_prep_pread(cb, req.fd, req.buf, req.len, static_cast<long long>(req.offset)); break;
            case IoOp::write:
                io_prep_pwrite(cb, req.fd, req.buf, req.len, static_cast<long long>(req.offset));
                if (req.dsync) cb->aio_rw_flags = RWF_DSYNC;
                break;
            case IoOp::fdatasync: io_prep_fdsync(cb, req.fd); break;
            default: break;  // never reaches the kernel: run_sync()
        }
        io_set_eventfd(cb, efd_.get());
    }

    static IoRequest unfill(const iocb* cb, uint64_t tag) {
        IoRequest r;
        r.fd = cb->aio_fildes;
        r.tag = tag;
        if (cb->aio_lio_opcode == IO_CMD_FDSYNC) {
            r.op = IoOp::fdatasync;
        } else {
            r.op = cb->aio_lio_opcode == IO_CMD_PREAD ? IoOp::read : IoOp::write;
            r.dsync = cb->aio_rw_flags & RWF_DSYNC;
            r.buf = cb->u.c.buf;
            r.len = cb->u.c.nbytes;
            r.offset = static_cast<uint64_t>(cb->u.c.offset);
        }
        return r;
    }

    static int32_t run_sync(const IoRequest& req) {
        if (req.op == IoOp::punch_hole) {
            int r = fallocate(req.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(req.offset),
                              static_cast<off_t>(req.len));
            return r < 0 ? -errno : 0;
        }
        return -posix_fadvise(req.fd, static_cast<off_t>(req.offset), static_cast<off_t>(req.len),
                              POSIX_FADV_WILLNEED);
    }

    io_context_t ctx_ = nullptr;
    unsigned depth_ = 0;
    InlineReader reader_;
    UniqueFd efd_;
    std::vector<iocb> slots_;
    std::vector<uint64_t> tags_;
    std::vector<unsigned> free_;
    std::deque<IoRequest> queued_;
    std::deque<IoCompletion> done_;
    size_t in_flight_ = 0;
};

}  // namespace

Result<std::unique_ptr<IoEngine>> make_aio_engine(unsigned queue_depth) {
    auto e = std::make_unique<AioEngine>();
    if (Status s = e->init(queue_depth); !s) return s;
    return std::unique_ptr<IoEngine>(std::move(e));
}

}  // namespace icbd
