// Logging: libblockd never prints by itself; the host (tgtd glue, blockd, tests)
// installs a sink. Messages name the object and the cause.
#pragma once

#include <string_view>

namespace icbd {

enum class LogLevel { info, warning, error };
using LogSink = void (*)(LogLevel level, const char* message);

void set_log_sink(LogSink sink);
void log(LogLevel level, std::string_view message);

}  // namespace icbd
