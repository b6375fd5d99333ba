// One push's state on the master: per replica its Session (the connection,
// handshake and negotiation, what it reports), per distinct base a Group (the
// replicas that share one diff, its plan and its FrameWindow), and the reader
// and writer that run for them (change_encoder.cpp, replica_writer.cpp).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "frame_codec.hpp"
#include "frame_window.hpp"
#include "icbd/replicator/sender.hpp"
#include "icbd/replicator/transport.hpp"
#include "messages.hpp"
#include "rate_limiter.hpp"
#include "tree_manifest.hpp"

namespace icbd::repl {

double seconds_since(std::chrono::steady_clock::time_point t);

// ---- frames on a blocking stream ----

template <typename M>
Status send_message(Stream& s, const M& m) {
    auto f = make_frame(m);
    if (!f) return f.status();
    return s.write_all(*f);
}

// The next frame from `s`; ECONNRESET naming `waiting_for` when the replica
// closed the connection between frames. `malformed` tells a failure of the
// frames (the decoder's) from one of the stream.
Result<Frame> read_frame(Stream& s, FrameDecoder& d, std::string_view waiting_for, bool& malformed);

// ---- one replica ----

enum class State : int { connecting, negotiating, streaming, finishing, done, failed };
const char* state_name(State s);

struct Group;

struct Session {
    HostPort target;
    Stream stream;
    FrameDecoder decoder;
    Need need;
    ReplicaReport report;
    Group* group = nullptr;
    size_t consumer = 0;
    std::atomic<int> state{static_cast<int>(State::connecting)};
    std::atomic<uint64_t> payload_total{0};
    std::atomic<uint64_t> payload_sent{0};
    std::atomic<bool> stream_open{false};
    std::mutex drop_mu;
    std::string drop_reason;
    // What the writer saw, for the compression controller (nanoseconds, bytes).
    // Link figures count only DATA frames of the controller's current setting:
    // right after a change the socket still carries frames of the previous one.
    std::atomic<uint64_t> link_ns{0}, starved_ns{0}, link_bytes{0}, link_raw{0};
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

    std::string what() const {
        return "image '" + report.image + "' version " + std::to_string(report.version) + " to replica " +
               (report.peer.empty() ? target.text() : report.peer);
    }
    void set_state(State s) { state.store(static_cast<int>(s)); }

    // Records the failure (first one wins) and, when we detected it, tells the replica.
    void fail(const Status& s, ErrorCode code, bool tell_peer);
    // The failure after expect() failed: the replica's code, or protocol/io on our side.
    void fail_after_read(const Status& s);
    // After a failed write: the replica usually said why in an ERROR before it
    // closed (it drains our frames for a moment so that we can read it).
    Status reason_for_write_failure(const Status& w);


    // Reads the next frame, expecting M; an ERROR from the replica becomes the failure.
    template <typename M>
    Result<M> expect(std::string_view waiting_for) {
        auto f = next_frame(waiting_for);
        if (!f) return f.status();
        return as<M>(*f);
    }
    // The next frame; an ERROR from the replica becomes the failure.
    Result<Frame> next_frame(std::string_view waiting_for) {
        bool malformed = false;
        auto f = read_frame(stream, decoder, waiting_for, malformed);
        if (!f) {
            protocol_violation = protocol_violation || malformed;
            return f.status();
        }
        if (f->type == FrameType::error) {
            auto e = Error::decode(f->payload);
            if (!e) {
                protocol_violation = true;
                return e.status();
            }
            remote_code = e->code;
            return Status::error(EREMOTEIO, "replica reported " + error_code_name(e->code) + ": " + e->message);
        }
        return f;
    }
    // `f` decoded as M (a frame of another type is a protocol violation).
    template <typename M>
    Result<M> as(const Frame& f) {
        if (f.type != M::kType) {
            protocol_violation = true;
            return Status::error(EPROTO, std::string("expected ") + frame_type_name(M::kType) + ", got " +
                                             frame_type_name(f.type));
        }
        auto m = M::decode(f.payload);
        if (!m) protocol_violation = true;
        return m;
    }
    ErrorCode remote_code = ErrorCode::ok;  // the replica's ERROR or RESULT code
    bool protocol_violation = false;        // the replica sent what the protocol does not allow
    uint32_t receiver_caps = 0;
    uint16_t version = 1;            // negotiated
    std::string peer_name;           // the replica's HELLO node name
    std::vector<RelayChild> children;  // what a relay named in CHILDREN (version 2)
    bool taken_over = false;         // its children were pushed to directly
    std::vector<ReplicaReport> takeover;  // their reports
    uint64_t takeover_bytes_read = 0;     // what the takeover read from the source
};

// The replicas that need the same diff (same base), and its reader.
struct Group {
    uint64_t base = 0;
    std::vector<Session*> sessions;
    std::vector<PlannedChange> plan;
    uint64_t start_seq = 0;
    uint64_t start_chain = 0;
    std::unique_ptr<FrameWindow> window;
    std::atomic<uint64_t> bytes_read{0};
    std::vector<std::string> codec_decisions;  // written by the reader, read after it is joined
    std::atomic<int> codec_step{-1};           // the controller's current setting (index), -1: pinned
    // The code of the reader's failure, decided where it failed; written before
    // the window is finished, read by the writers after it ends.
    ErrorCode reader_code = ErrorCode::ok;
};

struct PushContext {
    explicit PushContext(const PushOptions& o) : opt(o), limiter(o.bandwidth_limit) {}
    const PushOptions& opt;
    std::filesystem::path version_dir;
    TreeManifest manifest;
    Offer offer;
    RateLimiter limiter;
    std::string node_name;
    Route route;  // sent before each OFFER in version 2; empty: [node_name]
};

// Handshake and negotiation (sections 3, 4.1, 4.2); a failure is in s.report.
void negotiate(PushContext& ctx, Session& s);
// Reads and encodes the change frames of a group, once, into its window.
void run_reader(PushContext& ctx, Group& g);
// Streams the group's window to one replica, then END and RESULT (4.3-4.5).
void run_writer(PushContext& ctx, Session& s);

}  // namespace icbd::repl
