// blockd: the node daemon (master or replica). Runs in the foreground; under
// systemd (Type=notify) it reports readiness, status and watchdog pings.
// Exit codes: 0 stopped by a signal, 1 could not start, 2 usage.
#include <signal.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <icbd/build_version.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <thread>

#include "config.hpp"
#include "icbd/journal_log.hpp"
#include "icbd/log.hpp"
#include "node.hpp"

int main(int argc, char** argv) {
    CLI::App app{"blockd: icbd-store node daemon (master or replica); see docs/blockd.md"};
    std::string config_file = "/etc/icbd/blockd.toml";
    bool check_only = false;
    app.add_option("-c,--config", config_file, "configuration file (TOML)");
    app.add_flag("--check-config", check_only, "load and check the configuration, then exit");
    app.set_version_flag("--version", ICBD_VERSION_LINE("blockd"));
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    }
    // Under systemd: journal entries with IMAGE=, PEER=, CLIENT=... fields; else plain lines.
    icbd::log_to_journal_or_stderr("blockd");

    auto config = icbd::node::load_config(config_file);
    if (!config) {
        std::fprintf(stderr, "blockd: %s\n", config.status().message().c_str());
        return 1;
    }
    if (check_only) {
        std::printf("blockd: %s: ok (%s '%s')\n", config_file.c_str(), icbd::node::role_name(config->role),
                    config->name.c_str());
        return 0;
    }

    // Signals are taken synchronously by a waiting thread (sigwait), so no
    // handler runs in the middle of a library call.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    signal(SIGPIPE, SIG_IGN);

    auto node = icbd::node::Node::start(*config);
    if (!node) {
        std::fprintf(stderr, "blockd: %s\n", node.status().message().c_str());
        sd_notifyf(0, "STATUS=failed: %s", node.status().message().c_str());
        return 1;
    }
    icbd::log(icbd::LogLevel::info, std::string("blockd: ") + icbd::node::role_name(config->role) + " '" +
                                        config->name + "' ready");
    sd_notifyf(0, "READY=1\nSTATUS=%s", (*node)->status_line().c_str());

    // Watchdog: pinged from its own thread while the node's threads run.
    uint64_t watchdog_usec = 0;
    std::atomic<bool> done{false};
    std::thread watchdog;
    if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
        watchdog = std::thread([&] {
            while (!done.load()) {
                sd_notifyf(0, "WATCHDOG=1\nSTATUS=%s", (*node)->status_line().c_str());
                for (uint64_t slept = 0; slept < watchdog_usec / 2 && !done.load(); slept += 100'000) {
                    std::this_thread::sleep_for(std::chrono::milliseconds(100));
                }
            }
        });
    }
    int sig = 0;
    while (sigwait(&sigs, &sig) == 0 && sig == SIGHUP) {
        icbd::log(icbd::LogLevel::info, "blockd: SIGHUP ignored (restart to reload the configuration)");
    }
    icbd::log(icbd::LogLevel::info, std::string("blockd: ") + strsignal(sig) + ", stopping");
    sd_notify(0, "STOPPING=1");
    done = true;
    if (watchdog.joinable()) watchdog.join();
    (*node)->stop();
    return 0;
}
