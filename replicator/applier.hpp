// Applier: the receiver's side of the change frames (docs/replication-protocol.md,
// section 5) — each FILE, DATA, HOLE, TRUNCATE and DELETE applied beneath one
// staging tree, DATA batched through the DataWriter.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "data_writer.hpp"
#include "icbd/replicator/compression.hpp"
#include "icbd/replicator/protocol_error.hpp"
#include "icbd/status.hpp"
#include "icbd/unique_fd.hpp"
#include "messages.hpp"

namespace icbd::repl {

class Applier {
public:
    // `tree_fd`: the staging tree (borrowed); `caps`: what this replica offered
    // to decompress (HELLO capabilities).
    Applier(int tree_fd, uint32_t caps, bool use_uring) : tree_(tree_fd), caps_(caps), writer_(use_uring) {}

    // Applies one change frame. EPROTO for a frame that does not fit the tree
    // (DATA for a file that is not there...), EBADMSG for a chunk that does not
    // decompress, the errno of a failed system call otherwise.
    Status apply(const Message& m);
    // The code to report apply()'s failure with: protocol when the frame was
    // wrong, else that of a local failure (no_space, io_error).
    ErrorCode failure_code(const Status& failure) const;
    // Errors are local failures (failure_code() does not apply).
    Status flush() { return writer_.flush(); }
    // Drops the writes not yet done and closes the open file: before an abort,
    // so that the space of deleted files comes back at once.
    void release() {
        writer_.discard();
        cur_ = {};
    }
    uint64_t data_bytes() const { return data_bytes_; }
    // xxh3_64 of the last DATA's uncompressed bytes, for the change chain.
    uint64_t last_data_xxh3() const { return last_data_xxh3_; }

private:
    struct Current {
        std::string path;
        std::shared_ptr<UniqueFd> fd;
        uint64_t size = 0;
    };

    // A frame that does not fit the tree: the sender's fault, not ours.
    Status violation(std::string msg) { return violation(EPROTO, std::move(msg)); }
    Status violation(int err, std::string msg);
    // Opens (creating missing components, mode 0700 until their FILE) the
    // directory `rel` beneath the tree, one component at a time without following symlinks.
    Result<UniqueFd> open_dir_creating(const std::string& rel);
    Result<Current*> regular(const std::string& path, const char* frame);
    Status data(const Data& d);
    Status truncate(const Truncate& t);
    Status hole(const Hole& h);
    Status file(const FileEntry& f);
    Status del(const Delete& x);

    int tree_;
    uint32_t caps_;
    DataWriter writer_;
    Decompressor decomp_;
    Current cur_;
    uint64_t data_bytes_ = 0;
    uint64_t last_data_xxh3_ = 0;
    bool violated_ = false;  // apply()'s failure came from violation()
};

}  // namespace icbd::repl
