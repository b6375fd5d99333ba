// parse_size (grammar in include/icbd/parse_size.hpp).
#include "icbd/parse_size.hpp"

#include <cerrno>
#include <charconv>
#include <string>

namespace icbd {
namespace {
// Built by appending: GCC 12's -Wrestrict misfires on "'" + std::string(...).
std::string quoted(std::string_view s) {
    std::string q(1, '\'');
    q.append(s);
    q += '\'';
    return q;
}
}  // namespace

Result<uint64_t> parse_size(std::string_view text) {
    const char* const end = text.data() + text.size();
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(text.data(), end, n);
    if (p == text.data() || (ec != std::errc() && ec != std::errc::result_out_of_range))
        return Status::error(EINVAL, quoted(text) + " is not a size (e.g. 4096, 64K, 512M or 4G)");
    std::string_view unit(p, static_cast<size_t>(end - p));
    unsigned shift = 0;
    if (unit.empty() || unit == "B") {
        shift = 0;
    } else {
        switch (unit.front()) {
            case 'K': case 'k': shift = 10; break;
            case 'M': case 'm': shift = 20; break;
            case 'G': case 'g': shift = 30; break;
            case 'T': case 't': shift = 40; break;
            default: shift = 99;
        }
        const std::string_view rest = unit.substr(1);
        if (!(rest.empty() || rest == "B" || rest == "iB")) shift = 99;
    }
    if (shift == 99)
        return Status::error(EINVAL, quoted(text) + ": unknown unit " + quoted(unit) +
                                         " (B, K, M, G or T; KiB and KB alike)");
    if (ec == std::errc::result_out_of_range || (n << shift >> shift) != n)
        return Status::error(ERANGE, quoted(text) + " is too large");
    return n << shift;
}

}  // namespace icbd
