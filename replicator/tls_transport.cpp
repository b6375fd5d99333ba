// Stream, Listener and connect(): TLS 1.3 with mutual certificate authentication
// (OpenSSL) over the non-blocking sockets of tcp_socket.cpp, or plain TCP for tests.
//
// OpenSSL never touches the socket itself: a small BIO of ours does recv() and
// send(MSG_NOSIGNAL). That gives SIGPIPE-free writes without changing the
// process's signal disposition (a library must not), and it is where the wire
// byte counters are kept.
#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>

#include "icbd/log.hpp"
#include "icbd/replicator/transport.hpp"
#include "tcp_socket.hpp"

namespace icbd::repl {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct SslCtxFree {
    void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
struct SslFree {
    void operator()(SSL* s) const { SSL_free(s); }
};
struct GeneralNamesFree {
    void operator()(GENERAL_NAMES* g) const { GENERAL_NAMES_free(g); }
};
struct OpensslStringFree {
    void operator()(unsigned char* p) const { OPENSSL_free(p); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;
using SslPtr = std::unique_ptr<SSL, SslFree>;

bool iequal(const std::string& a, const std::string& b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

std::string join(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
    return out;
}

// The names a certificate answers to: subject CN and SAN DNS entries.
void certificate_names(X509* cert, std::string& cn, std::vector<std::string>& dns) {
    cn.clear();
    dns.clear();
    if (!cert) return;
    X509_NAME* subject = X509_get_subject_name(cert);
    int idx = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
    if (idx >= 0) {
        ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
        unsigned char* utf8 = nullptr;
        int len = ASN1_STRING_to_UTF8(&utf8, data);
        if (len >= 0) {
            std::unique_ptr<unsigned char, OpensslStringFree> owner(utf8);
            cn.assign(reinterpret_cast<char*>(utf8), static_cast<size_t>(len));
        }
    }
    std::unique_ptr<GENERAL_NAMES, GeneralNamesFree> sans(
        static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
    if (!sans) return;
    for (int i = 0; i < sk_GENERAL_NAME_num(sans.get()); ++i) {
        const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans.get(), i);
        if (gn->type != GEN_DNS) continue;
        const ASN1_IA5STRING* s = gn->d.dNSName;
        dns.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                         static_cast<size_t>(ASN1_STRING_length(s)));
    }
}

// OpenSSL's reasons for the failure, oldest first, without duplicates:
// "certificate verify failed", "tlsv1 alert unknown ca", ...
std::string openssl_reasons(int* first_reason = nullptr) {
    std::vector<std::string> reasons;
    if (first_reason) *first_reason = 0;
    while (unsigned long e = ERR_get_error()) {
        if (first_reason && *first_reason == 0) *first_reason = ERR_GET_REASON(e);
        const char* r = ERR_reason_error_string(e);
        std::string text = r ? r : ("OpenSSL error " + std::to_string(e));
        if (std::find(reasons.begin(), reasons.end(), text) == reasons.end()) reasons.push_back(text);
    }
    std::string out;
    for (const auto& r : reasons) out += (out.empty() ? "" : ": ") + r;
    return out;
}

// Reasons that mean "this peer is not authorised", as opposed to a protocol
// or network failure: the caller should not simply retry.
bool is_auth_reason(int reason) {
    switch (reason) {
        case SSL_R_CERTIFICATE_VERIFY_FAILED:
        case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
        case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
        case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
        case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
        case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
        case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
        case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
        case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
            return true;
        default:
            return false;
    }
}

int ssl_ex_index() {
    static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return index;
}

}  // namespace

// ---------------------------------------------------------------------------
// Stream::Impl: one connection, TLS or plaintext.

struct Stream::Impl {
    UniqueFd fd;
    SslPtr ssl;  // null in plaintext mode
    PeerIdentity peer;
    std::string dialed;  // "replica1:7000" as the caller named it (client side)
    std::vector<std::string> allowed_names;
    milliseconds io_timeout{60'000};
    milliseconds handshake_timeout{10'000};  // for messages; the deadline is the caller's

    std::atomic<uint64_t> wire_sent{0}, wire_received{0}, payload_sent{0}, payload_received{0};

    std::mutex fd_mu;  // interrupt() (any thread) against close() (owner)
    std::atomic<bool> interrupted{false};

    // Left by the BIO and the verify callback for the error message.
    int sys_errno = 0;
    bool saw_eof = false;
    std::string verify_note;
    bool server_confirmed = false;  // the client got the server's session ticket
    bool broken = false;            // a fatal TLS error: no close_notify any more

    // "peer replica1 (127.0.0.1:40211)" once the certificate is known, else the
    // address (and the name the client dialed).
    std::string name() const {
        if (!peer.common_name.empty()) return peer.describe();
        if (!dialed.empty() && dialed != peer.address)
            return dialed + (peer.address.empty() ? "" : " (" + peer.address + ")");
        return peer.address.empty() ? dialed : peer.address;
    }
    Status fail(int err, const std::string& cause) const { return Status::error(err, "peer " + name() + ": " + cause); }

    Status check_usable() const {
        if (interrupted.load()) return fail(ECANCELED, "connection interrupted");
        if (!fd.valid()) return fail(ENOTCONN, "connection closed");
        return Status::ok();
    }

    // Waits for the socket; `deadline` fixes an overall limit (handshake),
    // otherwise each wait may last io_timeout (progress resets the clock).
    Status wait(short events, std::optional<Clock::time_point> deadline, const char* doing) {
        milliseconds t = io_timeout;
        if (deadline) t = std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(*deadline - Clock::now()));
        auto ready = tcp::wait(fd.get(), events, t);
        if (!ready) return fail(ready.status().code(), ready.status().message());
        if (Status s = check_usable(); !s) return s;
        if (!*ready) {
            if (deadline)
                return fail(ETIMEDOUT, std::string(doing) + " did not complete within " +
                                           std::to_string(handshake_timeout.count()) + " ms");
            return fail(ETIMEDOUT, std::string(doing) + ": nothing moved for " + std::to_string(t.count()) +
                                       " ms (peer gone or stalled; timeout)");
        }
        return Status::ok();
    }

    // Why the last TLS call failed, as one message naming the peer.
    Status ssl_failure(int ssl_err, const char* doing) {
        broken = true;
        if (ssl_err == SSL_ERROR_SYSCALL) {
            ERR_clear_error();
            if (sys_errno) return fail(sys_errno, std::string(doing) + ": " + std::strerror(sys_errno));
            if (saw_eof && ssl && SSL_is_init_finished(ssl.get()))
                return fail(ECONNRESET, std::string(doing) + ": connection closed by peer without TLS close_notify");
            return fail(ECONNRESET, std::string(doing) + ": connection closed by peer");
        }
        int reason = 0;
        std::string reasons = openssl_reasons(&reason);
        if (reason == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            return fail(ECONNRESET, std::string(doing) + ": connection closed by peer without TLS close_notify");
        if (sys_errno && reasons.empty()) return fail(sys_errno, std::string(doing) + ": " + std::strerror(sys_errno));
        std::string cause = reasons.empty() ? "TLS error " + std::to_string(ssl_err) : reasons;
        long v = ssl ? SSL_get_verify_result(ssl.get()) : X509_V_OK;
        bool auth = is_auth_reason(reason);
        if (!verify_note.empty()) {
            auth = true;
            cause = "certificate refused: " + verify_note;
        } else if (v != X509_V_OK) {
            auth = true;
            if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED) cause = "certificate verify failed";
            cause += std::string(": ") + X509_verify_cert_error_string(v);
        } else if (reason == SSL_R_UNSUPPORTED_PROTOCOL) {
            cause += " (TLS 1.3 is required)";
        } else if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_HTTP_REQUEST ||
                   reason == SSL_R_PACKET_LENGTH_TOO_LONG) {
            cause += " (the peer does not speak TLS; plaintext mode on one side only?)";
        }
        return fail(auth ? EACCES : EPROTO, std::string(doing) + ": " + cause);
    }

