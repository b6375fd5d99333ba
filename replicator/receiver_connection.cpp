// One connection on a replica (docs/replication-protocol.md, section 4): the
// handshake, then per OFFER the NEED (catch-up and resume from a staging
// checkpoint), the change stream applied with durable checkpoints, the digest
// check and the atomic publish.
#include "receiver_connection.hpp"

#include <algorithm>
#include <thread>

#include "applier.hpp"
#include "relay.hpp"
#include "digests.hpp"
#include "failure_code.hpp"
#include "icbd/endian.hpp"
#include "icbd/log.hpp"
#include "icbd/replicator/repository.hpp"
#include "tree_manifest.hpp"

namespace icbd::repl {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

Status proto(std::string msg) { return Status::error(EPROTO, std::move(msg)); }

// Checkpoint payload (opaque to the repository): format, seq, chain. The
// format stays 1 in protocol version 2 (its change stream is version 1's), so
// a staging area checkpointed by either resumes under the other.
constexpr size_t kCheckpointPayload = 2 + 8 + 8;
constexpr uint16_t kCheckpointFormat = 1;
Bytes encode_checkpoint(uint64_t seq, uint64_t chain) {
    Bytes b(kCheckpointPayload);
    store_le16(b.data(), kCheckpointFormat);
    store_le64(b.data() + 2, seq);
    store_le64(b.data() + 10, chain);
    return b;
}
std::optional<std::pair<uint64_t, uint64_t>> decode_checkpoint(const std::vector<uint8_t>& b) {
    if (b.empty()) return std::make_pair(uint64_t(0), uint64_t(0));
    if (b.size() != kCheckpointPayload || load_le16(b.data()) != kCheckpointFormat) return std::nullopt;
    return std::make_pair(load_le64(b.data() + 2), load_le64(b.data() + 10));
}

std::string join_names(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& n : v) s += (s.empty() ? "" : ", ") + n;
    return s;
}

}  // namespace

bool Receiver::Connection::sender_accepted(const std::string& hello_name) const {
    const auto& allowed = rx.opt_.accept_from;
    if (allowed.empty()) return true;
    const PeerIdentity& id = stream.peer();
    for (const auto& a : allowed) {
        // Without a certificate (the tests' plaintext mode) only the HELLO name is known.
        if (id.authenticated ? id.has_name(a) : a == hello_name) return true;
    }
    return false;
}

Status Receiver::Connection::run() {
    peer = stream.peer().describe();
    auto first = next();
    if (!first) {
        send_error(ErrorCode::protocol, "replica '" + node + "': " + first.status().message());
        return first.status();
    }
    if (!first->has_value()) return Status::ok();
    if ((*first)->type != FrameType::hello) {
        Status s = proto(std::string("expected HELLO, got ") + frame_type_name((*first)->type));
        send_error(ErrorCode::protocol, "replica '" + node + "': " + s.message());
        return s;
    }
    auto theirs = Hello::decode((*first)->payload);
    Hello ours;
    ours.role = Role::receiver;
    ours.capabilities = rx.opt_.capabilities;
    ours.node_name = node;
    if (!theirs || theirs->role != Role::sender) {
        Status s = theirs ? proto("HELLO from a peer that is not a sender") : theirs.status();
        send_error(ErrorCode::protocol, "replica '" + node + "': " + s.message());
        return s;
    }
    peer = theirs->node_name + " (" + stream.peer().address + ")";
    peer_node = theirs->node_name;
    if (!sender_accepted(theirs->node_name)) {
        ReceiveReport r;
        r.peer = peer;
        r.code = ErrorCode::refused;
        r.status = Status::error(EACCES, "replica '" + node + "' accepts versions only from " +
                                             join_names(rx.opt_.accept_from) + ": the sender " + peer + " is refused");
        send_error(ErrorCode::refused, r.status.message());
        rx.record(r);
        return r.status;
    }
    auto v = negotiate_version(ours, *theirs);
    if (!v) {
        send_error(ErrorCode::unsupported_version, "replica '" + node + "': " + v.status().message());
        return v.status();
    }
    ours.min_version = ours.max_version = *v;
    version = *v;
    if (Status s = send(ours); !s) return s;

    std::optional<Route> route;  // version 2: the ROUTE before the next OFFER
    for (;;) {
        auto f = next();
        if (!f) {
            send_error(read_failure_code(), "replica '" + node + "': " + f.status().message());
            return f.status();
        }
        if (!f->has_value()) return Status::ok();
        const Frame& fr = **f;
        if (fr.type == FrameType::error) {
            auto e = Error::decode(fr.payload);
            return Status::error(EREMOTEIO, "sender " + peer + " reported " +
                                                (e ? error_code_name(e->code) + ": " + e->message : std::string("an error")));
        }
        if (fr.type == FrameType::route && version >= kRelayFramesVersion && !route) {
            auto r = Route::decode(fr.payload);
            if (r && r->nodes.back() != peer_node)
                r = proto("ROUTE frame: the route " + r->text() + " does not end with the sender '" + peer_node + "'");
            if (!r) {
                ErrorCode code = code_for_refused_frame(r.status());
                send_error(code, "ROUTE from " + peer + " refused by replica '" + node + "': " + r.status().message());
                return r.status();
            }
            route = std::move(r.value());
            continue;
        }
        if (fr.type != FrameType::offer) {
            Status s = proto(std::string("expected OFFER, got ") + frame_type_name(fr.type));
            send_error(ErrorCode::protocol, "replica '" + node + "': " + s.message());
            return s;
        }
        auto o = Offer::decode(fr.payload);
        if (!o) {
            ErrorCode code = code_for_refused_frame(o.status());
            send_error(code, "OFFER from " + peer + " refused by replica '" + node + "': " + o.status().message());
            ReceiveReport r;
            r.peer = peer;
            r.code = code;
            r.status = o.status();
            rx.record(r);
            return o.status();
        }
        Route from = route ? std::move(*route) : Route{{peer_node}};
        route.reset();
        if (Status s = offer(*o, from); !s) return s;
    }
}

