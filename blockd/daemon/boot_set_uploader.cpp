// The replica's uploader of boot sets (docs/blockd-peer-protocol.md,
// "bootset.put"): scan by mtime and size, send the boots that are new, keep
// the record of what was sent in the `settings` table (key bootsets.sent).
#include "boot_set_uploader.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <set>

#include <nlohmann/json.hpp>

#include "boot_set_exchange.hpp"
#include "icbd/log.hpp"
#include "icbd/replicator/image_path.hpp"
#include "peer_protocol.hpp"
#include "peer_server.hpp"

namespace icbd::node {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kRecordKey = "bootsets.sent";
constexpr std::string_view kSuffix = ".bset";

std::string key_of(const std::string& image, uint64_t version, const std::string& file) {
    return image + "/" + std::to_string(version) + "/" + file;
}

bool stat_of(const fs::path& p, int64_t& mtime_ns, uint64_t& size) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return false;
    mtime_ns = int64_t(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
    size = uint64_t(st.st_size);
    return true;
}

}  // namespace

BootSetUploader::BootSetUploader(Options options, NodeStore& store) : opt_(std::move(options)), store_(store) {}

BootSetUploader::~BootSetUploader() { stop(); }

void BootSetUploader::start() {
    std::lock_guard lock(wake_mu_);
    if (thread_.joinable()) return;
    stopping_ = false;
    thread_ = std::thread([this] { run(); });
}

