// The write-back cache map's state machine: what reads see, when slots may be
// flushed, freed and reused, what a commit may cover, and that a full cache
// drains (docs/write-back-cache.md, rules R1..R6).
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "cache_map.hpp"

using namespace icbd;

namespace {

CacheSuperblock make_sb(uint64_t blocks, uint64_t device_blocks = 1 << 20) {
    CacheSuperblock sb;
    sb.geometry.nr_blocks = blocks;
    sb.uuid[0] = 1;
    sb.generation = 1;
    sb.device.device_size = device_blocks * kCacheBlockSize;
    sb.device.id = "dev";
    return sb;
}

// Plays the data path synchronously: every write completes at once.
uint32_t write(CacheMap& m, uint64_t lba) {
    auto a = m.allocate(lba);
    EXPECT_TRUE(a);
    m.mark_written(a->slot);
    return a->slot;
}
void commit(CacheMap& m) {
    CommitTicket t = m.begin_commit();
    m.commit_done(t);
}
// Writes every queued FREE entry and makes them durable.
void free_and_sync(CacheMap& m) {
    for (uint32_t s : m.take_free_entry_writes()) m.free_entry_written(s);
    m.end_cache_sync(m.begin_cache_sync());
}
FlushBatch flush_all(CacheMap& m) {
    FlushBatch b = m.select_flush(~uint64_t{0});
    m.flush_done(b);
    return b;
}

#define EXPECT_INVARIANTS(m)                          \
    do {                                              \
        Status s_ = (m).check_invariants();           \
        EXPECT_TRUE(s_.is_ok()) << s_.message();      \
    } while (0)

}  // namespace

TEST(CacheMap, ReadsSeeTheNewestCompleteWrite) {
    CacheMap m(make_sb(8));
    EXPECT_FALSE(m.lookup(5)) << "nothing cached: read below";
    auto a = m.allocate(5);
    ASSERT_TRUE(a);
    EXPECT_FALSE(m.lookup(5)) << "a write in flight is not readable yet";
    m.mark_written(a->slot);
    EXPECT_EQ(m.lookup(5), a->slot) << "acknowledged: the cache serves it";

    auto b = m.allocate(5);
    ASSERT_TRUE(b);
    EXPECT_NE(b->slot, a->slot) << "never overwrite in place";
    EXPECT_GT(b->seq, a->seq);
    EXPECT_EQ(m.lookup(5), a->slot) << "old data until the new write completes";
    m.mark_written(b->slot);
    EXPECT_EQ(m.lookup(5), b->slot);
    EXPECT_EQ(m.state(a->slot), SlotState::stale);
    EXPECT_INVARIANTS(m);
}

TEST(CacheMap, EntryImagesDescribeTheSlot) {
    CacheMap m(make_sb(8));
    auto a = m.allocate(77);
    auto img = m.entry_image(a->slot);
    DecodedEntry e = decode_entry(img, a->slot, m.superblock().entry_tag());
    EXPECT_EQ(e.kind, EntryKind::used);
    EXPECT_EQ(e.lba, 77u);
    EXPECT_EQ(e.seq, a->seq);
    EXPECT_EQ(m.entry_offset(a->slot), m.geometry().entry_offset(a->slot));
    m.write_failed(a->slot);
    EXPECT_EQ(decode_entry(m.entry_image(a->slot), a->slot, m.superblock().entry_tag()).kind, EntryKind::free);
}

TEST(CacheMap, CommitNeverCoversAWriteStillInFlight) {
    CacheMap m(make_sb(8));
    auto a = m.allocate(1);
    auto b = m.allocate(2);
    m.mark_written(b->slot);
    EXPECT_EQ(m.committable_seq(), a->seq - 1) << "seq " << b->seq << " is done but " << a->seq << " is not";
    EXPECT_FALSE(m.needs_commit());
    m.mark_written(a->slot);
    EXPECT_EQ(m.committable_seq(), b->seq);
    EXPECT_TRUE(m.needs_commit());
    CommitTicket t = m.begin_commit();
    EXPECT_EQ(t.committed_seq, b->seq);
    EXPECT_EQ(t.generation, 2u);
    EXPECT_EQ(t.superblock_offset, 0u) << "generation 2 goes to slot A";
    auto sb = decode_superblock(std::span<const uint8_t, kCacheSuperblockSize>(t.superblock.data(), 4096), 0);
    ASSERT_TRUE(sb) << sb.status().message();
    EXPECT_EQ(sb->committed_seq, b->seq);
    EXPECT_EQ(m.state(a->slot), SlotState::dirty_uncommitted) << "not committed before commit_done";
    m.commit_done(t);
    EXPECT_EQ(m.committed_seq(), b->seq);
    EXPECT_EQ(m.state(a->slot), SlotState::dirty);
    EXPECT_EQ(m.state(b->slot), SlotState::dirty);
    EXPECT_EQ(m.begin_commit().superblock_offset, 4096u) << "commits alternate slots";
    EXPECT_INVARIANTS(m);
}

