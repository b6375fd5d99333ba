// Shared by the prefetch tests: an ext4 on a loop device (so that a file's
// page cache can be dropped and its residency asked), golden files written
// there, scattered boot sets and what mincore says of a file.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "icbd/boot_set.hpp"
#include "icbd/unique_fd.hpp"
#include "loop_fs.hpp"

namespace icbd::test {

inline constexpr uint64_t kMiB = 1ull << 20;

// CI sets ICBD_FORBID_SKIP=1: a missing prerequisite is then a failure.
inline bool prefetch_skips_forbidden() {
    const char* v = std::getenv("ICBD_FORBID_SKIP");
    return v && *v && std::strcmp(v, "0") != 0;
}
#define PREFETCH_REQUIRE(why_expr)                                                                          \
    do {                                                                                                     \
        if (auto why_ = (why_expr)) {                                                                        \
            if (::icbd::test::prefetch_skips_forbidden()) FAIL() << "prerequisite missing: " << *why_;       \
            GTEST_SKIP() << *why_;                                                                           \
        }                                                                                                    \
    } while (0)

// A file of `size` bytes of non-zero data, durable, then out of the page cache.
inline void write_golden(const std::filesystem::path& file, uint64_t size) {
    UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd.valid()) throw std::runtime_error("open " + file.string() + ": " + std::strerror(errno));
    std::vector<uint8_t> buf(kMiB);
    std::mt19937_64 rng(size);
    for (uint64_t off = 0; off < size; off += buf.size()) {
        for (size_t i = 0; i < buf.size(); i += 8) {
            const uint64_t v = rng();
            std::memcpy(&buf[i], &v, 8);
        }
        const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
        if (::pwrite(fd.get(), buf.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n))
            throw std::runtime_error("write " + file.string() + ": " + std::strerror(errno));
    }
    if (::fsync(fd.get()) != 0) throw std::runtime_error("fsync " + file.string());
}

// Drops the file's clean pages from the page cache (only this file's: the
// machine is shared).
inline void drop_cache(const std::filesystem::path& file) {
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) throw std::runtime_error("open " + file.string());
    ::fdatasync(fd.get());
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
}

// Residency of every page of the file (mincore of a mapping never touched).
inline std::vector<bool> resident_pages(const std::filesystem::path& file) {
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) throw std::runtime_error("open " + file.string());
    const uint64_t size = std::filesystem::file_size(file);
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap " + file.string());
    std::vector<unsigned char> v((size + page - 1) / page);
    const int rc = ::mincore(p, size, v.data());
    ::munmap(p, size);
    if (rc != 0) throw std::runtime_error("mincore " + file.string());
    std::vector<bool> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = v[i] & 1;
    return out;
}

// How many times anyone wrote /proc/sys/vm/drop_caches (/proc/vmstat): other
// benchmarks on this shared machine drop every cache now and then, which
// empties ours between a prefetch and the look at it. A test that sees this
// count move runs its attempt again (a few times at most).
inline uint64_t global_cache_drops() {
    std::ifstream in("/proc/vmstat");
    uint64_t sum = 0;
    std::string key;
    uint64_t value = 0;
    while (in >> key >> value)
        if (key == "drop_pagecache" || key == "drop_slab") sum += value;
    return sum;
}
inline constexpr int kAttemptsAgainstDrops = 4;

// Runs of 1 to 16 chunks (64 KiB - 1 MiB) scattered over the file, about
// `bytes` in all, reproducible from `seed`.
inline BootSet scattered_set(uint64_t file_size, uint64_t bytes, uint64_t seed) {
    auto made = BootSet::create(file_size);
    if (!made) throw std::runtime_error(made.status().message());
    BootSet set = std::move(made.value());
    std::mt19937_64 rng(seed);
    const uint64_t chunk = set.chunk_size();
    while (set.bytes() < bytes) {
        const uint64_t len = (1 + rng() % 16) * chunk;
        const uint64_t at = (rng() % set.chunks()) * chunk;
        set.mark(at, len);
    }
    set.boots = 3;
    set.version = 1;
    return set;
}

// Pages of the file in the set's chunks and outside them that are resident.
struct Residency {
    uint64_t in_set_resident = 0, in_set = 0, outside_resident = 0, outside = 0;
};
inline Residency residency(const std::filesystem::path& file, const BootSet& set) {
    const auto pages = resident_pages(file);
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    Residency r;
    for (uint64_t i = 0; i < pages.size(); ++i) {
        const bool in = set.has_chunk(i * page / set.chunk_size());
        (in ? r.in_set : r.outside)++;
        if (pages[i]) (in ? r.in_set_resident : r.outside_resident)++;
    }
    return r;
}

}  // namespace icbd::test
