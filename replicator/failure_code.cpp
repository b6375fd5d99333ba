// The rules of failure_code.hpp: each looks at the code of one known source.
#include "failure_code.hpp"

#include <cerrno>

namespace icbd::repl {

ErrorCode code_for_local_failure(int err) {
    return err == ENOSPC || err == EDQUOT ? ErrorCode::no_space : ErrorCode::io_error;
}

ErrorCode code_for_refused_frame(const Status& codec_error) {
    return codec_error.code() == EINVAL ? ErrorCode::bad_name : ErrorCode::protocol;
}

ErrorCode code_for_unsendable_frame(const Status& codec_error) {
    return codec_error.code() == EINVAL ? ErrorCode::bad_name : ErrorCode::internal;
}

}  // namespace icbd::repl
