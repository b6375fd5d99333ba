// In-memory state of the write-back cache: which slot holds which LBA, the slot
// state machine, commit/flush/free bookkeeping (docs/write-back-cache.md). No I/O:
// the data path performs the writes this class asks for and reports completions.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache_format.hpp"

namespace icbd {

enum class SlotState : uint8_t {
    free,                // reusable once its FREE entry is durable and no read pins it
    writing,             // data + entry in flight
    dirty_uncommitted,   // written, newest of its LBA, not yet committed
    dirty,               // committed, newest of its LBA: may be flushed
    flushing,            // being written to the device below
    clean_pending_free,  // below is durable; FREE entry being written / made durable
    stale,               // superseded; keeps its entry until a newer slot is committed
    stale_freeing,       // superseded by a committed slot; FREE entry being written / made durable
    aborted,             // its write failed; FREE entry being written / made durable
};
const char* to_string(SlotState s);

inline constexpr uint32_t kNoSlot = ~uint32_t{0};

struct CacheAllocation {
    uint32_t slot = kNoSlot;
    uint64_t seq = 0;
};

// LBA-contiguous blocks to write below with one request: slots[i] holds first_lba + i.
struct FlushRun {
    uint64_t first_lba = 0;
    std::vector<uint32_t> slots;
};
struct FlushBatch {
    std::vector<FlushRun> runs;  // ascending LBA
    uint64_t blocks = 0;
    bool empty() const { return runs.empty(); }
};

// Everything the data path needs for one commit (see begin_commit).
struct CommitTicket {
    uint64_t committed_seq = 0;
    uint64_t generation = 0;
    uint64_t sync_token = 0;
    uint64_t superblock_offset = 0;
    std::vector<uint8_t> superblock;  // kCacheSuperblockSize bytes to write there
};

struct CacheCounts {
    uint64_t total = 0;
    uint64_t free = 0;               // reusable now
    uint64_t writing = 0;
    uint64_t dirty_uncommitted = 0;
    uint64_t dirty = 0;
    uint64_t flushing = 0;
    uint64_t stale = 0;
    uint64_t freeing = 0;            // clean_pending_free + stale_freeing + aborted + free-but-pinned
    uint64_t used() const { return total - free; }
};

struct CacheWatermarks {
    unsigned low_percent = 50;
    unsigned high_percent = 80;
};
enum class FlushUrgency { none, background, urgent };

// A slot rebuilt by recovery: committed, dirty, the only slot of its LBA.
struct RecoveredSlot {
    uint32_t slot = 0;
    uint64_t lba = 0;
    uint64_t seq = 0;
};

class CacheMap {
public:
    // `sb` is the durable superblock in force; `dirty` the slots recovery kept;
    // new seqs start above max(last_seq, sb.committed_seq).
    explicit CacheMap(const CacheSuperblock& sb, std::span<const RecoveredSlot> dirty = {}, uint64_t last_seq = 0);

    const CacheSuperblock& superblock() const { return sb_; }
    const CacheGeometry& geometry() const { return sb_.geometry; }
    uint64_t device_blocks() const { return sb_.device.device_size / kCacheBlockSize; }

    // --- writes: allocate, write data (block_offset) and entry (entry_offset,
    // entry_image, 32-byte pwrite), then mark_written or write_failed.
    // nullopt: no reusable slot (park the write until a sync frees slots).
    std::optional<CacheAllocation> allocate(uint64_t lba);
    void mark_written(uint32_t slot);
    void write_failed(uint32_t slot);

    // The 32 bytes slot's entry must hold now (a used entry or FREE).
    std::array<uint8_t, kCacheEntrySize> entry_image(uint32_t slot) const;
    uint64_t entry_offset(uint32_t slot) const { return sb_.geometry.entry_offset(slot); }
    uint64_t block_offset(uint32_t slot) const { return sb_.geometry.block_offset(slot); }

    // --- reads: the newest slot of `lba` whose data is complete, pinned so it is
    // not reused while the read runs; nullopt = read the device below.
    std::optional<uint32_t> acquire_read(uint64_t lba);
    void release_read(uint32_t slot);
    std::optional<uint32_t> lookup(uint64_t lba) const;  // same choice, unpinned
    // The LBAs in [first, last) that lookup() finds, ascending. Costs
    // O(min(last - first, blocks in the cache)): an UNMAP of a whole disk
    // never walks it block by block.
    std::vector<uint64_t> cached_lbas(uint64_t first, uint64_t last) const;

