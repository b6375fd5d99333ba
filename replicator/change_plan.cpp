// The change frames of a diff in protocol order (docs/replication-protocol.md,
// 5.1): deletions deepest first, then content by path with DATA cut at chunk
// boundaries, then directories children first.
#include "icbd/replicator/change_plan.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <set>

#include "entry_stat.hpp"
#include "icbd/replicator/image_path.hpp"
#include "icbd/unique_fd.hpp"
#include "messages.hpp"

namespace icbd::repl {

namespace {

std::string parent_of(const std::string& path) {
    auto slash = path.rfind('/');
    return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

}  // namespace

Result<std::vector<PlannedChange>> plan_change_stream(const SnapshotDiff& diff, const std::filesystem::path& child) {
    std::vector<const FileChange*> deletions, content;
    std::map<std::string, EntryAttrs> dirs;
    std::set<std::string> touched_parents;  // directories that gain or lose a child
    for (const auto& c : diff.changes) {
        if (c.kind == ChangeKind::deleted) {
            deletions.push_back(&c);
            touched_parents.insert(parent_of(c.path));
            continue;
        }
        if (c.kind == ChangeKind::added) touched_parents.insert(parent_of(c.path));
        if (c.attrs.type == EntryType::directory) {
            EntryAttrs a = c.attrs;
            a.size = 0;
            a.symlink_target.clear();
            dirs[c.path] = a;
        } else {
            content.push_back(&c);
        }
    }
    UniqueFd root(::open(child.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root.valid()) return Status::from_errno(errno, "version '" + child.string() + "'");
    for (const auto& p : touched_parents) {
        if (p.empty() || dirs.count(p)) continue;
        auto fd = open_beneath(root.get(), p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
        if (!fd) continue;  // gone in the new version (a deleted tree): nothing to set
        struct ::stat st;
        if (::fstat(fd->get(), &st) != 0) return Status::from_errno(errno, "version '" + child.string() + "': " + p);
        auto a = entry_attrs_from_stat(p, st);
        if (!a) return a.status();
        dirs[p] = *a;
    }
    auto by_path = [](const FileChange* a, const FileChange* b) { return a->path < b->path; };
    std::sort(deletions.begin(), deletions.end(), [](const FileChange* a, const FileChange* b) { return a->path > b->path; });
    std::sort(content.begin(), content.end(), by_path);

    std::vector<PlannedChange> plan;
    for (const FileChange* c : deletions) plan.push_back(PlannedChange{FrameType::del, c->path, 0, 0, {}});
    for (const FileChange* c : content) {
        if (c->attrs.type == EntryType::regular) {
            if (c->kind == ChangeKind::added || (c->changed & kChangedSize))
                plan.push_back(PlannedChange{FrameType::truncate, c->path, 0, c->attrs.size, {}});
            // DATA cut at every multiple of the chunk size, merged with HOLEs by offset.
            std::vector<PlannedChange> pieces;
            for (const auto& r : c->data) {
                for (uint64_t p = r.offset; p < r.end();) {
                    uint64_t q = std::min(r.end(), (p / kChunkSize + 1) * kChunkSize);
                    pieces.push_back(PlannedChange{FrameType::data, c->path, p, q - p, {}});
                    p = q;
                }
            }
            for (const auto& h : c->holes) pieces.push_back(PlannedChange{FrameType::hole, c->path, h.offset, h.length, {}});
            std::stable_sort(pieces.begin(), pieces.end(),
                             [](const PlannedChange& a, const PlannedChange& b) { return a.offset < b.offset; });
            for (auto& p : pieces) plan.push_back(std::move(p));
        }
        plan.push_back(PlannedChange{FrameType::file, c->path, 0, 0, c->attrs});
    }
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it)
        plan.push_back(PlannedChange{FrameType::file, it->first, 0, 0, it->second});
    return plan;
}

}  // namespace icbd::repl
