// Little-endian fields of frame payloads (docs/replication-protocol.md,
// conventions): appending them, and reading them in order with the first
// missing field named. Shared by the frame codec, the messages and the digests.
#pragma once

#include <cerrno>
#include <cstdint>
#include <string>
#include <string_view>

#include "frame_codec.hpp"
#include "icbd/endian.hpp"

namespace icbd::repl::wire {

// Appends a field. Out of line: inlined into short functions, GCC 12 reports
// a false -Wstringop-overflow on the vector insert.
void put_u8(Bytes& out, uint8_t v);
void put_u16(Bytes& out, uint16_t v);
void put_u32(Bytes& out, uint32_t v);
void put_u64(Bytes& out, uint64_t v);
// Callers validated the length (<= 4096 < 65536).
void put_str16(Bytes& out, std::string_view s);

// Reads fields in order; the first missing field makes the reader fail and is
// named by finish(), as are bytes left over.
class Reader {
public:
    Reader(ByteView b, FrameType t) : b_(b), type_(t) {}

    bool u8(uint8_t& v, const char* field) {
        if (!need(1, field)) return false;
        v = b_[pos_++];
        return true;
    }
    bool u16(uint16_t& v, const char* field) {
        if (!need(2, field)) return false;
        v = load_le16(b_.data() + pos_);
        pos_ += 2;
        return true;
    }
    bool u32(uint32_t& v, const char* field) {
        if (!need(4, field)) return false;
        v = load_le32(b_.data() + pos_);
        pos_ += 4;
        return true;
    }
    bool u64(uint64_t& v, const char* field) {
        if (!need(8, field)) return false;
        v = load_le64(b_.data() + pos_);
        pos_ += 8;
        return true;
    }
    bool i64(int64_t& v, const char* field) {
        uint64_t u;
        if (!u64(u, field)) return false;
        v = static_cast<int64_t>(u);
        return true;
    }
    bool str16(std::string& s, const char* field) {
        uint16_t n;
        if (!u16(n, field) || !need(n, field)) return false;
        s.assign(reinterpret_cast<const char*>(b_.data() + pos_), n);
        pos_ += n;
        return true;
    }
    bool bytes(size_t n, const uint8_t*& p, const char* field) {
        if (!need(n, field)) return false;
        p = b_.data() + pos_;
        pos_ += n;
        return true;
    }
    size_t remaining() const { return failed_ ? 0 : b_.size() - pos_; }
    ByteView rest() {
        ByteView r = failed_ ? ByteView() : b_.subspan(pos_);
        pos_ = b_.size();
        return r;
    }
    Status finish() const {
        if (failed_)
            return Status::error(EPROTO, frame_prefix(type_) + "truncated at field '" + field_ + "' (payload of " +
                                             std::to_string(b_.size()) + " bytes)");
        if (pos_ != b_.size())
            return Status::error(EPROTO, frame_prefix(type_) + std::to_string(b_.size() - pos_) + " trailing bytes");
        return Status::ok();
    }

private:
    bool need(size_t n, const char* field) {
        if (failed_) return false;
        if (b_.size() - pos_ < n) {
            failed_ = true;
            field_ = field;
            return false;
        }
        return true;
    }
    ByteView b_;
    FrameType type_;
    size_t pos_ = 0;
    bool failed_ = false;
    std::string field_;
};

}  // namespace icbd::repl::wire
