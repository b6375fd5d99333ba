// Test helper: waits for one epoll event, restarting when io_uring's task work
// interrupts the wait (EINTR). Returns epoll_wait's result.
#pragma once

#include <sys/epoll.h>

#include <cerrno>

inline int wait_ready(int ep, int timeout_ms) {
    epoll_event out{};
    int n;
    while ((n = epoll_wait(ep, &out, 1, timeout_ms)) < 0 && errno == EINTR) {}
    return n;
}
