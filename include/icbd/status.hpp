// The project-wide error type: a Status carries an errno-style code and a message
// that names the object and the cause. Functions that can fail return Status or
// Result<T>; exceptions are not used inside libblockd (tgtd is a C program).
// Both are [[nodiscard]]: an ignored error is a lost cause; where one truly
// does not matter, the call site says why with a (void) cast.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace icbd {

class [[nodiscard]] Status {
public:
    Status() = default;
    static Status ok() { return {}; }
    // `err` is a positive errno value; `message` names the object and the cause.
    static Status error(int err, std::string message) { return Status(err, std::move(message)); }
    // Convenience for a failed system call: "<what>: <strerror(err)>".
    static Status from_errno(int err, const std::string& what);

    bool is_ok() const { return code_ == 0; }
    explicit operator bool() const { return is_ok(); }
    int code() const { return code_; }
    const std::string& message() const { return message_; }

private:
    Status(int code, std::string message) : code_(code), message_(std::move(message)) {}
    int code_ = 0;
    std::string message_;
};

// Either a value or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::move(value)) {}
    Result(Status s) : v_(std::move(s)) {}
    bool is_ok() const { return std::holds_alternative<T>(v_); }
    explicit operator bool() const { return is_ok(); }
    T& value() { return std::get<T>(v_); }
    const T& value() const { return std::get<T>(v_); }
    T& operator*() { return value(); }
    T* operator->() { return &value(); }
    const Status& status() const {
        static const Status ok_status;
        return is_ok() ? ok_status : std::get<Status>(v_);
    }

private:
    std::variant<T, Status> v_;
};

}  // namespace icbd
