// The replica side of replication: the Receiver accepts connections, each
// served by a Receiver::Connection (receiver_connection.cpp) on its own thread,
// and keeps the reports of the offers handled.
#include "icbd/replicator/receiver.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "icbd/log.hpp"
#include "name_rules.hpp"
#include "receiver_connection.hpp"

namespace icbd::repl {

namespace {

using namespace std::chrono_literals;

std::string host_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "replica";
    std::string n;
    for (char c : std::string(buf))
        if (c > 0x20 && c < 0x7f) n += c;
    return n.empty() ? "replica" : n.substr(0, kMaxNodeName);
}


}  // namespace

Receiver::Receiver(ReceiverOptions options) : opt_(std::move(options)) {
    if (opt_.node_name.empty()) opt_.node_name = host_name();
}

Receiver::~Receiver() { stop(); }

void Receiver::record(const ReceiveReport& r) {
    if (r.status) {
        log(LogLevel::info, "image '" + r.image + "' version " + std::to_string(r.version) + " from " + r.peer + ": " +
                                (r.published ? "published" : r.kind == NeedKind::nothing ? "already here" : "done"));
    } else {
        log(LogLevel::error, r.status.message() + (r.staging_kept ? " (staging kept for resume)" : ""));
    }
    if (opt_.on_report) opt_.on_report(r);
    std::lock_guard lk(mu_);
    reports_.push_back(r);
}

std::vector<ReceiveReport> Receiver::reports() const {
    std::lock_guard lk(mu_);
    return reports_;
}

Status Receiver::serve_connection(Stream& stream) {
    {
        std::lock_guard lk(mu_);
        if (stopping_) return Status::error(ECANCELED, "receiver stopped");
        active_.push_back(&stream);
    }
    Connection c{*this, stream, FrameDecoder(), opt_.node_name, {}, {}};
    Status s = c.run();
    {
        std::lock_guard lk(mu_);
        active_.erase(std::remove(active_.begin(), active_.end(), &stream), active_.end());
    }
    stream.close();
    return s;
}

Status Receiver::serve(Listener& listener, bool once) {
    {
        std::lock_guard lk(mu_);
        if (stopping_) return Status::ok();
        listener_ = &listener;
    }
    struct Worker {
        std::jthread thread;
        std::shared_ptr<std::atomic<bool>> done;
    };
    std::vector<Worker> workers;
    Status result;
    for (;;) {
        std::erase_if(workers, [](Worker& w) { return w.done->load(); });  // joins finished ones
        auto pc = listener.accept_tcp();
        if (!pc) {
            if (pc.status().code() == ECANCELED) break;
            log(LogLevel::warning, "accept: " + pc.status().message());
            std::this_thread::sleep_for(100ms);
            continue;
        }
        if (once) {
            auto st = std::move(pc.value()).handshake();
            if (!st) {
                log(LogLevel::warning, "refused connection: " + st.status().message());
                result = Status::error(st.status().code(), "refused connection: " + st.status().message());
            } else {
                result = serve_connection(*st);
            }
            break;
        }
        auto done = std::make_shared<std::atomic<bool>>(false);
        workers.push_back(Worker{std::jthread([this, p = std::move(pc.value()), done]() mutable {
                                     auto st = std::move(p).handshake();
                                     if (!st) log(LogLevel::warning, "refused connection: " + st.status().message());
                                     else (void)serve_connection(*st);
                                     *done = true;
                                 }),
                                 done});
    }
    {
        std::lock_guard lk(mu_);
        for (Stream* s : active_) s->interrupt();
    }
    workers.clear();
    std::lock_guard lk(mu_);
    listener_ = nullptr;
    return result;  // ok unless `once` and its connection failed
}

void Receiver::stop() {
    std::lock_guard lk(mu_);
    stopping_ = true;
    if (listener_) listener_->stop();
    for (Stream* s : active_) s->interrupt();
}

}  // namespace icbd::repl
