// SysctlOverride: read, write, restore a /proc/sys value.
#include "sysctl_override.hpp"

#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace icbd::test {
namespace {

bool write_value(const std::filesystem::path& p, const std::string& v) {
    std::ofstream out(p);
    out << v << '\n';
    out.flush();
    return static_cast<bool>(out);
}

}  // namespace

std::filesystem::path SysctlOverride::path_of(const std::string& name) {
    std::string rel = name;
    for (char& c : rel)
        if (c == '.') c = '/';
    return std::filesystem::path("/proc/sys") / rel;
}

std::optional<std::string> SysctlOverride::read(const std::string& name) {
    std::ifstream in(path_of(name));
    std::string v;
    if (!in || !std::getline(in, v)) return std::nullopt;
    return v;
}

SysctlOverride::SysctlOverride(const std::string& name, const std::string& value) : name_(name) {
    auto old = read(name);
    if (!old) throw std::runtime_error("sysctl " + name + ": cannot read " + path_of(name).string());
    old_ = *old;
    if (!write_value(path_of(name), value))
        throw std::runtime_error("sysctl " + name + ": cannot write '" + value + "'");
    active_ = true;
    if (read(name) != value) {
        restore();
        throw std::runtime_error("sysctl " + name + ": wrote '" + value + "' but it did not take");
    }
}

SysctlOverride::~SysctlOverride() { restore(); }

void SysctlOverride::restore() {
    if (!active_) return;
    active_ = false;
    if (!write_value(path_of(name_), old_))
        std::fprintf(stderr, "SysctlOverride: could not restore %s to '%s'\n", name_.c_str(), old_.c_str());
}

}  // namespace icbd::test
