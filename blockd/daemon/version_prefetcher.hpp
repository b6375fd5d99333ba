// Reads a version's boot sets into this node's page cache (docs/boot-set.md,
// "Prefetch"): per regular file of the version, the set from the local
// sidecar (boots > 0), else the master's answer (saved locally), else the
// newest older local sidecar as a prediction; one file at a time. Runs on
// demand (blockctl image prefetch) or queued on its own thread (a version
// published, blockd started) so it never holds up the control socket or the
// keepalive.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "boot_set_uploader.hpp"
#include "icbd/prefetch.hpp"
#include "icbd/status.hpp"
#include "peer_protocol.hpp"

namespace icbd::node {

struct FilePrefetch {
    std::string file;     // relative to the version's directory
    std::string from;     // "local", "master" or "none": where the set came from
    BootSetKind kind = BootSetKind::none;  // recorded for this version, or predicted from `source`
    uint64_t source = 0;  // the version whose boots the set holds
    uint64_t boots = 0;
    std::optional<PrefetchSummary> summary;  // absent: no set, or the prefetch failed (`error`)
    std::string error;
};

struct VersionPrefetch {
    std::string image;
    uint64_t version = 0;
    std::vector<FilePrefetch> files;
    double seconds = 0;
    uint64_t read_bytes() const;
    uint64_t total_bytes() const;
};
nlohmann::json to_json(const VersionPrefetch& p);

class VersionPrefetcher {
public:
    // Asks the master for a file's set (bootset.get); empty on a master.
    using AskMaster = std::function<Result<BootSetReply>(const std::string& image, uint64_t version, const std::string& file)>;
    // `uploader` (replica) saves what the master sent so it is never sent back; null on a master.
    VersionPrefetcher(std::filesystem::path repo, PrefetchOptions options, AskMaster ask, BootSetUploader* uploader);
    ~VersionPrefetcher();  // stop()

    void start();
    void stop();  // cancels the running prefetch at its next read
    // Queues a version for the background thread (once while it waits).
    void enqueue(const std::string& image, uint64_t version);
    // True when nothing is queued or running (tests).
    bool idle();

    // Prefetches every file of the version now, on the caller's thread.
    // ENOENT when this node does not hold the version. `progress` gets
    // (file, done bytes, total bytes) of the file being read.
    using Progress = std::function<void(const std::string& file, uint64_t done, uint64_t total)>;
    Result<VersionPrefetch> run(const std::string& image, uint64_t version, const Progress& progress = {});

private:
    // Where the set of one file comes from (see the class comment); fills from/kind/source/boots.
    std::optional<BootSet> find_set(const std::string& image, uint64_t version, FilePrefetch& out);
    void loop();

    std::filesystem::path repo_;
    PrefetchOptions options_;
    AskMaster ask_;
    BootSetUploader* uploader_;
    std::atomic<bool> cancel_{false};
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::pair<std::string, uint64_t>> queue_;  // guarded by mu_
    bool busy_ = false;                                    // guarded by mu_
    bool stopping_ = false;                                // guarded by mu_
    std::thread thread_;
};

}  // namespace icbd::node
