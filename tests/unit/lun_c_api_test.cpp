// The C API tgtd's module calls (include/icbd/lun_c_api.h) never lets an
// exception out: exceptions forced through the engine seam (a throwing
// IoEngine, an engine factory that throws) become the call's error return
// and one log line naming the LUN and the cause, the refused command's
// callback never runs, the commands taken before still complete exactly
// once, and the test process survives (a leaked exception would be
// std::terminate here as in tgtd).
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "icbd/endian.hpp"
#include "icbd/io_engine.hpp"
#include "icbd/lun_c_api.h"
#include "lun_c_api_seams.hpp"
#include "scsi.hpp"

namespace icbd::test {
namespace {

// The seam is the contract: a C caller can rely on no exception escaping.
static_assert(noexcept(icbd_lun_submit(nullptr, nullptr)));
static_assert(noexcept(icbd_lun_create(nullptr, nullptr, nullptr, nullptr, nullptr, 0)));
static_assert(noexcept(icbd_lun_open(nullptr, nullptr, 0, nullptr, nullptr, nullptr, nullptr, 0)));
static_assert(noexcept(icbd_lun_submit_batch(nullptr)));
static_assert(noexcept(icbd_lun_process_completions(nullptr)));
static_assert(noexcept(icbd_lun_timer(nullptr)));
static_assert(noexcept(icbd_lun_close(nullptr)));
static_assert(noexcept(icbd_lun_destroy(nullptr)));

// When the engine below the LUN throws, as the allocations and threads
// inside a LUN can.
struct ThrowPlan {
    uint64_t prepare_nth = 0;  // the nth prepare() from now throws (0: none)
    std::exception_ptr prepare_error;
    std::exception_ptr reap_error;  // the next reap() throws it, once
    uint64_t thrown = 0;
};

class ThrowingEngine final : public IoEngine {
public:
    ThrowingEngine(std::unique_ptr<IoEngine> inner, std::shared_ptr<ThrowPlan> plan)
        : inner_(std::move(inner)), plan_(std::move(plan)) {}
    void prepare(const IoRequest& req) override {
        if (plan_->prepare_nth && --plan_->prepare_nth == 0) {
            ++plan_->thrown;
            std::rethrow_exception(plan_->prepare_error);
        }
        inner_->prepare(req);
    }
    int submit() override { return inner_->submit(); }
    size_t reap(std::span<IoCompletion> out) override {
        if (plan_->reap_error) {
            auto e = std::exchange(plan_->reap_error, nullptr);
            ++plan_->thrown;
            std::rethrow_exception(e);
        }
        return inner_->reap(out);
    }
    void wait() override { inner_->wait(); }
    int event_fd() const override { return inner_->event_fd(); }
    const char* name() const override { return inner_->name(); }
    size_t in_flight() const override { return inner_->in_flight(); }

private:
    std::unique_ptr<IoEngine> inner_;
    std::shared_ptr<ThrowPlan> plan_;
};

std::vector<std::string> g_log;
void capture(int level, const char* msg) {
    if (level == ICBD_LOG_ERROR) g_log.emplace_back(msg);
}

// The error lines that name the LUN, the call and `cause`.
int lines_saying(const std::string& call, const std::string& cause) {
    int n = 0;
    for (const std::string& l : g_log)
        n += l.find("tgt 7 lun 1") != std::string::npos && l.find(call) != std::string::npos &&
             l.find(cause) != std::string::npos;
    return n;
}

// One SCSI command as bs_icbd hands it over, buffers kept alive.
struct Command {
    std::vector<uint8_t> cdb = std::vector<uint8_t>(16);
    std::vector<uint8_t> in, out;
    icbd_cmd c{};
};

class LunCApiTest : public ::testing::Test {
protected:
    static constexpr uint64_t kSize = 1 << 20;

