// Shared by the integration test programs: skipping (or, with ICBD_FORBID_SKIP=1,
// failing) when root, tgtd or BTRFS are missing; block-level comparisons that
// name the first differing byte; direct looks at backing files.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "icbd/unique_fd.hpp"

namespace icbd::test {

// CI sets ICBD_FORBID_SKIP=1: there a missing prerequisite is a failure, so a
// broken runner cannot pass by skipping everything.
inline bool skips_forbidden() {
    const char* v = std::getenv("ICBD_FORBID_SKIP");
    return v && *v && std::strcmp(v, "0") != 0;
}

// `why` is an optional<string> reason; skips (or fails) the current test with it.
#define ICBD_REQUIRE(why_expr)                                                                     \
    do {                                                                                           \
        if (auto icbd_why_ = (why_expr)) {                                                         \
            if (::icbd::test::skips_forbidden()) FAIL() << "prerequisite missing: " << *icbd_why_; \
            GTEST_SKIP() << *icbd_why_;                                                            \
        }                                                                                          \
    } while (0)

// Equality of two byte ranges that, on failure, says where they first differ
// instead of dumping a megabyte.
inline ::testing::AssertionResult same_bytes(std::span<const uint8_t> got, std::span<const uint8_t> want) {
    if (got.size() != want.size())
        return ::testing::AssertionFailure() << "size " << got.size() << " != expected " << want.size();
    for (size_t i = 0; i < got.size(); ++i)
        if (got[i] != want[i])
            return ::testing::AssertionFailure()
                   << "first difference at byte " << i << " (block " << i / 512 << " + " << i % 512 << "): got 0x"
                   << std::hex << int(got[i]) << ", expected 0x" << int(want[i]) << std::dec;
    return ::testing::AssertionSuccess();
}

inline bool all_zero(std::span<const uint8_t> d) {
    for (uint8_t b : d)
        if (b) return false;
    return true;
}

// Reads the backing file itself (not through tgtd): proof that data reached the
// file at the right offset.
inline std::vector<uint8_t> read_backing(const std::filesystem::path& p, uint64_t offset, size_t len) {
    std::vector<uint8_t> out(len);
    UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) throw std::runtime_error("open " + p.string() + ": " + std::strerror(errno));
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd.get(), out.data() + done, len - done, static_cast<off_t>(offset + done));
        if (n <= 0) break;  // past EOF of a sparse file: zeros
        done += static_cast<size_t>(n);
    }
    return out;
}

inline void write_backing(const std::filesystem::path& p, uint64_t offset, std::span<const uint8_t> data) {
    UniqueFd fd(::open(p.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd.valid()) throw std::runtime_error("open " + p.string() + ": " + std::strerror(errno));
    if (pwrite(fd.get(), data.data(), data.size(), static_cast<off_t>(offset)) != static_cast<ssize_t>(data.size()))
        throw std::runtime_error("pwrite " + p.string() + ": " + std::strerror(errno));
    fsync(fd.get());
}

// Is [offset, offset+len) of the file entirely a hole (SEEK_DATA finds no data
// in it)? This is the filesystem's own answer, not a read of zeros.
inline bool is_hole(const std::filesystem::path& p, uint64_t offset, uint64_t len) {
    UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return false;
    off_t data = lseek(fd.get(), static_cast<off_t>(offset), SEEK_DATA);
    if (data < 0) return errno == ENXIO;  // no data from offset to EOF
    return static_cast<uint64_t>(data) >= offset + len;
}

// Allocated bytes of the file (st_blocks), as du sees them.
inline uint64_t allocated_bytes(const std::filesystem::path& p) {
    struct stat st {};
    if (stat(p.c_str(), &st) != 0) return 0;
    return static_cast<uint64_t>(st.st_blocks) * 512;
}

}  // namespace icbd::test
