// FrameWindow, the encoded frames one diff's replicas share: every writer gets
// every frame in order; a full window holds the reader back until the slowest
// writer moves on; a writer that keeps it full for max_stall is dropped and the
// others go on. Timed on a clock the test moves (ManualTime).
#include "frame_window.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>
#include <vector>

#include "manual_time.hpp"

namespace icbd::repl {
namespace {

using namespace std::chrono_literals;
using testing::ManualTime;

ChangePtr frame_of(uint64_t seq, size_t bytes) {
    auto c = std::make_shared<EncodedChange>();
    c->seq = seq;
    c->frame.assign(bytes, static_cast<uint8_t>(seq));
    return c;
}

// Waits (really) for `cond`, at most 10 s: a thread reaching a state the test
// must see before it goes on.
template <typename F>
bool eventually(F cond) {
    for (int i = 0; i < 10000 && !cond(); ++i) std::this_thread::sleep_for(1ms);
    return cond();
}

struct Drops {
    std::mutex mu;
    std::vector<size_t> who;
    std::function<void(size_t)> fn() {
        return [this](size_t i) {
            std::lock_guard lk(mu);
            who.push_back(i);
        };
    }
    std::vector<size_t> get() {
        std::lock_guard lk(mu);
        return who;
    }
};

// A put() on a thread of its own, for the tests where it has to wait. A test
// that stops early releases it: every one of the window's `consumers` leaves.
class BackgroundPut {
public:
    BackgroundPut(FrameWindow& w, size_t consumers, ChangePtr item, Drops& drops,
                  FrameWindow::Clock::duration* waited = nullptr)
        : w_(w), consumers_(consumers), result_(std::async(std::launch::async, [this, item, &drops, waited] {
              bool ok = w_.put(item, 30s, drops.fn(), waited);
              done_ = true;
              return ok;
          })) {}
    ~BackgroundPut() {
        if (!result_.valid()) return;
        for (size_t c = 0; c < consumers_; ++c) w_.leave(c);
    }
    bool done() const { return done_; }
    bool get() { return result_.get(); }

private:
    FrameWindow& w_;
    size_t consumers_;
    std::atomic<bool> done_{false};  // before result_: the thread may set it at once
    std::future<bool> result_;
};

TEST(FrameWindow, EveryConsumerGetsEveryFrameInOrder) {
    ManualTime time;
    FrameWindow w(1u << 20, 2, 0, time);
    Drops drops;
    for (uint64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(w.put(frame_of(seq, 100), 30s, drops.fn()));
    w.finish(Status::ok());
    for (size_t c = 0; c < 2; ++c) {
        for (uint64_t i = 0; i < 3; ++i) {
            ChangePtr item = w.get(c, i);
            ASSERT_NE(item, nullptr) << "consumer " << c << " index " << i;
            EXPECT_EQ(item->seq, i + 1);
        }
        EXPECT_EQ(w.get(c, 3), nullptr) << "the end of the stream";
    }
    EXPECT_TRUE(w.reader_status().is_ok());
    EXPECT_TRUE(drops.get().empty());
}

TEST(FrameWindow, TheReadersFailureReachesTheWriters) {
    FrameWindow w(1u << 20, 1);
    w.finish(Status::error(EIO, "'disk.img': read at offset 0: Input/output error"));
    EXPECT_EQ(w.get(0, 0), nullptr);
    EXPECT_EQ(w.reader_status().code(), EIO);
}

// Two writers, and a window of 200 bytes that frames 1 and 2 fill.
class FullWindow : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_TRUE(w.put(frame_of(1, 100), 30s, drops.fn()));
        ASSERT_TRUE(w.put(frame_of(2, 100), 30s, drops.fn()));
    }
    // Moves the clock and returns once the waiting reader has seen the new time.
    bool advance_seen(FrameWindow::Clock::duration d) {
        time.advance(d);
        const uint64_t seen = time.wakeups();
        return eventually([&] { return time.wakeups() >= seen + 2; });
    }
    bool reader_waits() {
        return eventually([&] { return time.waiting() > 0; });
    }

