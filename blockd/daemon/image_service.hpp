// The image repository as an operator sees it (master): import, checkout,
// commit, list, delete, prune, release channels. Wraps the replicator's
// Repository (on-disk layout, docs/image-layout.md) and records metadata and
// intents in the NodeStore so a kill -9 at any point leaves a commit either
// done or not done. Also used on replicas for listing and deletion.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "icbd/replicator/repository.hpp"
#include "icbd/status.hpp"
#include "store.hpp"

namespace icbd::node {

struct ImageSummary {
    std::string image;
    std::vector<uint64_t> versions;
    uint64_t newest = 0;
    Channels channels;
    std::optional<uint64_t> checkout_base;  // a working copy exists, made from this version
};

struct VersionInfo {
    VersionRecord record;
    std::vector<std::string> channels;  // "production", "test"
    std::vector<std::string> used_by;   // "client 'pc01'", "replica 'cache01' (base of its next update)", "channel production"
};

// Who uses a version (the node fills this in: clients on a replica, replicas'
// newest versions on a master). Used by delete and prune.
using UsersOf = std::function<std::vector<std::string>(const std::string& image, uint64_t version)>;

class ImageService {
public:
    // Working copies live in <repository root>/checkouts/<image> (created when
    // needed), on the repository's filesystem so a checkout is a snapshot.
    ImageService(repl::Repository repo, NodeStore& store, UsersOf users_of);

    // Completes or undoes intents left by a crash (call once at start), and
    // records versions found on disk without metadata (received or recovered).
    Status recover();

    // Version 1 of a new image from a raw disk file (stored as `disk.raw`,
    // sparse, reflinked when possible) or a directory of image files. EEXIST if
    // the image exists.
    Result<VersionRecord> import(const std::string& image, const std::filesystem::path& from, const std::string& message,
                                 const std::function<void(uint64_t done, uint64_t total)>& progress = {});
    // A writable working copy of the newest version (BTRFS snapshot; a copy
    // elsewhere). EEXIST when one exists (its path is in the message).
    Result<std::filesystem::path> checkout(const std::string& image);
    std::filesystem::path checkout_path(const std::string& image) const;
    // The working copy becomes version newest+1 (read-only), on the test channel;
    // the working copy is removed. ENOENT without a checkout.
    Result<VersionRecord> commit(const std::string& image, const std::string& message);
    // Drops a working copy without committing.
    Status discard_checkout(const std::string& image);

    Result<std::vector<ImageSummary>> list();
    Result<std::vector<VersionInfo>> versions(const std::string& image);
    // Refused with EBUSY naming every user (channels count as users).
    Status remove(const std::string& image, uint64_t version);
    // Deletes the oldest versions beyond the newest `keep`, skipping versions in
    // use (reported in the result's second list).
    Result<std::pair<std::vector<uint64_t>, std::vector<std::string>>> prune(const std::string& image, unsigned keep);

    // Channels: promote makes `version` production (the old one becomes
    // previous_production); rollback swaps back. Commit sets test = new version
    // and, for the very first version, production too.
    Result<Channels> promote(const std::string& image, uint64_t version);
    Result<Channels> rollback(const std::string& image);

    // The file a client LUN serves inside a version: "disk.raw" if present,
    // else the only regular file at the top of the version; EINVAL otherwise.
    Result<std::string> disk_file(const std::string& image, uint64_t version);

    repl::Repository& repository() { return repo_; }

private:
    // Unlocked bodies of the public calls (they hold mu_).
    Status remove_locked(const std::string& image, uint64_t version);
    void remove_boot_sets(const std::string& image, uint64_t version);
    std::vector<std::string> users(const std::string& image, uint64_t version, const Channels& c) const;
    // The tail of a commit or import once the version is published: working
    // tree gone, metadata and channels recorded, intent cleared. Idempotent,
    // so recover() runs it again after a crash.
    Result<VersionRecord> finish_commit(int64_t intent, const std::string& image, uint64_t version,
                                        const std::string& message, const std::filesystem::path& tree);
    Result<VersionRecord> describe(const std::string& image, uint64_t version, const std::string& message);
    Status recover_intent(const Intent& in);
    std::filesystem::path checkouts_dir() const { return repo_.root() / "checkouts"; }

    repl::Repository repo_;
    NodeStore& store_;
    UsersOf users_of_;
    std::mutex mu_;  // one image operation at a time: they share checkouts and channels
};

// Image and client names: 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'
// (no '/', no '..'). EINVAL naming `what` ("image name 'a/b': ...").
Status validate_name(const std::string& what, const std::string& name);

}  // namespace icbd::node
