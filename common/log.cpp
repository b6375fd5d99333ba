// The process-wide log sink and the thread's LogScope; until a host installs
// its own sink, lines go to stderr (to the journal, with their fields, when
// stderr is the journal's stream).
#include "icbd/log.hpp"

#include <errno.h>  // program_invocation_short_name

#include <cstdio>
#include <string>

#include "icbd/journal_log.hpp"

namespace icbd {
namespace {

void default_sink(LogLevel level, std::string_view message, const LogFields& fields) {
    if (stderr_is_journal() && send_to_journal(journal_fields(level, message, fields, program_invocation_short_name)))
        return;
    static const char* names[] = {"info", "warning", "error"};
    std::fprintf(stderr, "icbd %s: %.*s\n", names[static_cast<int>(level)], static_cast<int>(message.size()),
                 message.data());
}

LogSink g_sink = nullptr;
LogFieldsSink g_fields_sink = nullptr;
thread_local const LogScope* t_scope = nullptr;

// The call's own fields, completed from the innermost scope.
LogFields with_scope(const LogFields& own, const LogScope& scope) {
    LogFields f = own;
    const LogFields& s = scope.fields();
    if (f.image.empty()) f.image = s.image;
    if (!f.version) f.version = s.version;
    if (f.peer.empty()) f.peer = s.peer;
    if (f.client.empty()) f.client = s.client;
    if (f.target.empty()) f.target = s.target;
    if (!f.lun) f.lun = s.lun;
    return f;
}

void deliver(LogLevel level, std::string_view message, const LogFields& fields) {
    if (g_fields_sink) {
        g_fields_sink(level, message, fields);
    } else if (g_sink) {
        std::string m(message);
        g_sink(level, m.c_str());
    } else {
        default_sink(level, message, fields);
    }
}

}  // namespace

void set_log_sink(LogSink sink) {
    g_sink = sink;
    g_fields_sink = nullptr;
}

void set_log_fields_sink(LogFieldsSink sink) {
    g_fields_sink = sink;
    g_sink = nullptr;
}

void log(LogLevel level, std::string_view message) { log(level, message, LogFields{}); }

void log(LogLevel level, std::string_view message, const LogFields& fields) {
    const LogScope* scope = t_scope;
    if (!scope) return deliver(level, message, fields);
    std::string labelled;
    if (!scope->label().empty() && message.find(scope->label()) == std::string_view::npos) {
        labelled.append(scope->label()).append(": ").append(message);
        message = labelled;
    }
    deliver(level, message, with_scope(fields, *scope));
}

LogScope::LogScope(const LogFields& fields, std::string_view label) : fields_(fields), label_(label), outer_(t_scope) {
    t_scope = this;
}

LogScope::~LogScope() { t_scope = outer_; }

}  // namespace icbd