    ManualTime time;
    FrameWindow w{200, 2, 0, time};
    Drops drops;
};

TEST_F(FullWindow, HoldsTheReaderUntilTheSlowestWriterMovesOn) {
    FrameWindow::Clock::duration waited{};
    BackgroundPut third(w, 2, frame_of(3, 100), drops, &waited);
    ASSERT_TRUE(reader_waits()) << "the reader did not wait for room";
    ASSERT_NE(w.get(0, 1), nullptr);  // the fast writer is past frame 1...
    ASSERT_TRUE(advance_seen(5s));
    EXPECT_FALSE(third.done()) << "frame 1 is still needed by the slow writer";
    ASSERT_NE(w.get(1, 1), nullptr);  // ...and now the slow one: frame 1 goes, room for frame 3
    EXPECT_TRUE(third.get());
    EXPECT_EQ(waited, 5s) << "the time the reader waited, on the window's clock";
    EXPECT_TRUE(drops.get().empty());
    EXPECT_FALSE(w.dropped(0));
    EXPECT_FALSE(w.dropped(1));
    EXPECT_EQ(w.get(1, 2)->seq, 3u);
}

TEST_F(FullWindow, AWriterThatKeepsItFullForMaxStallIsDropped) {
    ASSERT_NE(w.get(0, 0), nullptr);
    ASSERT_NE(w.get(0, 1), nullptr);  // writer 0 keeps up; writer 1 never reads
    BackgroundPut third(w, 2, frame_of(3, 100), drops);
    ASSERT_TRUE(reader_waits());
    ASSERT_TRUE(advance_seen(30s - 1ms));
    EXPECT_FALSE(third.done()) << "dropped before max_stall";
    EXPECT_TRUE(drops.get().empty());

    time.advance(1ms);
    EXPECT_TRUE(third.get()) << "the reader goes on for the writer that is left";
    EXPECT_EQ(drops.get(), std::vector<size_t>{1});
    EXPECT_TRUE(w.dropped(1));
    EXPECT_FALSE(w.dropped(0));
    EXPECT_EQ(w.get(1, 0), nullptr) << "a dropped writer gets nothing more";
    ChangePtr next = w.get(0, 2);
    ASSERT_NE(next, nullptr);
    EXPECT_EQ(next->seq, 3u);
}

TEST(FrameWindow, TheReaderStopsWhenNoWriterIsLeft) {
    ManualTime time;
    FrameWindow w(1u << 20, 2, 0, time);
    Drops drops;
    ASSERT_TRUE(w.put(frame_of(1, 100), 30s, drops.fn()));
    w.leave(0);
    ASSERT_TRUE(w.put(frame_of(2, 100), 30s, drops.fn()));
    w.leave(1);
    EXPECT_FALSE(w.put(frame_of(3, 100), 30s, drops.fn()));
}

TEST(FrameWindow, TheLeadLimitKeepsTheReaderCloseToTheFastestWriter) {
    ManualTime time;
    FrameWindow w(1u << 20, 1, 200, time);  // room for a MiB, but only 200 bytes ahead
    Drops drops;
    ASSERT_TRUE(w.put(frame_of(1, 100), 30s, drops.fn()));
    ASSERT_TRUE(w.put(frame_of(2, 100), 30s, drops.fn()));
    BackgroundPut third(w, 1, frame_of(3, 100), drops);
    ASSERT_TRUE(eventually([&] { return time.waiting() > 0; })) << "the reader ran 300 bytes ahead";
    EXPECT_FALSE(third.done());
    ASSERT_NE(w.get(0, 0), nullptr);
    ASSERT_NE(w.get(0, 1), nullptr);  // taking frame 1 brings the lead back to 100 bytes
    EXPECT_TRUE(third.get());
    EXPECT_TRUE(drops.get().empty());
}

}  // namespace
}  // namespace icbd::repl

namespace icbd::repl {
namespace {

// A relay's child cut mid-stream resumes from its last acknowledged checkpoint:
// hold() keeps the frames from there even after the writer read past them, and
// an index already trimmed is the end for that consumer, never a bad read.
TEST(FrameWindowHold, HeldFramesStayUntilAConsumerHoldsALaterOne) {
    FrameWindow w(1 << 20, 1);
    Drops drops;
    w.hold(0, 1);
    for (uint64_t s = 1; s <= 4; ++s) ASSERT_TRUE(w.put(frame_of(s, 100), 1s, drops.fn()));
    for (uint64_t i = 0; i < 4; ++i) ASSERT_NE(w.get(0, i), nullptr);
    // Read up to index 3; held from 1: index 1 can be read again (the resume).
    auto again = w.get(0, 1);
    ASSERT_NE(again, nullptr);
    EXPECT_EQ(again->seq, 2u);
    // Without the hold, index 0 was trimmed: nullptr, not another frame.
    EXPECT_EQ(w.get(0, 0), nullptr);
    w.hold(0, 3);
    w.get(0, 3);
    EXPECT_EQ(w.get(0, 2), nullptr);
    w.leave(0);
}

}  // namespace
}  // namespace icbd::repl