TEST(CacheMap, AFailedCommitRewritesTheSameSlot) {
    CacheMap m(make_sb(8));
    write(m, 1);
    CommitTicket t = m.begin_commit();
    m.commit_failed(t);
    EXPECT_EQ(m.committed_seq(), 0u);
    CommitTicket again = m.begin_commit();
    EXPECT_EQ(again.generation, t.generation);
    EXPECT_EQ(again.superblock_offset, t.superblock_offset) << "never the slot holding the durable superblock";
}

TEST(CacheMap, OnlyCommittedBlocksAreFlushed) {
    CacheMap m(make_sb(8));
    write(m, 3);
    EXPECT_TRUE(m.select_flush(1 << 20).empty()) << "uncommitted data must not reach the device below";
    commit(m);
    FlushBatch b = m.select_flush(1 << 20);
    ASSERT_EQ(b.blocks, 1u);
    EXPECT_EQ(b.runs[0].first_lba, 3u);
}

TEST(CacheMap, StaleSlotWaitsForTheNewerCommitAndBlocksItsFlush) {
    CacheMap m(make_sb(8));
    uint32_t old = write(m, 9);
    commit(m);
    uint32_t cur = write(m, 9);
    EXPECT_EQ(m.state(old), SlotState::stale);
    EXPECT_TRUE(m.take_free_entry_writes().empty()) << "the old entry is the committed copy until the new one commits";
    commit(m);
    EXPECT_EQ(m.state(old), SlotState::stale_freeing);
    EXPECT_EQ(m.state(cur), SlotState::dirty);
    EXPECT_TRUE(m.select_flush(1 << 20).empty()) << "R3: the older entry is still on disk";
    auto frees = m.take_free_entry_writes();
    ASSERT_EQ(frees.size(), 1u);
    EXPECT_EQ(frees[0], old);
    m.free_entry_written(old);
    EXPECT_TRUE(m.select_flush(1 << 20).empty()) << "written is not durable";
    uint64_t token = m.begin_cache_sync();
    EXPECT_TRUE(m.select_flush(1 << 20).empty());
    m.end_cache_sync(token);
    EXPECT_EQ(m.state(old), SlotState::free);
    FlushBatch b = m.select_flush(1 << 20);
    ASSERT_EQ(b.blocks, 1u);
    EXPECT_EQ(b.runs[0].slots[0], cur);
    EXPECT_INVARIANTS(m);
}

TEST(CacheMap, FlushCycleFreesSlotsOnlyWhenTheFreeEntryIsDurable) {
    CacheMap m(make_sb(2));
    uint32_t a = write(m, 10);
    uint32_t b = write(m, 11);
    commit(m);
    EXPECT_FALSE(m.allocate(12)) << "full";
    FlushBatch batch = m.select_flush(1 << 20);
    EXPECT_EQ(m.state(a), SlotState::flushing);
    EXPECT_EQ(m.lookup(10), a) << "reads keep coming from the cache while flushing";
    m.flush_done(batch);
    EXPECT_EQ(m.state(a), SlotState::clean_pending_free);
    EXPECT_FALSE(m.allocate(12)) << "FREE entry not written yet";
    auto frees = m.take_free_entry_writes();
    EXPECT_EQ(frees.size(), 2u);
    for (uint32_t s : frees) m.free_entry_written(s);
    EXPECT_FALSE(m.allocate(12)) << "FREE entry not durable yet";
    uint64_t token = m.begin_cache_sync();
    m.end_cache_sync(token);
    EXPECT_FALSE(m.lookup(10)) << "written back: read below";
    EXPECT_EQ(m.counts().free, 2u);
    EXPECT_TRUE(m.allocate(12));
    (void)b;
    EXPECT_INVARIANTS(m);
}

