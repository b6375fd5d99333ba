// A version's boot sets into the page cache: where each file's set comes
// from, the prefetch itself (icbd::prefetch_file), the summary lines, and
// the background queue.
#include "version_prefetcher.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>

#include "boot_set_exchange.hpp"
#include "icbd/boot_set.hpp"
#include "icbd/log.hpp"
#include "icbd/prefetch_report.hpp"
#include "icbd/replicator/image_path.hpp"

namespace icbd::node {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string mib(uint64_t bytes) {
    char out[32];
    std::snprintf(out, sizeof(out), "%.1f MiB", bytes / 1048576.0);
    return out;
}

std::string what_of(const std::string& image, uint64_t version) {
    return "image '" + image + "' version " + std::to_string(version);
}

// The regular files of a version, relative, in name order (symlinks are not followed).
Result<std::vector<std::string>> version_files(const fs::path& dir, const std::string& what) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return Status::error(ENOENT, what + ": not on this node");
    std::vector<std::string> files;
    for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        std::error_code ec2;
        if (it->symlink_status(ec2).type() == fs::file_type::regular)
            files.push_back(it->path().lexically_relative(dir).generic_string());
    }
    if (ec) return Status::error(ec.value(), what + ": listing its files: " + ec.message());
    std::sort(files.begin(), files.end());
    return files;
}

}  // namespace

uint64_t VersionPrefetch::read_bytes() const {
    uint64_t n = 0;
    for (const FilePrefetch& f : files)
        if (f.summary) n += f.summary->read_bytes;
    return n;
}

uint64_t VersionPrefetch::total_bytes() const {
    uint64_t n = 0;
    for (const FilePrefetch& f : files)
        if (f.summary) n += f.summary->total_bytes;
    return n;
}

json to_json(const VersionPrefetch& p) {
    json files = json::array();
    for (const FilePrefetch& f : p.files) {
        json j{{"file", f.file}, {"from", f.from}, {"kind", boot_set_kind_name(f.kind)}, {"source", f.source},
               {"boots", f.boots}};
        if (f.summary) {
            j.update(prefetch_summary_json(*f.summary));
        } else {
            j["total_bytes"] = 0;
            j["read_bytes"] = 0;
            j["end"] = f.error.empty() ? "no boot set" : "failed";
        }
        if (!f.error.empty()) j["error"] = f.error;
        files.push_back(std::move(j));
    }
    const double rate = p.seconds > 0 ? p.read_bytes() / p.seconds / 1048576.0 : 0;
    return json{{"image", p.image},       {"version", p.version},   {"files", files},
                {"total_bytes", p.total_bytes()}, {"read_bytes", p.read_bytes()}, {"seconds", p.seconds},
                {"mib_per_s", rate}};
}

VersionPrefetcher::VersionPrefetcher(fs::path repo, PrefetchOptions options, AskMaster ask, BootSetUploader* uploader)
    : repo_(std::move(repo)), options_(std::move(options)), ask_(std::move(ask)), uploader_(uploader) {
    options_.cancel = &cancel_;
}

VersionPrefetcher::~VersionPrefetcher() { stop(); }

void VersionPrefetcher::start() {
    std::lock_guard lock(mu_);
    if (thread_.joinable()) return;
    stopping_ = false;
    cancel_ = false;
    thread_ = std::thread([this] { loop(); });
}

void VersionPrefetcher::stop() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
        cancel_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void VersionPrefetcher::enqueue(const std::string& image, uint64_t version) {
    {
        std::lock_guard lock(mu_);
        auto job = std::make_pair(image, version);
        if (std::find(queue_.begin(), queue_.end(), job) != queue_.end()) return;
        queue_.push_back(std::move(job));
    }
    cv_.notify_all();
}

bool VersionPrefetcher::idle() {
    std::lock_guard lock(mu_);
    return queue_.empty() && !busy_;
}

void VersionPrefetcher::loop() {
    std::unique_lock lock(mu_);
    while (true) {
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (stopping_) break;
        auto [image, version] = queue_.front();
        queue_.pop_front();
        busy_ = true;
        lock.unlock();
        auto r = run(image, version);
        if (!r) log(LogLevel::warning, "prefetch: " + r.status().message(), {.image = image, .version = version});
        lock.lock();
        busy_ = false;
    }
}

