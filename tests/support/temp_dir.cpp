// TempDir: mkdtemp + recursive removal.
#include "temp_dir.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <vector>

#include "icbd/unique_fd.hpp"

namespace icbd::test {

TempDir::TempDir(const std::filesystem::path& base, const std::string& prefix) {
    std::string tmpl = (base / (prefix + "XXXXXX")).string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp " + tmpl + ": " + std::strerror(errno));
    path_ = buf.data();
}

TempDir::TempDir(TempDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }

TempDir::~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;  // best effort: a destructor must not throw
    std::filesystem::remove_all(path_, ec);
}

void make_sparse_file(const std::filesystem::path& file, uint64_t size) {
    UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd.valid()) throw std::runtime_error("create " + file.string() + ": " + std::strerror(errno));
    if (ftruncate(fd.get(), static_cast<off_t>(size)) < 0)
        throw std::runtime_error("ftruncate " + file.string() + ": " + std::strerror(errno));
}

}  // namespace icbd::test
