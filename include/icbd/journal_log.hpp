// Daemons' logging: to the systemd journal with structured fields when stderr
// is the journal's stream (a service under systemd), plain lines otherwise.
// The pieces are public so that tests can check them without a journald.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "icbd/log.hpp"

namespace icbd {

// Whether `journal_stream`, the value of $JOURNAL_STREAM ("DEVICE:INODE",
// decimal), names the file open on `fd`. systemd sets the variable for a
// service whose stdout or stderr it connects to the journal; a child whose
// stderr was redirected elsewhere inherits it, hence the comparison
// (systemd.exec(5), "JOURNAL_STREAM").
bool journal_stream_is(const char* journal_stream, int fd);

// Whether this process's stderr is the journal's stream (checked once).
bool stderr_is_journal();

// The journal entry of one message, as sd_journal_sendv() takes it: MESSAGE,
// PRIORITY (syslog: 3 error, 4 warning, 6 info), SYSLOG_IDENTIFIER, then one
// field per member of `fields` that is set.
std::vector<std::string> journal_fields(LogLevel level, std::string_view message, const LogFields& fields,
                                        std::string_view identifier);

// The line a terminal shows: "MESSAGE", "warning: MESSAGE" or "error: MESSAGE".
std::string plain_line(LogLevel level, std::string_view message);

// Sends one entry to the journal; false if journald did not take it.
bool send_to_journal(const std::vector<std::string>& entry);

// For daemons (blockd): messages go to the journal with their fields when
// stderr is the journal's stream, otherwise as plain lines to stderr.
// `identifier` becomes SYSLOG_IDENTIFIER.
void log_to_journal_or_stderr(std::string identifier);

}  // namespace icbd
