// Logging: libblockd never prints by itself; the host (tgtd glue, blockd, tests)
// installs a sink. Messages name the object and the cause; LogFields name the
// same objects once more as journal fields (IMAGE=, VERSION=, ...) for hosts
// that log to the systemd journal (icbd/journal_log.hpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace icbd {

enum class LogLevel { info, warning, error };
using LogSink = void (*)(LogLevel level, const char* message);

// What a message is about. Every member that is set becomes a journal field
// (IMAGE, VERSION, PEER, CLIENT, TARGET, LUN), so `journalctl IMAGE=win10`
// finds the messages of one image; the message text still says it in words.
struct LogFields {
    // Default member initializers: a call names only the fields it has,
    // {.image = i, .version = v}, without -Wmissing-field-initializers.
    std::string image{};
    std::optional<std::uint64_t> version{};
    std::string peer{};    // another node: a replica's or the master's name, or an address
    std::string client{};  // a desktop (blockctl client NAME)
    std::string target{};  // an iSCSI target: its IQN (blockd), or tgtd's tid (the module in tgtd)
    std::optional<std::uint64_t> lun{};

    bool empty() const { return image.empty() && !version && peer.empty() && client.empty() && target.empty() && !lun; }
};

// A sink that also receives the fields (the journal sink).
using LogFieldsSink = void (*)(LogLevel level, std::string_view message, const LogFields& fields);

// A message-only sink (nullptr: the default one, which writes "icbd LEVEL:
// MESSAGE" lines to stderr, or to the journal with the fields when stderr is
// the journal's stream).
void set_log_sink(LogSink sink);
// A sink that gets the fields too (nullptr: the default one).
void set_log_fields_sink(LogFieldsSink sink);

void log(LogLevel level, std::string_view message);
void log(LogLevel level, std::string_view message, const LogFields& fields);

// While a LogScope lives, every message logged on its thread carries its
// fields (where the call sets none of its own), and a message that does not
// already contain `label` is prefixed "label: ". The tgtd glue opens one per
// call into a LUN, so that every line the LUN's code logs names target and
// LUN, in tgtd's log as in the journal. Scopes nest; the inner one wins.
// `fields` and `label` are referenced, not copied: they must outlive the scope.
class LogScope {
public:
    LogScope(const LogFields& fields, std::string_view label);
    ~LogScope();
    LogScope(const LogScope&) = delete;
    LogScope& operator=(const LogScope&) = delete;

    const LogFields& fields() const { return fields_; }
    std::string_view label() const { return label_; }

private:
    const LogFields& fields_;
    std::string_view label_;
    const LogScope* outer_;
};

}  // namespace icbd
