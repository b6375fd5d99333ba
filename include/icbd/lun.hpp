// A LUN of the block engine: turns SCSI data-path commands (already validated by
// tgtd's SBC layer: LBA range, read-only, CDB basics) into asynchronous I/O on one
// backing file through one IoEngine. One thread of control owns a Lun.
//
// Contract of submit(): the command completes exactly once, through the host's
// complete callback, called from submit_batch() or process_completions(); never
// from inside submit(). submit() does no system call: it queues I/O and asks the
// host (kick) to call submit_batch() once in the current event-loop pass.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "icbd/bsopts.hpp"
#include "icbd/io_engine.hpp"
#include "icbd/status.hpp"
#include "icbd/unique_fd.hpp"

namespace icbd {

struct LunCommand {
    void* cookie = nullptr;
    const uint8_t* cdb = nullptr;
    uint64_t offset = 0;  // byte offset of the first LBA
    uint32_t tl = 0;      // transfer length in bytes, as tgtd computed it
    uint8_t* in_buf = nullptr;  // data-in (to the initiator)
    uint32_t in_len = 0;
    uint8_t* out_buf = nullptr;  // data-out (from the initiator)
    uint32_t out_len = 0;
    uint64_t lun_size = 0;
    unsigned blk_shift = 9;
    bool write_cache_enabled = true;  // WCE in the caching mode page
    bool thin_provisioning = false;   // LBPME: UNMAP allowed
    unsigned max_compare_and_write_blocks = 0;  // Block Limits VPD; 0: no limit
};

// The result of a SCSI command as the block engine reports it (how an I/O
// error of the backing file becomes sense data: blockd/sense.hpp, table in
// docs/scsi-commands.md).
struct ScsiResult {
    uint8_t status = 0;  // 0x00 GOOD or 0x02 CHECK CONDITION
    uint8_t sense_key = 0;
    uint16_t asc = 0;  // ASC << 8 | ASCQ
    bool has_info = false;
    uint64_t info = 0;  // sense INFORMATION field (miscompare offset)
};

struct LunHost {
    void (*complete)(void* ctx, void* cookie, const ScsiResult& result) = nullptr;
    void (*kick)(void* ctx) = nullptr;  // please call submit_batch() in this loop pass
    void* ctx = nullptr;
};

// Test seam: how a LUN gets its I/O engine. Production leaves it empty and the
// LUN makes the engine its options ask for (make_io_engine); tests wrap that
// engine to inject faults below the LUN (tests/support/faulty_engine.hpp,
// docs/testing.md).
using EngineFactory =
    std::function<Result<std::unique_ptr<IoEngine>>(const EngineOptions& opts, std::string* why_fallback)>;
struct LunSeams {
    EngineFactory make_engine;  // empty: make_io_engine
};

class BootRecorder;
class CacheLayer;
class CommandRunner;
class IoQueue;
class LunMetrics;
class OverlayLayer;
class OverlayMap;
class RawLayer;
class WriteBackCache;

class Lun {
public:
    // `name` identifies the LUN in log lines (e.g. "tgt 1 lun 2").
    static Result<std::unique_ptr<Lun>> create(const LunOptions& opts, const LunHost& host,
                                               const std::string& name = "", const LunSeams& seams = {});
    ~Lun();

    const LunOptions& options() const { return opts_; }
    const char* engine_name() const { return engine_->name(); }
    int event_fd() const { return engine_->event_fd(); }
    // A timerfd the host watches for readability, then calls on_timer()
    // (idle write-back of the cache); -1 for a LUN without a cache or with
    // cache_idle=0.
    int timer_fd() const { return timer_fd_.get(); }
    void on_timer();

    // Opens the backing file per the options; falls back to read-only where the
    // file or filesystem refuses writing. Returns the size in bytes.
    Result<uint64_t> open(const std::string& path, int extra_oflags);
    // The descriptor tgtd may use for the LUN (size, GET LBA STATUS): the
    // backing file, or on an overlay LUN the shared golden file.
    int fd() const;
    bool readonly() const { return readonly_; }
    // Waits for every I/O in flight, then closes the backing file.
    void close();

    void submit(const LunCommand& cmd);
    void submit_batch();
    void process_completions();
    size_t commands_in_flight() const;

private:
    Result<uint64_t> open_overlay(const std::string& golden_path);
    // With a cache configured: opens it for the device below (the file or
    // the overlay just opened).
    Status open_cache(const std::string& device_id, uint64_t size);
    // The data path of the opened file, bottom up (blockd/data_layer.hpp):
    // the I/O queue on the engine, the raw file or the overlay, the
    // write-back cache when there is one; then the command runner above its
    // top. `name` is what log lines about failed I/O name.
    void build_stack(const std::string& name);
    // One pass of a blocking drain: submit, wait for I/O, deliver it.
    void pump();
    // Closing an overlay LUN: its writes durable and their map bits on disk.
    void persist_overlay_map();
    // The LUN's metrics file (docs/metrics.md); none when it cannot be made.
    void attach_metrics(const std::string& backing_path);
    // The boot set recorder (docs/boot-set.md) when bsopts name a sidecar.
    void attach_recorder(uint64_t size);
    Lun(const LunOptions& opts, const LunHost& host, std::unique_ptr<IoEngine> engine);
    LunOptions opts_;
    LunHost host_;
    std::unique_ptr<IoEngine> engine_;
    UniqueFd fd_;
    UniqueFd write_fd_;  // direct=writes: the O_DIRECT descriptor writes use
    std::unique_ptr<OverlayMap> overlay_;
    std::unique_ptr<WriteBackCache> cache_;
    bool readonly_ = false;
    // The layer stack (build_stack), torn down top first by close().
    std::unique_ptr<IoQueue> io_;
    std::unique_ptr<RawLayer> raw_layer_;          // or overlay_layer_
    std::unique_ptr<OverlayLayer> overlay_layer_;
    std::unique_ptr<CacheLayer> cache_layer_;      // above either, with its flusher
    std::unique_ptr<CommandRunner> runner_;        // SCSI semantics over the top layer
    UniqueFd timer_fd_;
    std::string name_;
    std::unique_ptr<LunMetrics> metrics_;  // outlives runner_ and the layers, which write to it
    std::unique_ptr<BootRecorder> recorder_;  // outlives runner_, which feeds it
};

}  // namespace icbd