Status Receiver::Connection::offer(const Offer& o, const Route& route) {
    ReceiveReport rep;
    rep.peer = peer;
    rep.image = o.image;
    rep.version = o.version;
    const std::string what_s = what(o.image, o.version);
    auto refuse = [&](ErrorCode code, const Status& s) {
        rep.code = code;
        rep.status = Status::error(s.code() ? s.code() : EIO, what_s + ": " + s.message());
        send_error(code, rep.status.message());
        rx.record(rep);
        return rep.status;
    };

    // A relay cycle stops at its first repeated node, before any staging.
    if (route.relays_through(node))
        return refuse(ErrorCode::refused, Status::error(ELOOP, "relay cycle: the offer came " + route.text() +
                                                                   " and replica '" + node + "' is on that route"));

    auto repo = Repository::open(rx.opt_.root);
    if (!repo) return refuse(ErrorCode::io_error, repo.status());
    auto published = repo->list_versions(o.image);
    if (!published) return refuse(ErrorCode::io_error, published.status());
    auto need = choose_need(o, *published);
    if (!need) {
        return refuse(ErrorCode::not_newer,
                      Status::error(ESTALE, "replica '" + node + "' already publishes version " +
                                                std::to_string(published->empty() ? 0 : published->back())));
    }
    rep.kind = need->kind;
    rep.base = need->base;
    if (need->kind == NeedKind::nothing) {
        if (Status s = send(*need); !s) {
            rep.status = s;
            rx.record(rep);
            return s;
        }
        rx.record(rep);
        return Status::ok();
    }

    // Staging: resume the area of the same (image, version, base), discard any other.
    std::optional<Staging> staging;
    auto areas = repo->list_staging(o.image);
    if (areas) {
        for (const auto& a : *areas) {
            if (a.version == o.version && a.base == need->base) continue;
            (void)repo->discard_staging(o.image, a.version, a.base);
        }
        bool have = std::any_of(areas->begin(), areas->end(),
                                [&](const StagingInfo& a) { return a.version == o.version && a.base == need->base; });
        if (have) {
            auto deadline = Clock::now() + rx.opt_.busy_wait;
            for (;;) {
                auto r = repo->resume_staging(o.image, o.version, need->base);
                if (r) {
                    auto cp = decode_checkpoint(r->checkpoint());
                    if (cp) {
                        need->resume_seq = cp->first;
                        need->resume_chain = cp->second;
                        staging.emplace(std::move(r.value()));
                    } else {
                        (void)r->abort();
                    }
                    break;
                }
                if (r.status().code() == EBUSY && Clock::now() < deadline) {
                    std::this_thread::sleep_for(50ms);
                    continue;
                }
                if (r.status().code() == EBUSY)
                    return refuse(ErrorCode::busy, Status::error(EBUSY, "another push of this version is in progress"));
                // EBADMSG: a damaged staging state; ENOENT: gone meanwhile. Both: start over.
                if (r.status().code() != EBADMSG && r.status().code() != ENOENT)
                    return refuse(code_for_local_failure(r.status().code()), r.status());
                (void)repo->discard_staging(o.image, o.version, need->base);
                break;
            }
        }
    }
    if (!staging) {
        auto b = repo->begin_staging(o.image, o.version, need->base);
        if (!b) {
            const int err = b.status().code();
            ErrorCode code = code_for_local_failure(err);
            if (err == EEXIST || err == ESTALE) code = ErrorCode::not_newer;  // published meanwhile
            if (err == EBUSY) code = ErrorCode::busy;
            return refuse(code, b.status());
        }
        staging.emplace(std::move(b.value()));
    }
    // A relay: its children negotiate first, so that our parent resends from
    // the earliest point any of them needs (section 11).
    std::unique_ptr<Relay> relay;
    if (!rx.opt_.relay_to.empty() && route.nodes.size() >= kMaxRoute) {
        log(LogLevel::warning, what_s + ": not relayed: the route " + route.text() + " already has " +
                                   std::to_string(kMaxRoute) + " nodes");
    } else if (!rx.opt_.relay_to.empty()) {
        RelaySettings rs;
        rs.route = route.nodes;
        rs.route.push_back(node);
        rs.children = rx.opt_.relay_to;
        rs.tls = rx.opt_.relay_tls;
        rs.node_name = node;
        rs.capabilities = rx.opt_.capabilities;
        rs.window_bytes = rx.opt_.relay_window_bytes;
        rs.max_stall = rx.opt_.relay_max_stall;
        relay = std::make_unique<Relay>(std::move(rs), o, *need);
        auto [seq, chain] = relay->start();
        if (seq < need->resume_seq) {
            need->resume_seq = seq;
            need->resume_chain = chain;
        }
        if (!relay->fed()) relay.reset();
    }
    rep.resumed_after = need->resume_seq;
    // Version 2: name the children we feed, for our parent to take over if we fail.
    Status sent_need = relay && version >= kRelayFramesVersion ? send(Children{relay->fed_children()}) : Status::ok();
    if (sent_need) sent_need = send(*need);
    if (Status s = sent_need; !s) {
        if (relay) relay->abort(s);
        rep.status = Status::error(s.code(), what_s + ": " + s.message());
        rep.staging_kept = true;
        rx.record(rep);
        return rep.status;
    }

    // The change stream.
    ChangeChain chain(need->resume_seq, need->resume_chain);
    Applier applier(staging->tree_fd(), rx.opt_.capabilities, rx.opt_.use_io_uring);
    auto stop = [&](ErrorCode code, const Status& s, bool tell) {
        rep.code = code;
        rep.status = Status::error(s.code() ? s.code() : EIO, what_s + ": " + s.message());
        if (relay) relay->abort(rep.status);
        rep.data_bytes_written = applier.data_bytes();
        // A resume cannot help after these (section 6); a full disk gets its space back.
        bool discard = code == ErrorCode::digest_mismatch || code == ErrorCode::no_space || code == ErrorCode::bad_name;
        if (discard) applier.release();
        else (void)applier.flush();  // what came before the error stays applied for the resume
        if (discard) {
            if (Status a = staging->abort(); !a) log(LogLevel::warning, what_s + ": removing the staging area: " + a.message());
        }
        rep.staging_kept = !discard;
        if (tell) send_error(code, rep.status.message());
        rx.record(rep);
        return rep.status;
    };
    // A local step (flush, sync, checkpoint, manifest) failed.
    auto local = [](const Status& s) { return code_for_local_failure(s.code()); };

    for (;;) {
        auto f = next();
        if (!f) return stop(read_failure_code(), f.status(), true);
        if (!f->has_value())
            return stop(ErrorCode::protocol, Status::error(ECONNRESET, "the sender closed the connection in the middle of the stream"), false);
        const Frame& fr = **f;
        if (fr.type == FrameType::error) {
            auto e = Error::decode(fr.payload);
            return stop(ErrorCode::cancelled,
                        Status::error(EREMOTEIO, "the sender reported " +
                                                     (e ? error_code_name(e->code) + ": " + e->message : std::string("an error"))),
                        false);
        }
        if (is_change_frame(fr.type)) {
            auto m = decode_message(fr);
            if (!m) return stop(code_for_refused_frame(m.status()), m.status(), true);
            Status added;
            if (Status s = applier.apply(*m); !s) return stop(applier.failure_code(s), s, true);
            std::visit(
                [&](const auto& msg) {
                    using T = std::decay_t<decltype(msg)>;
                    if constexpr (std::is_same_v<T, Data>) added = chain.add(msg, applier.last_data_xxh3());
                    else if constexpr (std::is_same_v<T, FileEntry> || std::is_same_v<T, Hole> ||
                                       std::is_same_v<T, Truncate> || std::is_same_v<T, Delete>)
                        added = chain.add(msg);
                },
                *m);
            if (!added) return stop(ErrorCode::protocol, added, true);
            ++rep.changes_applied;
            // Verified (checksums, fields, applied, chained): now the children may have it.
            if (relay) {
                const auto* d = std::get_if<Data>(&*m);
                relay->forward(fr, chain.seq(), chain.value(), d ? d->length : 0);
            }
            continue;
        }
        if (fr.type == FrameType::checkpoint) {
            auto c = Checkpoint::decode(fr.payload);
            if (!c) return stop(ErrorCode::protocol, c.status(), true);
            if (c->seq != chain.seq())
                return stop(ErrorCode::protocol,
                            proto("CHECKPOINT at change " + std::to_string(c->seq) + " but the last change applied is " +
                                  std::to_string(chain.seq())),
                            true);
            if (Status s = applier.flush(); !s) return stop(local(s), s, true);
            if (Status s = staging->sync(); !s) return stop(local(s), s, true);
            if (Status s = staging->write_checkpoint(encode_checkpoint(chain.seq(), chain.value())); !s)
                return stop(local(s), s, true);
            if (Status s = send(CheckpointAck{chain.seq(), chain.value()}); !s)
                return stop(ErrorCode::io_error, s, false);
            continue;
        }
        if (fr.type == FrameType::end) {
            auto e = End::decode(fr.payload);
            if (!e) return stop(ErrorCode::protocol, e.status(), true);
            if (Status s = applier.flush(); !s) return stop(local(s), s, true);
            applier.release();  // no file of the tree stays open for publish
            if (Status s = staging->sync(); !s) return stop(local(s), s, true);
            auto m = manifest_of_tree(staging->tree_fd(), "staging tree of " + what_s);
            if (!m) return stop(local(m.status()), m.status(), true);
            std::string differs;
            if (e->change_count != chain.seq()) differs = "change count (" + std::to_string(chain.seq()) + " applied, " + std::to_string(e->change_count) + " sent)";
            else if (e->chain != chain.value()) differs = "change chain differs";
            else if (e->entry_count != m->entry_count)
                differs = "entry count (" + std::to_string(m->entry_count) + " here, " + std::to_string(e->entry_count) + " on the master)";
            else if (e->manifest_hash != m->hash) differs = "manifest differs";
            else if (e->digest != version_digest(o.version, need->base, chain.seq(), chain.value(), m->entry_count, m->hash))
                differs = "digest differs";
            PushResult res;
            res.version = o.version;
            res.image = o.image;
            rep.data_bytes_written = applier.data_bytes();
            if (!differs.empty()) {
                applier.release();
                res.code = ErrorCode::digest_mismatch;
                res.message = clamp_message(what_s + ": digest mismatch: " + differs);
                (void)staging->abort();
                rep.code = res.code;
                rep.status = Status::error(EBADMSG, res.message);
            } else if (Status p = staging->publish(); !p) {
                // EEXIST, ESTALE: a newer version was published meanwhile.
                ErrorCode code = (p.code() == EEXIST || p.code() == ESTALE) ? ErrorCode::not_newer : local(p);
                res.code = code;
                res.message = clamp_message(what_s + ": " + p.message());
                if (code == ErrorCode::not_newer || code == ErrorCode::no_space) (void)staging->abort();
                rep.code = res.code;
                rep.status = Status::error(p.code(), res.message);
            } else {
                rep.published = true;
            }
            if (relay) {
                if (rep.published) relay->finish(*e);
                else relay->abort(rep.status);
            }
            Status sent = send(res);
            rx.record(rep);
            if (relay) (void)relay->wait();  // logs each child's outcome
            if (!res.ok()) return rep.status;
            return sent;
        }
        return stop(ErrorCode::protocol,
                    proto(std::string(frame_type_name(fr.type)) + " frame in the middle of the change stream"), true);
    }
}

}  // namespace icbd::repl
