// libFuzzer target: parse_bsopts() on arbitrary text never crashes, and any
// error it returns carries a message that names the problem.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "icbd/bsopts.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    auto r = icbd::parse_bsopts(std::string_view(reinterpret_cast<const char*>(data), size));
    if (!r && (r.status().message().empty() || r.status().code() == 0)) std::abort();
    if (r && (r->engine.queue_depth < 1 || r->engine.queue_depth > 4096)) std::abort();
    return 0;
}
