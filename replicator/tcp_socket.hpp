// TCP plumbing under the transport (internal to libreplicator): non-blocking
// sockets, connect/accept with deadlines, poll with a timeout, address strings.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "icbd/status.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd::repl::tcp {

// "127.0.0.1:40211", "[::1]:7000".
std::string format_address(const sockaddr* sa, socklen_t len);
// The remote (peer) or local address of a connected/bound socket.
std::string peer_address(int fd);
std::string local_address(int fd);
uint16_t local_port(int fd);

// A connected, non-blocking socket (TCP_NODELAY, close-on-exec) to host:port.
// Tries every address the name resolves to; the error names `host:port` and
// the cause of the last attempt. `address` receives the address connected to.
Result<UniqueFd> connect(const std::string& host, uint16_t port, std::chrono::milliseconds timeout,
                         std::string& address);

// A non-blocking listening socket bound to host:port ("" = all IPv4 addresses).
Result<UniqueFd> listen(const std::string& host, uint16_t port, int backlog = 128);

// Accepts one connection (non-blocking, TCP_NODELAY, close-on-exec). Returns an
// invalid fd when there is nothing to accept right now (EAGAIN, or a
// connection that was reset before we took it).
Result<UniqueFd> accept(int listen_fd, std::string& address);

// Waits until `fd` has one of `events` (POLLIN/POLLOUT), or POLLHUP/POLLERR
// (left to the next read or write to report). Returns false on timeout;
// timeout < 0 waits forever. EINTR is retried with the remaining time.
// `extra_fd` (if >= 0) is polled for POLLIN too; `extra_ready` tells whether it fired.
Result<bool> wait(int fd, short events, std::chrono::milliseconds timeout, int extra_fd = -1,
                  bool* extra_ready = nullptr);

}  // namespace icbd::repl::tcp
