// full_pread / full_pwrite and O_DIRECT alignment (include/icbd/file_io.hpp).
#include "icbd/file_io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace icbd {

Status full_pread(int fd, uint8_t* buf, size_t len, uint64_t off, const std::string& what) {
    while (len > 0) {
        ssize_t n = ::pread(fd, buf, len, static_cast<off_t>(off));
        if (n < 0) {
            if (errno == EINTR) continue;
            return Status::from_errno(errno, what);
        }
        if (n == 0) return Status::error(ENODATA, what + ": unexpected end of file at offset " + std::to_string(off));
        buf += n;
        len -= static_cast<size_t>(n);
        off += static_cast<uint64_t>(n);
    }
    return Status::ok();
}

Status full_pwrite(int fd, const uint8_t* buf, size_t len, uint64_t off, const std::string& what) {
    while (len > 0) {
        ssize_t n = ::pwrite(fd, buf, len, static_cast<off_t>(off));
        if (n < 0) {
            if (errno == EINTR) continue;
            return Status::from_errno(errno, what);
        }
        buf += n;
        len -= static_cast<size_t>(n);
        off += static_cast<uint64_t>(n);
    }
    return Status::ok();
}

uint32_t dio_offset_alignment(int fd) {
    struct statx sx {};
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
        sx.stx_dio_offset_align >= 1 && (sx.stx_dio_offset_align & (sx.stx_dio_offset_align - 1)) == 0)
        return sx.stx_dio_offset_align;
    return 512;
}

}  // namespace icbd
