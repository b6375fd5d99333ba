// The shared checksums match their published check values, so formats written
// by one component (or another implementation) verify in another.
#include "icbd/checksum.hpp"

#include <gtest/gtest.h>

#include <string>

TEST(Checksum, Crc32cCheckValue) {
    const std::string s = "123456789";
    EXPECT_EQ(icbd::crc32c(s.data(), s.size()), 0xE3069283u);
}

TEST(Checksum, Crc32cContinues) {
    const std::string s = "123456789";
    uint32_t c = icbd::crc32c(s.data(), 4);
    EXPECT_EQ(icbd::crc32c(s.data() + 4, s.size() - 4, c), 0xE3069283u);
}

TEST(Checksum, Xxh3EmptyInput) {
    EXPECT_EQ(icbd::xxh3_64("", 0), 0x2D06800538D394C2ull);
}
