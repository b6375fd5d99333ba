// icbd/endian.hpp: the byte order of every helper, at unaligned addresses, and
// round trips.
#include "icbd/endian.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>

using namespace icbd;

// 16-, 32- and 64-bit values stored back to back at an odd address: the bytes
// in memory, then each value read back.
TEST(Endian, Layout) {
    std::array<uint8_t, 15> be{}, le{};
    store_be16(&be[1], 0x0102);
    store_be32(&be[3], 0x01020304u);
    store_be64(&be[7], 0x0102030405060708ull);
    store_le16(&le[1], 0x0102);
    store_le32(&le[3], 0x01020304u);
    store_le64(&le[7], 0x0102030405060708ull);
    EXPECT_EQ(be, (std::array<uint8_t, 15>{0, 1, 2, 1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8}));
    EXPECT_EQ(le, (std::array<uint8_t, 15>{0, 2, 1, 4, 3, 2, 1, 8, 7, 6, 5, 4, 3, 2, 1}));
    EXPECT_EQ(load_be16(&be[1]), 0x0102);
    EXPECT_EQ(load_be32(&be[3]), 0x01020304u);
    EXPECT_EQ(load_be64(&be[7]), 0x0102030405060708ull);
    EXPECT_EQ(load_le16(&le[1]), 0x0102);
    EXPECT_EQ(load_le32(&le[3]), 0x01020304u);
    EXPECT_EQ(load_le64(&le[7]), 0x0102030405060708ull);
}

TEST(Endian, HighBitsSurvive) {
    std::array<uint8_t, 8> b{};
    store_be64(b.data(), 0xfedcba9876543210ull);
    EXPECT_EQ(load_be64(b.data()), 0xfedcba9876543210ull);
    store_le64(b.data(), 0xfedcba9876543210ull);
    EXPECT_EQ(load_le64(b.data()), 0xfedcba9876543210ull);
    store_be16(b.data(), 0xff80);
    EXPECT_EQ(load_be16(b.data()), 0xff80);
    store_le32(b.data(), 0x80ff00feu);
    EXPECT_EQ(load_le32(b.data()), 0x80ff00feu);
}

TEST(Endian, VariableWidthBigEndian) {
    std::array<uint8_t, 8> b{};
    store_be(b.data(), 0x123456, 3);  // 24-bit SCSI field
    EXPECT_EQ(b[0], 0x12);
    EXPECT_EQ(b[2], 0x56);
    EXPECT_EQ(b[3], 0x00);
    EXPECT_EQ(load_be(b.data(), 3), 0x123456u);
    store_be(b.data(), 0xaabbccdd11223344ull, 8);
    EXPECT_EQ(load_be(b.data(), 8), 0xaabbccdd11223344ull);
    EXPECT_EQ(load_be64(b.data()), 0xaabbccdd11223344ull);
}

static_assert(load_be32(std::array<uint8_t, 4>{1, 2, 3, 4}.data()) == 0x01020304u);
static_assert(load_le32(std::array<uint8_t, 4>{1, 2, 3, 4}.data()) == 0x04030201u);
