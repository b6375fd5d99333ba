// Image repository operations for operators: import, checkout, commit (with an
// intent in the store so a kill -9 leaves it done or undone), delete, prune and
// release channels, over the replicator's on-disk repository.
#include "image_service.hpp"

#include "icbd/replicator/tree_copy.hpp"

#include <btrfsutil.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "icbd/log.hpp"
#include "icbd/replicator/image_path.hpp"
#include "icbd/replicator/snapshot_diff.hpp"

namespace icbd::node {
namespace {

// A cleanup after a failure failed too: the caller returns the first error;
// this one goes to the log (an intent left behind is finished by recover()).
void log_cleanup(const Status& cleanup, const Status& first) {
    if (!cleanup) log(LogLevel::warning, cleanup.message() + " (while cleaning up after: " + first.message() + ")");
}

namespace fs = std::filesystem;
using nlohmann::json;
using repl::copy_attrs;
using repl::copy_file_data;
using repl::copy_tree;
using Progress = std::function<void(uint64_t done, uint64_t total)>;

constexpr const char* kCommitIntent = "commit";
constexpr const char* kImportIntent = "import";
constexpr const char* kRemoveIntent = "remove";
constexpr const char* kReplicatedMessage = "replicated";
constexpr const char* kTmpPrefix = ".tmp-";  // a checkout being made, under checkouts/

// Built with append: GCC 12 warns falsely (-Wrestrict) on "'" + string + "'".
std::string q(const fs::path& p) {
    std::string s;
    s.append("'").append(p.string()).append("'");
    return s;
}
std::string image_what(const std::string& image) {
    std::string s;
    s.append("image '").append(image).append("'");
    return s;
}
std::string version_what(const std::string& image, uint64_t version) {
    return image_what(image).append(" version ").append(std::to_string(version));
}
Status sys_error(int err, const std::string& what, const std::string& op) {
    return Status::from_errno(err, what + ": " + op);
}
std::string base_key(const std::string& image) { return "checkout_base." + image; }


bool exists_nofollow(const fs::path& p) {
    struct stat st;
    return ::lstat(p.c_str(), &st) == 0;
}

Status fsync_dir(const fs::path& dir, const std::string& what) {
    UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return sys_error(errno, what, "open " + q(dir));
    if (::fsync(fd.get()) < 0) return sys_error(errno, what, "fsync " + q(dir));
    return Status::ok();
}

Status ensure_dir(const fs::path& dir, const std::string& what) {
    if (::mkdir(dir.c_str(), 0755) < 0 && errno != EEXIST) return sys_error(errno, what, "mkdir " + q(dir));
    return Status::ok();
}

// ---- BTRFS (libbtrfsutil sets errno on failure) ---------------------------------

bool is_subvolume(const fs::path& p) { return btrfs_util_is_subvolume(p.c_str()) == BTRFS_UTIL_OK; }

Status btrfs_error(enum btrfs_util_error e, const std::string& what, const std::string& op) {
    int err = errno ? errno : EIO;
    return Status::error(err, what + ": " + op + ": " + btrfs_util_strerror(e) + " (" + std::strerror(err) + ")");
}

// A tree is removed whole: a subvolume by deletion (instant; the cleaner
// frees the space), anything else recursively. Missing is fine.
Status remove_tree(const fs::path& p, const std::string& what) {
    struct stat st;
    if (::lstat(p.c_str(), &st) < 0) return errno == ENOENT ? Status::ok() : sys_error(errno, what, "stat " + q(p));
    if (S_ISDIR(st.st_mode) && is_subvolume(p)) {
        errno = 0;
        auto e = btrfs_util_delete_subvolume(p.c_str(), BTRFS_UTIL_DELETE_SUBVOLUME_RECURSIVE);
        if (e != BTRFS_UTIL_OK) return btrfs_error(e, what, "delete subvolume " + q(p));
    } else {
        std::error_code ec;
        fs::remove_all(p, ec);
        if (ec) return Status::error(ec.value(), what + ": remove " + q(p) + ": " + ec.message());
    }
    return fsync_dir(p.parent_path(), what);
}

// ---- copies, where there are no snapshots ------------------------------------------

Status clone_tree(const fs::path& src, const fs::path& dest, bool btrfs, const std::string& what) {
    if (btrfs) {
        errno = 0;
        auto e = btrfs_util_create_snapshot(src.c_str(), dest.c_str(), 0, nullptr, nullptr);
        if (e == BTRFS_UTIL_OK) return Status::ok();
        if (errno != EXDEV) return btrfs_error(e, what, "snapshot " + q(src) + " to " + q(dest));
        // checkouts/ on another filesystem than images/: copy instead.
    }
    if (::mkdir(dest.c_str(), 0755) < 0) return sys_error(errno, what, "mkdir " + q(dest));
    UniqueFd s(::open(src.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    UniqueFd t(::open(dest.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!s.valid() || !t.valid()) return sys_error(errno, what, "open " + q(s.valid() ? dest : src));
    if (Status r = copy_tree(s.get(), t.get(), src, what); !r) return r;
    struct stat st;
    if (::fstat(s.get(), &st) < 0) return sys_error(errno, what, "stat " + q(src));
    if (Status r = copy_attrs(t.get(), st, what); !r) return r;
    // The version's root is read-only on copies too; a working copy must not be.
    if (::fchmod(t.get(), (st.st_mode & 07777) | S_IWUSR) < 0) return sys_error(errno, what, "chmod " + q(dest));
    if (::syncfs(t.get()) < 0) return sys_error(errno, what, "sync " + q(dest));
    return Status::ok();
}

// Apparent size of a tree's regular files.
Result<uint64_t> tree_size(const fs::path& root, const std::string& what);

Status copy_raw_into(const fs::path& from, const struct stat& st, int tree_fd, const Progress& progress,
                     const std::string& what) {
    UniqueFd src(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
    if (!src.valid()) return sys_error(errno, what, "open");
    UniqueFd dst(::openat(tree_fd, "disk.raw", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!dst.valid()) return sys_error(errno, what, "create disk.raw");
    return copy_file_data(src.get(), dst.get(), static_cast<uint64_t>(st.st_size), progress, what);
}

// A directory of image files into the tree; the root takes the source's
// owner, mode and mtime as the rest of the tree does.
Status copy_dir_into(const fs::path& from, int tree_fd, const Progress& progress, const std::string& what) {
    uint64_t total = 0;
    if (progress) {
        auto size = tree_size(from, what);
        total = size ? *size : 0;
        progress(0, total);
    }
    UniqueFd src(::open(from.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!src.valid()) return sys_error(errno, what, "open");
    if (Status s = copy_tree(src.get(), tree_fd, from, what); !s) return s;
    struct stat st;
    if (::fstat(src.get(), &st) < 0) return sys_error(errno, what, "stat");
    if (Status s = copy_attrs(tree_fd, st, what); !s) return s;
    if (progress) progress(total, total);
    return Status::ok();
}


Result<uint64_t> tree_size(const fs::path& root, const std::string& what) {
    uint64_t total = 0;
    std::error_code ec;
    for (fs::recursive_directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
        auto st = it->symlink_status(ec);
        if (ec) break;
        if (fs::is_regular_file(st)) {
            uint64_t sz = it->file_size(ec);
            if (ec) break;
            total += sz;
        }
    }
    if (ec) return Status::error(ec.value(), what + ": size of " + q(root) + ": " + ec.message());
    return total;
}

uint64_t json_u64(const json& j, const char* key) { return j.contains(key) ? j[key].get<uint64_t>() : 0; }
std::string json_str(const json& j, const char* key) { return j.contains(key) ? j[key].get<std::string>() : ""; }

}  // namespace

Status validate_name(const std::string& what, const std::string& name) {
    auto bad = [&](const std::string& why) { return Status::error(EINVAL, what + " '" + name + "': " + why); };
    if (name.empty()) return bad("empty");
    if (name.size() > repl::kMaxImageNameLength)
        return bad("longer than " + std::to_string(repl::kMaxImageNameLength) + " characters");
    for (char c : name)
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return bad("only letters, digits, '.', '_' and '-' are allowed (no '/')");
    if (name[0] == '.' || name[0] == '-') return bad("must not start with '.' or '-'");
    return Status::ok();
}

ImageService::ImageService(repl::Repository repo, NodeStore& store, UsersOf users_of)
    : repo_(std::move(repo)), store_(store), users_of_(std::move(users_of)) {}

fs::path ImageService::checkout_path(const std::string& image) const { return checkouts_dir() / image; }

std::vector<std::string> ImageService::users(const std::string& image, uint64_t version, const Channels& c) const {
    std::vector<std::string> out;
    if (users_of_) out = users_of_(image, version);
    if (c.production == version) out.push_back("channel production");
    if (c.test == version) out.push_back("channel test");
    return out;
}

Result<VersionRecord> ImageService::describe(const std::string& image, uint64_t version, const std::string& message) {
    std::string what = version_what(image, version);
    auto path = repo_.version_path(image, version);
    if (!path) return path.status();
    VersionRecord v;
    v.image = image;
    v.version = version;
    v.message = message;
    v.created_ms = now_ms();
    auto size = tree_size(*path, what);
    if (!size) return size.status();
    v.size_bytes = *size;
    // The push payload: what changed since the previous version on disk (from
    // extent metadata on BTRFS, without reading unchanged data).
    auto versions = repo_.list_versions(image);
    if (!versions) return versions.status();
    std::optional<fs::path> parent;
    auto it = std::lower_bound(versions->begin(), versions->end(), version);
    if (it != versions->begin()) {
        auto pp = repo_.version_path(image, *std::prev(it));
        if (!pp) return pp.status();
        parent = *pp;
    }
    auto diff = repl::diff_versions(parent, *path);
    // The figure only informs (listings, lag); a tree the diff cannot read
    // (a FIFO...) must not leave a published version without its record, so
    // the whole size stands in as the upper bound of the payload.
    v.delta_bytes = diff ? diff->stats.data_bytes : v.size_bytes;
    return v;
}

Result<VersionRecord> ImageService::finish_commit(int64_t intent, const std::string& image, uint64_t version,
                                                  const std::string& message, const fs::path& tree) {
    std::string what = version_what(image, version);
    if (!tree.empty()) {
        if (Status s = remove_tree(tree, what); !s) return s;
    }
    if (Status s = store_.put_setting(base_key(image), ""); !s) return s;
    auto rec = describe(image, version, message);
    if (!rec) return rec.status();
    if (Status s = store_.put_version(*rec); !s) return s;
    auto c = store_.channels(image);
    if (!c) return c.status();
    c->image = image;
    c->test = version;
    if (c->production == 0) c->production = version;
    if (Status s = store_.set_channels(*c); !s) return s;
    if (Status s = store_.clear_intent(intent); !s) return s;
    return rec;
}

// ---- recovery ----------------------------------------------------------------------

Status ImageService::recover_intent(const Intent& in) {
    json args;
    try {
        args = json::parse(in.args);
    } catch (const json::exception& e) {
        return Status::error(EBADMSG, "intent " + std::to_string(in.id) + " (" + in.kind + "): malformed: " + e.what());
    }
    std::string image, message;
    uint64_t version = 0;
    fs::path checkout;
    try {
        image = json_str(args, "image");
        version = json_u64(args, "version");
        message = json_str(args, "message");
        checkout = json_str(args, "checkout");
    } catch (const json::exception& e) {
        return Status::error(EBADMSG, "intent " + std::to_string(in.id) + " (" + in.kind + "): malformed: " + e.what());
    }
    if (Status s = validate_name("image name", image); !s) return s;
    std::string what = version_what(image, version);
    auto on_disk = repo_.has_version(image, version);
    if (!on_disk) return on_disk.status();

    if (in.kind == kRemoveIntent) {
        if (*on_disk) {
            if (Status s = repo_.remove_version(image, version); !s) return s;
        }
        remove_boot_sets(image, version);
        if (Status s = store_.delete_version(image, version); !s) return s;
        return store_.clear_intent(in.id);
    }
    // Published or not, the staging area is done with: after a publish only its
    // empty directory can be left, before it a half-built tree.
    if (Status s = repo_.discard_staging(image, version, 0); !s && s.code() != ENOENT) return s;
    if (*on_disk) {
        // Published before the crash: the commit happened; finish its tail.
        auto r = finish_commit(in.id, image, version, message, in.kind == kCommitIntent ? checkout : fs::path());
        return r ? Status::ok() : r.status();
    }
    // Not published: the commit did not happen; the administrator's working
    // copy stays as it was.
    return store_.clear_intent(in.id);
}

Status ImageService::recover() {
    std::lock_guard lock(mu_);
    auto intents = store_.intents();
    if (!intents) return intents.status();
    for (const auto& in : *intents) {
        if (in.kind != kCommitIntent && in.kind != kImportIntent && in.kind != kRemoveIntent) continue;
        if (Status s = recover_intent(in); !s) return s;
    }
    // Checkouts that were being made when we died are incomplete.
    std::error_code ec;
    if (fs::is_directory(checkouts_dir(), ec)) {
        for (const auto& e : fs::directory_iterator(checkouts_dir(), ec)) {
            std::string n = e.path().filename().string();
            if (n.rfind(kTmpPrefix, 0) == 0) {
                if (Status s = remove_tree(e.path(), "checkouts"); !s) return s;
            }
        }
    }
    // Versions that arrived without metadata (received by replication).
    auto images = repo_.list_images();
    if (!images) return images.status();
    for (const auto& image : *images) {
        auto versions = repo_.list_versions(image);
        if (!versions) return versions.status();
        auto records = store_.versions(image);
        if (!records) return records.status();
        for (uint64_t v : *versions) {
            bool known = std::any_of(records->begin(), records->end(),
                                     [&](const VersionRecord& r) { return r.version == v; });
            if (known) continue;
            auto rec = describe(image, v, kReplicatedMessage);
            if (!rec) return rec.status();
            if (Status s = store_.put_version(*rec); !s) return s;
        }
    }
    return Status::ok();
}

// ---- import, checkout, commit ---------------------------------------------------------

Result<VersionRecord> ImageService::import(const std::string& image, const fs::path& from, const std::string& message,
                                           const Progress& progress) {
    std::lock_guard lock(mu_);
    if (Status s = validate_name("image name", image); !s) return s;
    std::string what = version_what(image, 1) + " (import of " + q(from) + ")";
    auto newest = repo_.newest_version(image);
    if (!newest) return newest.status();
    if (newest->has_value())
        return Status::error(EEXIST, image_what(image) + ": exists already (newest version " +
                                         std::to_string(**newest) + "); check it out and commit instead");
    struct stat st;
    if (::stat(from.c_str(), &st) < 0) return sys_error(errno, what, "stat");
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return Status::error(EINVAL, what + ": neither a raw disk file nor a directory of image files");

    json args = {{"image", image}, {"version", 1}, {"message", message}};
    auto intent = store_.add_intent(kImportIntent, args.dump());
    if (!intent) return intent.status();
    Status made;
    if (S_ISDIR(st.st_mode) && repo_.is_btrfs() && is_subvolume(from)) {
        // A subvolume (of this filesystem) becomes the version by a snapshot.
        made = repo_.commit(image, 1, from);
    } else {
        // Anything else is copied straight into a staging tree that is
        // published as version 1: one copy (reflinks where the filesystem
        // can), holes kept, nothing visible before it is complete.
        auto staging = repo_.begin_staging(image, 1, 0);
        made = staging.status();
        if (staging) {
            repl::Staging& sg = staging.value();
            made = S_ISDIR(st.st_mode) ? copy_dir_into(from, sg.tree_fd(), progress, what)
                                       : copy_raw_into(from, st, sg.tree_fd(), progress, what);
            if (made) made = sg.publish();
            if (!made) log_cleanup(sg.abort(), made);
        }
    }
    if (!made) {
        log_cleanup(store_.clear_intent(*intent), made);
        return made;
    }
    return finish_commit(*intent, image, 1, message, {});
}

Result<fs::path> ImageService::checkout(const std::string& image) {
    std::lock_guard lock(mu_);
    if (Status s = validate_name("image name", image); !s) return s;
    auto newest = repo_.newest_version(image);
    if (!newest) return newest.status();
    if (!newest->has_value()) return Status::error(ENOENT, image_what(image) + ": no such image");
    uint64_t base = **newest;
    std::string what = version_what(image, base) + " (checkout)";
    fs::path dest = checkout_path(image);
    if (exists_nofollow(dest))
        return Status::error(EEXIST, image_what(image) + ": a working copy exists already at " + q(dest) +
                                         ": commit or discard it first");
    if (Status s = ensure_dir(checkouts_dir(), what); !s) return s;
    auto src = repo_.version_path(image, base);
    if (!src) return src.status();
    // Recorded first: a base without a working copy means nothing, a working
    // copy without its base would be.
    if (Status s = store_.put_setting(base_key(image), std::to_string(base)); !s) return s;
    // Made under a temporary name and renamed when complete, so a crash never
    // leaves a half copy that looks like a working copy.
    fs::path tmp = checkouts_dir() / (kTmpPrefix + image);
    if (Status s = remove_tree(tmp, what); !s) return s;
    Status made = clone_tree(*src, tmp, repo_.is_btrfs(), what);
    if (made && ::rename(tmp.c_str(), dest.c_str()) < 0) made = sys_error(errno, what, "rename to " + q(dest));
    if (made) made = fsync_dir(checkouts_dir(), what);
    if (!made) {
        log_cleanup(remove_tree(tmp, what), made);
        return made;
    }
    return dest;
}

Result<VersionRecord> ImageService::commit(const std::string& image, const std::string& message) {
    std::lock_guard lock(mu_);
    if (Status s = validate_name("image name", image); !s) return s;
    fs::path tree = checkout_path(image);
    if (!exists_nofollow(tree))
        return Status::error(ENOENT, image_what(image) + ": no working copy to commit (no " + q(tree) +
                                         "; check the image out first)");
    auto newest = repo_.newest_version(image);
    if (!newest) return newest.status();
    uint64_t version = newest->value_or(0) + 1;
    std::string what = version_what(image, version);

    json args = {{"image", image}, {"version", version}, {"checkout", tree.string()}, {"message", message}};
    auto intent = store_.add_intent(kCommitIntent, args.dump());
    if (!intent) return intent.status();
    if (Status s = repo_.commit(image, version, tree); !s) {
        log_cleanup(store_.clear_intent(*intent), s);  // nothing was published; the working copy is untouched
        return s;
    }
    return finish_commit(*intent, image, version, message, tree);
}

Status ImageService::discard_checkout(const std::string& image) {
    std::lock_guard lock(mu_);
    if (Status s = validate_name("image name", image); !s) return s;
    fs::path tree = checkout_path(image);
    if (!exists_nofollow(tree)) return Status::error(ENOENT, image_what(image) + ": no working copy to discard");
    if (Status s = remove_tree(tree, image_what(image) + " (discard working copy)"); !s) return s;
    return store_.put_setting(base_key(image), "");
}

// ---- listings --------------------------------------------------------------------------

Result<std::vector<ImageSummary>> ImageService::list() {
    std::lock_guard lock(mu_);
    auto images = repo_.list_images();
    if (!images) return images.status();
    std::vector<ImageSummary> out;
    for (const auto& image : *images) {
        auto versions = repo_.list_versions(image);
        if (!versions) return versions.status();
        if (versions->empty()) continue;  // an import that never completed
        ImageSummary s;
        s.image = image;
        s.versions = *versions;
        s.newest = versions->back();
        auto c = store_.channels(image);
        if (!c) return c.status();
        s.channels = *c;
        if (exists_nofollow(checkout_path(image))) {
            auto base = store_.setting(base_key(image));
            if (!base) return base.status();
            uint64_t b = 0;
            if (base->has_value() && !(*base)->empty()) b = std::strtoull((*base)->c_str(), nullptr, 10);
            s.checkout_base = b;
        }
        out.push_back(std::move(s));
    }
    return out;
}

Result<std::vector<VersionInfo>> ImageService::versions(const std::string& image) {
    std::lock_guard lock(mu_);
    if (Status s = validate_name("image name", image); !s) return s;
    auto versions = repo_.list_versions(image);
    if (!versions) return versions.status();
    if (versions->empty()) return Status::error(ENOENT, image_what(image) + ": no such image");
    auto records = store_.versions(image);
    if (!records) return records.status();
    auto c = store_.channels(image);
    if (!c) return c.status();
    std::map<uint64_t, VersionRecord> by_version;
    for (auto& r : *records) by_version[r.version] = r;
    std::vector<VersionInfo> out;
    for (uint64_t v : *versions) {
        VersionInfo info;
        auto it = by_version.find(v);
        if (it != by_version.end()) info.record = it->second;
        else info.record = {image, v, "", 0, 0, 0};  // not described yet (recover() does it)
        if (c->production == v) info.channels.push_back("production");
        if (c->test == v) info.channels.push_back("test");
        info.used_by = users(image, v, *c);
        out.push_back(std::move(info));
    }
    return out;
}

// ---- deletion ----------------------------------------------------------------------------

// A version's boot sets (docs/boot-set.md) go with it; they live outside the
// read-only version, so the repository does not know them.
void ImageService::remove_boot_sets(const std::string& image, uint64_t version) {
    std::error_code ec;
    fs::remove_all(repo_.images_dir() / image / ".bootsets" / repl::version_name(version), ec);
    if (ec) log(LogLevel::warning, version_what(image, version) + ": removing its boot sets: " + ec.message(),
                {.image = image, .version = version});
}

Status ImageService::remove_locked(const std::string& image, uint64_t version) {
    std::string what = version_what(image, version);
    auto on_disk = repo_.has_version(image, version);
    if (!on_disk) return on_disk.status();
    if (!*on_disk) return Status::error(ENOENT, what + ": no such version");
    auto c = store_.channels(image);
    if (!c) return c.status();
    auto who = users(image, version, *c);
    if (!who.empty()) {
        std::string list;
        for (const auto& u : who) list += (list.empty() ? "" : ", ") + u;
        return Status::error(EBUSY, what + ": in use by " + list);
    }
    json args = {{"image", image}, {"version", version}};
    auto intent = store_.add_intent(kRemoveIntent, args.dump());
    if (!intent) return intent.status();
    if (Status s = repo_.remove_version(image, version); !s) return s;  // the intent finishes it at restart
    remove_boot_sets(image, version);
    if (Status s = store_.delete_version(image, version); !s) return s;
    if (c->previous_production == version) {
        // Rollback must not lead to a version that is gone.
        c->previous_production = 0;
        if (Status s = store_.set_channels(*c); !s) return s;
    }
    return store_.clear_intent(*intent);
}

Status ImageService::remove(const std::string& image, uint64_t version) {
    std::lock_guard lock(mu_);
    if (Status s = validate_name("image name", image); !s) return s;
    return remove_locked(image, version);
}

Result<std::pair<std::vector<uint64_t>, std::vector<std::string>>> ImageService::prune(const std::string& image,
                                                                                       unsigned keep) {
    std::lock_guard lock(mu_);
    if (Status s = validate_name("image name", image); !s) return s;
    if (keep == 0) return Status::error(EINVAL, image_what(image) + ": prune must keep at least one version");
    auto versions = repo_.list_versions(image);
    if (!versions) return versions.status();
    if (versions->empty()) return Status::error(ENOENT, image_what(image) + ": no such image");
    std::pair<std::vector<uint64_t>, std::vector<std::string>> result;
    if (versions->size() <= keep) return result;
    auto c = store_.channels(image);
    if (!c) return c.status();
    for (size_t i = 0; i + keep < versions->size(); ++i) {
        uint64_t v = (*versions)[i];
        Status s = remove_locked(image, v);
        if (s) result.first.push_back(v);
        else if (s.code() == EBUSY) result.second.push_back(s.message());
        else return s;
    }
    return result;
}

// ---- channels -------------------------------------------------------------------------------

Result<Channels> ImageService::promote(const std::string& image, uint64_t version) {
    std::lock_guard lock(mu_);
    if (Status s = validate_name("image name", image); !s) return s;
    auto on_disk = repo_.has_version(image, version);
    if (!on_disk) return on_disk.status();
    if (!*on_disk) return Status::error(ENOENT, version_what(image, version) + ": no such version");
    auto c = store_.channels(image);
    if (!c) return c.status();
    c->image = image;
    if (c->production == version) return c;
    c->previous_production = c->production;
    c->production = version;
    if (Status s = store_.set_channels(*c); !s) return s;
    return c;
}

Result<Channels> ImageService::rollback(const std::string& image) {
    std::lock_guard lock(mu_);
    if (Status s = validate_name("image name", image); !s) return s;
    auto c = store_.channels(image);
    if (!c) return c.status();
    c->image = image;
    if (c->previous_production == 0)
        return Status::error(ENOENT, image_what(image) + ": no previous production version to roll back to");
    auto on_disk = repo_.has_version(image, c->previous_production);
    if (!on_disk) return on_disk.status();
    if (!*on_disk)
        return Status::error(ENOENT, version_what(image, c->previous_production) +
                                         ": the previous production version is gone; promote a version instead");
    std::swap(c->production, c->previous_production);
    if (Status s = store_.set_channels(*c); !s) return s;
    return c;
}

// Reads only the published (read-only) version, so it takes no lock: a client
// can be exported while a long import runs.
Result<std::string> ImageService::disk_file(const std::string& image, uint64_t version) {
    if (Status s = validate_name("image name", image); !s) return s;
    std::string what = version_what(image, version);
    auto dir = repo_.version_path(image, version);
    if (!dir) return dir.status();
    struct stat st;
    if (::lstat((*dir / "disk.raw").c_str(), &st) == 0 && S_ISREG(st.st_mode)) return std::string("disk.raw");
    std::vector<std::string> files;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(*dir, ec)) {
        if (e.symlink_status(ec).type() == fs::file_type::regular) files.push_back(e.path().filename().string());
    }
    if (ec) return Status::error(ec.value(), what + ": list " + q(*dir) + ": " + ec.message());
    if (files.size() == 1) return files.front();
    if (files.empty()) return Status::error(EINVAL, what + ": no disk.raw and no regular file at its top: no disk");
    std::sort(files.begin(), files.end());
    std::string names;
    for (const auto& f : files) names += (names.empty() ? "'" : ", '") + f + "'";
    return Status::error(EINVAL, what + ": no disk.raw and " + std::to_string(files.size()) +
                                     " files at its top (" + names + "): cannot tell which is the disk");
}

}  // namespace icbd::node
