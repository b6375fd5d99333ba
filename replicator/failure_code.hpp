// Which code of RESULT or ERROR a failure is reported with. The code is decided
// where the failure happens, by what failed — a system call of ours, a frame of
// the peer, a frame of ours — never guessed from an errno alone: an EINVAL
// while reading the source is an io_error, not a bad name.
#pragma once

#include "icbd/replicator/protocol_error.hpp"
#include "icbd/status.hpp"

namespace icbd::repl {

// A system call of ours failed with `err`: no_space for ENOSPC and EDQUOT (the
// replica's disk is full), io_error for any other errno.
ErrorCode code_for_local_failure(int err);

// A frame from the peer that our codec refused (frame_codec.hpp, messages.hpp
// say which codes the codec gives): bad_name when it broke a name rule of
// section 7 (the codec's EINVAL), protocol for anything else malformed.
ErrorCode code_for_refused_frame(const Status& codec_error);

// A frame of our own that our codec refused to build: bad_name when the version
// holds a name the protocol cannot carry (the codec's EINVAL: a symlink
// leaving the version...), internal (a bug of ours) otherwise.
ErrorCode code_for_unsendable_frame(const Status& codec_error);

}  // namespace icbd::repl
