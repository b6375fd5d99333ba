// The systemd journal as a log sink: one native journal entry per message,
// with the message's fields, when stderr is the journal's stream.
#include "icbd/journal_log.hpp"

#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>

#include <cstdio>
#include <cstdlib>

namespace icbd {
namespace {

std::string g_identifier;

void journal_or_plain_sink(LogLevel level, std::string_view message, const LogFields& fields) {
    if (stderr_is_journal() && send_to_journal(journal_fields(level, message, fields, g_identifier))) return;
    std::string line = plain_line(level, message);
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace

bool journal_stream_is(const char* journal_stream, int fd) {
    if (!journal_stream || !*journal_stream) return false;
    std::uintmax_t dev = 0, ino = 0;
    int used = 0;
    if (std::sscanf(journal_stream, "%ju:%ju%n", &dev, &ino, &used) != 2 || journal_stream[used] != '\0') return false;
    struct stat st{};
    if (::fstat(fd, &st) != 0) return false;
    return static_cast<std::uintmax_t>(st.st_dev) == dev && static_cast<std::uintmax_t>(st.st_ino) == ino;
}

bool stderr_is_journal() {
    static const bool is = journal_stream_is(std::getenv("JOURNAL_STREAM"), 2);
    return is;
}

std::vector<std::string> journal_fields(LogLevel level, std::string_view message, const LogFields& fields,
                                        std::string_view identifier) {
    std::vector<std::string> e;
    e.reserve(9);
    e.push_back("MESSAGE=" + std::string(message));
    e.push_back(level == LogLevel::error ? "PRIORITY=3" : level == LogLevel::warning ? "PRIORITY=4" : "PRIORITY=6");
    if (!identifier.empty()) e.push_back("SYSLOG_IDENTIFIER=" + std::string(identifier));
    if (!fields.image.empty()) e.push_back("IMAGE=" + fields.image);
    if (fields.version) e.push_back("VERSION=" + std::to_string(*fields.version));
    if (!fields.peer.empty()) e.push_back("PEER=" + fields.peer);
    if (!fields.client.empty()) e.push_back("CLIENT=" + fields.client);
    if (!fields.target.empty()) e.push_back("TARGET=" + fields.target);
    if (fields.lun) e.push_back("LUN=" + std::to_string(*fields.lun));
    return e;
}

std::string plain_line(LogLevel level, std::string_view message) {
    std::string line = level == LogLevel::error ? "error: " : level == LogLevel::warning ? "warning: " : "";
    line.append(message);
    return line;
}

bool send_to_journal(const std::vector<std::string>& entry) {
    std::vector<iovec> iov;
    iov.reserve(entry.size());
    for (const std::string& f : entry) iov.push_back(iovec{const_cast<char*>(f.data()), f.size()});
    return ::sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) == 0;
}

void log_to_journal_or_stderr(std::string identifier) {
    g_identifier = std::move(identifier);
    set_log_fields_sink(journal_or_plain_sink);
}

}  // namespace icbd