    // Runs one OpenSSL call until it completes on the non-blocking socket.
    // Returns the count the call stored in *n (bytes; 1 for a handshake step),
    // 0 for the peer's close_notify, or an error.
    template <class Op>
    Result<size_t> drive(Op op, const char* doing, std::optional<Clock::time_point> deadline = std::nullopt) {
        for (;;) {
            if (Status s = check_usable(); !s) return s;
            ERR_clear_error();
            sys_errno = 0;
            size_t n = 0;
            int r = op(&n);
            if (r > 0) return n;
            int e = SSL_get_error(ssl.get(), r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                if (Status s = wait(e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline, doing); !s) return s;
                continue;
            }
            if (e == SSL_ERROR_ZERO_RETURN) return size_t{0};
            if (Status s = check_usable(); !s) return s;  // interrupt() shut the socket down under us
            return ssl_failure(e, doing);
        }
    }

    void fill_identity() {
        peer.authenticated = true;
        peer.protocol = SSL_get_version(ssl.get());
        peer.cipher = SSL_get_cipher_name(ssl.get());
        certificate_names(SSL_get0_peer_certificate(ssl.get()), peer.common_name, peer.dns_names);
    }

    Status plain_wait(short events, const char* doing) { return wait(events, std::nullopt, doing); }
};

namespace {

// --- the BIO: OpenSSL's socket I/O goes through here ------------------------

int bio_write(BIO* b, const char* data, size_t len, size_t* written) {
    auto* s = static_cast<Stream::Impl*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    ssize_t n = ::send(s->fd.get(), data, len, MSG_NOSIGNAL);
    if (n >= 0) {
        s->wire_sent += static_cast<uint64_t>(n);
        *written = static_cast<size_t>(n);
        return 1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        BIO_set_retry_write(b);
    else
        s->sys_errno = errno;
    return 0;
}

int bio_read(BIO* b, char* data, size_t len, size_t* read) {
    auto* s = static_cast<Stream::Impl*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    ssize_t n = ::recv(s->fd.get(), data, len, 0);
    if (n > 0) {
        s->wire_received += static_cast<uint64_t>(n);
        *read = static_cast<size_t>(n);
        return 1;
    }
    if (n == 0) {
        s->saw_eof = true;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        BIO_set_retry_read(b);
    } else {
        s->sys_errno = errno;
    }
    return 0;
}

long bio_ctrl(BIO*, int cmd, long, void*) {
    // OpenSSL flushes after each flight; send() has nothing buffered.
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

int bio_create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
}

int bio_destroy(BIO*) { return 1; }  // the fd belongs to Stream::Impl

struct BioMethodFree {
    void operator()(BIO_METHOD* m) const { BIO_meth_free(m); }
};

const BIO_METHOD* socket_bio_method() {
    static const std::unique_ptr<BIO_METHOD, BioMethodFree> method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "icbd socket (MSG_NOSIGNAL)");
        if (m) {
            BIO_meth_set_write_ex(m, bio_write);
            BIO_meth_set_read_ex(m, bio_read);
            BIO_meth_set_ctrl(m, bio_ctrl);
            BIO_meth_set_create(m, bio_create);
            BIO_meth_set_destroy(m, bio_destroy);
        }
        return std::unique_ptr<BIO_METHOD, BioMethodFree>(m);
    }();
    return method.get();
}

// --- certificate checks ------------------------------------------------------

// Chain verification is OpenSSL's; on top, at the peer's own certificate
// (depth 0), the allowed-names policy. Failing here aborts the handshake with
// an alert, so the peer learns it was refused.
int verify_callback(int preverify_ok, X509_STORE_CTX* store) {
    if (!preverify_ok || X509_STORE_CTX_get_error_depth(store) != 0) return preverify_ok;
    auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
    auto* s = ssl ? static_cast<Stream::Impl*>(SSL_get_ex_data(ssl, ssl_ex_index())) : nullptr;
    if (!s || s->allowed_names.empty()) return 1;
    PeerIdentity id;
    certificate_names(X509_STORE_CTX_get_current_cert(store), id.common_name, id.dns_names);
    for (const auto& name : s->allowed_names)
        if (id.has_name(name)) return 1;
    s->verify_note = "its names (CN=" + id.common_name + (id.dns_names.empty() ? "" : ", DNS: " + join(id.dns_names)) +
                     ") are not among the allowed peer names: " + join(s->allowed_names);
    // Reported to the peer as a "bad certificate" alert.
    X509_STORE_CTX_set_error(store, X509_V_ERR_HOSTNAME_MISMATCH);
    return 0;
}

// In TLS 1.3 the client finishes its handshake before the server has looked at
// the client's certificate. Our servers always send a session ticket once they
// accepted it; the client waits for that ticket (or the refusal alert) in
// connect(), so that a refused client learns it there.
int on_new_session(SSL* ssl, SSL_SESSION*) {
    if (auto* s = static_cast<Stream::Impl*>(SSL_get_ex_data(ssl, ssl_ex_index()))) s->server_confirmed = true;
    return 0;  // we do not keep the session: no resumption
}

Status readable_file(const std::string& path, const char* what) {
    if (path.empty()) return Status::error(EINVAL, std::string("TLS config: no ") + what + " file given");
    if (::access(path.c_str(), R_OK) < 0)
        return Status::from_errno(errno, std::string("TLS config: ") + what + " file '" + path + "'");
    return Status::ok();
}

Result<SslCtxPtr> make_context(const TlsConfig& cfg, bool server) {
    if (Status s = readable_file(cfg.ca_file, "CA"); !s) return s;
    if (Status s = readable_file(cfg.cert_file, "certificate"); !s) return s;
    if (Status s = readable_file(cfg.key_file, "key"); !s) return s;
    ERR_clear_error();
    SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
    if (!ctx) return Status::error(ENOMEM, "TLS config: SSL_CTX_new: " + openssl_reasons());
    if (SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) != 1)
        return Status::error(EPROTO, "TLS config: cannot require TLS 1.3: " + openssl_reasons());
    if (SSL_CTX_load_verify_locations(ctx.get(), cfg.ca_file.c_str(), nullptr) != 1)
        return Status::error(EINVAL, "TLS config: CA file '" + cfg.ca_file + "': " + openssl_reasons());
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), cfg.cert_file.c_str()) != 1)
        return Status::error(EINVAL, "TLS config: certificate file '" + cfg.cert_file + "': " + openssl_reasons());
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), cfg.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx.get()) != 1)
        return Status::error(EINVAL, "TLS config: key file '" + cfg.key_file + "' does not match certificate '" +
                                         cfg.cert_file + "': " + openssl_reasons());
    // Partial writes let write_all count progress per record; the moving
    // buffer is harmless and avoids surprises if a retry comes from elsewhere.
    SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (server) {
        SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_callback);
        // Tell clients which CA we accept (CertificateRequest).
        if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(cfg.ca_file.c_str()))
            SSL_CTX_set_client_CA_list(ctx.get(), names);
        SSL_CTX_set_num_tickets(ctx.get(), 1);  // the client's confirmation, see on_new_session
    } else {
        SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, verify_callback);
        SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx.get(), on_new_session);
    }
    ERR_clear_error();
    return ctx;
}

