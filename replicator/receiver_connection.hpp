// Receiver::Connection: one accepted connection on a replica, through the
// states of docs/replication-protocol.md section 4 — handshake, then each OFFER
// answered with NEED, its change stream applied (Applier), checkpoints made
// durable, the digest checked and the version published.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "frame_codec.hpp"
#include "icbd/replicator/receiver.hpp"
#include "messages.hpp"

namespace icbd::repl {

// One accepted connection (section 4's states for the receiver).
struct Receiver::Connection {
    Receiver& rx;
    Stream& stream;
    FrameDecoder decoder;
    std::string node;
    std::string peer;  // "master (127.0.0.1:40211)"
    std::string peer_node;      // the sender's HELLO node name
    uint16_t version = 1;       // negotiated
    std::vector<uint8_t> buf = std::vector<uint8_t>(256 * 1024);

    bool malformed = false;  // next() failed on the frames (the decoder), not on the stream

    // Next frame; nullopt at an orderly end between frames.
    Result<std::optional<Frame>> next() {
        for (;;) {
            auto f = decoder.next();
            if (!f) {
                malformed = true;
                return f.status();
            }
            if (f->has_value()) return std::move(*f);
            auto n = stream.read_some(buf);
            if (!n) return n.status();
            if (*n == 0) {
                if (Status s = decoder.finish(); !s) {
                    malformed = true;  // it closed inside a frame
                    return s;
                }
                return std::optional<Frame>();
            }
            decoder.feed(std::span<const uint8_t>(buf.data(), *n));
        }
    }

    template <typename M>
    Status send(const M& m) {
        auto f = make_frame(m);
        if (!f) return f.status();
        return stream.write_all(*f);
    }

    // Sends ERROR, then lingers: our direction closed, the sender's frames
    // still in flight drained for a moment, so that it reads the ERROR rather
    // than a reset connection.
    void send_error(ErrorCode code, const std::string& message) {
        Error e;
        e.code = code == ErrorCode::ok ? ErrorCode::internal : code;
        e.message = clamp_message(message);
        if (!send(e)) return;
        (void)stream.shutdown();
        stream.set_io_timeout(std::chrono::milliseconds(2000));
        auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
        while (std::chrono::steady_clock::now() < until) {
            auto n = stream.read_some(buf);
            if (!n || *n == 0) break;
        }
    }

    std::string what(const std::string& image, uint64_t version) const {
        return "image '" + image + "' version " + std::to_string(version) + " from " + peer + " on replica '" + node + "'";
    }

    Status run();
    // The code for a failed next(): protocol for a malformed frame, else the
    // stream failed (io_error).
    ErrorCode read_failure_code() const { return malformed ? ErrorCode::protocol : ErrorCode::io_error; }
    // Handles one OFFER to its end. Not ok: the offer failed (as reported) and
    // the connection must close.
    // `route`: the ROUTE before it (version 2), or the sender alone.
    Status offer(const Offer& o, const Route& route);
    // ReceiverOptions::accept_from: is the sender one of the allowed parents?
    bool sender_accepted(const std::string& hello_name) const;
};

}  // namespace icbd::repl
