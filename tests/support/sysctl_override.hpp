// SysctlOverride: sets a kernel sysctl (a file under /proc/sys) for the lifetime
// of the object and puts the old value back on every path out, exceptions and
// failed assertions included. Used to switch io_uring off for real.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace icbd::test {

class SysctlOverride {
public:
    // `name` as sysctl spells it, e.g. "kernel.io_uring_disabled". Throws if it
    // cannot be read or written.
    SysctlOverride(const std::string& name, const std::string& value);
    ~SysctlOverride();
    SysctlOverride(const SysctlOverride&) = delete;
    SysctlOverride& operator=(const SysctlOverride&) = delete;

    // Puts the old value back now (idempotent); the destructor then does nothing.
    void restore();
    const std::string& old_value() const { return old_; }

    static std::filesystem::path path_of(const std::string& name);
    // The current value, or nullopt if this kernel has no such sysctl.
    static std::optional<std::string> read(const std::string& name);

private:
    std::string name_;
    std::string old_;
    bool active_ = false;
};

}  // namespace icbd::test
