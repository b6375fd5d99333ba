// The master side of replication (docs/replication-protocol.md): pushes one
// version of an image to N replicas at once, each changed extent read once.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "icbd/replicator/change_plan.hpp"
#include "icbd/replicator/compression.hpp"
#include "icbd/replicator/host_port.hpp"
#include "icbd/replicator/protocol.hpp"
#include "icbd/replicator/snapshot_diff.hpp"
#include "icbd/replicator/transport.hpp"
#include "icbd/status.hpp"

namespace icbd::repl {

// Live figures of one replica during a push (progress callback).
struct ReplicaProgress {
    std::string peer;             // the target as given ("10.0.0.5:7000"), or its certificate name once known
    std::string state;            // "connecting", "negotiating", "streaming", "finishing", "done", "failed"
    uint64_t payload_total = 0;   // data bytes (uncompressed) this replica is to receive
    uint64_t payload_sent = 0;    // of them, sent so far
    uint64_t wire_sent = 0;       // socket bytes so far (TLS records included)
    double rate_bytes_per_s = 0;  // wire bytes per second over the push so far
    double eta_seconds = -1;      // -1 when unknown
};

// DATA chunks this replica received at one codec setting (push --compress auto
// moves between settings; a pinned setting shows as one entry).
struct CodecUse {
    std::string setting;       // CodecSetting::name(): "zstd:3", "lz4", "none"
    uint64_t chunks = 0;
    uint64_t raw_bytes = 0;    // uncompressed
    uint64_t frame_bytes = 0;  // as sent (a chunk that did not pay went uncompressed)
};

// What happened for one replica.
struct ReplicaReport {
    std::string target;  // as given on the command line
    std::string peer;    // certificate identity and address, e.g. "replica1 (127.0.0.1:7000)"
    std::string image;
    uint64_t version = 0;
    uint64_t base = 0;
    std::optional<NeedKind> kind;  // nullopt when negotiation did not get that far
    uint64_t resume_seq = 0;       // resumed after this change frame (0: from the start)
    uint64_t change_count = 0;     // change frames of the whole stream (N)
    uint64_t changes_sent = 0;     // change frames sent in this push
    uint64_t wire_bytes_sent = 0;  // socket bytes, TLS included
    uint64_t wire_bytes_received = 0;
    uint64_t payload_bytes = 0;       // uncompressed DATA bytes sent
    uint64_t frame_bytes = 0;         // frame bytes sent (headers, compressed data)
    uint64_t source_bytes_read = 0;   // bytes read from the source by the reader this replica shared
    uint64_t replicas_sharing_read = 0;  // how many replicas that reader fed
    std::vector<CodecUse> codecs;        // in the order first used
    uint64_t codec_switches = 0;         // changes of setting in this replica's stream
    // The controller's decisions for the stream this replica shared, e.g.
    // "0.21 s: zstd:1 -> lz4 (cpu-bound)"; empty when pinned.
    std::vector<std::string> codec_decisions;
    uint64_t checkpoints = 0;            // acknowledged checkpoints
    // When each phase ended, in seconds since the push started (0: not reached).
    struct Timeline {
        double negotiated = 0;   // connected, HELLO, OFFER, NEED (the replica made its staging area)
        double first_frame = 0;  // the first change frame went out (diff and plan done)
        double last_frame = 0;   // the last one went out
        double result = 0;       // RESULT ok: the replica published, durably
    } timeline;
    double seconds = 0;
    Status status;  // ok, or what failed (names image, version and peer)
    // The protocol code of a failure: the replica's ERROR/RESULT code, or the
    // one we sent; ok when ok.
    ErrorCode code = ErrorCode::ok;
    bool dropped = false;  // fell behind the others (or its connection failed mid-stream)
    // A relay: the children it said it feeds with this stream (CHILDREN,
    // docs/replication-protocol.md 4.9), "child1 (127.0.0.1:7002)".
    std::vector<std::string> relay_children;
    // Not a target of the push but a child of this target (a relay), pushed to
    // directly because that relay failed (section 11, takeover). Empty otherwise.
    std::string taken_over_from;
    bool ok() const { return status.is_ok(); }
};

struct PushReport {
    // In the order of PushOptions::targets, then the children of failed relays
    // taken over (ReplicaReport::taken_over_from).
    std::vector<ReplicaReport> replicas;
    uint64_t source_bytes_read = 0;       // all readers together
    double seconds = 0;
    bool all_ok() const;
};

struct PushOptions {
    std::filesystem::path root;  // the master's repository
    std::string image;
    uint64_t version = 0;
    std::vector<HostPort> targets;
    TlsConfig tls;
    std::string node_name;  // our HELLO name; empty: the host name
    Compression compression = Compression::zstd;
    std::optional<int> compression_level;
    // Adapt codec and level while streaming (docs/replication-protocol.md,
    // section 9); `compression` and `compression_level` are then ignored.
    bool compress_auto = false;
    // Threads that compress DATA chunks; 0: one per online CPU but one (1..8).
    unsigned compression_workers = 0;
    uint64_t bandwidth_limit = 0;  // bytes/s over all replicas together; 0: unlimited
    // Checkpoints (what a cut costs: the stream since the last one, plus the
    // frames in flight). 0 (default): every 1/16 of the replica's stream
    // (uncompressed), at least 1 MiB and at most 64 MiB; otherwise every this
    // many bytes of frames.
    uint64_t checkpoint_interval = 0;
    // ...but not sooner than this after the previous one (each costs the
    // replica a filesystem sync; unless 16 intervals went by)...
    std::chrono::milliseconds checkpoint_min_period{100};
    // ...and not later than this (a slow link: a cut costs about this much
    // transfer). 0: no time bound.
    std::chrono::milliseconds checkpoint_max_period{1000};
    // Encoded frames held for the replicas of one diff: the slowest may lag
    // the fastest by this much.
    uint64_t window_bytes = 64u << 20;
    // A replica that keeps the window full this long, or whose connection
    // fails, is dropped from the push; the others go on.
    std::chrono::milliseconds max_stall{30'000};
    DiffOptions diff;
    // When a target that is a relay fails (dies, its disk fills, ...), push
    // to the children it named directly, in this push (section 11).
    bool take_over_relay_children = true;
    std::function<void(const std::vector<ReplicaProgress>&)> on_progress;
    std::chrono::milliseconds progress_interval{250};
};

// Pushes (image, version) to every target. Fails as a whole (Status) only when
// nothing can start: the version does not exist, the repository or the
// certificates cannot be read. Otherwise each replica's outcome is in its
// report.
Result<PushReport> push(const PushOptions& options);

}  // namespace icbd::repl