void BootSetUploader::stop() {
    {
        std::lock_guard lock(wake_mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void BootSetUploader::trigger() {
    {
        std::lock_guard lock(wake_mu_);
        wake_ = true;
    }
    cv_.notify_all();
}

void BootSetUploader::run() {
    std::unique_lock lock(wake_mu_);
    while (!stopping_) {
        cv_.wait_for(lock, opt_.fallback, [this] { return stopping_ || wake_; });
        if (stopping_) break;
        wake_ = false;
        if (opt_.ready && !opt_.ready()) continue;
        lock.unlock();
        if (auto r = scan_once(); !r) log(LogLevel::error, "boot set uploader: " + r.status().message());
        lock.lock();
    }
}

Status BootSetUploader::load_record() {
    if (loaded_) return Status::ok();
    auto text = store_.setting(kRecordKey);
    if (!text) return text.status();
    sent_.clear();
    if (text->has_value()) {
        json j = json::parse(**text, nullptr, false);
        // A damaged record costs a re-send of boots, never a failed node.
        if (j.is_object()) {
            for (const auto& [key, v] : j.items()) {
                if (!v.is_object()) continue;
                Sent s;
                s.mtime_ns = v.value("mtime_ns", int64_t{0});
                s.size = v.value("size", uint64_t{0});
                s.boots = v.value("boots", uint64_t{0});
                sent_[key] = s;
            }
        } else {
            log(LogLevel::warning, "boot set uploader: setting '" + std::string(kRecordKey) + "' is not a JSON object; starting afresh");
        }
    }
    loaded_ = true;
    return Status::ok();
}

Status BootSetUploader::persist_record() {
    json j = json::object();
    for (const auto& [key, s] : sent_) j[key] = {{"mtime_ns", s.mtime_ns}, {"size", s.size}, {"boots", s.boots}};
    return store_.put_setting(kRecordKey, j.dump());
}

void BootSetUploader::warn_once(const std::string& message) {
    if (message == last_warning_) return;
    last_warning_ = message;
    log(LogLevel::warning, message, {.peer = opt_.master_address});
}

Result<unsigned> BootSetUploader::scan_once() {
    std::lock_guard lock(mu_);
    if (Status s = load_record(); !s) return s;
    unsigned sent_count = 0;
    bool changed = false;
    bool master_unreachable = false;
    std::set<std::string> seen;
    std::error_code ec;
    for (fs::directory_iterator img(opt_.repo / "images", ec), end; !ec && img != end; img.increment(ec)) {
        const std::string image = img->path().filename().string();
        if (!repl::validate_image_name(image)) continue;
        std::error_code ec2;
        for (fs::directory_iterator vd(img->path() / ".bootsets", ec2); !ec2 && vd != end; vd.increment(ec2)) {
            auto version = repl::parse_version(vd->path().filename().string());
            if (!version) continue;
            std::error_code ec3;
            for (fs::recursive_directory_iterator f(vd->path(), ec3), fend; !ec3 && f != fend; f.increment(ec3)) {
                const std::string name = f->path().filename().string();
                if (name.size() <= kSuffix.size() || !name.ends_with(kSuffix)) continue;
                if (f->symlink_status(ec3).type() != fs::file_type::regular) continue;
                std::string file = f->path().lexically_relative(vd->path()).generic_string();
                file.resize(file.size() - kSuffix.size());
                if (!repl::validate_relative_path(file)) continue;
                const std::string key = key_of(image, *version, file);
                seen.insert(key);
                if (master_unreachable) continue;
                Sent now;
                if (!stat_of(f->path(), now.mtime_ns, now.size)) continue;
                auto rec = sent_.find(key);
                if (rec != sent_.end() && rec->second.mtime_ns == now.mtime_ns && rec->second.size == now.size) continue;
                const std::string what = "image '" + image + "' version " + std::to_string(*version) + " file '" + file + "'";
                const LogFields fields{.image = image, .version = *version, .peer = opt_.master_address};
                auto set = load_boot_set(f->path());
                const uint64_t before = rec == sent_.end() ? 0 : rec->second.boots;
                if (!set) {
                    // The recorder replaces it at its next boot; say so once per version of the file.
                    if (set.status().code() != ENOENT)
                        log(LogLevel::warning, what + ": boot set not sent: " + set.status().message(), fields);
                    sent_[key] = Sent{now.mtime_ns, now.size, before};
                    changed = true;
                    continue;
                }
                now.boots = set->boots;
                // Boots that went down: the file was replaced, all of them are new.
                const uint64_t fresh = set->boots >= before ? set->boots - before : set->boots;
                if (fresh == 0) {
                    sent_[key] = now;
                    changed = true;
                    continue;
                }
                BootSetPut put;
                put.node = opt_.node_name;
                put.image = image;
                put.version = *version;
                put.file = file;
                BootSet delta = *set;
                delta.boots = static_cast<uint32_t>(fresh);
                put.sidecar = delta.encode();
                if (put.sidecar.size() > kMaxShippedSidecar) {
                    log(LogLevel::warning,
                        what + ": boot set of " + std::to_string(put.sidecar.size()) +
                            " bytes not sent: a peer message carries at most " + std::to_string(kMaxShippedSidecar) +
                            " (use a larger chunk size for a file this large)",
                        fields);
                    sent_[key] = now;
                    changed = true;
                    continue;
                }
                auto answer = peer_call(opt_.master_address, opt_.tls, to_json(put));
                Status st = answer ? bootset_ack_from_json(*answer).status() : answer.status();
                if (st) {
                    log(LogLevel::info, what + ": boot set sent to the master (+" + std::to_string(fresh) + " boots)", fields);
                    last_warning_.clear();
                    ++sent_count;
                } else if (st.code() == EREMOTEIO || st.code() == EPROTONOSUPPORT || st.code() == EBADMSG) {
                    // The master refused these bytes: sending them again would not help.
                    warn_once(what + ": boot set refused by the master: " + st.message());
                } else {
                    warn_once("boot sets: master at " + opt_.master_address + " not reachable, sending later: " + st.message());
                    master_unreachable = true;
                    continue;
                }
                sent_[key] = now;
                changed = true;
            }
        }
    }
    // Files gone (their version deleted) leave the record.
    for (auto it = sent_.begin(); it != sent_.end();) {
        if (!seen.count(it->first)) {
            it = sent_.erase(it);
            changed = true;
        } else {
            ++it;
        }
    }
    if (changed) {
        if (Status s = persist_record(); !s) return s;
    }
    return sent_count;
}

Status BootSetUploader::save_from_master(const std::string& image, uint64_t version, const std::string& file,
                                         const BootSet& set) {
    std::lock_guard lock(mu_);
    if (Status s = load_record(); !s) return s;
    const fs::path path = boot_set_path(opt_.repo, image, version, file);
    if (Status s = save_boot_set(path, set); !s) return s;
    Sent now;
    if (!stat_of(path, now.mtime_ns, now.size))
        return Status::from_errno(errno, "boot set '" + path.string() + "'");
    now.boots = set.boots;
    sent_[key_of(image, version, file)] = now;
    return persist_record();
}

}  // namespace icbd::node