    // --- commit (one at a time): wait until committable_seq() >= the barrier,
    // begin_commit, fdatasync, write ticket.superblock, fdatasync, commit_done.
    uint64_t last_seq() const { return next_seq_ - 1; }
    uint64_t committable_seq() const;
    uint64_t committed_seq() const { return sb_.committed_seq; }
    bool commit_in_progress() const { return commit_in_progress_; }
    // True when a commit would commit something or release FREE entries.
    bool needs_commit() const;
    CommitTicket begin_commit();
    void commit_done(const CommitTicket& ticket);
    void commit_failed(const CommitTicket& ticket);

    // --- flush: select_flush, read the slots, write below, fdatasync below,
    // flush_done (or flush_failed on an error).
    FlushBatch select_flush(uint64_t max_bytes);
    void flush_done(const FlushBatch& batch);
    void flush_failed(const FlushBatch& batch);

    // --- FREE entries: write entry_image(slot) of every slot taken here, report
    // each with free_entry_written; a cache fdatasync between begin_cache_sync and
    // end_cache_sync makes the written ones durable and the slots reusable.
    std::vector<uint32_t> take_free_entry_writes();
    void free_entry_written(uint32_t slot);
    bool free_entries_pending() const;  // queued, in flight, or waiting for a sync
    uint64_t begin_cache_sync();
    void end_cache_sync(uint64_t token);

    // --- introspection
    SlotState state(uint32_t slot) const { return slots_[slot].state; }
    uint64_t slot_lba(uint32_t slot) const { return slots_[slot].lba; }
    uint64_t slot_seq(uint32_t slot) const { return slots_[slot].seq; }
    CacheCounts counts() const;
    FlushUrgency urgency(const CacheWatermarks& wm) const;
    // Full consistency check of the internal structures (tests; O(N)).
    Status check_invariants() const;

private:
    enum class FreePhase : uint8_t { none, queued, issued, written, syncing };
    struct Slot {
        uint64_t lba = kCacheFreeLba;
        uint64_t seq = 0;
        uint32_t older = kNoSlot;  // chain of the same LBA, ordered by seq
        uint32_t newer = kNoSlot;
        uint32_t pins = 0;
        SlotState state = SlotState::free;
        FreePhase free_phase = FreePhase::none;
        bool reusable = false;  // in the free bitmap
    };

    void set_state(uint32_t slot, SlotState s);
    void queue_free_entry(uint32_t slot);
    void unlink(uint32_t slot);
    void refresh_flushable(uint64_t lba);
    void make_reusable(uint32_t slot);
    void finish_free(uint32_t slot);
    void settle_newest(uint32_t slot);  // slot became the newest again / finished a phase
    void try_free_stale(uint32_t slot);
    std::optional<uint32_t> find_free_slot();

    CacheSuperblock sb_;
    std::vector<Slot> slots_;
    std::vector<uint64_t> free_bits_;
    uint64_t free_count_ = 0;
    uint64_t alloc_cursor_ = 0;
    uint64_t next_seq_ = 1;
    std::unordered_map<uint64_t, uint32_t> newest_;  // LBA -> newest slot of its chain
    std::set<uint64_t> flushable_;                   // LBAs whose chain is one DIRTY slot
    uint64_t flush_cursor_ = 0;
    std::set<uint64_t> inflight_seqs_;               // bound of committable_seq
    std::vector<uint32_t> uncommitted_;              // dirty_uncommitted / stale slots awaiting a commit
    std::vector<uint32_t> stale_waiting_;
    std::vector<uint32_t> free_queue_;
    std::vector<uint32_t> free_written_;
    std::deque<std::pair<uint64_t, uint32_t>> free_syncing_;  // (sync token, slot)
    uint64_t issued_free_entries_ = 0;
    uint64_t sync_counter_ = 0;
    bool commit_in_progress_ = false;
    uint64_t state_count_[9] = {};
    uint64_t pinned_free_ = 0;
};

}  // namespace icbd
