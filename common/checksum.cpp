// CRC32C (table-driven, slicing by one byte is enough for headers and records)
// and XXH3-64 through Debian's libxxhash.
#include "icbd/checksum.hpp"

#include <xxhash.h>

#include <array>

namespace icbd {
namespace {

constexpr std::array<uint32_t, 256> make_table() {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        t[i] = c;
    }
    return t;
}
constexpr auto kTable = make_table();

}  // namespace

uint32_t crc32c(const void* data, size_t len, uint32_t crc) {
    auto p = static_cast<const uint8_t*>(data);
    crc = ~crc;
    for (size_t i = 0; i < len; ++i) crc = kTable[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

uint64_t xxh3_64(const void* data, size_t len) { return XXH3_64bits(data, len); }

}  // namespace icbd
