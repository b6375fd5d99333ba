// icbd-iscsi: a small user-space initiator (libiscsi) for operators and the demo:
// read a LUN (or part) to a file or stdout, write a file to a LUN, flush, show
// the capacity. There is no kernel initiator on the cache servers we target.
#include <fcntl.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include <icbd/build_version.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

const char* kUsage =
    "usage: icbd-iscsi COMMAND URL [options]\n"
    "  capacity URL                       print block size and number of blocks\n"
    "  read URL [--lba N] [--blocks N] [-o FILE]\n"
    "                                     read blocks (default: the whole LUN) to FILE or stdout\n"
    "  write URL -i FILE [--lba N] [--fua]\n"
    "                                     write FILE (a multiple of the block size) at LBA N\n"
    "  sync URL                           SYNCHRONIZE CACHE(16) of the whole LUN\n"
    "  every command: [--initiator IQN]   our initiator name (default iqn.2026-11.org.icbd:icbd-iscsi);\n"
    "                                     a target with an ACL admits only the names bound to it\n"
    "URL: iscsi://[USER%SECRET@]HOST[:PORT]/TARGET-IQN/LUN  (USER%SECRET: CHAP)\n";

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "icbd-iscsi: %s\n", msg.c_str());
    std::exit(1);
}

struct ContextDeleter {
    void operator()(iscsi_context* c) const {
        iscsi_logout_sync(c);
        iscsi_destroy_context(c);
    }
};
struct TaskDeleter {
    void operator()(scsi_task* t) const { scsi_free_scsi_task(t); }
};
using Task = std::unique_ptr<scsi_task, TaskDeleter>;

class Lun {
public:
    Lun(const std::string& url, const std::string& initiator) : url_(url) {
        ctx_.reset(iscsi_create_context(initiator.c_str()));
        if (!ctx_) die(url + ": cannot create an iSCSI context");
        std::unique_ptr<iscsi_url, void (*)(iscsi_url*)> u(iscsi_parse_full_url(ctx_.get(), url.c_str()),
                                                             iscsi_destroy_url);
        if (!u) die(url + ": bad URL: " + iscsi_get_error(ctx_.get()));
        iscsi_set_session_type(ctx_.get(), ISCSI_SESSION_NORMAL);
        iscsi_set_header_digest(ctx_.get(), ISCSI_HEADER_DIGEST_NONE_CRC32C);
        iscsi_set_targetname(ctx_.get(), u->target);
        if (u->user[0] != '\0') iscsi_set_initiator_username_pwd(ctx_.get(), u->user, u->passwd);
        if (iscsi_full_connect_sync(ctx_.get(), u->portal, u->lun) != 0)
            die(url + ": cannot log in: " + iscsi_get_error(ctx_.get()));
        lun_ = u->lun;
        Task t(iscsi_readcapacity16_sync(ctx_.get(), lun_));
        check(t.get(), "READ CAPACITY(16)");
        auto* cap = static_cast<scsi_readcapacity16*>(scsi_datain_unmarshall(t.get()));
        if (!cap) die(url + ": READ CAPACITY(16): malformed reply");
        block_ = cap->block_length;
        blocks_ = cap->returned_lba + 1;
    }

    uint32_t block_size() const { return block_; }
    uint64_t blocks() const { return blocks_; }

    std::vector<uint8_t> read(uint64_t lba, uint32_t n) {
        Task t(iscsi_read16_sync(ctx_.get(), lun_, lba, n * block_, block_, 0, 0, 0, 0, 0));
        check(t.get(), "READ(16) at LBA " + std::to_string(lba));
        if (t->datain.size != static_cast<int>(n * block_))
            die(url_ + ": READ(16) at LBA " + std::to_string(lba) + ": short data");
        return {t->datain.data, t->datain.data + t->datain.size};
    }
    void write(uint64_t lba, std::vector<uint8_t>& data, bool fua) {
        Task t(iscsi_write16_sync(ctx_.get(), lun_, lba, data.data(), static_cast<uint32_t>(data.size()), block_, 0,
                                  0, fua, 0, 0));
        check(t.get(), "WRITE(16) at LBA " + std::to_string(lba));
    }
    void sync() {
        Task t(iscsi_synchronizecache16_sync(ctx_.get(), lun_, 0, 0, 0, 0));
        check(t.get(), "SYNCHRONIZE CACHE(16)");
    }

private:
    void check(scsi_task* t, const std::string& what) {
        if (!t) die(url_ + ": " + what + ": " + iscsi_get_error(ctx_.get()));
        if (t->status != SCSI_STATUS_GOOD) {
            char buf[160];
            std::snprintf(buf, sizeof buf, "%s (sense key 0x%x, ASC/ASCQ 0x%04x)", scsi_sense_key_str(t->sense.key),
                          t->sense.key, t->sense.ascq);
            die(url_ + ": " + what + ": " + buf);
        }
    }

