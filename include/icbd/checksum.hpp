// Checksums shared by every on-disk and on-wire format of the project: CRC32C
// (Castagnoli) for small headers and records, XXH3-64 for data and digests.
#pragma once

#include <cstddef>
#include <cstdint>

namespace icbd {

// CRC32C of `len` bytes, continuing from `crc` (0 to start). Same result as
// the iSCSI/ext4 CRC32C (reflected, initial and final XOR 0xffffffff).
uint32_t crc32c(const void* data, size_t len, uint32_t crc = 0);

// XXH3 64-bit hash (seed 0) of `len` bytes.
uint64_t xxh3_64(const void* data, size_t len);

}  // namespace icbd
