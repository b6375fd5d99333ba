// Certificates for the peer-protocol tests, made by scripts/make-certs.sh as an
// operator would: the cluster's CA ("good": master, r1, r2) and a stranger's
// ("evil": its own r1 and evil), plus TLS configs of each node.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "icbd/replicator/transport.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"

namespace icbd::test {

inline bool skips_forbidden() {
    const char* v = std::getenv("ICBD_FORBID_SKIP");
    return v && *v && std::strcmp(v, "0") != 0;
}

class PeerCerts {
public:
    // Empty error(): ready. A missing openssl program is the one reason to skip.
    static PeerCerts& get() {
        static PeerCerts certs;
        return certs;
    }
    bool have_openssl() const { return have_openssl_; }
    const std::string& error() const { return error_; }

    repl::TlsConfig tls(const std::string& node, const std::string& ca = "good") const {
        using namespace std::chrono_literals;
        repl::TlsConfig c;
        c.ca_file = (dir_->path() / ca / "ca.crt").string();
        c.cert_file = (dir_->path() / ca / (node + ".crt")).string();
        c.key_file = (dir_->path() / ca / (node + ".key")).string();
        c.connect_timeout = 5s;
        c.handshake_timeout = 5s;
        c.io_timeout = 10s;
        return c;
    }

private:
    PeerCerts() {
        have_openssl_ = have_program("openssl");
        if (!have_openssl_) return;
        dir_ = std::make_unique<TempDir>("/tmp", "icbd-peer-certs-");
        const std::string script = std::string(ICBD_SOURCE_DIR) + "/scripts/make-certs.sh";
        auto good = run_command({script, (dir_->path() / "good").string(), "master", "r1", "r2"});
        auto evil = run_command({script, (dir_->path() / "evil").string(), "r1", "evil"});
        if (!good.ok()) error_ = good.describe();
        else if (!evil.ok()) error_ = evil.describe();
    }
    bool have_openssl_ = false;
    std::string error_;
    std::unique_ptr<TempDir> dir_;
};

}  // namespace icbd::test

// In SetUp(): skip (or fail under ICBD_FORBID_SKIP) without openssl, fail when
// the certificates could not be made.
#define ICBD_REQUIRE_PEER_CERTS()                                                          \
    do {                                                                                   \
        auto& certs_ = ::icbd::test::PeerCerts::get();                                     \
        if (!certs_.have_openssl()) {                                                      \
            if (::icbd::test::skips_forbidden())                                           \
                FAIL() << "the openssl program is missing (apt-get install openssl)";      \
            GTEST_SKIP() << "the openssl program is missing (apt-get install openssl)";    \
        }                                                                                  \
        ASSERT_TRUE(certs_.error().empty()) << certs_.error();                             \
    } while (0)