std::optional<BootSet> VersionPrefetcher::find_set(const std::string& image, uint64_t version, FilePrefetch& out) {
    const std::string what = what_of(image, version) + " file '" + out.file + "'";
    const LogFields fields{.image = image, .version = version};
    auto adopt = [&](BootSet set, const char* from, BootSetKind kind, uint64_t source) {
        out.from = from;
        out.kind = kind;
        out.source = source;
        out.boots = set.boots;
        return std::optional<BootSet>(std::move(set));
    };
    // 1. What this node's own desktops recorded.
    auto local = load_boot_set(boot_set_path(repo_, image, version, out.file));
    if (local && local->boots > 0) return adopt(std::move(*local), "local", BootSetKind::recorded, version);
    if (!local && local.status().code() != ENOENT)
        log(LogLevel::warning, what + ": local boot set ignored: " + local.status().message(), fields);
    // 2. The master's: this version's, or its prediction from an older one.
    if (ask_) {
        auto reply = ask_(image, version, out.file);
        if (!reply) {
            log(LogLevel::warning, what + ": boot set from the master: " + reply.status().message(), fields);
        } else if (reply->kind != BootSetKind::none) {
            auto set = BootSet::decode(reply->sidecar, "answer");
            if (!set) {
                log(LogLevel::warning, what + ": boot set from the master ignored: " + set.status().message(), fields);
            } else {
                // The master's boots are its own: a recorded local one is worth more, never overwritten.
                auto again = load_boot_set(boot_set_path(repo_, image, version, out.file));
                if (!(again && again->boots > 0)) {
                    Status saved = uploader_ ? uploader_->save_from_master(image, version, out.file, *set)
                                             : save_boot_set(boot_set_path(repo_, image, version, out.file), *set);
                    if (!saved) log(LogLevel::warning, what + ": saving the master's boot set: " + saved.message(), fields);
                }
                return adopt(std::move(*set), "master", reply->kind, reply->source);
            }
        }
    }
    // 3. This node's own sidecars: the version's (a prediction saved earlier), else an older version's.
    FoundBootSet found = find_boot_set(repo_, image, version, out.file);
    if (found.kind != BootSetKind::none) return adopt(std::move(found.set), "local", found.kind, found.source);
    out.from = "none";
    return std::nullopt;
}

Result<VersionPrefetch> VersionPrefetcher::run(const std::string& image, uint64_t version, const Progress& progress) {
    const std::string what = what_of(image, version);
    const LogFields fields{.image = image, .version = version};
    if (Status v = repl::validate_image_name(image); !v) return Status::error(EINVAL, what + ": " + v.message());
    const fs::path dir = repo_ / "images" / image / repl::version_name(version);
    auto files = version_files(dir, what);
    if (!files) return files.status();
    VersionPrefetch result;
    result.image = image;
    result.version = version;
    const auto t0 = std::chrono::steady_clock::now();
    for (const std::string& file : *files) {
        if (cancel_) break;
        FilePrefetch f;
        f.file = file;
        std::optional<BootSet> set = find_set(image, version, f);
        if (!set) {
            log(LogLevel::info, what + " file '" + file + "': no boot set here or on the master; nothing to prefetch",
                fields);
            result.files.push_back(std::move(f));
            continue;
        }
        PrefetchOptions opt = options_;
        if (progress) opt.progress = [&](const PrefetchProgress& p) { progress(file, p.done_bytes, p.total_bytes); };
        auto summary = prefetch_file(dir / file, *set, opt);
        if (!summary) {
            f.error = summary.status().message();
            log(LogLevel::warning, what + " file '" + file + "': prefetch failed: " + f.error, fields);
        } else {
            const PrefetchSummary& s = *summary;
            std::string origin = f.kind == BootSetKind::predicted
                                     ? "predicted from version " + std::to_string(f.source)
                                     : std::to_string(f.boots) + " boots";
            log(LogLevel::info,
                what + " file '" + file + "' (boot set from " + f.from + ", " + origin + "): " +
                    prefetch_summary_line(s) + ": " + prefetch_end_name(s.end) +
                    (s.detail.empty() ? "" : " (" + s.detail + ")"),
                fields);
            f.summary = s;
        }
        result.files.push_back(std::move(f));
    }
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    char rate[64];
    std::snprintf(rate, sizeof(rate), "%.2f s, %.1f MiB/s", result.seconds,
                  result.seconds > 0 ? result.read_bytes() / result.seconds / 1048576.0 : 0.0);
    size_t with_set = std::count_if(result.files.begin(), result.files.end(), [](auto& f) { return f.summary.has_value(); });
    log(LogLevel::info,
        what + ": prefetch done: " + std::to_string(with_set) + " of " + std::to_string(result.files.size()) +
            " files had a boot set, " + mib(result.read_bytes()) + " read of " + mib(result.total_bytes()) + ", " + rate +
            (cancel_ ? " (stopped: blockd is stopping)" : ""),
        fields);
    return result;
}

}  // namespace icbd::node
