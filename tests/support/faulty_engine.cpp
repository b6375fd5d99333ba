// FaultyEngine: faults injected between a LUN and its real I/O engine.
#include "faulty_engine.hpp"

#include <unistd.h>

#include <climits>

namespace icbd::test {

const FaultRule* FaultPlan::match(const IoRequest& req, const std::string& path) {
    for (Armed& a : rules_) {
        const FaultRule& r = a.rule;
        if (r.op != req.op) continue;
        if (!r.file.empty() && (path.size() < r.file.size() || path.compare(path.size() - r.file.size(),
                                                                            r.file.size(), r.file) != 0))
            continue;
        if (req.offset < r.from || req.offset >= r.to) continue;
        ++a.seen;
        if (a.seen < r.nth || a.hit >= r.times) continue;
        ++a.hit;
        ++hits_;
        return &r;
    }
    return nullptr;
}

FaultyEngine::FaultyEngine(std::unique_ptr<IoEngine> inner, std::shared_ptr<FaultPlan> plan)
    : inner_(std::move(inner)), plan_(std::move(plan)) {}

EngineFactory FaultyEngine::factory(std::shared_ptr<FaultPlan> plan) {
    return [plan](const EngineOptions& opts, std::string* why) -> Result<std::unique_ptr<IoEngine>> {
        auto inner = make_io_engine(opts, why);
        if (!inner) return inner.status();
        return std::unique_ptr<IoEngine>(std::make_unique<FaultyEngine>(std::move(*inner), plan));
    };
}

std::string FaultyEngine::path_of(int fd) const {
    char link[PATH_MAX];
    const std::string proc = "/proc/self/fd/" + std::to_string(fd);
    ssize_t n = ::readlink(proc.c_str(), link, sizeof link - 1);
    return n > 0 ? std::string(link, static_cast<size_t>(n)) : std::string();
}

void FaultyEngine::prepare(const IoRequest& req) {
    IoRequest r = req;
    if (plan_->drop_durability) {
        if (r.op == IoOp::fdatasync) {
            injected_.push_back({r.tag, 0});
            return;
        }
        r.dsync = false;
    }
    if (const FaultRule* rule = plan_->match(r, path_of(r.fd))) {
        if (rule->kind == FaultKind::error) {
            // Delivered by reap(), like every completion (the owner reaps after
            // each submit()), never from here.
            injected_.push_back({r.tag, -rule->err});
            return;
        }
        if (r.op == IoOp::read || r.op == IoOp::write) r.len = r.len > 512 ? (r.len / 2) & ~uint64_t(511) : 0;
        if (r.len == 0) {  // nothing transferred at all
            injected_.push_back({r.tag, 0});
            return;
        }
    }
    inner_->prepare(r);
}

int FaultyEngine::submit() { return inner_->submit(); }

size_t FaultyEngine::reap(std::span<IoCompletion> out) {
    size_t n = 0;
    while (n < out.size() && !injected_.empty()) {
        out[n++] = injected_.front();
        injected_.pop_front();
    }
    return n + inner_->reap(out.subspan(n));
}

void FaultyEngine::wait() {
    if (injected_.empty()) inner_->wait();
}

}  // namespace icbd::test
