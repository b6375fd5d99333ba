// The on-disk image repository: <root>/images/<image>/<version>, each version a
// read-only BTRFS subvolume (plain directory elsewhere), and the hidden staging
// area where a version being received is built, checkpointed and published
// atomically. Layout and checkpoint format: docs/image-layout.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "icbd/status.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd::repl {

// A version being received: a writable tree (snapshot or copy of the base, or
// empty for a full copy) under images/<image>/.staging/, plus a durable
// checkpoint. Move-only. Holds an exclusive lock on the area while alive (a
// second receiver of the same version gets EBUSY). Destroying it without
// publish() or abort() keeps the area on disk for a later resume.
class Staging {
public:
    Staging(Staging&&) noexcept = default;
    Staging& operator=(Staging&&) noexcept = default;
    ~Staging() = default;

    const std::string& image() const { return image_; }
    uint64_t version() const { return version_; }
    uint64_t base() const { return base_; }  // 0: full copy
    bool resumed() const { return resumed_; }

    // The writable tree that becomes images/<image>/<version>; the receiver
    // applies changes beneath it (open_beneath(tree_fd(), ...)).
    const std::filesystem::path& tree_path() const { return tree_path_; }
    int tree_fd() const { return tree_fd_.get(); }

    // The receiver's opaque checkpoint as last written durably (empty if none).
    const std::vector<uint8_t>& checkpoint() const { return checkpoint_; }
    // Replaces the checkpoint durably (tmp file, fsync, rename, fsync dir);
    // at most kMaxCheckpointBytes. ENOSPC is reported as such.
    Status write_checkpoint(std::span<const uint8_t> bytes);
    static constexpr size_t kMaxCheckpointBytes = 16 * 1024 * 1024;

    // Makes everything written to the tree durable (syncfs of its filesystem).
    Status sync();

    // Makes the tree images/<image>/<version>, complete, read-only and durable
    // at once, never replacing anything; then removes the staging area. On
    // BTRFS: one read-only snapshot of the tree under the version's name (the
    // kernel writes the tree's data back first and commits the snapshot); the
    // tree itself is kept as images/<image>/.spare-<version>, the next
    // staging tree from this version (receivers only; commit() deletes it).
    // Elsewhere: sync(), rename, fsync of the image directory. Refused
    // (EEXIST / ESTALE) when that version or a newer one was published
    // meanwhile. Nothing is visible under the version name before the commit
    // point; after ok the object is spent. Errors of the housekeeping after
    // the commit point are logged, not returned (the version is published).
    Status publish();

    // Removes the staging area and its tree (btrfs subvolume delete on BTRFS;
    // the space comes back when the BTRFS cleaner has run). The object is spent.
    Status abort();

private:
    friend class Repository;
    Staging() = default;
    Status fail(int err, const std::string& what) const;
    Status publish_snapshot(int image_fd, const std::string& name);

    std::string what_;  // "image 'x' version 7 (staging from 6)" for messages
    std::filesystem::path image_dir_;
    std::filesystem::path area_path_;  // images/<image>/.staging/<v>-from-<b>: lock, checkpoint
    std::filesystem::path tree_path_;  // images/<image>/.tree-<v>-from-<b>
    std::string image_;
    uint64_t version_ = 0;
    uint64_t base_ = 0;
    bool resumed_ = false;
    bool btrfs_ = false;
    bool spent_ = false;
    bool keep_spare_ = false;  // publish keeps the tree as the next staging tree
    UniqueFd area_fd_;  // locked with flock(LOCK_EX)
    UniqueFd tree_fd_;
    std::vector<uint8_t> checkpoint_;
};

// A staging area found on disk (for operators and for cleanup).
struct StagingInfo {
    std::string image;
    uint64_t version = 0;
    uint64_t base = 0;  // 0: full copy
    std::filesystem::path path;
};

class Repository {
public:
    // Opens the repository at `root` (which must exist), creating `images/` if
    // missing. Snapshots are used when images/ is on BTRFS.
    static Result<Repository> open(const std::filesystem::path& root);

    const std::filesystem::path& root() const { return root_; }
    std::filesystem::path images_dir() const { return root_ / "images"; }
    bool is_btrfs() const { return btrfs_; }

    // Published images and versions, sorted; staging areas and malformed names
    // (not a valid image name, not a canonical version number) are ignored.
    Result<std::vector<std::string>> list_images() const;
    Result<std::vector<uint64_t>> list_versions(std::string_view image) const;  // empty if no such image
    Result<std::optional<uint64_t>> newest_version(std::string_view image) const;
    Result<bool> has_version(std::string_view image, uint64_t version) const;
    // images/<image>/<version> of a published version (ENOENT otherwise).
    Result<std::filesystem::path> version_path(std::string_view image, uint64_t version) const;

    // Publishes the tree at `source` as a new read-only version (newer than the
    // newest, else refused). On BTRFS a subvolume `source` on this filesystem
    // is snapshotted read-only (cheap); any other directory is copied (reflink
    // where possible). `source` is left as it is.
    Status commit(std::string_view image, uint64_t version, const std::filesystem::path& source);

    // A new staging area for `version` from the published `base` (0: empty tree,
    // a full copy). `version` must be newer than the newest published version
    // (EEXIST if it is published, ESTALE if older), `base` must be published
    // (ENOENT). EEXIST if that staging area exists already: resume it or
    // discard it. On BTRFS the tree is the base's spare (the tree the base was
    // published from, moved: no snapshot) when there is one, else a writable
    // snapshot of the base; else a copy (FICLONE reflink per file where
    // supported, else sparse copy).
    // Unheld staging areas of versions that can no longer be published (not
    // newer than the newest) are discarded on the way.
    Result<Staging> begin_staging(std::string_view image, uint64_t version, uint64_t base);
    // Reopens an existing staging area of (image, version, base) with its
    // checkpoint; ENOENT if there is none, EBUSY if another receiver holds it,
    // EBADMSG if the checkpoint is corrupt (discard and begin again).
    Result<Staging> resume_staging(std::string_view image, uint64_t version, uint64_t base);
    // Staging areas on disk (all images when `image` is empty).
    Result<std::vector<StagingInfo>> list_staging(std::string_view image = {}) const;
    // Removes a staging area that nobody holds (EBUSY if someone does).
    Status discard_staging(std::string_view image, uint64_t version, uint64_t base);

    // Deletes a published version (prune). Not atomic for plain directories.
    Status remove_version(std::string_view image, uint64_t version);

private:
    Repository() = default;
    Result<std::filesystem::path> image_dir(std::string_view image, bool create) const;
    // Removes unheld staging areas of versions <= newest (best effort).
    void discard_superseded(std::string_view image, uint64_t newest);
    // `snapshot_of`: the tree is a writable snapshot of that subvolume (commit).
    Result<Staging> open_staging(std::string_view image, uint64_t version, uint64_t base, bool resume,
                                 const std::filesystem::path* snapshot_of);

    std::filesystem::path root_;
    bool btrfs_ = false;
};

}  // namespace icbd::repl
