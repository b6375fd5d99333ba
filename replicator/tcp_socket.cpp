// TCP plumbing under the transport: every socket is non-blocking so that each
// wait has a deadline (a vanished peer must time out, never hang a thread).
#include "tcp_socket.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace icbd::repl::tcp {

namespace {

using Clock = std::chrono::steady_clock;

struct AddrInfoFree {
    void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoFree>;

std::string host_port(const std::string& host, uint16_t port) {
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return (host.empty() ? "0.0.0.0" : host) + ":" + std::to_string(port);
}

Result<AddrInfoPtr> resolve(const std::string& host, uint16_t port, bool passive) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : AI_ADDRCONFIG);
    const char* node = host.c_str();
    if (host.empty()) {
        node = passive ? nullptr : "localhost";
        hints.ai_family = passive ? AF_INET : AF_UNSPEC;  // "" means all IPv4 addresses
    }
    addrinfo* res = nullptr;
    std::string service = std::to_string(port);
    int rc = getaddrinfo(node, service.c_str(), &hints, &res);
    if (rc != 0) {
        std::string cause = rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc);
        return Status::error(EHOSTUNREACH, "peer " + host_port(host, port) + ": cannot resolve: " + cause);
    }
    return AddrInfoPtr(res);
}

void set_nodelay(int fd) {
    // Frames are written whole; Nagle would only delay the small handshake and
    // negotiation messages by a round trip.
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

}  // namespace

std::string format_address(const sockaddr* sa, socklen_t len) {
    char host[NI_MAXHOST];
    char serv[NI_MAXSERV];
    if (getnameinfo(sa, len, host, sizeof host, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        return "?";
    if (sa->sa_family == AF_INET6) return std::string("[") + host + "]:" + serv;
    return std::string(host) + ":" + serv;
}

std::string peer_address(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return "?";
    return format_address(reinterpret_cast<sockaddr*>(&ss), len);
}

std::string local_address(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return "?";
    return format_address(reinterpret_cast<sockaddr*>(&ss), len);
}

uint16_t local_port(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return 0;
    if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    return 0;
}

Result<bool> wait(int fd, short events, std::chrono::milliseconds timeout, int extra_fd, bool* extra_ready) {
    const bool forever = timeout.count() < 0;
    const auto deadline = Clock::now() + (forever ? std::chrono::milliseconds(0) : timeout);
    if (extra_ready) *extra_ready = false;
    for (;;) {
        pollfd p[2] = {{fd, events, 0}, {extra_fd, POLLIN, 0}};
        int n = ::poll(p, extra_fd >= 0 ? 2 : 1, forever ? -1 : remaining_ms(deadline));
        if (n < 0) {
            if (errno == EINTR) continue;
            return Status::from_errno(errno, "poll");
        }
        if (n == 0) return false;
        if (extra_fd >= 0 && (p[1].revents & POLLIN)) {
            if (extra_ready) *extra_ready = true;
            return true;
        }
        if (p[0].revents) return true;
    }
}

Result<UniqueFd> connect(const std::string& host, uint16_t port, std::chrono::milliseconds timeout,
                         std::string& address) {
    auto ai = resolve(host, port, false);
    if (!ai) return ai.status();
    const auto deadline = Clock::now() + timeout;
    Status last = Status::error(EHOSTUNREACH, "peer " + host_port(host, port) + ": no address to connect to");
    for (addrinfo* a = ai->get(); a; a = a->ai_next) {
        std::string addr = format_address(a->ai_addr, a->ai_addrlen);
        UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
        if (!fd.valid()) {
            last = Status::from_errno(errno, "peer " + addr + ": socket");
            continue;
        }
        int err = 0;
        if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) < 0) {
            if (errno != EINPROGRESS) {
                err = errno;
            } else {
                auto ready = wait(fd.get(), POLLOUT, std::chrono::milliseconds(remaining_ms(deadline)));
                if (!ready) return ready.status();
                if (!*ready) {
                    last = Status::error(ETIMEDOUT, "peer " + addr + ": connect: no answer within " +
                                                        std::to_string(timeout.count()) + " ms");
                    continue;
                }
                socklen_t len = sizeof err;
                if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
            }
        }
        if (err != 0) {
            last = Status::from_errno(err, "peer " + addr + ": connect");
            continue;
        }
        set_nodelay(fd.get());
        address = addr;
        return fd;
    }
    return last;
}

Result<UniqueFd> listen(const std::string& host, uint16_t port, int backlog) {
    auto ai = resolve(host, port, true);
    if (!ai) return ai.status();
    const std::string what = "listener " + host_port(host, port);
    Status last = Status::error(EADDRNOTAVAIL, what + ": no address to bind");
    for (addrinfo* a = ai->get(); a; a = a->ai_next) {
        UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
        if (!fd.valid()) {
            last = Status::from_errno(errno, what + ": socket");
            continue;
        }
        int one = 1;
        // A restarted replica server must be able to bind while old
        // connections sit in TIME_WAIT.
        setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) < 0) {
            last = Status::from_errno(errno, what + ": bind");
            continue;
        }
        if (::listen(fd.get(), backlog) < 0) {
            last = Status::from_errno(errno, what + ": listen");
            continue;
        }
        return fd;
    }
    return last;
}

Result<UniqueFd> accept(int listen_fd, std::string& address) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        // Transient: nothing queued (another thread took it), or the client
        // gave up between SYN and accept. The caller simply waits again.
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED ||
            errno == EPROTO)
            return UniqueFd();
        return Status::from_errno(errno, "listener " + local_address(listen_fd) + ": accept");
    }
    set_nodelay(fd);
    address = format_address(reinterpret_cast<sockaddr*>(&ss), len);
    return UniqueFd(fd);
}

}  // namespace icbd::repl::tcp