TEST(CacheMap, ASyncStartedBeforeTheFreeEntryWasWrittenDoesNotCoverIt) {
    CacheMap m(make_sb(1));
    write(m, 1);
    commit(m);
    flush_all(m);
    auto frees = m.take_free_entry_writes();
    uint64_t early = m.begin_cache_sync();
    m.free_entry_written(frees[0]);
    m.end_cache_sync(early);
    EXPECT_EQ(m.counts().free, 0u);
    uint64_t later = m.begin_cache_sync();
    m.end_cache_sync(later);
    EXPECT_EQ(m.counts().free, 1u);
}

TEST(CacheMap, PinnedSlotIsNotReusedUntilTheReadEnds) {
    CacheMap m(make_sb(1));
    write(m, 4);
    commit(m);
    auto pin = m.acquire_read(4);
    ASSERT_TRUE(pin);
    flush_all(m);
    free_and_sync(m);
    EXPECT_EQ(m.state(*pin), SlotState::free);
    EXPECT_FALSE(m.allocate(5)) << "a read of the old data is still running";
    EXPECT_EQ(m.counts().freeing, 1u);
    m.release_read(*pin);
    EXPECT_TRUE(m.allocate(5));
    EXPECT_INVARIANTS(m);
}

TEST(CacheMap, FailedWriteRestoresTheOlderDataAndHoldsCommitsBack) {
    CacheMap m(make_sb(8));
    uint32_t old = write(m, 6);
    commit(m);
    auto n = m.allocate(6);
    m.write_failed(n->slot);
    EXPECT_EQ(m.state(old), SlotState::dirty) << "newest again";
    EXPECT_EQ(m.lookup(6), old);
    EXPECT_EQ(m.committable_seq(), n->seq - 1) << "its entry may be on disk until a FREE entry replaces it";
    auto frees = m.take_free_entry_writes();
    ASSERT_EQ(frees.size(), 1u);
    m.free_entry_written(frees[0]);
    EXPECT_EQ(m.committable_seq(), n->seq);
    EXPECT_EQ(m.select_flush(1 << 20).blocks, 1u);
    EXPECT_INVARIANTS(m);
}

TEST(CacheMap, OverlappingWritesCompletingOutOfOrder) {
    CacheMap m(make_sb(8));
    auto a = m.allocate(2);
    auto b = m.allocate(2);
    m.mark_written(b->slot);
    EXPECT_EQ(m.lookup(2), b->slot);
    m.mark_written(a->slot);
    EXPECT_EQ(m.lookup(2), b->slot) << "the later accepted write wins, as recovery decides";
    EXPECT_EQ(m.state(a->slot), SlotState::stale);
    commit(m);
    EXPECT_EQ(m.state(a->slot), SlotState::stale_freeing);
    EXPECT_INVARIANTS(m);
}

TEST(CacheMap, SupersededWhileFlushing) {
    CacheMap m(make_sb(8));
    uint32_t a = write(m, 8);
    commit(m);
    FlushBatch batch = m.select_flush(1 << 20);
    uint32_t b = write(m, 8);
    EXPECT_EQ(m.lookup(8), b);
    m.flush_done(batch);
    EXPECT_EQ(m.state(a), SlotState::clean_pending_free) << "its data is durable below: freed at once";
    commit(m);
    EXPECT_TRUE(m.select_flush(1 << 20).empty()) << "R3 until a's FREE entry is durable";
    free_and_sync(m);
    EXPECT_EQ(m.select_flush(1 << 20).blocks, 1u);
    EXPECT_INVARIANTS(m);
}

TEST(CacheMap, FlushFailureKeepsTheBlockDirty) {
    CacheMap m(make_sb(8));
    uint32_t a = write(m, 8);
    commit(m);
    FlushBatch batch = m.select_flush(1 << 20);
    m.flush_failed(batch);
    EXPECT_EQ(m.state(a), SlotState::dirty);
    EXPECT_EQ(m.select_flush(1 << 20).blocks, 1u);
    EXPECT_INVARIANTS(m);
}

