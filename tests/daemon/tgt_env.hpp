// Lets code that runs plain `tgtadm -C N` (TgtAdmin) reach a TgtdInstance: the
// instance keeps its control socket in a private directory named by
// TGT_IPC_SOCKET in tgtd's environment, so the test process adopts that value.
#pragma once

#include <sys/types.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "tgtd_instance.hpp"

namespace icbd::test {

// TGT_IPC_SOCKET of the running tgtd `pid` (the launcher execs tgtd in place).
inline std::string tgtd_ipc_socket(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    const std::string env = ss.str();
    const std::string key = "TGT_IPC_SOCKET=";
    for (size_t pos = 0; pos < env.size();) {
        size_t end = env.find('\0', pos);
        if (end == std::string::npos) end = env.size();
        if (env.compare(pos, key.size(), key) == 0) return env.substr(pos + key.size(), end - pos - key.size());
        pos = end + 1;
    }
    throw std::runtime_error("tgtd " + std::to_string(pid) + " has no TGT_IPC_SOCKET in its environment");
}

// Call before starting threads: setenv is not thread-safe.
inline void use_tgtd_socket_of(TgtdInstance& tgtd) {
    ::setenv("TGT_IPC_SOCKET", tgtd_ipc_socket(tgtd.pid()).c_str(), 1);
}

}  // namespace icbd::test
