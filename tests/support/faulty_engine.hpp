// FaultyEngine: an IoEngine that wraps the real one of a LUN and, by a plan the
// test writes, fails chosen operations (EIO, ENOSPC, a short transfer) or lies
// about durability, so that every error path above the engine can be driven
// through the public Lun API (the seam: LunSeams in include/icbd/lun.hpp;
// docs/testing.md). Test-only: never linked into the shipped module.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "icbd/io_engine.hpp"
#include "icbd/lun.hpp"

namespace icbd::test {

// What happens to the operation a rule picks.
enum class FaultKind {
    error,           // completes with -err, never reaches the kernel
    short_transfer,  // the kernel does only the first half (rounded down to 512 bytes; nothing for <= 512)
};

struct FaultRule {
    IoOp op = IoOp::write;
    // Only operations on a file whose path ends with this ("" = any file):
    // e.g. "lun.cache", "client.ovl", "disk.raw".
    std::string file;
    // Only operations starting in [from, to) of that file (e.g. a cache's
    // superblocks: [0, 8192)); fdatasync has offset 0.
    uint64_t from = 0, to = UINT64_MAX;
    uint64_t nth = 1;    // the nth matching operation after the rule was added is the first hit
    uint64_t times = 1;  // how many matching operations in a row are hit (UINT64_MAX: all from then on)
    FaultKind kind = FaultKind::error;
    int err = 5;         // EIO; the errno an error completes with
};

// The faults of one engine, shared between the test and the engine (the LUN
// owns the engine; the test keeps the plan). Single-threaded, like the LUN.
class FaultPlan {
public:
    void add(const FaultRule& rule) { rules_.push_back({rule, 0, 0}); }
    void clear() { rules_.clear(); }
    // Operations the rules have hit so far: a test asserts its fault happened.
    uint64_t hits() const { return hits_; }
    // Every fdatasync completes at once without reaching the kernel, and
    // writes lose RWF_DSYNC: a device that lies about flushes (the crash
    // test's control, docs/testing.md).
    bool drop_durability = false;

    // The rule that hits `req` on the file at `path`, counting it; nullptr: none.
    const FaultRule* match(const IoRequest& req, const std::string& path);

private:
    struct Armed {
        FaultRule rule;
        uint64_t seen;  // matching operations so far
        uint64_t hit;   // of which hit
    };
    std::vector<Armed> rules_;
    uint64_t hits_ = 0;
};

class FaultyEngine final : public IoEngine {
public:
    FaultyEngine(std::unique_ptr<IoEngine> inner, std::shared_ptr<FaultPlan> plan);

    // The seam for Lun::create: the engine the options ask for, wrapped.
    static EngineFactory factory(std::shared_ptr<FaultPlan> plan);

    void prepare(const IoRequest& req) override;
    int submit() override;
    size_t reap(std::span<IoCompletion> out) override;
    void wait() override;
    int event_fd() const override { return inner_->event_fd(); }
    const char* name() const override { return inner_->name(); }
    size_t in_flight() const override { return inner_->in_flight() + injected_.size(); }

private:
    std::string path_of(int fd) const;

    std::unique_ptr<IoEngine> inner_;
    std::shared_ptr<FaultPlan> plan_;
    std::deque<IoCompletion> injected_;  // completions made here, handed out by reap()
};

}  // namespace icbd::test
