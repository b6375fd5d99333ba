// json_escape: what the tools' --json output relies on to stay valid JSON.
#include "icbd/json.hpp"

#include <gtest/gtest.h>

TEST(Json, EscapesQuotesBackslashesAndControls) {
    EXPECT_EQ(icbd::json_escape("plain"), "plain");
    EXPECT_EQ(icbd::json_escape("a\"b\\c"), "a\\\"b\\\\c");
    EXPECT_EQ(icbd::json_escape("x\ny"), "x\\ny");
    EXPECT_EQ(icbd::json_escape(std::string("t\tz\x01", 4)), "t\\u0009z\\u0001");
    EXPECT_EQ(icbd::json_escape("é"), "é");  // UTF-8 passes through
}
