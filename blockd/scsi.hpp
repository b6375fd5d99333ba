// SCSI constants and CDB field accessors the block engine needs (values from
// SPC-4/SBC-3; tgt's headers are deliberately not used outside tgt-backend/).
#pragma once

#include <cstdint>

#include "icbd/endian.hpp"

namespace icbd::scsi {

namespace op {
inline constexpr uint8_t read_6 = 0x08, read_10 = 0x28, read_12 = 0xa8, read_16 = 0x88;
inline constexpr uint8_t write_6 = 0x0a, write_10 = 0x2a, write_12 = 0xaa, write_16 = 0x8a;
inline constexpr uint8_t write_verify_10 = 0x2e, write_verify_12 = 0xae, write_verify_16 = 0x8e;
inline constexpr uint8_t orwrite_16 = 0x8b, compare_and_write = 0x89;
inline constexpr uint8_t synchronize_cache_10 = 0x35, synchronize_cache_16 = 0x91;
inline constexpr uint8_t write_same_10 = 0x41, write_same_16 = 0x93, unmap = 0x42;
inline constexpr uint8_t pre_fetch_10 = 0x34, pre_fetch_16 = 0x90;
inline constexpr uint8_t verify_10 = 0x2f, verify_12 = 0xaf, verify_16 = 0x8f;
}  // namespace op

inline constexpr uint8_t status_good = 0x00;
inline constexpr uint8_t status_check_condition = 0x02;

namespace key {
inline constexpr uint8_t medium_error = 0x03, hardware_error = 0x04, illegal_request = 0x05;
inline constexpr uint8_t data_protect = 0x07, miscompare = 0x0e;
}  // namespace key

// Additional sense code (high byte) and qualifier (low byte), as tgt takes them.
namespace asc {
inline constexpr uint16_t write_error = 0x0c00;
inline constexpr uint16_t unrecovered_read_error = 0x1100;
inline constexpr uint16_t parameter_list_length_error = 0x1a00;
inline constexpr uint16_t miscompare_during_verify = 0x1d00;
inline constexpr uint16_t lba_out_of_range = 0x2100;
inline constexpr uint16_t invalid_field_in_cdb = 0x2400;
inline constexpr uint16_t invalid_field_in_parameter_list = 0x2600;
inline constexpr uint16_t write_protected = 0x2700;
inline constexpr uint16_t space_allocation_failed = 0x2707;
inline constexpr uint16_t internal_target_failure = 0x4400;
}  // namespace asc

inline bool is_read(uint8_t o) {
    return o == op::read_6 || o == op::read_10 || o == op::read_12 || o == op::read_16;
}
inline bool is_plain_write(uint8_t o) {
    return o == op::write_6 || o == op::write_10 || o == op::write_12 || o == op::write_16;
}
inline bool is_write_verify(uint8_t o) {
    return o == op::write_verify_10 || o == op::write_verify_12 || o == op::write_verify_16;
}

// FUA (force unit access) is bit 3 of byte 1 in every 10/12/16-byte write CDB;
// WRITE(6) has no such bit.
inline bool fua(const uint8_t* cdb) { return cdb[0] != op::write_6 && (cdb[1] & 0x08); }

// TRANSFER LENGTH (in blocks) of a 10-, 12- or 16-byte read/write/verify CDB,
// by the CDB's group code (SBC-3: bytes 7-8, 6-9 and 10-13).
inline uint32_t transfer_length(const uint8_t* cdb) {
    switch (cdb[0] >> 5) {
        case 1:
        case 2: return load_be16(cdb + 7);   // 10-byte CDBs
        case 5: return load_be32(cdb + 6);   // 12-byte CDBs
        case 4: return load_be32(cdb + 10);  // 16-byte CDBs
        default: return 0;
    }
}

}  // namespace icbd::scsi