TEST(CacheMap, FlushBatchesAreLbaOrderedCoalescedAndBounded) {
    CacheMap m(make_sb(64));
    for (uint64_t lba : {50, 3, 4, 5, 20, 21, 7, 100, 101, 102}) write(m, lba);
    commit(m);
    FlushBatch b = m.select_flush(6 * kCacheBlockSize);
    ASSERT_EQ(b.blocks, 6u);
    ASSERT_EQ(b.runs.size(), 3u);
    EXPECT_EQ(b.runs[0].first_lba, 3u);
    EXPECT_EQ(b.runs[0].slots.size(), 3u);
    EXPECT_EQ(b.runs[1].first_lba, 7u);
    EXPECT_EQ(b.runs[2].first_lba, 20u);
    EXPECT_EQ(b.runs[2].slots.size(), 2u);
    for (size_t i = 0; i < b.runs[0].slots.size(); ++i) EXPECT_EQ(m.slot_lba(b.runs[0].slots[i]), 3 + i);
    // The elevator continues upwards, then wraps.
    FlushBatch c = m.select_flush(2 * kCacheBlockSize);
    ASSERT_EQ(c.blocks, 2u);
    EXPECT_EQ(c.runs[0].first_lba, 50u);
    EXPECT_EQ(c.runs[1].first_lba, 100u);
    m.flush_failed(b);
    FlushBatch d = m.select_flush(100 * kCacheBlockSize);
    EXPECT_EQ(d.runs[0].first_lba, 101u);
    EXPECT_EQ(d.blocks, 2u);
    FlushBatch e = m.select_flush(100 * kCacheBlockSize);
    EXPECT_EQ(e.runs[0].first_lba, 3u) << "wrapped to the lowest LBA";
    EXPECT_EQ(e.blocks, 6u);
    EXPECT_INVARIANTS(m);
}

TEST(CacheMap, ConsecutiveAllocationsGetConsecutiveSlots) {
    CacheMap m(make_sb(16));
    auto first = m.allocate(0);
    for (uint32_t i = 1; i < 8; ++i) EXPECT_EQ(m.allocate(i)->slot, first->slot + i);
}

TEST(CacheMap, WatermarksAndCounts) {
    CacheMap m(make_sb(10));
    CacheWatermarks wm{30, 60};
    EXPECT_EQ(m.urgency(wm), FlushUrgency::none);
    for (uint64_t i = 0; i < 4; ++i) write(m, i);
    EXPECT_EQ(m.urgency(wm), FlushUrgency::background);
    for (uint64_t i = 4; i < 7; ++i) write(m, i);
    EXPECT_EQ(m.urgency(wm), FlushUrgency::urgent);
    write(m, 0);  // supersedes
    CacheCounts c = m.counts();
    EXPECT_EQ(c.total, 10u);
    EXPECT_EQ(c.free, 2u);
    EXPECT_EQ(c.dirty_uncommitted, 7u);
    EXPECT_EQ(c.stale, 1u);
    EXPECT_EQ(c.used(), 8u);
}

TEST(CacheMap, RecoveredSlotsAreDirtyAndSeqsContinue) {
    std::vector<RecoveredSlot> rec = {{2, 100, 40}, {5, 7, 41}};
    CacheSuperblock sb = make_sb(8);
    sb.committed_seq = 41;
    CacheMap m(sb, rec, 45);
    EXPECT_EQ(m.state(2), SlotState::dirty);
    EXPECT_EQ(m.lookup(100), 2u);
    EXPECT_EQ(m.counts().free, 6u);
    auto a = m.allocate(1);
    EXPECT_EQ(a->seq, 46u) << "above every seq seen on disk";
    EXPECT_NE(a->slot, 2u);
    EXPECT_NE(a->slot, 5u);
    EXPECT_EQ(m.select_flush(1 << 20).blocks, 2u);
    EXPECT_INVARIANTS(m);
}

