// TempDir: a private scratch directory for one test object, removed with
// everything in it when the object goes away (also when the test fails).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace icbd::test {

class TempDir {
public:
    // Creates <base>/<prefix>XXXXXX. The prefix carries "icbd" so a leftover is
    // easy to attribute (`ls /tmp | grep icbd`).
    explicit TempDir(const std::filesystem::path& base = "/tmp", const std::string& prefix = "icbd-test-");
    ~TempDir();
    TempDir(TempDir&& o) noexcept;
    TempDir& operator=(TempDir&&) = delete;
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

// Creates (or truncates) a sparse file of `size` bytes: a backing file whose
// blocks are allocated only where the test writes.
void make_sparse_file(const std::filesystem::path& file, uint64_t size);

}  // namespace icbd::test
