// blockd's systemd unit as `cmake --install` ships it: systemd's own checker
// accepts it, and it says what the daemon and the tgt drop-in rely on.
// systemd is not PID 1 here, so this checks the unit file, not a running service.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "run_command.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;

bool skips_forbidden() {
    const char* v = std::getenv("ICBD_FORBID_SKIP");
    return v && *v && std::strcmp(v, "0") != 0;
}

std::string read_file(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// key -> values of the assignments in the file (a key may repeat), section ignored.
std::multimap<std::string, std::string> unit_settings(const std::string& text) {
    std::multimap<std::string, std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == '#' || line[0] == '[') continue;
        auto eq = line.find('=');
        if (eq != std::string::npos) out.emplace(line.substr(0, eq), line.substr(eq + 1));
    }
    return out;
}

std::string setting(const std::multimap<std::string, std::string>& s, const std::string& key) {
    auto it = s.find(key);
    return it == s.end() ? "" : it->second;
}

TEST(BlockdUnit, SystemdAnalyzeVerifyAcceptsIt) {
    if (!icbd::test::have_program("systemd-analyze")) {
        if (skips_forbidden()) FAIL() << "systemd-analyze is not installed";
        GTEST_SKIP() << "systemd-analyze is not installed (package systemd)";
    }
    std::string unit = read_file(ICBD_BLOCKD_UNIT);
    ASSERT_FALSE(unit.empty()) << ICBD_BLOCKD_UNIT << " was not configured";
    // The shipped unit names the installed daemon; verify checks that its
    // program exists, so the copy checked here names the one just built.
    ASSERT_EQ(access(ICBD_BLOCKD_BINARY, X_OK), 0) << ICBD_BLOCKD_BINARY << ": " << std::strerror(errno);
    const std::string exec = "ExecStart=";
    auto at = unit.find("\n" + exec);
    ASSERT_NE(at, std::string::npos) << "no ExecStart";
    at += 1 + exec.size();
    unit.replace(at, unit.find(' ', at) - at, ICBD_BLOCKD_BINARY);

    icbd::test::TempDir dir("/tmp", "icbd-unit-test-");
    fs::path copy = dir / "blockd.service";  // verify judges the unit by its file name
    std::ofstream(copy) << unit;
    auto r = icbd::test::run_command({"systemd-analyze", "verify", copy.string()});
    EXPECT_TRUE(r.ok()) << r.describe();
    // A warning (unknown key, bad value) does not change the exit code: it names the file.
    EXPECT_EQ(r.output.find("blockd.service"), std::string::npos) << r.output;
}

TEST(BlockdUnit, RunsTheInstalledDaemonAsANotifyServiceAfterTgt) {
    auto s = unit_settings(read_file(ICBD_BLOCKD_UNIT));
    std::string exec = setting(s, "ExecStart");
    std::string program = exec.substr(0, exec.find(' '));
    EXPECT_EQ(exec.substr(program.size()), " --config /etc/icbd/blockd.toml");
    EXPECT_TRUE(program.starts_with('/') && program.ends_with("/sbin/blockd")) << "not configured: " << exec;
    EXPECT_EQ(setting(s, "Type"), "notify");
    EXPECT_EQ(setting(s, "WatchdogSec"), "30");
    EXPECT_NE(setting(s, "After").find("tgt.service"), std::string::npos);
    EXPECT_NE(setting(s, "Wants").find("tgt.service"), std::string::npos);
    EXPECT_EQ(setting(s, "StateDirectory"), "icbd");    // /var/lib/icbd, NodeConfig::state_dir
    EXPECT_EQ(setting(s, "RuntimeDirectory"), "icbd");  // /run/icbd, NodeConfig::runtime_dir
    EXPECT_EQ(setting(s, "RuntimeDirectoryPreserve"), "yes");
    EXPECT_EQ(setting(s, "Restart"), "on-failure");
    EXPECT_EQ(setting(s, "KillMode"), "mixed");
    EXPECT_EQ(setting(s, "LimitNOFILE"), "65536");
    // tgtd's control socket is abstract, in the host's network namespace; BTRFS and loop devices.
    EXPECT_EQ(setting(s, "PrivateNetwork"), "");
    EXPECT_EQ(setting(s, "PrivateDevices"), "");
    EXPECT_NE(setting(s, "CapabilityBoundingSet").find("CAP_SYS_ADMIN"), std::string::npos);
}

// 200 desktops are about 1,000 descriptors in tgtd (5 per LUN), just under
// Debian's default soft limit of 1,024: the drop-in must lift it well above.
TEST(TgtDropIn, LiftsTgtdsDescriptorLimit) {
    auto s = unit_settings(read_file(fs::path(ICBD_SOURCE_DIR) / "systemd/tgt.service.d/icbd.conf"));
    std::string limit = setting(s, "LimitNOFILE");
    ASSERT_FALSE(limit.empty()) << "the tgt drop-in does not set LimitNOFILE";
    EXPECT_GE(std::stoull(limit), 500u * 5 * 10) << "room for 500 desktops, ten times over";
}

}  // namespace
