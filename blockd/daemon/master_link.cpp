// The replica's side of membership (docs/blockd-peer-protocol.md): registers
// with the master until it is accepted, registers again when the master's
// keepalives stop coming, and answers those keepalives.
#include <algorithm>
#include <cerrno>

#include "icbd/log.hpp"
#include "membership.hpp"
#include "peer_server.hpp"

namespace icbd::node {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {
// How often a replica that is not registered tries again.
constexpr std::chrono::milliseconds kRetryInterval{2'000};
}  // namespace

MasterLink::MasterLink(Options options, std::function<std::map<std::string, std::vector<uint64_t>>()> versions,
                       std::function<PongReply(const PingRequest&)> on_ping)
    : opt_(std::move(options)), versions_(std::move(versions)), on_ping_(std::move(on_ping)) {}

MasterLink::~MasterLink() { stop(); }

void MasterLink::start() {
    std::lock_guard lock(mu_);
    if (thread_.joinable()) return;
    stopping_ = false;
    thread_ = std::thread([this] { run(); });
}

void MasterLink::stop() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

bool MasterLink::registered() const {
    std::lock_guard lock(mu_);
    return registered_;
}

std::string MasterLink::last_error() const {
    std::lock_guard lock(mu_);
    return last_error_;
}

json MasterLink::handle_ping(const repl::PeerIdentity& peer, const json& request) {
    auto ping = ping_from_json(request);
    if (!ping) return error_message(ping.status().message());
    const auto& allowed = opt_.tls.allowed_peer_names;
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), peer.common_name) == allowed.end()) {
        std::string msg = "ping to '" + opt_.node_name + "' refused: " + peer.describe() + " is not its master";
        log(LogLevel::warning, msg);
        return error_message(msg);
    }
    if (peer.authenticated && ping->master != peer.common_name) {
        std::string msg = "ping to '" + opt_.node_name + "' refused: it names master '" + ping->master +
                          "' but comes from " + peer.describe();
        log(LogLevel::warning, msg);
        return error_message(msg);
    }
    {
        std::lock_guard lock(mu_);
        // Being pinged means the master knows us: no need to register again.
        last_ping_ = Clock::now();
        registered_ = true;
        last_error_.clear();
    }
    PongReply pong = on_ping_ ? on_ping_(*ping) : PongReply{};
    pong.node = opt_.node_name;
    return to_json(pong);
}

void MasterLink::run() {
    std::unique_lock lock(mu_);
    Clock::time_point retry_at{};
    while (!stopping_) {
        const auto now = Clock::now();
        Clock::time_point deadline;
        if (now < retry_at) {
            deadline = retry_at;
        } else if (registered_ && now - last_ping_ < opt_.reregister_after) {
            deadline = last_ping_ + opt_.reregister_after;
        } else {
            lock.unlock();
            RegisterRequest req;
            req.node = opt_.node_name;
            req.peer_address = opt_.peer_address;
            req.replication_address = opt_.replication_address;
            req.subscribe = opt_.subscribe;
            if (versions_) req.versions = versions_();
            auto answer = peer_call(opt_.master_address, opt_.tls, to_json(req));
            Status st = answer ? registered_from_json(*answer).status() : answer.status();
            lock.lock();
            if (st) {
                if (!registered_) log(LogLevel::info, "registered with master at " + opt_.master_address, {.peer = opt_.master_address});
                registered_ = true;
                last_ping_ = Clock::now();
                last_error_.clear();
            } else {
                std::string msg = "register with master at " + opt_.master_address + ": " + st.message();
                // One line per distinct failure, not one every two seconds.
                if (msg != last_error_) log(LogLevel::warning, msg + " (retrying every " +
                                                                    std::to_string(kRetryInterval.count()) + " ms)",
                                                   {.peer = opt_.master_address});
                registered_ = false;
                last_error_ = std::move(msg);
                retry_at = Clock::now() + kRetryInterval;
            }
            continue;
        }
        cv_.wait_until(lock, deadline, [this] { return stopping_; });
    }
}

}  // namespace icbd::node
