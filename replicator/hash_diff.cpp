// The hash fallback of the diff: where extent metadata cannot prove bytes equal
// (not BTRFS, or two filesystems), compare xxh3_64 of fixed blocks of both files.
#include "hash_diff.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "icbd/checksum.hpp"

namespace icbd::repl::detail {
namespace {

// Reads [off, off+len) into buf, zero-filling past EOF (a shorter file reads
// as zeros there, as the replica's ftruncated copy would).
Status read_block(int fd, uint64_t off, uint8_t* buf, size_t len, const std::string& what, uint64_t& counted) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = ::pread(fd, buf + done, len - done, static_cast<off_t>(off + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return Status::from_errno(errno, what + ": read at offset " + std::to_string(off + done));
        }
        if (n == 0) break;
        done += static_cast<size_t>(n);
    }
    counted += done;
    std::memset(buf + done, 0, len - done);
    return Status::ok();
}

}  // namespace

Result<RangeDiff> hash_compare(int child_fd, uint64_t child_size, int parent_fd, uint64_t parent_size,
                               uint32_t block, const std::string& what, uint64_t& bytes_hashed) {
    auto child_data = data_segments(child_fd, child_size, what + " (child)");
    if (!child_data) return child_data.status();
    auto parent_data = data_segments(parent_fd, parent_size, what + " (parent)");
    if (!parent_data) return parent_data.status();

    RangeDiff out;
    uint64_t common = std::min(child_size, parent_size);
    out.holes = intersect(complement(*child_data, common), clip(*parent_data, common));

    ::posix_fadvise(child_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    ::posix_fadvise(parent_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    std::vector<uint8_t> cbuf(block), pbuf(block);
    uint64_t next_block = 0;  // blocks below this one are done (segments can share a block)
    const std::vector<ByteRange>& segs = *child_data;
    for (size_t si = 0; si < segs.size(); ++si) {
        const ByteRange& seg = segs[si];
        for (uint64_t k = std::max(seg.offset / block, next_block); k * block < seg.end(); ++k) {
            next_block = k + 1;
            uint64_t off = k * block;
            size_t len = static_cast<size_t>(std::min<uint64_t>(block, child_size - off));
            bool differs = true;
            if (off < parent_size) {
                if (Status s = read_block(child_fd, off, cbuf.data(), len, what + " (child)", bytes_hashed); !s)
                    return s;
                if (Status s = read_block(parent_fd, off, pbuf.data(), len, what + " (parent)", bytes_hashed); !s)
                    return s;
                differs = xxh3_64(cbuf.data(), len) != xxh3_64(pbuf.data(), len);
            }
            if (differs)  // the block's data parts: segments from this one on that reach into it
                for (size_t j = si; j < segs.size() && segs[j].offset < off + len; ++j) {
                    uint64_t lo = std::max(off, segs[j].offset), hi = std::min(off + len, segs[j].end());
                    if (lo < hi) append_merged(out.data, {lo, hi - lo});
                }
        }
    }
    return out;
}

}  // namespace icbd::repl::detail
