// Status helpers.
#include "icbd/status.hpp"

#include <cstring>

namespace icbd {

Status Status::from_errno(int err, const std::string& what) {
    return Status(err, what + ": " + std::strerror(err));
}

}  // namespace icbd
