// A LUN over a FaultyEngine (tests/support/faulty_engine.hpp), driven through
// the public Lun API, with a byte model of what the initiator was told: each
// acknowledged write must read back after the LUN is closed and opened again
// without faults; a failed write may have landed or not, byte by byte. Shared
// by the fault tests of raw/overlay LUNs and of cached LUNs.
#pragma once

#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "faulty_engine.hpp"
#include "lun_driver.hpp"
#include "scsi.hpp"

namespace icbd::test {

// What the initiator would see: status, sense key and ASC/ASCQ.
inline std::string describe(const ScsiResult& r) {
    char s[64];
    std::snprintf(s, sizeof s, "status 0x%02x key 0x%02x asc/ascq 0x%04x", r.status, r.sense_key, r.asc);
    return s;
}
inline ::testing::AssertionResult has_sense(const ScsiResult& r, uint8_t key, uint16_t asc) {
    if (r.status == scsi::status_check_condition && r.sense_key == key && r.asc == asc)
        return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << describe(r);
}
inline ::testing::AssertionResult medium_error_read(const ScsiResult& r) {
    return has_sense(r, scsi::key::medium_error, scsi::asc::unrecovered_read_error);
}
inline ::testing::AssertionResult medium_error_write(const ScsiResult& r) {
    return has_sense(r, scsi::key::medium_error, scsi::asc::write_error);
}
inline ::testing::AssertionResult space_allocation_failed(const ScsiResult& r) {
    return has_sense(r, scsi::key::data_protect, scsi::asc::space_allocation_failed);
}

class FaultyLunTest : public ::testing::Test {
protected:
    static constexpr uint64_t kSector = 512;
    static constexpr uint64_t kBlock = 4096;

    void SetUp() override {
        char name[] = "/var/tmp/icbd-faults-XXXXXX";
        ASSERT_NE(mkdtemp(name), nullptr);
        dir_ = name;
        backing_ = dir_ / "disk.raw";
        overlay_ = dir_ / "client.ovl";
        cache_ = dir_ / "lun.cache";
    }
    void TearDown() override {
        lun_.reset();
        std::filesystem::remove_all(dir_);
    }

    // A backing file of `size` random bytes; the model starts from it.
    void make_backing(uint64_t size) {
        expected_.resize(size);
        std::mt19937 rng(11);
        for (auto& b : expected_) b = static_cast<uint8_t>(rng());
        alt_ = expected_;
        either_.assign(size, false);
        std::ofstream(backing_, std::ios::binary)
            .write(reinterpret_cast<const char*>(expected_.data()), static_cast<std::streamsize>(size));
    }
    // bsopts with "{dir}" standing for the test's directory.
    void open_lun(const std::string& bsopts, bool faulty = true) {
        lun_.reset();
        std::string o = bsopts.empty() ? "metrics_dir=off" : bsopts + ";metrics_dir=off";
        for (size_t p; (p = o.find("{dir}")) != std::string::npos;) o.replace(p, 5, dir_.string());
        auto opts = parse_bsopts(o);
        ASSERT_TRUE(opts) << opts.status().message();
        LunSeams seams;
        if (faulty) seams.make_engine = FaultyEngine::factory(plan_);
        auto lun = Lun::create(*opts, rec_.host(), "faulty", seams);
        ASSERT_TRUE(lun) << lun.status().message();
        auto size = (*lun)->open(backing_, 0);
        ASSERT_TRUE(size) << size.status().message();
        ASSERT_EQ(*size, expected_.size());
        lun_ = std::move(*lun);
        bsopts_ = bsopts;
    }
    void fault(IoOp op, const std::string& file, uint64_t nth = 1, int err = EIO, uint64_t times = 1) {
        plan_->add({op, file, 0, UINT64_MAX, nth, times, FaultKind::error, err});
    }
    void short_transfer(IoOp op, const std::string& file, uint64_t nth = 1) {
        plan_->add({op, file, 0, UINT64_MAX, nth, 1, FaultKind::short_transfer, 0});
    }