    std::string url_;
    std::unique_ptr<iscsi_context, ContextDeleter> ctx_;
    int lun_ = 0;
    uint32_t block_ = 512;
    uint64_t blocks_ = 0;
};

uint64_t number(const char* opt, const char* v) {
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(v, &end, 0);
    if (errno || !*v || *end) die(std::string("option ") + opt + ": not a number: '" + v + "'");
    return n;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && std::string(argv[1]) == "--version") return std::puts(ICBD_VERSION_LINE("icbd-iscsi")) < 0;
    if (argc < 3) {
        std::fputs(kUsage, stderr);
        return 2;
    }
    const std::string cmd = argv[1], url = argv[2];
    std::optional<uint64_t> lba, count;
    std::string in, out;
    bool fua = false;
    std::string initiator = "iqn.2026-11.org.icbd:icbd-iscsi";
    for (int i = 3; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) die("option " + a + " needs a value");
            return argv[++i];
        };
        if (a == "--lba") lba = number("--lba", value());
        else if (a == "--blocks") count = number("--blocks", value());
        else if (a == "-o") out = value();
        else if (a == "-i") in = value();
        else if (a == "--fua") fua = true;
        else if (a == "--initiator") initiator = value();
        else die("unknown option '" + a + "'\n" + kUsage);
    }
    if (cmd != "capacity" && cmd != "read" && cmd != "write" && cmd != "sync")
        die("unknown command '" + cmd + "'\n" + kUsage);

    Lun lun(url, initiator);
    if (cmd == "capacity") {
        std::printf("block_size %u blocks %llu bytes %llu\n", lun.block_size(),
                    static_cast<unsigned long long>(lun.blocks()),
                    static_cast<unsigned long long>(lun.blocks() * lun.block_size()));
    } else if (cmd == "sync") {
        lun.sync();
    } else if (cmd == "read") {
        uint64_t first = lba.value_or(0);
        uint64_t n = count.value_or(first < lun.blocks() ? lun.blocks() - first : 0);
        if (first + n > lun.blocks() || first + n < first)
            die(url + ": blocks " + std::to_string(first) + "+" + std::to_string(n) + " beyond the LUN's " +
                std::to_string(lun.blocks()));
        int fd = out.empty() ? 1 : ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) die(out + ": " + std::strerror(errno));
        const uint32_t chunk = (1u << 20) / lun.block_size();
        for (uint64_t b = first; b < first + n;) {
            uint32_t k = static_cast<uint32_t>(std::min<uint64_t>(chunk, first + n - b));
            auto data = lun.read(b, k);
            for (size_t off = 0; off < data.size();) {
                ssize_t w = ::write(fd, data.data() + off, data.size() - off);
                if (w < 0) die((out.empty() ? std::string("stdout") : out) + ": " + std::strerror(errno));
                off += static_cast<size_t>(w);
            }
            b += k;
        }
        if (fd != 1 && ::close(fd) != 0) die(out + ": " + std::strerror(errno));
    } else {
        if (in.empty()) die("write needs -i FILE");
        int fd = ::open(in.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) die(in + ": " + std::strerror(errno));
        uint64_t b = lba.value_or(0);
        std::vector<uint8_t> buf(1u << 20);
        for (;;) {
            ssize_t r = ::read(fd, buf.data(), buf.size());
            if (r < 0) die(in + ": " + std::strerror(errno));
            if (r == 0) break;
            if (r % lun.block_size()) die(in + ": size is not a multiple of the block size " + std::to_string(lun.block_size()));
            std::vector<uint8_t> part(buf.begin(), buf.begin() + r);
            lun.write(b, part, fua);
            b += static_cast<uint64_t>(r) / lun.block_size();
        }
        ::close(fd);
    }
    return 0;
}
