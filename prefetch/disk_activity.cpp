// DiskActivity: from a file to the /sys/dev/block/MAJ:MIN/stat of the device
// under it, and that file's read counter (Documentation/block/stat.rst:
// field 3, sectors read, 512-byte units).
#include "disk_activity.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "icbd/unique_fd.hpp"

namespace icbd::prefetch_detail {

namespace fs = std::filesystem;

namespace {

fs::path sys_dev(dev_t dev) {
    return fs::path("/sys/dev/block") / (std::to_string(major(dev)) + ":" + std::to_string(minor(dev)));
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size()) {
            const std::string oct = s.substr(i + 1, 3);
            if (oct.find_first_not_of("01234567") == std::string::npos) {
                out.push_back(static_cast<char>(std::stoi(oct, nullptr, 8)));
                i += 3;
                continue;
            }
        }
        out.push_back(s[i]);
    }
    return out;
}

// The source of the mount whose mount point is the longest prefix of `path`.
std::optional<std::string> mount_source(const fs::path& path) {
    std::ifstream in("/proc/self/mountinfo");
    std::string line, best_source;
    size_t best_len = 0;
    bool found = false;
    const std::string p = path.string();
    while (std::getline(in, line)) {
        std::istringstream f(line);
        std::vector<std::string> fields;
        for (std::string w; f >> w;) fields.push_back(w);
        size_t dash = 0;
        while (dash < fields.size() && fields[dash] != "-") ++dash;
        if (fields.size() < 5 || dash + 2 >= fields.size()) continue;
        const std::string mnt = unescape(fields[4]);
        const bool under = mnt == "/" || p == mnt || (p.size() > mnt.size() && p.compare(0, mnt.size(), mnt) == 0 &&
                                                       p[mnt.size()] == '/');
        // Later lines win on equal length: the mount on top.
        if (under && mnt.size() >= best_len) {
            best_len = mnt.size();
            best_source = unescape(fields[dash + 2]);
            found = true;
        }
    }
    if (!found) return std::nullopt;
    return best_source;
}

}  // namespace

std::optional<DiskActivity> DiskActivity::for_file(const fs::path& file, dev_t dev, std::string& why) {
    fs::path dir = sys_dev(dev);
    std::error_code ec;
    if (!fs::exists(dir / "stat", ec)) {
        const fs::path abs = fs::weakly_canonical(fs::absolute(file, ec), ec);
        auto source = mount_source(abs);
        struct stat st{};
        if (!source || ::stat(source->c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) {
            why = "no block device under " + file.string() + (source ? " (mounted from '" + *source + "')" : "");
            return std::nullopt;
        }
        dir = sys_dev(st.st_rdev);
    }
    const fs::path real = fs::canonical(dir, ec);
    DiskActivity d(dir / "stat", ec ? dir.filename().string() : real.filename().string());
    if (!d.bytes()) {
        why = "cannot read " + (dir / "stat").string();
        return std::nullopt;
    }
    return d;
}

std::optional<uint64_t> DiskActivity::bytes() const {
    // Read whole with one read(2): sysfs builds the line at open.
    UniqueFd fd(::open(stat_.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return std::nullopt;
    std::array<char, 512> buf{};
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size() - 1);
    if (n <= 0) return std::nullopt;
    unsigned long long v[3] = {};
    if (std::sscanf(buf.data(), "%llu %llu %llu", &v[0], &v[1], &v[2]) != 3) return std::nullopt;
    return uint64_t(v[2]) * 512;
}

}  // namespace icbd::prefetch_detail
