// Whole-system test harness: blockd processes with their own repositories,
// ports and tgtd, driven through blockctl (see blockd_cluster.hpp).
#include "blockd_cluster.hpp"

#include "tgt_env.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#include <cstring>

namespace icbd::test {

namespace fs = std::filesystem;

int pick_free_port() {
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) throw std::runtime_error("socket: " + std::string(std::strerror(errno)));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        ::close(s);
        throw std::runtime_error("bind: " + std::string(std::strerror(errno)));
    }
    ::close(s);
    return ntohs(a.sin_port);
}

void make_certs(const fs::path& dir, const std::vector<std::string>& names) {
    std::vector<std::string> argv = {std::string(ICBD_SOURCE_DIR) + "/scripts/make-certs.sh", dir.string()};
    argv.insert(argv.end(), names.begin(), names.end());
    run_checked(argv);
}

std::string sha256_of(const fs::path& file) {
    auto r = run_checked({"sha256sum", file.string()});
    return r.output.substr(0, 64);
}

BlockdNode::BlockdNode(Role role, std::string name, const fs::path& certs, uint64_t fs_size)
    : role_(role), name_(std::move(name)), certs_(certs), dir_("/tmp", "icbd-blockd-" + name_ + "-") {
    fs_ = std::make_unique<LoopFs>(LoopFs::Type::btrfs, fs_size);
    fs::create_directories(repository());
    socket_ = dir_.path() / "run" / "blockd.sock";
    peer_port_ = pick_free_port();
    repl_port_ = pick_free_port();
    if (role_ == Role::replica) tgtd_ = std::make_unique<TgtdInstance>();
}

BlockdNode::~BlockdNode() {
    try {
        stop();
    } catch (...) {
    }
    // tgtd (and its LUNs) go before the filesystem their files live on.
    tgtd_.reset();
    fs_.reset();
}

void BlockdNode::set_master(const BlockdNode& master) {
    master_address_ = "127.0.0.1:" + std::to_string(master.peer_port());
    master_name_ = master.name();
}

void BlockdNode::write_config() {
    std::ostringstream c;
    c << "role = \"" << (role_ == Role::master ? "master" : "replica") << "\"\n"
      << "name = \"" << name_ << "\"\n"
      << "state_dir = \"" << (dir_.path() / "state").string() << "\"\n"
      << "runtime_dir = \"" << (dir_.path() / "run").string() << "\"\n"
      << "[repository]\nroot = \"" << repository().string() << "\"\n"
      << "[tls]\nca = \"" << (certs_ / "ca.crt").string() << "\"\ncert = \"" << (certs_ / (name_ + ".crt")).string()
      << "\"\nkey = \"" << (certs_ / (name_ + ".key")).string() << "\"\n"
      << "[peer]\nlisten = \"127.0.0.1:" << peer_port_ << "\"\n";
    if (role_ == Role::replica) {
        c << "[replication]\nlisten = \"127.0.0.1:" << repl_port_ << "\"\n"
          << "[master]\naddress = \"" << master_address_ << "\"\nname = \"" << master_name_ << "\"\n"
          << "[tgt]\ncontrol_port = " << tgtd_->control_port() << "\n"
          << "[clients]\ncache_dir = \"" << (cache_dir_.empty() ? fs_->mount_point() / "cache" : cache_dir_).string()
          << "\"\n"
          << "cache_size = \"16M\"\nreconcile_interval = \"500ms\"\n";
    }
    c << extra_ << "\n";
    std::ofstream(config_file()) << c.str();
}

void BlockdNode::start() {
    if (running()) return;
    write_config();
    fs::path logf = dir_.path() / "blockd.log";
    SpawnActions actions;
    posix_spawn_file_actions_addopen(&actions.a, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions.a, 1, logf.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions.a, 1, 2);
    std::vector<std::string> args = {blockd_bin().string(), "--config", config_file().string()};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_storage;
    Env env;
    // TgtdInstance keeps its control socket in a private directory; blockd's
    // tgtadm finds it the way the tests' own tgtadm does.
    if (tgtd_) env.emplace_back("TGT_IPC_SOCKET", tgtd_ipc_socket(tgtd_->pid()));
    auto envp = make_environment(env, env_storage);
    if (posix_spawn(&pid_, argv[0], &actions.a, nullptr, argv.data(), envp.data()) != 0) {
        pid_ = -1;
        throw std::runtime_error("cannot start " + blockd_bin().string());
    }
    bool up = eventually([&] { return !running() || ctl({"status"}, std::chrono::seconds(5)).exit_code == 0; },
                         std::chrono::seconds(30));
    if (!up || !running()) throw std::runtime_error("blockd '" + name_ + "' did not start; log:\n" + log());
}

bool BlockdNode::running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
    }
    return true;
}

void BlockdNode::kill9() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
}

void BlockdNode::stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
        if (!running()) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    kill9();
}

std::string BlockdNode::log() const {
    std::ifstream in(dir_.path() / "blockd.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

CtlResult BlockdNode::ctl(const std::vector<std::string>& args, std::chrono::seconds timeout) const {
    std::vector<std::string> argv = {blockctl_bin().string(), "--socket", socket_.string(), "--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run_command(argv, {}, timeout);
    CtlResult out;
    out.exit_code = r.exit_code;
    out.output = r.output;
    if (r.exit_code == 0) {
        out.json = nlohmann::json::parse(r.output, nullptr, false);
    }
    return out;
}

nlohmann::json BlockdNode::ctl_ok(const std::vector<std::string>& args) const {
    auto r = ctl(args);
    if (r.exit_code != 0 || r.json.is_discarded()) {
        std::string cmd;
        for (auto& a : args) cmd += " " + a;
        throw std::runtime_error("blockctl" + cmd + " on '" + name_ + "' exited " + std::to_string(r.exit_code) + ": " +
                                 r.output);
    }
    return r.json;
}

}  // namespace icbd::test
