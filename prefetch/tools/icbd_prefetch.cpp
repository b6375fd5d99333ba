// icbd-prefetch: reads the boot sets of golden files into the page cache
// (docs/boot-set.md, "Prefetch"; docs/man/icbd-prefetch.1.md). This file finds
// each file's sidecar, runs icbd::prefetch_file and reports.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "icbd/boot_set.hpp"
#include "icbd/build_version.hpp"
#include "icbd/parse_size.hpp"
#include "icbd/prefetch.hpp"
#include "icbd/prefetch_report.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

int usage_error(const std::string& why) {
    std::cerr << "icbd-prefetch: " << why << "\n(icbd-prefetch --help shows the usage)\n";
    return kExitUsage;
}

std::string mib(uint64_t bytes) {
    std::ostringstream o;
    o.setf(std::ios::fixed);
    o.precision(1);
    o << double(bytes) / 1048576.0 << " MiB";
    return o.str();
}

bool all_digits(const std::string& s) {
    return !s.empty() && s.size() <= 19 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// One golden file to prefetch and where its boot set comes from.
struct Job {
    fs::path file;
    fs::path bootset;
    std::optional<uint64_t> predicted_from;  // an older version's set (docs/boot-set.md, "Shipping")
};

// Where a file sits in a repository: <repo>/images/<image>/<version>/<rel>.
struct RepoPlace {
    fs::path repo;
    std::string image;
    uint64_t version = 0;
    std::string rel;
};

std::optional<RepoPlace> repo_place(const fs::path& file) {
    std::error_code ec;
    const fs::path abs = fs::weakly_canonical(fs::absolute(file), ec);
    if (ec) return std::nullopt;
    std::vector<fs::path> parts(abs.begin(), abs.end());
    for (size_t i = parts.size() >= 4 ? parts.size() - 4 + 1 : 0; i-- > 0;) {
        if (parts[i] != "images" || !all_digits(parts[i + 2].string())) continue;
        RepoPlace p;
        for (size_t k = 0; k < i; ++k) p.repo /= parts[k];
        p.image = parts[i + 1].string();
        p.version = std::stoull(parts[i + 2].string());
        fs::path rel;
        for (size_t k = i + 3; k < parts.size(); ++k) rel /= parts[k];
        p.rel = rel.string();
        return p;
    }
    return std::nullopt;
}

// The version's own sidecar of `rel`, else the newest older version's, as a
// prediction; nullopt when neither exists.
std::optional<Job> find_boot_set(const RepoPlace& p, const fs::path& file) {
    const fs::path own = icbd::boot_set_path(p.repo, p.image, p.version, p.rel);
    std::error_code ec;
    if (fs::exists(own, ec)) return Job{file, own, std::nullopt};
    std::vector<uint64_t> older;
    for (const auto& e : fs::directory_iterator(p.repo / "images" / p.image / ".bootsets", ec)) {
        const std::string name = e.path().filename().string();
        if (all_digits(name) && std::stoull(name) < p.version) older.push_back(std::stoull(name));
    }
    std::sort(older.rbegin(), older.rend());
    for (uint64_t v : older) {
        const fs::path cand = icbd::boot_set_path(p.repo, p.image, v, p.rel);
        if (fs::exists(cand, ec)) return Job{file, cand, v};
    }
    return std::nullopt;
}

class Report {
public:
    explicit Report(bool as_json) : json_(as_json) {}

    void error(const std::string& file, const std::string& message) {
        failed_ = true;
        if (json_) errors_.push_back({{"file", file}, {"error", message}});
        std::cerr << "icbd-prefetch: " << message << "\n";
    }
    // A corrupt or foreign sidecar: one line, the file is skipped (not a failure).
    void skipped(const Job& job, const std::string& why) {
        if (json_) skipped_.push_back({{"file", job.file.string()}, {"bootset", job.bootset.string()}, {"reason", why}});
        std::cerr << "icbd-prefetch: skipping " << job.file.string() << ": " << why << "\n";
    }
    void done(const Job& job, const icbd::PrefetchSummary& s) {
        icbd::add_prefetch_summary(total_, s);
        ++files_;
        if (s.end != icbd::PrefetchEnd::complete) ++stopped_;
        if (json_) {
            json j = icbd::prefetch_summary_json(s);
            j["file"] = s.file;
            j["bootset"] = job.bootset.string();
            j["predicted_from"] = job.predicted_from ? json(*job.predicted_from) : json(nullptr);
            files_json_.push_back(std::move(j));
            return;
        }
        std::cout << s.file << ": " << icbd::prefetch_summary_line(s);
        if (s.end != icbd::PrefetchEnd::complete) std::cout << "; stopped: " << icbd::prefetch_end_name(s.end) << " (" << s.detail << ")";
        else std::cout << "; complete";
        if (job.predicted_from) std::cout << "; boot set predicted from version " << *job.predicted_from;
        std::cout << "\n";
    }
    int finish() {
        if (json_) {
            json t = icbd::prefetch_summary_json(total_);
            t.erase("end");
            t.erase("detail");
            t["files"] = files_;
            t["stopped_early"] = stopped_;
            t["skipped"] = skipped_.size();
            json out = {{"files", files_json_}, {"skipped", skipped_}, {"errors", errors_}, {"total", t}};
            std::cout << out.dump(2) << "\n";
        } else if (files_ > 1) {
            std::cout << "total: " << files_ << " files, " << icbd::prefetch_summary_line(total_);
            if (stopped_) std::cout << "; " << stopped_ << " stopped early";
            std::cout << "\n";
        }
        std::cout.flush();
        return failed_ || !std::cout ? kExitFailed : kExitOk;
    }

private:
    bool json_;
    bool failed_ = false;
    uint64_t files_ = 0, stopped_ = 0;
    icbd::PrefetchSummary total_;
    json files_json_ = json::array(), skipped_ = json::array(), errors_ = json::array();
};

void run_job(const Job& job, const icbd::PrefetchOptions& base, bool show_progress, Report& report) {
    auto set = icbd::load_boot_set(job.bootset);
    if (!set) {
        // Refused by the decoder: ignored with one line (docs/boot-set.md).
        if (set.status().code() == EBADMSG) return report.skipped(job, set.status().message());
        return report.error(job.file.string(), "boot set of '" + job.file.string() + "': " + set.status().message());
    }
    std::error_code ec;
    const auto size = fs::file_size(job.file, ec);
    // A predicted set (or a file that changed size): chunks past the end dropped.
    if (!ec && size != set->file_size()) set->resize(size);
    icbd::PrefetchOptions o = base;
    if (show_progress)
        o.progress = [name = job.file.string()](const icbd::PrefetchProgress& p) {
            const double pct = p.total_bytes ? 100.0 * double(p.done_bytes) / double(p.total_bytes) : 100.0;
            std::fprintf(stderr, "\r%s: %s of %s (%.0f %%)\033[K", name.c_str(), mib(p.done_bytes).c_str(),
                         mib(p.total_bytes).c_str(), pct);
            std::fflush(stderr);
        };
    auto s = icbd::prefetch_file(job.file, *set, o);
    if (show_progress) std::fprintf(stderr, "\r\033[K");
    if (!s) return report.error(job.file.string(), s.status().message());
    report.done(job, *s);
}

// Every regular file of IMAGE VERSION that has a boot set, in name order.
icbd::Result<std::vector<Job>> repo_jobs(const fs::path& repo, const std::string& image, uint64_t version) {
    const fs::path dir = repo / "images" / image / std::to_string(version);
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        return icbd::Status::error(ENOENT, "image '" + image + "' version " + std::to_string(version) + ": no directory " +
                                               dir.string());
    std::vector<fs::path> files;
    fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
    if (ec) return icbd::Status::from_errno(ec.value(), "image '" + image + "' version " + std::to_string(version) + ": " + dir.string());
    for (; it != end; it.increment(ec)) {
        if (ec) return icbd::Status::from_errno(ec.value(), "image '" + image + "' version " + std::to_string(version) + ": listing");
        if (it->is_regular_file(ec) && !it->is_symlink(ec)) files.push_back(it->path());
    }
    std::sort(files.begin(), files.end());
    std::vector<Job> jobs;
    for (const fs::path& f : files)
        if (auto job = find_boot_set({repo, image, version, fs::relative(f, dir).string()}, f)) jobs.push_back(*job);
    if (jobs.empty())
        std::cerr << "icbd-prefetch: image '" << image << "' version " << version << ": none of its " << files.size()
                  << " files has a boot set (nor one of an older version)\n";
    return jobs;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Read the boot sets of golden files into the page cache, at idle I/O priority.", "icbd-prefetch"};
    app.set_version_flag("--version", ICBD_VERSION_LINE("icbd-prefetch"));
    bool as_json = false, full_speed = false;
    std::string max_rate, bootset, repo;
    std::vector<std::string> args;
    app.add_flag("--json", as_json, "Print the summaries as JSON");
    app.add_option("--max-rate", max_rate, "Read at most R bytes per second (e.g. 64M; 0: no limit)");
    app.add_flag("--full-speed", full_speed,
                 "Do not give way to others using the disk (default: fewer, smaller, paced reads while they do)");
    app.add_option("--bootset", bootset, "The boot set of the one FILE (default: its sidecar in the repository)");
    app.add_option("--repo", repo, "Prefetch every file of IMAGE VERSION in the repository DIR");
    app.add_option("ARGS", args, "FILE... or, with --repo, IMAGE VERSION");
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {
        return app.exit(e);  // --help, --version
    } catch (const CLI::ParseError& e) {
        return usage_error(e.what());
    }

    icbd::PrefetchOptions options;
    options.adaptive = !full_speed;
    if (!max_rate.empty()) {
        auto r = icbd::parse_size(max_rate);
        if (!r) return usage_error("--max-rate: " + r.status().message());
        options.max_rate = *r;
    }
    std::vector<Job> jobs;
    Report report(as_json);
    if (!repo.empty()) {
        if (args.size() != 2) return usage_error("--repo DIR takes IMAGE VERSION");
        if (!bootset.empty()) return usage_error("--bootset is for one FILE, not with --repo");
        const std::string& image = args[0];
        if (image.empty() || image[0] == '.' || image.find('/') != std::string::npos)
            return usage_error("IMAGE '" + image + "' is not an image name");
        if (!all_digits(args[1]) || std::stoull(args[1]) == 0)
            return usage_error("VERSION '" + args[1] + "' is not a version number");
        auto found = repo_jobs(repo, image, std::stoull(args[1]));
        if (!found) {
            report.error(image, found.status().message());
            return report.finish();
        }
        jobs = std::move(*found);
    } else {
        if (args.empty()) return usage_error("no FILE given");
        if (!bootset.empty() && args.size() != 1) return usage_error("--bootset names the boot set of one FILE");
        for (const std::string& a : args) {
            if (!bootset.empty()) {
                jobs.push_back({a, bootset, std::nullopt});
                continue;
            }
            auto place = repo_place(a);
            if (!place) {
                report.error(a, "'" + a + "' is not in a repository (<repo>/images/<image>/<version>/...): give --bootset");
                continue;
            }
            auto job = find_boot_set(*place, a);
            if (!job) {
                report.error(a, "'" + a + "' has no boot set (" +
                                    icbd::boot_set_path(place->repo, place->image, place->version, place->rel).string() +
                                    ", nor one of an older version)");
                continue;
            }
            jobs.push_back(*job);
        }
    }
    const bool show_progress = !as_json && ::isatty(STDERR_FILENO);
    for (const Job& job : jobs) run_job(job, options, show_progress, report);
    return report.finish();
}