SslCtxPtr share(SSL_CTX* ctx) {
    if (!ctx) return nullptr;
    SSL_CTX_up_ref(ctx);
    return SslCtxPtr(ctx);
}

void warn_plaintext(const std::string& who) {
    log(LogLevel::warning, who + ": insecure_plaintext is set: the connection is neither encrypted nor "
                                 "authenticated (meant for tests only)");
}

// Attaches a TLS object to the stream's socket through our BIO.
Status attach_ssl(Stream::Impl& s, SSL_CTX* ctx) {
    ERR_clear_error();
    s.ssl.reset(SSL_new(ctx));
    if (!s.ssl) return s.fail(ENOMEM, "SSL_new: " + openssl_reasons());
    BIO* bio = BIO_new(socket_bio_method());
    if (!bio) return s.fail(ENOMEM, "BIO_new: " + openssl_reasons());
    BIO_set_data(bio, &s);
    SSL_set_bio(s.ssl.get(), bio, bio);  // the SSL owns the BIO now
    SSL_set_ex_data(s.ssl.get(), ssl_ex_index(), &s);
    return Status::ok();
}

bool is_ip_literal(const std::string& host) {
    unsigned char buf[16];
    return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

// ---------------------------------------------------------------------------
// PeerIdentity

bool PeerIdentity::has_name(const std::string& name) const {
    if (name.empty()) return false;
    if (iequal(common_name, name)) return true;
    return std::any_of(dns_names.begin(), dns_names.end(), [&](const std::string& d) { return iequal(d, name); });
}

std::string PeerIdentity::describe() const {
    if (common_name.empty()) return address;
    return common_name + " (" + address + ")";
}

// ---------------------------------------------------------------------------
// Stream

Stream::Stream() = default;
Stream::Stream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Stream::Stream(Stream&&) noexcept = default;
Stream& Stream::operator=(Stream&&) noexcept = default;
Stream::~Stream() { close(); }

bool Stream::is_open() const { return impl_ && impl_->fd.valid(); }

const PeerIdentity& Stream::peer() const {
    static const PeerIdentity none;
    return impl_ ? impl_->peer : none;
}

Result<size_t> Stream::read_some(std::span<uint8_t> buf) {
    if (!impl_) return Status::error(ENOTCONN, "stream not connected");
    Impl& s = *impl_;
    if (Status st = s.check_usable(); !st) return st;
    if (buf.empty()) return size_t{0};
    if (s.ssl) {
        auto r = s.drive([&](size_t* n) { return SSL_read_ex(s.ssl.get(), buf.data(), buf.size(), n); }, "read");
        if (r && *r > 0) s.payload_received += *r;
        return r;
    }
    for (;;) {
        ssize_t n = ::recv(s.fd.get(), buf.data(), buf.size(), 0);
        if (n >= 0) {
            s.wire_received += static_cast<uint64_t>(n);
            s.payload_received += static_cast<uint64_t>(n);
            if (n == 0) {
                if (Status st = s.check_usable(); !st) return st;
            }
            return static_cast<size_t>(n);
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            int e = errno;
            if (Status st = s.check_usable(); !st) return st;
            return s.fail(e, std::string("read: ") + std::strerror(e));
        }
        if (Status st = s.plain_wait(POLLIN, "read"); !st) return st;
    }
}

Status Stream::read_exact(std::span<uint8_t> buf) {
    size_t done = 0;
    while (done < buf.size()) {
        auto r = read_some(buf.subspan(done));
        if (!r) return r.status();
        if (*r == 0)
            return impl_->fail(ECONNRESET, "connection closed after " + std::to_string(done) + " of " +
                                               std::to_string(buf.size()) + " expected bytes");
        done += *r;
    }
    return Status::ok();
}

Status Stream::write_all(std::span<const uint8_t> buf) {
    if (!impl_) return Status::error(ENOTCONN, "stream not connected");
    Impl& s = *impl_;
    size_t done = 0;
    while (done < buf.size()) {
        if (Status st = s.check_usable(); !st) return st;
        auto rest = buf.subspan(done);
        if (s.ssl) {
            auto r = s.drive([&](size_t* n) { return SSL_write_ex(s.ssl.get(), rest.data(), rest.size(), n); },
                             "write");
            if (!r) return r.status();
            if (*r == 0) return s.fail(EPIPE, "write: peer closed the TLS session");
            done += *r;
            s.payload_sent += *r;
            continue;
        }
        ssize_t n = ::send(s.fd.get(), rest.data(), rest.size(), MSG_NOSIGNAL);
        if (n >= 0) {
            done += static_cast<size_t>(n);
            s.wire_sent += static_cast<uint64_t>(n);
            s.payload_sent += static_cast<uint64_t>(n);
            continue;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            int e = errno;
            if (Status st = s.check_usable(); !st) return st;
            return s.fail(e, std::string("write: ") + std::strerror(e));
        }
        if (Status st = s.plain_wait(POLLOUT, "write"); !st) return st;
    }
    return Status::ok();
}

Status Stream::shutdown() {
    if (!impl_) return Status::error(ENOTCONN, "stream not connected");
    Impl& s = *impl_;
    if (Status st = s.check_usable(); !st) return st;
    if (s.ssl && !s.broken) {
        // 0 means "close_notify sent, the peer's not yet seen": all we want.
        auto r = s.drive(
            [&](size_t* n) {
                *n = 1;
                int rc = SSL_shutdown(s.ssl.get());
                return rc >= 0 ? 1 : rc;
            },
            "TLS shutdown");
        if (!r) return r.status();
    }
    if (::shutdown(s.fd.get(), SHUT_WR) < 0 && errno != ENOTCONN)
        return s.fail(errno, std::string("shutdown: ") + std::strerror(errno));
    return Status::ok();
}

void Stream::close() {
    if (!impl_) return;
    std::lock_guard lock(impl_->fd_mu);
    impl_->ssl.reset();  // frees our BIO too; the fd is closed below
    impl_->fd.reset();
}

void Stream::interrupt() {
    if (!impl_) return;
    std::lock_guard lock(impl_->fd_mu);
    impl_->interrupted = true;
    // Wakes a thread blocked in poll() on this socket; the fd stays open until
    // its owner closes it, so it cannot be reused under that thread.
    if (impl_->fd.valid()) ::shutdown(impl_->fd.get(), SHUT_RDWR);
}

void Stream::set_io_timeout(milliseconds timeout) {
    if (impl_) impl_->io_timeout = timeout;
}

StreamCounters Stream::counters() const {
    if (!impl_) return {};
    return {impl_->wire_sent.load(), impl_->wire_received.load(), impl_->payload_sent.load(),
            impl_->payload_received.load()};
}

// ---------------------------------------------------------------------------
// PendingConnection: accepted TCP, handshake still to do

struct PendingConnection::Impl {
    UniqueFd fd;
    std::string address;
    SslCtxPtr ctx;  // null in plaintext mode
    TlsConfig config;
};

PendingConnection::PendingConnection() = default;
PendingConnection::PendingConnection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PendingConnection::PendingConnection(PendingConnection&&) noexcept = default;
PendingConnection& PendingConnection::operator=(PendingConnection&&) noexcept = default;
PendingConnection::~PendingConnection() = default;

const std::string& PendingConnection::address() const {
    static const std::string none;
    return impl_ ? impl_->address : none;
}

Result<Stream> PendingConnection::handshake() && {
    if (!impl_ || !impl_->fd.valid()) return Status::error(ENOTCONN, "no pending connection");
    auto pending = std::move(impl_);
    auto s = std::make_unique<Stream::Impl>();
    s->fd = std::move(pending->fd);
    s->peer.address = pending->address;
    s->io_timeout = pending->config.io_timeout;
    s->handshake_timeout = pending->config.handshake_timeout;
    if (!pending->ctx) {
        warn_plaintext("connection from " + s->peer.address);
        s->peer.protocol = "plaintext";
        return Stream(std::move(s));
    }
    s->allowed_names = pending->config.allowed_peer_names;
    if (Status st = attach_ssl(*s, pending->ctx.get()); !st) return st;
    const auto deadline = Clock::now() + pending->config.handshake_timeout;
    auto r = s->drive([&](size_t* n) { return *n = 1, SSL_accept(s->ssl.get()); }, "TLS handshake", deadline);
    if (!r) return r.status();
    if (*r == 0) return s->fail(ECONNRESET, "TLS handshake: connection closed by peer");
    s->fill_identity();
    return Stream(std::move(s));
}

// ---------------------------------------------------------------------------
// Listener

struct Listener::Impl {
    UniqueFd fd;
    UniqueFd stop_fd;  // eventfd: stop() from any thread wakes accept()
    SslCtxPtr ctx;     // null in plaintext mode
    TlsConfig config;
    std::string address;
};

Listener::Listener() = default;
Listener::Listener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Listener::Listener(Listener&&) noexcept = default;
Listener& Listener::operator=(Listener&&) noexcept = default;
Listener::~Listener() = default;

Result<Listener> Listener::bind(const std::string& host, uint16_t port, const TlsConfig& config) {
    auto impl = std::make_unique<Impl>();
    impl->config = config;
    if (!config.insecure_plaintext) {
        auto ctx = make_context(config, true);
        if (!ctx) return ctx.status();
        impl->ctx = std::move(*ctx);
    }
    auto fd = tcp::listen(host, port);
    if (!fd) return fd.status();
    impl->fd = std::move(*fd);
    impl->stop_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!impl->stop_fd.valid()) return Status::from_errno(errno, "listener " + host + ": eventfd");
    impl->address = tcp::local_address(impl->fd.get());
    if (config.insecure_plaintext) warn_plaintext("listener " + impl->address);
    return Listener(std::move(impl));
}