    void SetUp() override {
        char name[] = "/var/tmp/icbd-capi-XXXXXX";
        ASSERT_NE(mkdtemp(name), nullptr);
        dir_ = name;
        std::ofstream(dir_ / "disk.raw", std::ios::binary).write(std::string(kSize, 'x').data(), kSize);
        g_log.clear();
        icbd_set_log_sink(capture);
    }
    void TearDown() override {
        if (lun_) icbd_lun_destroy(lun_);
        set_c_api_lun_seams({});
        icbd_set_log_sink(nullptr);
        std::filesystem::remove_all(dir_);
    }

    static void complete(void* ctx, void* cookie, const icbd_result* r) {
        auto* self = static_cast<LunCApiTest*>(ctx);
        if (self->inside_submit_) ++self->completed_inside_submit_;
        if (!self->done_.emplace(cookie, *r).second) ++self->duplicates_;
    }
    static void kick(void*) {}

    // A LUN over the real engine wrapped in a ThrowingEngine, through the C API.
    void open_lun() {
        LunSeams seams;
        seams.make_engine = [plan = plan_](const EngineOptions& opts,
                                           std::string* why) -> Result<std::unique_ptr<IoEngine>> {
            auto inner = make_io_engine(opts, why);
            if (!inner) return inner.status();
            return std::unique_ptr<IoEngine>(std::make_unique<ThrowingEngine>(std::move(*inner), plan));
        };
        set_c_api_lun_seams(seams);
        icbd_lun_host host{complete, kick, this};
        char err[256] = "";
        ASSERT_EQ(icbd_lun_create("tgt 7 lun 1", "metrics_dir=off", &host, &lun_, err, sizeof err), 0) << err;
        int fd = -1, ro = 0;
        uint64_t size = 0;
        ASSERT_EQ(icbd_lun_open(lun_, (dir_ / "disk.raw").c_str(), 0, &fd, &size, &ro, err, sizeof err), 0) << err;
        ASSERT_EQ(size, kSize);
    }

    Command read_cmd(uint64_t lba, uint32_t blocks) {
        Command k;
        k.cdb[0] = scsi::op::read_16;
        store_be64(&k.cdb[2], lba);
        store_be32(&k.cdb[10], blocks);
        k.in.resize(uint64_t(blocks) * 512);
        k.c.offset = lba * 512;
        k.c.tl = blocks * 512;
        return k;
    }
    // UNMAP of 4 KiB at each of `lbas`: on a raw LUN every descriptor's hole
    // is punched at once, one engine operation each.
    Command unmap_cmd(const std::vector<uint64_t>& lbas) {
        Command k;
        k.cdb.assign(10, 0);
        k.cdb[0] = scsi::op::unmap;
        k.out.assign(8 + 16 * lbas.size(), 0);
        store_be16(&k.out[0], static_cast<uint16_t>(k.out.size() - 2));
        store_be16(&k.out[2], static_cast<uint16_t>(16 * lbas.size()));
        for (size_t i = 0; i < lbas.size(); ++i) {
            store_be64(&k.out[8 + 16 * i], lbas[i]);
            store_be32(&k.out[8 + 16 * i + 8], 8);
        }
        k.c.tl = static_cast<uint32_t>(k.out.size());
        return k;
    }
    int submit(Command& k) {
        k.c.cookie = &k;
        k.c.cdb = k.cdb.data();
        k.c.in_buf = k.in.data();
        k.c.in_len = static_cast<uint32_t>(k.in.size());
        k.c.out_buf = k.out.data();
        k.c.out_len = static_cast<uint32_t>(k.out.size());
        k.c.lun_size = kSize;
        k.c.blk_shift = 9;
        k.c.write_cache_enabled = 1;
        k.c.thin_provisioning = 1;
        inside_submit_ = true;
        int r = icbd_lun_submit(lun_, &k.c);
        inside_submit_ = false;
        return r;
    }
    // Runs tgtd's loop for the LUN until `k` completed (or ~10 s), then a
    // little more.
    void run_until_done(const Command& k) {
        for (int i = 0; i < 100000 && !completed(k); ++i) pass();
        run_passes(50);
    }
    // For a command that must never complete: a few hundred passes of the
    // loop give any I/O of a 1 MiB file on a local disk its chance.
    void run_passes(int n = 300) {
        for (int i = 0; i < n; ++i) pass();
    }
    void pass() {
        icbd_lun_submit_batch(lun_);
        icbd_lun_process_completions(lun_);
        usleep(100);
    }
    bool completed(const Command& k) const { return done_.count(const_cast<Command*>(&k)) > 0; }
    std::string file_bytes(uint64_t offset, size_t len) {
        std::ifstream f(dir_ / "disk.raw", std::ios::binary);
        f.seekg(static_cast<std::streamoff>(offset));
        std::string s(len, '?');
        f.read(s.data(), static_cast<std::streamsize>(len));
        return s;
    }

