// The replica side of a push (docs/replication-protocol.md): handshake, NEED
// with catch-up and resume, the change frames applied beneath the staging tree
// (data through io_uring), durable checkpoints, digest check and atomic publish.
#include "icbd/replicator/receiver.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "icbd/checksum.hpp"
#include "icbd/endian.hpp"
#include "icbd/log.hpp"
#include "icbd/replicator/compression.hpp"
#include "icbd/replicator/image_path.hpp"
#include "icbd/replicator/repository.hpp"
#include "digests.hpp"
#include "frame_codec.hpp"
#include "messages.hpp"
#include "name_rules.hpp"
#include "tree_manifest.hpp"

namespace icbd::repl {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// A failure while handling an offer: the code to send and the cause.
struct Failure {
    ErrorCode code = ErrorCode::ok;
    Status status;
};

Status proto(std::string msg) { return Status::error(EPROTO, std::move(msg)); }

// Checkpoint payload (opaque to the repository): protocol version, seq, chain.
constexpr size_t kCheckpointPayload = 2 + 8 + 8;
Bytes encode_checkpoint(uint64_t seq, uint64_t chain) {
    Bytes b(kCheckpointPayload);
    store_le16(b.data(), kProtocolVersion);
    store_le64(b.data() + 2, seq);
    store_le64(b.data() + 10, chain);
    return b;
}
std::optional<std::pair<uint64_t, uint64_t>> decode_checkpoint(const std::vector<uint8_t>& b) {
    if (b.empty()) return std::make_pair(uint64_t(0), uint64_t(0));
    if (b.size() != kCheckpointPayload || load_le16(b.data()) != kProtocolVersion) return std::nullopt;
    return std::make_pair(load_le64(b.data() + 2), load_le64(b.data() + 10));
}

std::string host_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "replica";
    std::string n;
    for (char c : std::string(buf))
        if (c > 0x20 && c < 0x7f) n += c;
    return n.empty() ? "replica" : n.substr(0, kMaxNodeName);
}

// Data writes, batched: several writes go to the kernel in one io_uring submit;
// every batch is complete before any other kind of change is applied.
// Its own small ring, not libblockd's IoEngine: that engine is LUN-specific (one
// backing file, tgtd's event loop, SCSI completions) and would pull in libaio.
class DataWriter {
public:
    explicit DataWriter(bool use_uring) {
        if (use_uring && ::io_uring_queue_init(kDepth, &ring_, 0) == 0) ring_ok_ = true;
    }
    ~DataWriter() {
        if (ring_ok_) ::io_uring_queue_exit(&ring_);
    }
    DataWriter(const DataWriter&) = delete;
    DataWriter& operator=(const DataWriter&) = delete;

    bool uses_io_uring() const { return ring_ok_; }
    void discard() {
        pending_.clear();
        pending_bytes_ = 0;
    }

    Status write(std::shared_ptr<UniqueFd> fd, uint64_t offset, Bytes bytes, std::string what) {
        pending_bytes_ += bytes.size();
        pending_.push_back(Pending{std::move(fd), offset, std::move(bytes), std::move(what)});
        if (pending_.size() >= kDepth || pending_bytes_ >= kMaxBatchBytes) return flush();
        return Status::ok();
    }

    Status flush() {
        Status first;
        if (ring_ok_ && !pending_.empty()) {
            for (size_t i = 0; i < pending_.size(); ++i) {
                io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);
                auto& p = pending_[i];
                ::io_uring_prep_write(sqe, p.fd->get(), p.buf.data(), static_cast<unsigned>(p.buf.size()), p.offset);
                ::io_uring_sqe_set_data64(sqe, i);
            }
            int submitted = ::io_uring_submit(&ring_);
            if (submitted < 0) {
                // The ring is unusable: write this batch (and later ones) with pwrite.
                ::io_uring_queue_exit(&ring_);
                ring_ok_ = false;
                return flush();
            }
            for (int n = 0; n < submitted; ++n) {
                io_uring_cqe* cqe = nullptr;
                int r = ::io_uring_wait_cqe(&ring_, &cqe);
                if (r == -EINTR) {
                    --n;
                    continue;
                }
                if (r < 0) {
                    if (first) first = Status::from_errno(-r, "io_uring wait");
                    break;
                }
                auto& p = pending_[::io_uring_cqe_get_data64(cqe)];
                int res = cqe->res;
                ::io_uring_cqe_seen(&ring_, cqe);
                if (res < 0) {
                    if (first) first = Status::from_errno(-res, p.what + ": write at offset " + std::to_string(p.offset));
                } else if (static_cast<size_t>(res) < p.buf.size()) {
                    Status s = pwrite_all(p, static_cast<size_t>(res));  // a short write: finish it plainly
                    if (first && !s) first = s;
                }
            }
        } else {
            for (auto& p : pending_) {
                Status s = pwrite_all(p, 0);
                if (first && !s) first = s;
            }
        }
        pending_.clear();
        pending_bytes_ = 0;
        return first;
    }

