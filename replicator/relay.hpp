// Relay: a replica forwards the change stream it receives, frame by frame as
// verified, to its own children (docs/replication-protocol.md, section 11).
// The receiving connection drives it; one writer thread per child.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "frame_codec.hpp"
#include "frame_window.hpp"
#include "icbd/replicator/host_port.hpp"
#include "icbd/replicator/sender.hpp"
#include "icbd/replicator/transport.hpp"
#include "messages.hpp"

namespace icbd::repl {

struct Session;
struct PushContext;

struct RelaySettings {
    std::vector<HostPort> children;
    TlsConfig tls;
    std::string node_name;         // our HELLO name towards the children
    std::vector<std::string> route;  // ROUTE to our children: our parent's, then us (section 4.8)
    uint32_t capabilities = 0;     // what we told our parent we decompress
    uint64_t window_bytes = 64u << 20;
    std::chrono::milliseconds max_stall{10'000};
    int reconnect_attempts = 3;    // per child cut mid-stream
    std::chrono::milliseconds reconnect_delay{200};
};

class Relay {
public:
    // `offer`: the parent's; `need`: what we decided to ask it for (base, our
    // own resume point).
    Relay(RelaySettings settings, const Offer& offer, const Need& need);
    ~Relay();
    Relay(const Relay&) = delete;
    Relay& operator=(const Relay&) = delete;

    // Connects to and negotiates with every child in parallel and starts the
    // writers of those fed by this stream. Returns the resume point (seq,
    // chain) to ask the parent for: the earliest of ours and the fed children's.
    std::pair<uint64_t, uint64_t> start();
    // Children fed by this push (after start()).
    size_t fed() const { return fed_.size(); }
    // Their addresses and names, for CHILDREN to our parent (section 4.9).
    std::vector<RelayChild> fed_children() const;

    // A change frame, verified and applied by us; `chain_after` is c_seq.
    // Blocks while the window is full, at most max_stall (then the slowest
    // child is dropped).
    void forward(const Frame& frame, uint64_t seq, uint64_t chain_after, uint64_t data_bytes);
    // We checked END and published: the children get END.
    void finish(const End& end);
    // Our stream failed: the children get ERROR cancelled naming `why`.
    void abort(const Status& why);
    // Joins the writers; one report per child in the order of the settings.
    std::vector<ReplicaReport> wait();

private:
    struct Child;
    void run_child(Child& c);
    void run_attempts(Child& c);
    // One attempt: streams from the child's resume point. true: finished (ok
    // or failed for good, recorded); false: cut, worth a reconnection.
    bool stream_to(Child& c);
    uint64_t index_of(uint64_t seq) const { return seq - start_seq_ - 1; }
    std::string what() const;

    RelaySettings set_;
    PushOptions popt_;
    std::unique_ptr<PushContext> ctx_;
    Need need_;
    std::vector<std::unique_ptr<Child>> children_;
    std::vector<Child*> fed_;
    uint64_t start_seq_ = 0;
    std::unique_ptr<FrameWindow> window_;
    std::mutex mu_;      // end_, closed_ (taken before the window's lock)
    std::mutex sess_mu_; // a child's session pointer (taken under the window's lock)
    std::optional<End> end_;
    bool closed_ = false;
    bool joined_ = false;
};

}  // namespace icbd::repl
