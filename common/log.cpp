// The process-wide log sink; stderr until a host installs its own.
#include "icbd/log.hpp"

#include <cstdio>
#include <string>

namespace icbd {
namespace {
void stderr_sink(LogLevel level, const char* message) {
    static const char* names[] = {"info", "warning", "error"};
    std::fprintf(stderr, "icbd %s: %s\n", names[static_cast<int>(level)], message);
}
LogSink g_sink = stderr_sink;
}  // namespace

void set_log_sink(LogSink sink) { g_sink = sink ? sink : stderr_sink; }

void log(LogLevel level, std::string_view message) {
    std::string m(message);
    g_sink(level, m.c_str());
}

}  // namespace icbd