    std::filesystem::path dir_;
    std::shared_ptr<ThrowPlan> plan_ = std::make_shared<ThrowPlan>();
    icbd_lun* lun_ = nullptr;
    std::map<void*, icbd_result> done_;
    int duplicates_ = 0;
    bool inside_submit_ = false;
    int completed_inside_submit_ = 0;
};

TEST_F(LunCApiTest, CreateReturnsEnomemWhenMakingTheLunThrowsBadAlloc) {
    LunSeams seams;
    seams.make_engine = [](const EngineOptions&, std::string*) -> Result<std::unique_ptr<IoEngine>> {
        throw std::bad_alloc();
    };
    set_c_api_lun_seams(seams);
    icbd_lun_host host{complete, kick, this};
    char err[256] = "";
    icbd_lun* out = nullptr;
    EXPECT_EQ(icbd_lun_create("tgt 7 lun 1", "metrics_dir=off", &host, &out, err, sizeof err), -ENOMEM);
    EXPECT_EQ(out, nullptr);
    EXPECT_NE(std::string(err).find("internal error"), std::string::npos) << err;
    EXPECT_EQ(lines_saying("icbd_lun_create", "std::bad_alloc"), 1) << ::testing::PrintToString(g_log);
}

TEST_F(LunCApiTest, CreateReturnsTheErrnoOfASystemError) {
    LunSeams seams;
    seams.make_engine = [](const EngineOptions&, std::string*) -> Result<std::unique_ptr<IoEngine>> {
        throw std::system_error(EAGAIN, std::generic_category(), "pthread_create");
    };
    set_c_api_lun_seams(seams);
    icbd_lun_host host{complete, kick, this};
    char err[256] = "";
    icbd_lun* out = nullptr;
    EXPECT_EQ(icbd_lun_create("tgt 7 lun 1", "metrics_dir=off", &host, &out, err, sizeof err), -EAGAIN);
    EXPECT_EQ(out, nullptr);
    EXPECT_EQ(lines_saying("icbd_lun_create", "pthread_create"), 1) << ::testing::PrintToString(g_log);
}

// The exception comes before any I/O of the command was queued.
TEST_F(LunCApiTest, ASubmitThatThrowsIsRefusedAndNeverCalledBack) {
    ASSERT_NO_FATAL_FAILURE(open_lun());
    Command before = read_cmd(0, 8);
    ASSERT_EQ(submit(before), 0);
    run_until_done(before);
    ASSERT_TRUE(completed(before));

    plan_->prepare_nth = 1;
    plan_->prepare_error = std::make_exception_ptr(std::bad_alloc());
    Command refused = read_cmd(8, 8);
    EXPECT_EQ(submit(refused), -ENOMEM);
    EXPECT_EQ(plan_->thrown, 1u);
    run_passes();
    EXPECT_FALSE(completed(refused)) << "a refused command was called back";
    EXPECT_EQ(lines_saying("icbd_lun_submit", "std::bad_alloc"), 1) << ::testing::PrintToString(g_log);

    // The LUN failed: later commands are refused at once, without a callback.
    Command later = read_cmd(16, 8);
    EXPECT_EQ(submit(later), -EIO);
    run_passes();
    EXPECT_FALSE(completed(later));
    EXPECT_EQ(completed_inside_submit_, 0);
    EXPECT_EQ(duplicates_, 0);
    icbd_lun_close(lun_);
}

// The exception comes after part of the command's I/O was queued (the second
// of two holes): that I/O has ended when submit returns (the caller may free
// the command's buffers then), its completion does not reach the host, and a
// command taken before completes exactly once.
TEST_F(LunCApiTest, ACommandThatThrowsHalfwayIsRefusedAndTheCommandsBeforeItComplete) {
    ASSERT_NO_FATAL_FAILURE(open_lun());
    Command before = read_cmd(0, 8);
    ASSERT_EQ(submit(before), 0);  // queued, not yet handed to the kernel

    plan_->prepare_nth = 2;
    plan_->prepare_error = std::make_exception_ptr(std::bad_alloc());
    Command unmap = unmap_cmd({64, 128});
    EXPECT_EQ(submit(unmap), -ENOMEM);
    EXPECT_EQ(plan_->thrown, 1u);
    EXPECT_EQ(completed_inside_submit_, 0) << "a completion was delivered from inside submit";
    EXPECT_TRUE(file_bytes(64 * 512, 4096) == std::string(4096, '\0'))
        << "the first hole's punch was still queued or in flight when submit returned";

    run_until_done(before);
    EXPECT_TRUE(completed(before));
    EXPECT_EQ(done_[&before].status, scsi::status_good);
    run_passes();
    EXPECT_FALSE(completed(unmap)) << "a refused command was called back";
    EXPECT_EQ(duplicates_, 0);
    EXPECT_EQ(lines_saying("icbd_lun_submit", "std::bad_alloc"), 1) << ::testing::PrintToString(g_log);
    icbd_lun_close(lun_);
}

// An exception while completions are delivered: the pass ends, the LUN
// refuses new commands, and what it had taken still completes, once.
TEST_F(LunCApiTest, AnExceptionWhileDeliveringCompletionsFailsTheLunButItsCommandsComplete) {
    ASSERT_NO_FATAL_FAILURE(open_lun());
    plan_->reap_error = std::make_exception_ptr(std::runtime_error("injected reap failure"));
    Command taken = read_cmd(0, 8);
    ASSERT_EQ(submit(taken), 0);
    run_until_done(taken);
    EXPECT_EQ(plan_->thrown, 1u);
    EXPECT_TRUE(completed(taken));
    EXPECT_EQ(duplicates_, 0);
    EXPECT_EQ(lines_saying("icbd_lun_", "injected reap failure"), 1) << ::testing::PrintToString(g_log);

    Command later = read_cmd(8, 8);
    EXPECT_EQ(submit(later), -EIO);
    run_passes();
    EXPECT_FALSE(completed(later));
}

// Destroying is closing: an exception there is logged, the LUN is still
// freed (ASan's leak check would say otherwise), and the command in flight
// completes once.
TEST_F(LunCApiTest, DestroyFreesTheLunWhenClosingThrows) {
    ASSERT_NO_FATAL_FAILURE(open_lun());
    Command taken = read_cmd(0, 8);
    ASSERT_EQ(submit(taken), 0);
    plan_->reap_error = std::make_exception_ptr(std::runtime_error("injected failure while closing"));
    icbd_lun_destroy(std::exchange(lun_, nullptr));
    EXPECT_EQ(plan_->thrown, 1u);
    EXPECT_TRUE(completed(taken));
    EXPECT_EQ(duplicates_, 0);
    EXPECT_EQ(lines_saying("icbd_lun_destroy", "injected failure while closing"), 1)
        << ::testing::PrintToString(g_log);
}

}  // namespace
}  // namespace icbd::test
