// IscsiClient: a small synchronous (and, for load and crash tests, asynchronous)
// C++ initiator over libiscsi: one session to one LUN, each SCSI command returns
// a ScsiResult with status, sense key, ASC/ASCQ, the sense INFORMATION field and
// the data. Messages name the URL and the command, so a failure in a test log
// says which LUN and which CDB.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <span>
#include <string>
#include <utility>
#include <vector>

struct iscsi_context;
struct scsi_task;

namespace icbd::test {

// SCSI values the tests compare against (SPC-4/SBC-3), kept here so the
// integration tests stay black-box: they do not include the module's headers.
namespace scsi {
inline constexpr int good = 0x00, check_condition = 0x02;
namespace key {
inline constexpr int no_sense = 0x0, not_ready = 0x2, medium_error = 0x3, hardware_error = 0x4, illegal_request = 0x5,
                     unit_attention = 0x6, data_protect = 0x7, miscompare = 0xe;
}
namespace asc {
inline constexpr uint16_t write_error = 0x0c00;
inline constexpr uint16_t miscompare_during_verify = 0x1d00;
inline constexpr uint16_t lba_out_of_range = 0x2100;
inline constexpr uint16_t invalid_field_in_cdb = 0x2400;
inline constexpr uint16_t write_protected = 0x2700;
inline constexpr uint16_t space_allocation_failed = 0x2707;
inline constexpr uint16_t logical_unit_not_supported = 0x2500;
inline constexpr uint16_t internal_target_failure = 0x4400;
}  // namespace asc
}  // namespace scsi

struct ScsiResult {
    std::string command;  // "WRITE(16) lba 8, 2 blocks, FUA"
    std::string url;      // the LUN it went to
    int status = -1;      // SCSI status; or libiscsi's SCSI_STATUS_ERROR/CANCELLED/TIMEOUT; -1: not sent
    int sense_key = 0;
    uint16_t asc = 0;         // ASC << 8 | ASCQ, e.g. 0x2707
    bool info_valid = false;  // INFORMATION field present (fixed or descriptor sense)
    uint64_t info = 0;
    std::vector<uint8_t> sense;  // raw sense data
    std::vector<uint8_t> data;   // data-in of a GOOD command
    std::string error;           // libiscsi's message when the command did not complete on the target

    bool good() const { return status == scsi::good; }
    // The command got no SCSI status: the connection failed or was torn down
    // (libiscsi's SCSI_STATUS_CANCELLED, _ERROR, _TIMEOUT).
    bool transport_failed() const { return status >= 0x0f000000; }
    bool check_condition(int key, uint16_t asc_ascq) const {
        return status == scsi::check_condition && sense_key == key && asc == asc_ascq;
    }
    // One line: command, URL, status, sense key/ASC in hex and names, INFORMATION.
    std::string describe() const;
};
std::ostream& operator<<(std::ostream& os, const ScsiResult& r);
void PrintTo(const ScsiResult& r, std::ostream* os);  // gtest: describe(), not a byte dump

struct Capacity {
    uint64_t blocks = 0;  // number of logical blocks (last LBA + 1)
    uint32_t block_size = 0;
    bool lbpme = false;  // thin provisioning enabled
    bool lbprz = false;  // unmapped blocks read as zeros
};

struct LbaStatus {
    uint64_t lba;
    uint32_t blocks;
    int provisioning;  // 0 mapped, 1 deallocated, 2 anchored
};

class IscsiClient {
public:
    // Connects and logs in to `url` (iscsi://host:port/iqn/lun) and reads the
    // capacity. Throws std::runtime_error naming the URL on failure. Commands
    // that get no answer within `timeout` fail with SCSI_STATUS_TIMEOUT rather
    // than hang. The session never reconnects on its own: a dead tgtd must show.
    explicit IscsiClient(const std::string& url, std::chrono::seconds timeout = std::chrono::seconds(30));
    ~IscsiClient();
    IscsiClient(const IscsiClient&) = delete;
    IscsiClient& operator=(const IscsiClient&) = delete;

    const std::string& url() const { return url_; }
    uint32_t block_size() const { return capacity_.block_size; }
    uint64_t blocks() const { return capacity_.blocks; }