private:
    static constexpr unsigned kDepth = 16;
    static constexpr size_t kMaxBatchBytes = 8u << 20;
    struct Pending {
        std::shared_ptr<UniqueFd> fd;
        uint64_t offset;
        Bytes buf;
        std::string what;
    };
    static Status pwrite_all(const Pending& p, size_t done) {
        while (done < p.buf.size()) {
            ssize_t n = ::pwrite(p.fd->get(), p.buf.data() + done, p.buf.size() - done, static_cast<off_t>(p.offset + done));
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return Status::from_errno(errno, p.what + ": write at offset " + std::to_string(p.offset + done));
            if (n == 0) return Status::error(EIO, p.what + ": write returned 0");
            done += static_cast<size_t>(n);
        }
        return Status::ok();
    }
    io_uring ring_{};
    bool ring_ok_ = false;
    std::vector<Pending> pending_;
    size_t pending_bytes_ = 0;
};

std::string parent_of(std::string_view path) {
    auto slash = path.rfind('/');
    return slash == std::string_view::npos ? std::string() : std::string(path.substr(0, slash));
}
std::string leaf_of(std::string_view path) {
    auto slash = path.rfind('/');
    return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

// Opens (creating missing components, mode 0700 until their FILE) the
// directory `rel` beneath `root`, one component at a time without following symlinks.
Result<UniqueFd> open_dir_creating(int root, const std::string& rel) {
    UniqueFd cur(::openat(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!cur.valid()) return Status::from_errno(errno, "open staging root");
    size_t pos = 0;
    while (pos < rel.size()) {
        size_t slash = rel.find('/', pos);
        std::string comp = rel.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
        std::string sofar = rel.substr(0, slash == std::string::npos ? rel.size() : slash);
        if (::mkdirat(cur.get(), comp.c_str(), 0700) < 0 && errno != EEXIST)
            return Status::from_errno(errno, "'" + sofar + "': mkdir");
        UniqueFd next(::openat(cur.get(), comp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!next.valid()) {
            int e = errno;
            if (e == ELOOP || e == ENOTDIR) return proto("'" + sofar + "' is not a directory");
            return Status::from_errno(e, "'" + sofar + "': open");
        }
        cur = std::move(next);
        if (slash == std::string::npos) break;
        pos = slash + 1;
    }
    return cur;
}

// Removes `leaf` (a directory with everything in it) beneath `dir_fd`, never following symlinks.
Status remove_tree_at(int dir_fd, const std::string& leaf, const std::string& what) {
    UniqueFd d(::openat(dir_fd, leaf.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!d.valid()) return Status::from_errno(errno, "'" + what + "': open to delete");
    int fd2 = ::dup(d.get());
    if (fd2 < 0) return Status::from_errno(errno, "dup");
    DIR* dir = ::fdopendir(fd2);
    if (!dir) {
        ::close(fd2);
        return Status::from_errno(errno, "'" + what + "': fdopendir");
    }
    std::vector<std::pair<std::string, bool>> names;
    while (dirent* e = ::readdir(dir)) {
        std::string n = e->d_name;
        if (n == "." || n == "..") continue;
        struct ::stat st;
        if (::fstatat(d.get(), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        names.emplace_back(n, S_ISDIR(st.st_mode));
    }
    ::closedir(dir);
    for (auto& [n, is_dir] : names) {
        if (is_dir) {
            if (Status s = remove_tree_at(d.get(), n, what + "/" + n); !s) return s;
        } else if (::unlinkat(d.get(), n.c_str(), 0) < 0 && errno != ENOENT) {
            return Status::from_errno(errno, "'" + what + "/" + n + "': unlink");
        }
    }
    if (::unlinkat(dir_fd, leaf.c_str(), AT_REMOVEDIR) < 0 && errno != ENOENT)
        return Status::from_errno(errno, "'" + what + "': rmdir");
    return Status::ok();
}

Status set_attrs(int fd, const EntryAttrs& a, const std::string& path, bool set_mode) {
    if (::fchown(fd, a.uid, a.gid) < 0) return Status::from_errno(errno, "'" + path + "': chown");
    if (set_mode && ::fchmod(fd, a.mode) < 0) return Status::from_errno(errno, "'" + path + "': chmod");
    struct timespec ts[2];
    ts[0].tv_sec = 0;
    ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_sec = a.mtime_sec;
    ts[1].tv_nsec = a.mtime_nsec;
    if (::futimens(fd, ts) < 0) return Status::from_errno(errno, "'" + path + "': set mtime");
    return Status::ok();
}

// Applies change frames beneath one staging tree.
class Applier {
public:
    Applier(int tree_fd, uint32_t caps, bool use_uring) : tree_(tree_fd), caps_(caps), writer_(use_uring) {}

    Status apply(const Message& m) {
        if (auto* d = std::get_if<Data>(&m)) return data(*d);
        // Everything but DATA sees the data written before it.
        if (Status s = writer_.flush(); !s) return s;
        if (auto* t = std::get_if<Truncate>(&m)) return truncate(*t);
        if (auto* h = std::get_if<Hole>(&m)) return hole(*h);
        if (auto* f = std::get_if<FileEntry>(&m)) return file(*f);
        if (auto* x = std::get_if<Delete>(&m)) return del(*x);
        return proto("not a change frame");
    }
    Status flush() { return writer_.flush(); }
    // Drops the writes not yet done and closes the open file: before an abort,
    // so that the space of deleted files comes back at once.
    void release() {
        writer_.discard();
        cur_ = {};
    }
    uint64_t data_bytes() const { return data_bytes_; }

private:
    struct Current {
        std::string path;
        std::shared_ptr<UniqueFd> fd;
        uint64_t size = 0;
    };

    Result<Current*> regular(const std::string& path, const char* frame) {
        if (cur_.fd && cur_.path == path) return &cur_;
        auto fd = open_beneath(tree_, path, O_WRONLY | O_NOFOLLOW);
        if (!fd) {
            int e = fd.status().code();
            if (e == ENOENT || e == ELOOP || e == EISDIR)
                return proto(std::string(frame) + " frame for '" + path + "', which is not an existing regular file");
            return fd.status();
        }
        struct ::stat st;
        if (::fstat(fd->get(), &st) < 0) return Status::from_errno(errno, "'" + path + "': stat");
        if (!S_ISREG(st.st_mode)) return proto(std::string(frame) + " frame for '" + path + "', which is not a regular file");
        cur_ = Current{path, std::make_shared<UniqueFd>(std::move(fd.value())), static_cast<uint64_t>(st.st_size)};
        return &cur_;
    }

    Status data(const Data& d) {
        auto c = regular(d.path, "DATA");
        if (!c) return c.status();
        if (d.offset + d.length > (*c)->size)
            return proto("DATA frame for '" + d.path + "': offset " + std::to_string(d.offset) + " + length " +
                         std::to_string(d.length) + " is beyond the file's size " + std::to_string((*c)->size));
        Bytes buf(d.length);
        if (d.compression == Compression::none) {
            std::memcpy(buf.data(), d.bytes.data(), d.length);
        } else {
            if ((caps_ & capability_bit(d.compression)) == 0)
                return proto(std::string("DATA frame compressed with ") + compression_name(d.compression) +
                             ", which this replica did not offer");
            if (Status s = decomp_.decompress(d.compression, d.bytes, buf); !s)
                return Status::error(EBADMSG, "DATA frame for '" + d.path + "' at offset " + std::to_string(d.offset) +
                                                  ": " + s.message());
        }
        last_xxh3_ = xxh3_64(buf.data(), buf.size());
        data_bytes_ += d.length;
        return writer_.write((*c)->fd, d.offset, std::move(buf), "'" + d.path + "'");
    }

    Status truncate(const Truncate& t) {
        cur_ = {};
        auto dir = open_dir_creating(tree_, parent_of(t.path));
        if (!dir) return dir.status();
        std::string leaf = leaf_of(t.path);
        UniqueFd fd(::openat(dir->get(), leaf.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (!fd.valid()) {
            int e = errno;
            if (e == ELOOP || e == EISDIR) return proto("TRUNCATE frame for '" + t.path + "', which is not a regular file");
            return Status::from_errno(e, "'" + t.path + "': create");
        }
        struct ::stat st;
        if (::fstat(fd.get(), &st) < 0) return Status::from_errno(errno, "'" + t.path + "': stat");
        if (!S_ISREG(st.st_mode)) return proto("TRUNCATE frame for '" + t.path + "', which is not a regular file");
        if (::ftruncate(fd.get(), static_cast<off_t>(t.size)) < 0)
            return Status::from_errno(errno, "'" + t.path + "': truncate to " + std::to_string(t.size));
        cur_ = Current{t.path, std::make_shared<UniqueFd>(std::move(fd)), t.size};
        return Status::ok();
    }

    Status hole(const Hole& h) {
        auto c = regular(h.path, "HOLE");
        if (!c) return c.status();
        if (h.offset + h.length > (*c)->size)
            return proto("HOLE frame for '" + h.path + "': range beyond the file's size " + std::to_string((*c)->size));
        if (::fallocate((*c)->fd->get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(h.offset),
                        static_cast<off_t>(h.length)) < 0)
            return Status::from_errno(errno, "'" + h.path + "': punch hole at " + std::to_string(h.offset));
        return Status::ok();
    }

    Status file(const FileEntry& f) {
        const EntryAttrs& a = f.attrs;
        if (a.type == EntryType::regular) {
            auto fd = open_beneath(tree_, f.path, O_RDONLY | O_NOFOLLOW);
            if (!fd) {
                int e = fd.status().code();
                if (e == ENOENT || e == ELOOP) return proto("FILE frame for '" + f.path + "', which does not exist as a regular file");
                return fd.status();
            }
            struct ::stat st;
            if (::fstat(fd->get(), &st) < 0) return Status::from_errno(errno, "'" + f.path + "': stat");
            if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != a.size)
                return proto("FILE frame for '" + f.path + "': not a regular file of " + std::to_string(a.size) + " bytes");
            return set_attrs(fd->get(), a, f.path, true);
        }
        cur_ = {};
        auto dir = open_dir_creating(tree_, parent_of(f.path));
        if (!dir) return dir.status();
        std::string leaf = leaf_of(f.path);
        struct ::stat st;
        bool exists = ::fstatat(dir->get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
        if (a.type == EntryType::symlink) {
            if (exists && !S_ISLNK(st.st_mode)) return proto("FILE frame: symlink '" + f.path + "' over an entry of another type");
            if (exists && ::unlinkat(dir->get(), leaf.c_str(), 0) < 0) return Status::from_errno(errno, "'" + f.path + "': unlink");
            if (::symlinkat(a.symlink_target.c_str(), dir->get(), leaf.c_str()) < 0)
                return Status::from_errno(errno, "'" + f.path + "': symlink");
            if (::fchownat(dir->get(), leaf.c_str(), a.uid, a.gid, AT_SYMLINK_NOFOLLOW) < 0)
                return Status::from_errno(errno, "'" + f.path + "': chown");
            struct timespec ts[2] = {{0, UTIME_OMIT}, {a.mtime_sec, static_cast<long>(a.mtime_nsec)}};
            if (::utimensat(dir->get(), leaf.c_str(), ts, AT_SYMLINK_NOFOLLOW) < 0)
                return Status::from_errno(errno, "'" + f.path + "': set mtime");
            return Status::ok();
        }
        if (exists && !S_ISDIR(st.st_mode)) return proto("FILE frame: directory '" + f.path + "' over an entry of another type");
        if (!exists && ::mkdirat(dir->get(), leaf.c_str(), 0700) < 0 && errno != EEXIST)
            return Status::from_errno(errno, "'" + f.path + "': mkdir");
        UniqueFd d(::openat(dir->get(), leaf.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!d.valid()) return Status::from_errno(errno, "'" + f.path + "': open");
        return set_attrs(d.get(), a, f.path, true);
    }

    Status del(const Delete& x) {
        cur_ = {};
        auto pl = open_parent_beneath(tree_, x.path);
        if (!pl) {
            int e = pl.status().code();
            if (e == ENOENT || e == ENOTDIR) return Status::ok();  // already gone with its directory
            return pl.status();
        }
        struct ::stat st;
        if (::fstatat(pl->dir.get(), pl->leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT) return Status::ok();
            return Status::from_errno(errno, "'" + x.path + "': stat");
        }
        if (S_ISDIR(st.st_mode)) return remove_tree_at(pl->dir.get(), pl->leaf, x.path);
        if (::unlinkat(pl->dir.get(), pl->leaf.c_str(), 0) < 0 && errno != ENOENT)
            return Status::from_errno(errno, "'" + x.path + "': unlink");
        return Status::ok();
    }

public:
    uint64_t last_xxh3_ = 0;  // of the last DATA's uncompressed bytes, for the chain

private:
    int tree_;
    uint32_t caps_;
    DataWriter writer_;
    Decompressor decomp_;
    Current cur_;
    uint64_t data_bytes_ = 0;
};

}  // namespace

// One accepted connection (section 4's states for the receiver).
struct Receiver::Connection {
    Receiver& rx;
    Stream& stream;
    FrameDecoder decoder;
    std::string node;
    std::string peer;  // "master (127.0.0.1:40211)"
    std::vector<uint8_t> buf = std::vector<uint8_t>(256 * 1024);

    // Next frame; nullopt at an orderly end between frames.
    Result<std::optional<Frame>> next() {
        for (;;) {
            auto f = decoder.next();
            if (!f) return f.status();
            if (f->has_value()) return std::move(*f);
            auto n = stream.read_some(buf);
            if (!n) return n.status();
            if (*n == 0) {
                if (Status s = decoder.finish(); !s) return s;
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
        e.code = static_cast<uint16_t>(code == ErrorCode::ok ? ErrorCode::internal : code);
        e.message = clamp_message(message);
        if (!send(e)) return;
        (void)stream.shutdown();
        stream.set_io_timeout(2000ms);
        auto until = Clock::now() + 3s;
        while (Clock::now() < until) {
            auto n = stream.read_some(buf);
            if (!n || *n == 0) break;
        }
    }

    std::string what(const std::string& image, uint64_t version) const {
        return "image '" + image + "' version " + std::to_string(version) + " from " + peer + " on replica '" + node + "'";
    }

    Status run();
    // Handles one OFFER to its end. Returns false when the connection must close.
    bool offer(const Offer& o);
};

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
    auto v = negotiate_version(ours, *theirs);
    if (!v) {
        send_error(ErrorCode::unsupported_version, "replica '" + node + "': " + v.status().message());
        return v.status();
    }
    ours.min_version = ours.max_version = *v;
    if (Status s = send(ours); !s) return s;

    for (;;) {
        auto f = next();
        if (!f) {
            send_error(ErrorCode::protocol, "replica '" + node + "': " + f.status().message());
            return f.status();
        }
        if (!f->has_value()) return Status::ok();
        const Frame& fr = **f;
        if (fr.type == FrameType::error) {
            auto e = Error::decode(fr.payload);
            return Status::error(EREMOTEIO, "sender " + peer + " reported " +
                                                (e ? error_code_name(e->code) + ": " + e->message : std::string("an error")));
        }
        if (fr.type != FrameType::offer) {
            Status s = proto(std::string("expected OFFER, got ") + frame_type_name(fr.type));
            send_error(ErrorCode::protocol, "replica '" + node + "': " + s.message());
            return s;
        }
        auto o = Offer::decode(fr.payload);
        if (!o) {
            ErrorCode code = error_code_for(o.status());
            send_error(code, "OFFER from " + peer + " refused by replica '" + node + "': " + o.status().message());
            ReceiveReport r;
            r.peer = peer;
            r.code = static_cast<uint16_t>(code);
            r.status = o.status();
            rx.record(r);
            return o.status();
        }
        if (!offer(*o)) return Status::error(EPROTO, "connection from " + peer + " ended by an error");
    }
}

bool Receiver::Connection::offer(const Offer& o) {
    ReceiveReport rep;
    rep.peer = peer;
    rep.image = o.image;
    rep.version = o.version;
    const std::string what_s = what(o.image, o.version);
    auto refuse = [&](ErrorCode code, const Status& s) {
        rep.code = static_cast<uint16_t>(code);
        rep.status = Status::error(s.code() ? s.code() : EIO, what_s + ": " + s.message());
        send_error(code, rep.status.message());
        rx.record(rep);
        return false;
    };

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
            return false;
        }
        rx.record(rep);
        return true;
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
                if (r.status().code() != EBADMSG && r.status().code() != ENOENT)
                    return refuse(error_code_for(r.status()), r.status());
                (void)repo->discard_staging(o.image, o.version, need->base);
                break;
            }
        }
    }
    if (!staging) {
        auto b = repo->begin_staging(o.image, o.version, need->base);
        if (!b) {
            ErrorCode code = error_code_for(b.status());
            if (b.status().code() == EEXIST || b.status().code() == ESTALE) code = ErrorCode::not_newer;
            if (b.status().code() == EBUSY) code = ErrorCode::busy;
            if (code == ErrorCode::bad_name && b.status().code() != EINVAL) code = ErrorCode::io_error;
            return refuse(code, b.status());
        }
        staging.emplace(std::move(b.value()));
    }
    rep.resumed_after = need->resume_seq;
    if (Status s = send(*need); !s) {
        rep.status = Status::error(s.code(), what_s + ": " + s.message());
        rep.staging_kept = true;
        rx.record(rep);
        return false;
    }

    // The change stream.
    ChangeChain chain(need->resume_seq, need->resume_chain);
    Applier applier(staging->tree_fd(), rx.opt_.capabilities, rx.opt_.use_io_uring);
    auto stop = [&](ErrorCode code, const Status& s, bool tell) {
        rep.code = static_cast<uint16_t>(code);
        rep.status = Status::error(s.code() ? s.code() : EIO, what_s + ": " + s.message());
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
        return false;
    };
    auto code_of = [](const Status& s) { return error_code_for(s); };

    for (;;) {
        auto f = next();
        if (!f) return stop(code_of(f.status()), f.status(), true);
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
            if (!m) return stop(code_of(m.status()), m.status(), true);
            Status added;
            if (Status s = applier.apply(*m); !s) return stop(code_of(s), s, true);
            std::visit(
                [&](const auto& msg) {
                    using T = std::decay_t<decltype(msg)>;
                    if constexpr (std::is_same_v<T, Data>) added = chain.add(msg, applier.last_xxh3_);
                    else if constexpr (std::is_same_v<T, FileEntry> || std::is_same_v<T, Hole> ||
                                       std::is_same_v<T, Truncate> || std::is_same_v<T, Delete>)
                        added = chain.add(msg);
                },
                *m);
            if (!added) return stop(ErrorCode::protocol, added, true);
            ++rep.changes_applied;
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
            if (Status s = applier.flush(); !s) return stop(code_of(s), s, true);
            if (Status s = staging->sync(); !s) return stop(code_of(s), s, true);
            if (Status s = staging->write_checkpoint(encode_checkpoint(chain.seq(), chain.value())); !s)
                return stop(code_of(s), s, true);
            if (Status s = send(CheckpointAck{chain.seq(), chain.value()}); !s)
                return stop(ErrorCode::io_error, s, false);
            continue;
        }
        if (fr.type == FrameType::end) {
            auto e = End::decode(fr.payload);
            if (!e) return stop(ErrorCode::protocol, e.status(), true);
            if (Status s = applier.flush(); !s) return stop(code_of(s), s, true);
            applier.release();  // no file of the tree stays open for publish
            if (Status s = staging->sync(); !s) return stop(code_of(s), s, true);
            auto m = manifest_of_tree(staging->tree_fd(), "staging tree of " + what_s);
            if (!m) return stop(code_of(m.status()), m.status(), true);
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
                res.code = static_cast<uint16_t>(ErrorCode::digest_mismatch);
                res.message = clamp_message(what_s + ": digest mismatch: " + differs);
                (void)staging->abort();
                rep.code = res.code;
                rep.status = Status::error(EBADMSG, res.message);
            } else if (Status p = staging->publish(); !p) {
                ErrorCode code = (p.code() == EEXIST || p.code() == ESTALE) ? ErrorCode::not_newer : code_of(p);
                if (code == ErrorCode::bad_name) code = ErrorCode::io_error;
                res.code = static_cast<uint16_t>(code);
                res.message = clamp_message(what_s + ": " + p.message());
                if (code == ErrorCode::not_newer || code == ErrorCode::no_space) (void)staging->abort();
                rep.code = res.code;
                rep.status = Status::error(p.code(), res.message);
            } else {
                rep.published = true;
            }
            Status sent = send(res);
            rx.record(rep);
            return sent.is_ok() && res.ok();
        }
        return stop(ErrorCode::protocol,
                    proto(std::string(frame_type_name(fr.type)) + " frame in the middle of the change stream"), true);
    }
}

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
    Connection c{*this, stream, FrameDecoder(), opt_.node_name, {}};
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
                continue;
            }
            result = serve_connection(*st);
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
    (void)result;
    return Status::ok();
}

void Receiver::stop() {
    std::lock_guard lk(mu_);
    stopping_ = true;
    if (listener_) listener_->stop();
    for (Stream* s : active_) s->interrupt();
}

}  // namespace icbd::repl