uint16_t Listener::port() const { return impl_ ? tcp::local_port(impl_->fd.get()) : 0; }

std::string Listener::address() const { return impl_ ? impl_->address : std::string(); }

Result<PendingConnection> Listener::accept_tcp(milliseconds timeout) {
    if (!impl_) return Status::error(ENOTCONN, "listener not bound");
    const bool forever = timeout.count() < 0;
    const auto deadline = Clock::now() + (forever ? milliseconds(0) : timeout);
    for (;;) {
        milliseconds left = milliseconds(-1);
        if (!forever)
            left = std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
        bool stopped = false;
        auto ready = tcp::wait(impl_->fd.get(), POLLIN, left, impl_->stop_fd.get(), &stopped);
        if (!ready)
            return Status::error(ready.status().code(), "listener " + impl_->address + ": " + ready.status().message());
        if (stopped) return Status::error(ECANCELED, "listener " + impl_->address + ": stopped");
        if (!*ready)
            return Status::error(ETIMEDOUT, "listener " + impl_->address + ": no connection within " +
                                                std::to_string(timeout.count()) + " ms");
        std::string address;
        auto fd = tcp::accept(impl_->fd.get(), address);
        if (!fd) return fd.status();
        if (!fd->valid()) continue;
        auto p = std::make_unique<PendingConnection::Impl>();
        p->fd = std::move(*fd);
        p->address = address;
        p->ctx = share(impl_->ctx.get());
        p->config = impl_->config;
        return PendingConnection(std::move(p));
    }
}

