// The project's one set of byte-order helpers: fixed-width unsigned integers
// loaded from and stored to unaligned byte buffers, big-endian (SCSI CDBs and
// parameter data) and little-endian (the overlay, cache and checkpoint files,
// replication frames). Byte by byte, so the result does not depend on the
// host's byte order or on alignment; compilers turn these into one load/store
// (plus a byte swap for big-endian) on x86-64 and arm64.
#pragma once

#include <cstddef>
#include <cstdint>

namespace icbd {

namespace endian_detail {
template <typename T>
constexpr T load_be(const uint8_t* p) {
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v = static_cast<T>(v << 8 | p[i]);
    return v;
}
template <typename T>
constexpr T load_le(const uint8_t* p) {
    T v = 0;
    for (size_t i = sizeof(T); i-- > 0;) v = static_cast<T>(v << 8 | p[i]);
    return v;
}
template <typename T>
constexpr void store_be(uint8_t* p, T v) {
    for (size_t i = sizeof(T); i-- > 0; v = static_cast<T>(v >> 8)) p[i] = static_cast<uint8_t>(v);
}
template <typename T>
constexpr void store_le(uint8_t* p, T v) {
    for (size_t i = 0; i < sizeof(T); ++i, v = static_cast<T>(v >> 8)) p[i] = static_cast<uint8_t>(v);
}
}  // namespace endian_detail

constexpr uint16_t load_be16(const uint8_t* p) { return endian_detail::load_be<uint16_t>(p); }
constexpr uint32_t load_be32(const uint8_t* p) { return endian_detail::load_be<uint32_t>(p); }
constexpr uint64_t load_be64(const uint8_t* p) { return endian_detail::load_be<uint64_t>(p); }
constexpr uint16_t load_le16(const uint8_t* p) { return endian_detail::load_le<uint16_t>(p); }
constexpr uint32_t load_le32(const uint8_t* p) { return endian_detail::load_le<uint32_t>(p); }
constexpr uint64_t load_le64(const uint8_t* p) { return endian_detail::load_le<uint64_t>(p); }

constexpr void store_be16(uint8_t* p, uint16_t v) { endian_detail::store_be(p, v); }
constexpr void store_be32(uint8_t* p, uint32_t v) { endian_detail::store_be(p, v); }
constexpr void store_be64(uint8_t* p, uint64_t v) { endian_detail::store_be(p, v); }
constexpr void store_le16(uint8_t* p, uint16_t v) { endian_detail::store_le(p, v); }
constexpr void store_le32(uint8_t* p, uint32_t v) { endian_detail::store_le(p, v); }
constexpr void store_le64(uint8_t* p, uint64_t v) { endian_detail::store_le(p, v); }

// The low `n` bytes (1 to 8) of `v`, big-endian: SCSI fields of odd widths
// (and tests that fill CDBs by width).
constexpr void store_be(uint8_t* p, uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
// `n` bytes (1 to 8) big-endian.
constexpr uint64_t load_be(const uint8_t* p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v = v << 8 | p[i];
    return v;
}

}  // namespace icbd