    // --- synchronous commands. Data lengths are whole blocks. A UNIT ATTENTION
    // (e.g. "reported LUNs data has changed" after another LUN was deleted) is
    // retried a few times, as any initiator would.
    ScsiResult read10(uint32_t lba, uint32_t blocks);
    ScsiResult read16(uint64_t lba, uint32_t blocks);
    ScsiResult write10(uint32_t lba, std::span<const uint8_t> data, bool fua = false);
    ScsiResult write16(uint64_t lba, std::span<const uint8_t> data, bool fua = false);
    ScsiResult sync_cache10(uint32_t lba = 0, uint32_t blocks = 0);
    ScsiResult sync_cache16(uint64_t lba = 0, uint32_t blocks = 0);
    ScsiResult unmap(const std::vector<std::pair<uint64_t, uint32_t>>& ranges);  // (lba, blocks)
    // `block` is one block of pattern.
    ScsiResult write_same16(uint64_t lba, uint32_t blocks, std::span<const uint8_t> block, bool unmap = false);
    ScsiResult compare_and_write(uint64_t lba, std::span<const uint8_t> compare, std::span<const uint8_t> write);
    ScsiResult orwrite16(uint64_t lba, std::span<const uint8_t> data);
    ScsiResult write_verify16(uint64_t lba, std::span<const uint8_t> data, bool bytchk = true);
    // BYTCHK=1: compare `data` with the medium; BYTCHK=0 (empty data): medium check only.
    ScsiResult verify16(uint64_t lba, uint32_t blocks, std::span<const uint8_t> data);
    ScsiResult prefetch16(uint64_t lba, uint32_t blocks);
    ScsiResult readcapacity16();
    ScsiResult get_lba_status(uint64_t lba, uint32_t alloc_len = 4096);
    // Any CDB: data-out `out` (may be empty), up to `in_len` bytes of data-in.
    ScsiResult raw(std::span<const uint8_t> cdb, std::span<const uint8_t> out, uint32_t in_len,
                   const std::string& name);

    static Capacity parse_capacity(const ScsiResult& r);
    static std::vector<LbaStatus> parse_lba_status(const ScsiResult& r);

    // --- asynchronous commands: many in flight on one session, completed from
    // service(). Each callback runs exactly once (also for commands cut off by
    // a dead connection: then status is SCSI_STATUS_ERROR or _CANCELLED),
    // except after the client is destroyed: it is not called then.
    using Callback = std::function<void(const ScsiResult&)>;
    // Returns false (and calls nothing) when libiscsi refused to queue it.
    bool async_write16(uint64_t lba, std::vector<uint8_t> data, bool fua, Callback cb);
    bool async_read16(uint64_t lba, uint32_t blocks, Callback cb);
    bool async_sync_cache16(Callback cb);
    size_t in_flight() const { return pending_.size(); }
    // Waits up to `timeout` for the socket and handles what arrived. Returns
    // false when the connection failed (see last_error()).
    bool service(std::chrono::milliseconds timeout);
    std::string last_error() const;

private:
    struct Pending {
        IscsiClient* client;
        uint64_t id;
        scsi_task* task = nullptr;
        std::string command;
        std::vector<uint8_t> data;  // data-out, alive until libiscsi is done with it
        Callback cb;
    };
    static void on_complete(iscsi_context* ctx, int status, void* command_data, void* private_data);

    ScsiResult finish(scsi_task* task, std::string command);
    template <class F>
    ScsiResult retry_unit_attention(F&& f);
    template <class Make>
    bool queue(std::string command, std::vector<uint8_t> data, Callback cb, Make&& make);

    std::string url_;
    int lun_ = 0;
    iscsi_context* ctx_ = nullptr;
    Capacity capacity_;
    bool closing_ = false;
    uint64_t next_id_ = 1;
    std::map<uint64_t, std::unique_ptr<Pending>> pending_;
};

// Test data: `n` bytes, a function of (seed, byte offset), never all-zero blocks.
std::vector<uint8_t> pattern(size_t n, uint64_t seed);

}  // namespace icbd::test
