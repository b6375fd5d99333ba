// The rule that lets a short fresh push go without checkpoints
// (replicator/short_push.hpp): decided from the rate so far, never before a
// rate is known, and never for a push that would run past half a second.
#include "short_push.hpp"

#include <gtest/gtest.h>

namespace icbd::repl {
namespace {

using namespace std::chrono_literals;
constexpr uint64_t MiB = 1024 * 1024;

TEST(ShortPush, ASmallPushOnAFastLinkGoesWithoutCheckpoints) {
    // The bench's 1 % update: 38 MiB of stream, 12 MiB sent after 100 ms.
    EXPECT_TRUE(short_push(12 * MiB, 26 * MiB, 100ms));
    EXPECT_TRUE(short_push(30 * MiB, 8 * MiB, 300ms));
}

TEST(ShortPush, APushThatRunsPastHalfASecondKeepsThem) {
    // 48 MiB at 48 MiB/s (replication_test's cut test): a second.
    EXPECT_FALSE(short_push(5 * MiB, 43 * MiB, 100ms));
    // The same small push on a loaded machine or a slow link.
    EXPECT_FALSE(short_push(12 * MiB, 26 * MiB, 200ms));
    // Already past the limit, whatever is left.
    EXPECT_FALSE(short_push(100 * MiB, 1, 600ms));
    EXPECT_FALSE(short_push(1 * MiB, 0, 500ms));
}

TEST(ShortPush, NoRateNoDecision) {
    EXPECT_FALSE(short_push(0, 10 * MiB, 100ms));
    EXPECT_FALSE(short_push(10 * MiB, 10 * MiB, 0ms));
}

}  // namespace
}  // namespace icbd::repl
