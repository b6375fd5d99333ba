// The golden file of an image version, opened once per process and shared by
// every LUN over it: one inode, one page cache for the whole boot storm.
#pragma once

#include <memory>
#include <string>

#include "icbd/overlay.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd {

class GoldenFile {
public:
    // Opens `path` read-only, or returns the already open GoldenFile of the
    // same inode. Single-threaded (tgtd's thread).
    static Result<std::shared_ptr<GoldenFile>> open(const std::string& path);
    int fd() const { return fd_.get(); }
    const GoldenIdentity& identity() const { return identity_; }
    const std::string& path() const { return path_; }
    // How many GoldenFile objects are open in this process (tests).
    static size_t open_count();

    GoldenFile(UniqueFd fd, GoldenIdentity id, std::string path, dev_t dev, ino_t ino);
    ~GoldenFile();

private:
    UniqueFd fd_;
    GoldenIdentity identity_;
    std::string path_;
    dev_t dev_;
    ino_t ino_;
};

}  // namespace icbd
