// FrameWindow: the encoded change frames of one diff, shared by the replicas
// that need that diff. One producer (the reader), several consumers (one writer
// per replica); a frame stays until every active consumer is past it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "frame_codec.hpp"
#include "icbd/replicator/compression.hpp"
#include "icbd/status.hpp"
#include "time_source.hpp"

namespace icbd::repl {

// One change frame of the stream, encoded.
struct EncodedChange {
    uint64_t seq = 0;
    uint64_t chain_after = 0;  // c_seq
    uint64_t data_bytes = 0;   // uncompressed DATA length
    std::optional<CodecSetting> codec;  // DATA: the setting it was encoded with
    int step = -1;                      // ...its index in codec_ladder() under --compress auto
    Bytes frame;
};
using ChangePtr = std::shared_ptr<const EncodedChange>;

// The producer waits while the frames held add up to the limit, and drops the
// slowest consumer when that lasts longer than the stall allowed.
class FrameWindow {
public:
    using Clock = TimeSource::Clock;

    // `limit`: frame bytes held at most. `lead_limit`: bytes the producer may
    // be ahead of the most advanced consumer (0: only `limit` counts).
    // Adaptive compression keeps it small, so that frames are encoded with a
    // setting chosen from what the link did a moment ago, not seconds ago.
    FrameWindow(uint64_t limit, size_t consumers, uint64_t lead_limit = 0, TimeSource& time = TimeSource::steady())
        : limit_(limit), lead_limit_(lead_limit), time_(time), cons_(consumers) {}

    // Adds `item`. false: no consumer is left, stop producing. A consumer that
    // keeps the window full for `max_stall` is dropped (drop(index) is called
    // under the window's lock, so it must not call back into the window).
    // `waited`: time spent waiting for room.
    bool put(ChangePtr item, std::chrono::milliseconds max_stall, const std::function<void(size_t)>& drop,
             Clock::duration* waited = nullptr);

    // The end of the stream; `reader_status` says whether it is complete.
    void finish(Status reader_status);

    // The item at absolute `index` for consumer `c` (which is done with every
    // item before it); nullptr at the end of the stream or once `c` left.
    // `waited`: time spent waiting for the producer.
    ChangePtr get(size_t c, uint64_t index, Clock::duration* waited = nullptr);

    // Consumer `c` stops reading (done, or its connection failed).
    void leave(size_t c);

    // Consumer `c` keeps every item from absolute `index` on, even those it has
    // read, until it holds a later one or leaves: a relay's child that is cut
    // resumes from its last acknowledged checkpoint, which may be behind what
    // its writer had read (docs/replication-protocol.md, section 11).
    void hold(size_t c, uint64_t index);

    bool dropped(size_t c);
    Status reader_status();

private:
    size_t active_count() const;
    void trim();
    // Bytes put but not yet taken by the most advanced active consumer.
    uint64_t lead_bytes() const;

    struct Consumer {
        uint64_t next = 0;
        uint64_t held = UINT64_MAX;  // hold(): kept from here on
        bool active = true;
        bool dropped = false;
    };
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<ChangePtr> items_;
    std::deque<uint64_t> starts_;  // per item: bytes produced before it
    uint64_t produced_ = 0;
    uint64_t first_ = 0;  // absolute index of items_.front()
    uint64_t bytes_ = 0;
    uint64_t limit_;
    uint64_t lead_limit_;
    TimeSource& time_;
    std::vector<Consumer> cons_;
    bool finished_ = false;
    Status reader_status_;
};

}  // namespace icbd::repl
