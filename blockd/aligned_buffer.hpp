// A heap buffer aligned for O_DIRECT, grown on demand and reused across commands.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>

namespace icbd {

class AlignedBuffer {
public:
    static constexpr size_t alignment = 4096;
    uint8_t* get() const { return data_.get(); }
    size_t capacity() const { return capacity_; }
    // Returns nullptr when memory is exhausted.
    uint8_t* reserve(size_t n) {
        if (n <= capacity_) return data_.get();
        size_t rounded = (n + alignment - 1) & ~(alignment - 1);
        void* p = std::aligned_alloc(alignment, rounded);
        if (!p) return nullptr;
        data_.reset(static_cast<uint8_t*>(p));
        capacity_ = rounded;
        return data_.get();
    }

private:
    struct Free {
        void operator()(uint8_t* p) const { std::free(p); }
    };
    std::unique_ptr<uint8_t, Free> data_;
    size_t capacity_ = 0;
};

}  // namespace icbd
