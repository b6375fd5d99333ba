// Synchronous whole-buffer file I/O: blockd's open-time work (formatting,
// recovery, headers; never its data path, which is asynchronous) and the
// replicator's reader and checkpoint threads.
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

// The file offset (and length) alignment O_DIRECT needs on `fd`, from
// statx(STATX_DIOALIGN); 512 where the filesystem does not say (BTRFS, kernels
// before 6.1: BTRFS itself falls back to buffered I/O for what is unaligned).
uint32_t dio_offset_alignment(int fd);

}  // namespace icbd