    Cmd make(uint8_t op, uint64_t lba, uint32_t blocks, uint8_t byte1 = 0) {
        return make_cmd(op, lba, blocks, expected_.size(), 9, byte1);
    }
    std::vector<uint8_t> pattern(uint64_t bytes, uint32_t seed) {
        std::vector<uint8_t> d(bytes);
        std::mt19937 rng(seed);
        for (auto& b : d) b = static_cast<uint8_t>(rng());
        return d;
    }
    // A WRITE(16) of `data` at byte `offset`; the model learns the outcome.
    ScsiResult write(uint64_t offset, const std::vector<uint8_t>& data, bool fua = false) {
        Cmd w = make(scsi::op::write_16, offset / kSector, static_cast<uint32_t>(data.size() / kSector),
                     fua ? 0x08 : 0);
        w.out = data;
        ScsiResult r = run_cmd(*lun_, rec_, w);
        for (size_t i = 0; i < data.size(); ++i) {
            if (r.status == scsi::status_good) {
                expected_[offset + i] = data[i];
                either_[offset + i] = false;
            } else {  // may have landed, wholly, partly or not at all
                alt_[offset + i] = data[i];
                either_[offset + i] = true;
            }
        }
        return r;
    }
    ScsiResult read(uint64_t offset, uint64_t len, std::vector<uint8_t>* out = nullptr) {
        Cmd r = make(scsi::op::read_16, offset / kSector, static_cast<uint32_t>(len / kSector));
        r.in.resize(len);
        ScsiResult res = run_cmd(*lun_, rec_, r);
        if (out) *out = r.in;
        return res;
    }
    // A read that must succeed; its data.
    std::vector<uint8_t> read_good(uint64_t offset, uint64_t len) {
        std::vector<uint8_t> got;
        ScsiResult r = read(offset, len, &got);
        EXPECT_EQ(r.status, scsi::status_good) << "read at " << offset << ": " << describe(r);
        return got;
    }
    // Writes `len` bytes at `offset` and fails the next read of `file` with
    // EIO: the initiator gets MEDIUM ERROR / UNRECOVERED READ ERROR, and the
    // read after it returns the data written.
    void expect_read_eio_is_a_medium_error(uint64_t offset, uint64_t len, const std::string& file, uint32_t seed) {
        const auto a = pattern(len, seed);
        ASSERT_EQ(write(offset, a).status, scsi::status_good);
        fault(IoOp::read, file);
        EXPECT_TRUE(medium_error_read(read(offset, len)));
        EXPECT_EQ(plan_->hits(), 1u);
        EXPECT_EQ(read_good(offset, len), a);
    }
    // Fails the next write to `file` with ENOSPC: the initiator gets DATA
    // PROTECT / SPACE ALLOCATION FAILED, and the write after it succeeds.
    void expect_full_device_is_space_allocation_failed(const std::string& file, uint64_t offset, uint32_t seed) {
        fault(IoOp::write, file, 1, ENOSPC);
        EXPECT_TRUE(space_allocation_failed(write(offset, pattern(32 << 10, seed))));
        EXPECT_EQ(plan_->hits(), 1u);
        ASSERT_EQ(write(offset + (64 << 10), pattern(32 << 10, seed + 1)).status, scsi::status_good);
    }
    ScsiResult sync() {
        Cmd c = make(scsi::op::synchronize_cache_16, 0, 0);
        return run_cmd(*lun_, rec_, c);
    }
    // Acknowledged writes whose data the LUN may drop by design (a failed
    // cache commit): from now on they read back as before or as written.
    void may_be_lost(uint64_t offset, const std::vector<uint8_t>& before) {
        for (size_t i = 0; i < before.size(); ++i) {
            alt_[offset + i] = before[i];
            either_[offset + i] = true;
        }
    }
    // Runs the LUN's background work (the cache's flusher) for a while.
    void settle(int passes = 200) {
        for (int i = 0; i < passes; ++i) {
            lun_->submit_batch();
            lun_->process_completions();
            usleep(200);
        }
    }
    // Runs the LUN's loop until `done()` (then a little more, so what the
    // event set in motion completes) or 10 s: the flusher's rounds take as
    // long as a loaded machine makes them (regression: a fixed 40 ms was
    // not always enough under ctest -j2).
    template <typename Pred>
    void settle_until(Pred done) {
        for (int i = 0; i < 50000 && !done(); ++i) settle(1);
        settle();
    }
    // Compares `got` with the model; at most a few differences are reported.
    void expect_model(const std::vector<uint8_t>& got, const char* when) {
        ASSERT_EQ(got.size(), expected_.size());
        int reported = 0;
        for (size_t i = 0; i < got.size() && reported < 5; ++i) {
            if (got[i] == expected_[i] || (either_[i] && got[i] == alt_[i])) continue;
            ADD_FAILURE() << when << ": byte " << i << " (block " << i / kBlock << ") reads " << int(got[i])
                          << ", acknowledged " << int(expected_[i]) << (either_[i] ? " (or " : "")
                          << (either_[i] ? std::to_string(alt_[i]) + ")" : "");
            ++reported;
        }
    }
    // Closes the LUN (writing its cache back), opens it again with the same
    // options and no faults, and reads every byte: each acknowledged write is
    // there.
    void expect_acknowledged_data_after_reopen() {
        lun_->close();
        lun_.reset();
        open_lun(bsopts_, false);
        if (HasFatalFailure()) return;
        std::vector<uint8_t> all;
        const uint64_t chunk = 1 << 20;
        for (uint64_t o = 0; o < expected_.size(); o += chunk) {
            std::vector<uint8_t> part;
            ScsiResult r = read(o, std::min(chunk, expected_.size() - o), &part);
            ASSERT_EQ(r.status, scsi::status_good) << "reading back at " << o << ": " << describe(r);
            all.insert(all.end(), part.begin(), part.end());
        }
        expect_model(all, "after re-opening");
    }
    std::vector<uint8_t> file_bytes(const std::filesystem::path& p) {
        std::ifstream f(p, std::ios::binary);
        return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
    }

    std::filesystem::path dir_, backing_, overlay_, cache_;
    std::shared_ptr<FaultPlan> plan_ = std::make_shared<FaultPlan>();
    Recorder rec_;
    std::unique_ptr<Lun> lun_;
    std::string bsopts_;
    std::vector<uint8_t> expected_, alt_;
    std::vector<bool> either_;
};

}  // namespace icbd::test
