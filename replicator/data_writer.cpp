// DataWriter: batches of DATA writes through io_uring, pwrite as the fallback
// (and to finish a short write).
#include "data_writer.hpp"

#include <unistd.h>

#include <cerrno>

namespace icbd::repl {

DataWriter::DataWriter(bool use_uring) {
    if (use_uring && ::io_uring_queue_init(kDepth, &ring_, 0) == 0) ring_ok_ = true;
}

DataWriter::~DataWriter() {
    if (ring_ok_) ::io_uring_queue_exit(&ring_);
}

Status DataWriter::write(std::shared_ptr<UniqueFd> fd, uint64_t offset, Bytes bytes, std::string what) {
    pending_bytes_ += bytes.size();
    pending_.push_back(Pending{std::move(fd), offset, std::move(bytes), std::move(what)});
    if (pending_.size() >= kDepth || pending_bytes_ >= kMaxBatchBytes) return flush();
    return Status::ok();
}

Status DataWriter::flush() {
    Status first;
    if (ring_ok_ && !pending_.empty()) {
        for (size_t i = 0; i < pending_.size(); ++i) {
            io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);
            auto& p = pending_[i];
            ::io_uring_prep_write(sqe, p.fd->get(), p.buf.data(), static_cast<unsigned>(p.buf.size()), p.offset);
            ::io_uring_sqe_set_data64(sqe, i);
        }
        int submitted = ::io_uring_submit(&ring_);
        if (submitted < 0) {
            // The ring is unusable: write this batch (and later ones) with pwrite.
            ::io_uring_queue_exit(&ring_);
            ring_ok_ = false;
            return flush();
        }
        for (int n = 0; n < submitted; ++n) {
            io_uring_cqe* cqe = nullptr;
            int r = ::io_uring_wait_cqe(&ring_, &cqe);
            if (r == -EINTR) {
                --n;
                continue;
            }
            if (r < 0) {
                if (first) first = Status::from_errno(-r, "io_uring wait");
                break;
            }
            auto& p = pending_[::io_uring_cqe_get_data64(cqe)];
            int res = cqe->res;
            ::io_uring_cqe_seen(&ring_, cqe);
            if (res < 0) {
                if (first) first = Status::from_errno(-res, p.what + ": write at offset " + std::to_string(p.offset));
            } else if (static_cast<size_t>(res) < p.buf.size()) {
                Status s = pwrite_all(p, static_cast<size_t>(res));  // a short write: finish it plainly
                if (first && !s) first = s;
            }
        }
    } else {
        for (auto& p : pending_) {
            Status s = pwrite_all(p, 0);
            if (first && !s) first = s;
        }
    }
    pending_.clear();
    pending_bytes_ = 0;
    return first;
}

Status DataWriter::pwrite_all(const Pending& p, size_t done) {
    while (done < p.buf.size()) {
        ssize_t n = ::pwrite(p.fd->get(), p.buf.data() + done, p.buf.size() - done, static_cast<off_t>(p.offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Status::from_errno(errno, p.what + ": write at offset " + std::to_string(p.offset + done));
        if (n == 0) return Status::error(EIO, p.what + ": write returned 0");
        done += static_cast<size_t>(n);
    }
    return Status::ok();
}

}  // namespace icbd::repl