// Random interleavings of every operation keep the structures consistent, and
// a full drain (commit, flush, free, sync until empty) always terminates.
TEST(CacheMap, RandomOperationsKeepInvariantsAndDrain) {
    std::mt19937_64 rng(12345);
    for (int round = 0; round < 200; ++round) {
        CacheMap m(make_sb(1 + rng() % 24));
        std::vector<uint32_t> writing, pins, free_issued;
        std::vector<FlushBatch> flushing;
        std::vector<uint64_t> syncs;
        std::optional<CommitTicket> commit_t;
        for (int step = 0; step < 400; ++step) {
            switch (rng() % 12) {
                case 0: case 1: case 2:
                    if (auto a = m.allocate(rng() % 12)) writing.push_back(a->slot);
                    break;
                case 3:
                    if (!writing.empty()) {
                        size_t i = rng() % writing.size();
                        if (rng() % 10 == 0) m.write_failed(writing[i]); else m.mark_written(writing[i]);
                        writing.erase(writing.begin() + static_cast<long>(i));
                    }
                    break;
                case 4:
                    if (!commit_t) commit_t = m.begin_commit();
                    else if (rng() % 8) { m.commit_done(*commit_t); commit_t.reset(); }
                    else { m.commit_failed(*commit_t); commit_t.reset(); }
                    break;
                case 5: {
                    FlushBatch b = m.select_flush((1 + rng() % 4) * kCacheBlockSize);
                    if (!b.empty()) flushing.push_back(std::move(b));
                    break;
                }
                case 6:
                    if (!flushing.empty()) {
                        size_t i = rng() % flushing.size();
                        if (rng() % 8) m.flush_done(flushing[i]); else m.flush_failed(flushing[i]);
                        flushing.erase(flushing.begin() + static_cast<long>(i));
                    }
                    break;
                case 7:
                    for (uint32_t s : m.take_free_entry_writes()) free_issued.push_back(s);
                    break;
                case 8:
                    if (!free_issued.empty()) {
                        size_t i = rng() % free_issued.size();
                        m.free_entry_written(free_issued[i]);
                        free_issued.erase(free_issued.begin() + static_cast<long>(i));
                    }
                    break;
                case 9:
                    if (syncs.empty() || rng() % 2) syncs.push_back(m.begin_cache_sync());
                    else { m.end_cache_sync(syncs.front()); syncs.erase(syncs.begin()); }
                    break;
                case 10:
                    if (auto p = m.acquire_read(rng() % 12)) pins.push_back(*p);
                    break;
                case 11:
                    if (!pins.empty()) {
                        size_t i = rng() % pins.size();
                        m.release_read(pins[i]);
                        pins.erase(pins.begin() + static_cast<long>(i));
                    }
                    break;
            }
            Status s = m.check_invariants();
            ASSERT_TRUE(s.is_ok()) << "round " << round << " step " << step << ": " << s.message();
        }
        // Drain: finish everything in flight, then clean shutdown.
        for (uint32_t s : writing) m.mark_written(s);
        for (auto& b : flushing) m.flush_done(b);
        for (uint32_t s : free_issued) m.free_entry_written(s);
        for (uint32_t p : pins) m.release_read(p);
        if (commit_t) m.commit_done(*commit_t);
        for (uint64_t t : syncs) m.end_cache_sync(t);
        int passes = 0;
        while (m.counts().used() > 0) {
            ASSERT_LT(++passes, 100) << "drain does not terminate: used " << m.counts().used();
            commit(m);
            flush_all(m);
            free_and_sync(m);
        }
        ASSERT_TRUE(m.check_invariants().is_ok());
    }
}

// UNMAP planning asks which blocks of a range are cached: the same answer as
// lookup() per block, by walking the range when it is small and the cache
// when the range is larger than the cache (a whole-disk UNMAP).
TEST(CacheMap, CachedLbasFindsWhatLookupFindsWhateverTheRange) {
    CacheMap m(make_sb(64));
    std::mt19937_64 rng(5);
    for (int i = 0; i < 40; ++i) write(m, rng() % 300);
    write(m, (1 << 20) - 1);               // the last LBA of the device
    ASSERT_TRUE(m.allocate(1000));          // in flight only: not readable, not listed
    for (auto [first, last] : std::vector<std::pair<uint64_t, uint64_t>>{
             {0, 10}, {17, 80}, {0, 300}, {0, 1 << 20}, {150, 1 << 20}, {999, 1001}, {5, 5}}) {
        std::vector<uint64_t> want;
        for (uint64_t lba = first; lba < last; ++lba)
            if (m.lookup(lba)) want.push_back(lba);
        EXPECT_EQ(m.cached_lbas(first, last), want) << "[" << first << ", " << last << ")";
    }
}