Result<Stream> Listener::accept(milliseconds timeout) {
    auto pending = accept_tcp(timeout);
    if (!pending) return pending.status();
    return std::move(*pending).handshake();
}

void Listener::stop() {
    if (!impl_) return;
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(impl_->stop_fd.get(), &one, sizeof one);
}

// ---------------------------------------------------------------------------
// connect

Result<Stream> connect(const std::string& host, uint16_t port, const TlsConfig& config) {
    const std::string dialed =
        (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
    SslCtxPtr ctx;
    if (!config.insecure_plaintext) {
        auto c = make_context(config, false);
        if (!c) return Status::error(c.status().code(), "peer " + dialed + ": " + c.status().message());
        ctx = std::move(*c);
    }
    std::string address;
    auto fd = tcp::connect(host, port, config.connect_timeout, address);
    if (!fd) return fd.status();

    auto s = std::make_unique<Stream::Impl>();
    s->fd = std::move(*fd);
    s->peer.address = address;
    s->dialed = dialed;
    s->io_timeout = config.io_timeout;
    s->handshake_timeout = config.handshake_timeout;
    if (!ctx) {
        warn_plaintext("connection to " + s->name());
        s->peer.protocol = "plaintext";
        return Stream(std::move(s));
    }
    s->allowed_names = config.allowed_peer_names;
    if (Status st = attach_ssl(*s, ctx.get()); !st) return st;
    if (!is_ip_literal(host) && !host.empty()) SSL_set_tlsext_host_name(s->ssl.get(), host.c_str());

    const auto deadline = Clock::now() + config.handshake_timeout;
    auto r = s->drive([&](size_t* n) { return *n = 1, SSL_connect(s->ssl.get()); }, "TLS handshake", deadline);
    if (!r) return r.status();
    if (*r == 0) return s->fail(ECONNRESET, "TLS handshake: connection closed by peer");
    s->fill_identity();

    // Wait for the server's verdict on our certificate (see on_new_session).
    // Peeking keeps any early application data for the caller's first read.
    while (!s->server_confirmed) {
        ERR_clear_error();
        s->sys_errno = 0;
        uint8_t byte;
        size_t n = 0;
        int rc = SSL_peek_ex(s->ssl.get(), &byte, 1, &n);
        if (rc > 0) break;  // application data came: the server accepted us
        int e = SSL_get_error(s->ssl.get(), rc);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (s->server_confirmed) break;
            if (Status st = s->wait(e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline,
                                    "TLS handshake (waiting for the server to accept our certificate)");
                !st)
                return st;
            continue;
        }
        if (e == SSL_ERROR_ZERO_RETURN)
            return s->fail(ECONNRESET, "TLS handshake: server closed the connection without accepting us");
        return s->ssl_failure(e, "TLS handshake: refused by the server");
    }
    return Stream(std::move(s));
}

}  // namespace icbd::repl
