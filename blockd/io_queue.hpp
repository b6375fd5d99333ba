// File I/O of one LUN's data layers on its IoEngine: each request completes
// once to its caller's Done (contract in data_layer.hpp), after short
// transfers were continued and unaligned O_DIRECT buffers bounced. Nothing
// reaches the kernel before submit(): one system call per event-loop pass
// for the whole stack.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aligned_buffer.hpp"
#include "data_layer.hpp"
#include "icbd/io_engine.hpp"
#include "icbd/lun.hpp"

namespace icbd {

class IoQueue {
public:
    struct Request {
        IoOp op = IoOp::read;
        int fd = -1;
        uint8_t* buf = nullptr;
        uint64_t len = 0;
        uint64_t offset = 0;
        bool dsync = false;   // write: RWF_DSYNC
        bool direct = false;  // fd is O_DIRECT: buffer, length and offset must be aligned
        uint32_t align = 512;  // direct: that alignment, a power of two (dio_offset_alignment of fd)
    };

    // `name` (the backing file) is what log lines about failed I/O name.
    IoQueue(IoEngine& engine, const LunHost& host, std::string name);
    ~IoQueue();

    // Queues `r`; `done` runs from reap(), or before start() returns when
    // no memory could be had for a bounce buffer (ENOMEM).
    void start(const Request& r, Done done);
    // Asks the host, once per loop pass, to call submit().
    void kick();
    // Hands everything queued to the kernel (one system call).
    void submit();
    // Delivers the completions waiting in the engine.
    void reap();
    size_t in_flight() const { return engine_.in_flight(); }
    void wait() { engine_.wait(); }  // teardown only

private:
    struct Slot {
        Request req;           // offset, buf and len move on with short transfers
        uint64_t start = 0;    // the first offset, for messages
        uint8_t* copy_to = nullptr;  // bounced read: copy the bounce buffer here when done
        uint64_t copy_len = 0;
        uint64_t copy_skip = 0;      // where the caller's bytes start in the bounce buffer
        bool rmw_write = false;      // reading the blocks around an unaligned write
        IoOp op = IoOp::read;        // what the caller asked for, for done()
        bool dsync = false;
        AlignedBuffer bounce;
        Done done;
    };
    void prepare(uint32_t index);
    void complete(uint32_t index, int32_t res);

    IoEngine& engine_;
    LunHost host_;
    std::string name_;
    std::vector<std::unique_ptr<Slot>> slots_;  // index = the engine tag
    std::vector<uint32_t> free_;
    bool kicked_ = false;
    bool backlog_ = false;  // the engine kept operations back: submit again
};

}  // namespace icbd
