// Synchronous whole-buffer file I/O for open-time work (formatting, recovery,
// headers): never in the data path, which is asynchronous.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "icbd/status.hpp"

namespace icbd {

// Reads exactly `len` bytes at `off`; a file that ends first is ENODATA
// ("<what>: unexpected end of file at offset N"). Retries EINTR.
Status full_pread(int fd, uint8_t* buf, size_t len, uint64_t off, const std::string& what);
// Writes exactly `len` bytes at `off`. Retries EINTR.
Status full_pwrite(int fd, const uint8_t* buf, size_t len, uint64_t off, const std::string& what);

}  // namespace icbd
