// Appending little-endian fields to a frame payload (the reading side is
// inline in wire_bytes.hpp).
#include "wire_bytes.hpp"

namespace icbd::repl::wire {

void put_u8(Bytes& out, uint8_t v) { out.push_back(v); }

void put_u16(Bytes& out, uint16_t v) {
    uint8_t b[2];
    store_le16(b, v);
    out.insert(out.end(), b, b + 2);
}

void put_u32(Bytes& out, uint32_t v) {
    uint8_t b[4];
    store_le32(b, v);
    out.insert(out.end(), b, b + 4);
}

void put_u64(Bytes& out, uint64_t v) {
    uint8_t b[8];
    store_le64(b, v);
    out.insert(out.end(), b, b + 8);
}

void put_str16(Bytes& out, std::string_view s) {
    put_u16(out, static_cast<uint16_t>(s.size()));
    out.insert(out.end(), s.begin(), s.end());
}

}  // namespace icbd::repl::wire
