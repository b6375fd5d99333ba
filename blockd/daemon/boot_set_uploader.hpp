// A cache server's boot sets to its master (docs/boot-set.md, "Shipping"):
// after each keepalive, the sidecars its LUNs wrote under
// <repo>/images/*/.bootsets/<v>/ that hold boots the master was not told
// about go out as bootset.put, each carrying only its new boots. What was
// sent is remembered in the state DB so a restart sends nothing twice.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "icbd/boot_set.hpp"
#include "icbd/replicator/transport.hpp"
#include "icbd/status.hpp"
#include "store.hpp"

namespace icbd::node {

class BootSetUploader {
public:
    struct Options {
        std::filesystem::path repo;
        std::string node_name;       // ours, as our certificate says
        std::string master_address;  // the master's peer listener
        repl::TlsConfig tls;         // allowed_peer_names = {master}
        // A scan without a keepalive after this long (a master that pings
        // rarely still gets the sets).
        std::chrono::milliseconds fallback{30'000};
        // Scans only while this is true (registered: the master refuses
        // replicas it does not know, and a refusal is never retried).
        std::function<bool()> ready;
    };
    BootSetUploader(Options options, NodeStore& store);
    ~BootSetUploader();  // stop()

    void start();
    void stop();
    void trigger();  // a keepalive came: scan soon, off the caller's thread

    // One scan: sends what changed, returns how many sets the master took.
    // Fails only when the record cannot be read or written; a master that
    // cannot be reached ends the scan early (the next one sends again).
    Result<unsigned> scan_once();

    // Saves a set that came from the master at the version's sidecar path and
    // records its boots as already sent (they are the master's own), under
    // the scan's lock so no scan sees it first.
    Status save_from_master(const std::string& image, uint64_t version, const std::string& file, const BootSet& set);

private:
    struct Sent {
        int64_t mtime_ns = 0;
        uint64_t size = 0;
        uint64_t boots = 0;
    };
    void run();
    Status load_record();      // mu_ held
    Status persist_record();   // mu_ held
    void warn_once(const std::string& message);  // mu_ held

    Options opt_;
    NodeStore& store_;
    std::mutex mu_;  // one scan at a time; guards sent_, loaded_, last_warning_
    std::map<std::string, Sent> sent_;  // "<image>/<version>/<file>"
    bool loaded_ = false;
    std::string last_warning_;
    std::mutex wake_mu_;
    std::condition_variable cv_;
    bool stopping_ = false;  // guarded by wake_mu_
    bool wake_ = false;      // guarded by wake_mu_
    std::thread thread_;
};

}  // namespace icbd::node
