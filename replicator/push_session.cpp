// One replica's session on the master: frames on its blocking stream, the
// handshake and negotiation, and how its failure is recorded and told.
#include "push_session.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>

namespace icbd::repl {

double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

Result<Frame> read_frame(Stream& s, FrameDecoder& d, std::string_view waiting_for, bool& malformed) {
    std::array<uint8_t, 16384> buf;
    for (;;) {
        auto f = d.next();
        if (!f) {
            malformed = true;
            return f.status();
        }
        if (f->has_value()) return std::move(**f);
        size_t want = std::clamp<size_t>(d.bytes_wanted(), 1, buf.size());
        auto n = s.read_some(std::span<uint8_t>(buf.data(), want));
        if (!n) return n.status();
        if (*n == 0) {
            Status fin = d.finish();
            if (!fin) {
                malformed = true;  // it closed inside a frame
                return fin;
            }
            return Status::error(ECONNRESET, "the replica closed the connection while we waited for " +
                                                 std::string(waiting_for));
        }
        d.feed(std::span<const uint8_t>(buf.data(), *n));
    }
}

const char* state_name(State s) {
    switch (s) {
    case State::connecting: return "connecting";
    case State::negotiating: return "negotiating";
    case State::streaming: return "streaming";
    case State::finishing: return "finishing";
    case State::done: return "done";
    case State::failed: return "failed";
    }
    return "?";
}

void Session::fail(const Status& s, ErrorCode code, bool tell_peer) {
    if (report.status.is_ok()) {
        report.status = Status::error(s.code() ? s.code() : EIO, what() + ": " + s.message());
        report.code = code;
    }
    if (tell_peer && stream.is_open()) {
        Error e;
        e.code = code == ErrorCode::ok ? ErrorCode::internal : code;
        e.message = clamp_message(report.status.message());
        (void)send_message(stream, e);
    }
    stream.close();
    set_state(State::failed);
}

void Session::fail_after_read(const Status& s) {
    if (remote_code != ErrorCode::ok) fail(s, remote_code, false);
    else if (protocol_violation) fail(s, ErrorCode::protocol, true);
    else fail(s, ErrorCode::io_error, false);  // the stream failed: nobody to tell
}

Status Session::reason_for_write_failure(const Status& w) {
    stream.set_io_timeout(std::chrono::milliseconds(2000));
    auto e = expect<Error>("ERROR");
    return remote_code != ErrorCode::ok ? e.status() : w;
}

void negotiate(PushContext& ctx, Session& s) {
    auto st = connect(s.target.host, s.target.port, ctx.opt.tls);
    if (!st) return s.fail(st.status(), ErrorCode::io_error, false);
    s.stream = std::move(st.value());
    s.stream_open = true;
    s.report.peer = s.stream.peer().describe();
    s.set_state(State::negotiating);

    Hello ours;
    ours.role = Role::sender;
    ours.capabilities = 0;  // a sender decompresses nothing
    ours.node_name = ctx.node_name;
    if (Status w = send_message(s.stream, ours); !w) return s.fail(w, ErrorCode::io_error, false);
    auto theirs = s.expect<Hello>("HELLO");
    if (!theirs) return s.fail_after_read(theirs.status());
    if (theirs->role != Role::receiver)
        return s.fail(Status::error(EPROTO, "the peer's HELLO does not have the receiver role"), ErrorCode::protocol,
                      true);
    auto v = negotiate_version(ours, *theirs);
    if (!v || theirs->min_version != theirs->max_version)
        return s.fail(v ? Status::error(EPROTO, "the replica's HELLO does not pick one version") : v.status(),
                      v ? ErrorCode::protocol : ErrorCode::unsupported_version, true);
    s.report.peer = theirs->node_name + " (" + s.stream.peer().address + ")";
    s.receiver_caps = theirs->capabilities;
    s.version = *v;
    s.peer_name = theirs->node_name;

    if (s.version >= kRelayFramesVersion) {  // section 4.8
        Route route = ctx.route.nodes.empty() ? Route{{ctx.node_name}} : ctx.route;
        if (Status w = send_message(s.stream, route); !w) return s.fail(w, ErrorCode::io_error, false);
    }
    if (Status w = send_message(s.stream, ctx.offer); !w) return s.fail(w, ErrorCode::io_error, false);
    auto f = s.next_frame("NEED");
    if (f && f->type == FrameType::children && s.version >= kRelayFramesVersion) {  // a relay (section 4.9)
        auto c = s.as<Children>(*f);
        if (!c) return s.fail(c.status(), ErrorCode::protocol, true);
        s.children = std::move(c->children);
        for (const auto& rc : s.children) s.report.relay_children.push_back(rc.node_name + " (" + rc.address + ")");
        f = s.next_frame("NEED");
    }
    if (!f) return s.fail_after_read(f.status());
    auto need = s.as<Need>(*f);
    if (!need) return s.fail_after_read(need.status());
    if (Status c = need->check_against(ctx.offer); !c) return s.fail(c, ErrorCode::protocol, true);
    s.need = *need;
    s.report.kind = need->kind;
    s.report.base = need->base;
    s.report.resume_seq = need->resume_seq;
    s.report.timeline.negotiated = seconds_since(s.started);
}

}  // namespace icbd::repl
