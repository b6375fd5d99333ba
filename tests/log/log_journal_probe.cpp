// Logs like a daemon (icbd::log_to_journal_or_stderr) for journal_test.sh:
// one message with every field, one under a LUN's LogScope, one with none;
// prints on stdout where they went ("journal" or "plain"). With "default",
// one message through the default sink instead.
#include <cstdio>
#include <string_view>

#include "icbd/journal_log.hpp"
#include "icbd/log.hpp"

int main(int argc, char** argv) {
    // "default": no sink installed, as icbd-replicate: the library's default
    // sink, which also goes to the journal when stderr is its stream.
    if (argc > 1 && std::string_view(argv[1]) == "default") {
        std::printf("%s\n", icbd::stderr_is_journal() ? "journal" : "plain");
        std::fflush(stdout);
        icbd::log(icbd::LogLevel::warning, "probe: default sink", {.image = "win10"});
        return 0;
    }
    icbd::log_to_journal_or_stderr("icbd-log-probe");
    std::printf("%s\n", icbd::stderr_is_journal() ? "journal" : "plain");
    std::fflush(stdout);
    icbd::log(icbd::LogLevel::warning, "probe: image 'win10' version 7 to replica 'cache01' for client 'pc01'",
              {.image = "win10", .version = 7, .peer = "cache01", .client = "pc01",
               .target = "iqn.2026-12.org.icbd:pc01", .lun = 1});
    icbd::LogFields lun{.target = "tid 4", .lun = 3};
    {
        icbd::LogScope scope(lun, "tgt 4 lun 3");
        icbd::log(icbd::LogLevel::error, "probe: cache '/ssd/x.cache': writing back failed");
    }
    icbd::log(icbd::LogLevel::info, "probe: no fields");
    return 0;
}
