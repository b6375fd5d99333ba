// blockctl <-> blockd over a local Unix socket (docs/blockd-control-protocol.md,
// version 1). One request per connection: a JSON object on one line
//   {"v":1,"cmd":"image.commit","args":{...}}
// answered by zero or more progress lines {"progress":{"text":...,"done":N,"total":N}}
// and one final line {"ok":true,"result":...} or
// {"ok":false,"error":"image 'win10' version 7: ...","kind":"not_found"}.
// Access: the socket is 0660 root:<control_group>; the server also checks the
// peer's credentials (SO_PEERCRED: uid 0 or a member of the group).
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <sys/types.h>

#include <nlohmann/json.hpp>

#include "icbd/status.hpp"

namespace icbd::node {

inline constexpr int kControlProtocolVersion = 1;
inline constexpr size_t kMaxControlRequest = 1u << 20;  // request line, without its '\n'

// Error kinds a handler reports (Status code -> kind): ENOENT not_found,
// EINVAL invalid, EEXIST exists, EBUSY in_use, EACCES/EPERM denied,
// ENOTSUP/ENOSYS/EOPNOTSUPP unsupported, others failed. blockctl exits 1
// for all of them.
std::string error_kind(int err);
// The reverse, for the client: the errno a kind stands for (EIO for failed
// and for kinds this version does not know).
int error_errno(const std::string& kind);

using ProgressFn = std::function<void(const std::string& text, uint64_t done, uint64_t total)>;
using ControlHandler = std::function<Result<nlohmann::json>(const std::string& cmd, const nlohmann::json& args,
                                                            const ProgressFn& progress)>;

class ControlServer {
public:
    // Binds `socket_path` (replacing a stale socket file, refusing when another
    // blockd answers there) with mode 0660 and group `group` ("" = root only).
    static Result<std::unique_ptr<ControlServer>> start(const std::filesystem::path& socket_path,
                                                        const std::string& group, ControlHandler handler);
    ~ControlServer();  // stop()
    // Closes the socket (removing its file), joins the accept thread and waits
    // for the requests in progress: handlers run to their end.
    void stop();
    const std::filesystem::path& path() const { return path_; }

private:
    ControlServer() = default;
    void accept_loop();
    void serve(int fd);  // one connection, on its own thread
    std::filesystem::path path_;
    int listen_fd_ = -1;
    int wake_fd_ = -1;
    gid_t group_ = 0;
    bool group_set_ = false;
    std::string group_name_;  // for refusals
    ControlHandler handler_;
    std::atomic<bool> stopping_{false};
    std::thread thread_;
    dev_t socket_dev_ = 0;  // the file we bound: stop() removes only that one
    ino_t socket_ino_ = 0;
    struct Requests;
    std::unique_ptr<Requests> requests_;
};

// Client side (blockctl). ECONNREFUSED/ENOENT become "blockd is not running
// (no answer on SOCKET)". A final {"ok":false} becomes a Status with the
// server's message and an errno matching its kind.
Result<nlohmann::json> control_call(const std::filesystem::path& socket_path, const std::string& cmd,
                                    const nlohmann::json& args, const ProgressFn& on_progress = {});

}  // namespace icbd::node
