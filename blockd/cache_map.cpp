// The write-back cache's slot state machine. The rules R1..R6 it enforces and
// why they make crash recovery exact are in docs/write-back-cache.md.
#include "cache_map.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>

namespace icbd {

const char* to_string(SlotState s) {
    switch (s) {
        case SlotState::free: return "FREE";
        case SlotState::writing: return "WRITING";
        case SlotState::dirty_uncommitted: return "DIRTY_UNCOMMITTED";
        case SlotState::dirty: return "DIRTY";
        case SlotState::flushing: return "FLUSHING";
        case SlotState::clean_pending_free: return "CLEAN_PENDING_FREE";
        case SlotState::stale: return "STALE";
        case SlotState::stale_freeing: return "STALE_FREEING";
        case SlotState::aborted: return "ABORTED";
    }
    return "?";
}

CacheMap::CacheMap(const CacheSuperblock& sb, std::span<const RecoveredSlot> dirty, uint64_t last_seq)
    : sb_(sb),
      slots_(sb.geometry.nr_blocks),
      free_bits_((sb.geometry.nr_blocks + 63) / 64, 0) {
    uint64_t max_seq = std::max(last_seq, sb.committed_seq);
    for (const RecoveredSlot& r : dirty) {
        Slot& s = slots_[r.slot];
        s.lba = r.lba;
        s.seq = r.seq;
        s.state = SlotState::dirty;
        newest_[r.lba] = r.slot;
        flushable_.insert(r.lba);
        max_seq = std::max(max_seq, r.seq);
    }
    next_seq_ = max_seq + 1;
    state_count_[static_cast<int>(SlotState::dirty)] = dirty.size();
    state_count_[static_cast<int>(SlotState::free)] = slots_.size() - dirty.size();
    for (uint32_t i = 0; i < slots_.size(); ++i)
        if (slots_[i].state == SlotState::free) make_reusable(i);
}

void CacheMap::set_state(uint32_t slot, SlotState s) {
    --state_count_[static_cast<int>(slots_[slot].state)];
    ++state_count_[static_cast<int>(s)];
    slots_[slot].state = s;
}

void CacheMap::make_reusable(uint32_t slot) {
    slots_[slot].reusable = true;
    free_bits_[slot / 64] |= uint64_t{1} << (slot % 64);
    ++free_count_;
}

std::optional<uint32_t> CacheMap::find_free_slot() {
    if (free_count_ == 0) return std::nullopt;
    // Next fit: consecutive allocations get consecutive slots while the cache
    // drains in order, so multi-block writes become one data write.
    const uint64_t n = slots_.size();
    const uint64_t words = free_bits_.size();
    uint64_t start = alloc_cursor_ < n ? alloc_cursor_ : 0;
    for (uint64_t k = 0; k <= words; ++k) {
        uint64_t w = (start / 64 + k) % words;
        uint64_t bits = free_bits_[w];
        if (k == 0) bits &= ~uint64_t{0} << (start % 64);
        if (bits == 0) continue;
        auto slot = static_cast<uint32_t>(w * 64 + static_cast<uint64_t>(std::countr_zero(bits)));
        free_bits_[w] &= ~(uint64_t{1} << (slot % 64));
        slots_[slot].reusable = false;
        --free_count_;
        alloc_cursor_ = slot + 1;
        return slot;
    }
    return std::nullopt;  // not reached: free_count_ > 0
}

std::optional<CacheAllocation> CacheMap::allocate(uint64_t lba) {
    auto found = find_free_slot();
    if (!found) return std::nullopt;
    uint32_t slot = *found;
    Slot& s = slots_[slot];
    s.lba = lba;
    s.seq = next_seq_++;
    s.newer = kNoSlot;
    s.older = kNoSlot;
    s.pins = 0;
    set_state(slot, SlotState::writing);
    inflight_seqs_.insert(s.seq);
    auto [it, inserted] = newest_.try_emplace(lba, slot);
    if (!inserted) {
        uint32_t prev = it->second;
        s.older = prev;
        slots_[prev].newer = slot;
        it->second = slot;
        SlotState ps = slots_[prev].state;
        if (ps == SlotState::dirty || ps == SlotState::dirty_uncommitted) {
            set_state(prev, SlotState::stale);
            stale_waiting_.push_back(prev);
        }
        // writing: becomes stale at mark_written; flushing: freed after flush_done.
    }
    refresh_flushable(lba);
    return CacheAllocation{slot, s.seq};
}

void CacheMap::mark_written(uint32_t slot) {
    Slot& s = slots_[slot];
    inflight_seqs_.erase(s.seq);
    if (s.newer != kNoSlot) {
        set_state(slot, SlotState::stale);
        stale_waiting_.push_back(slot);
        try_free_stale(slot);
    } else {
        set_state(slot, s.seq <= sb_.committed_seq ? SlotState::dirty : SlotState::dirty_uncommitted);
        uncommitted_.push_back(slot);
    }
    refresh_flushable(s.lba);
}

void CacheMap::write_failed(uint32_t slot) {
    // Its entry may be on disk with a seq a later commit would cover: the seq stays
    // in flight (R1) until the FREE entry over it is written.
    set_state(slot, SlotState::aborted);
    unlink(slot);
    queue_free_entry(slot);
}

std::array<uint8_t, kCacheEntrySize> CacheMap::entry_image(uint32_t slot) const {
    const Slot& s = slots_[slot];
    bool used = s.state == SlotState::writing || s.state == SlotState::dirty_uncommitted ||
                s.state == SlotState::dirty || s.state == SlotState::flushing || s.state == SlotState::stale;
    std::array<uint8_t, kCacheEntrySize> out{};
    encode_entry(used ? s.lba : kCacheFreeLba, used ? s.seq : 0, slot, sb_.entry_tag(), out);
    return out;
}

std::optional<uint32_t> CacheMap::lookup(uint64_t lba) const {
    auto it = newest_.find(lba);
    if (it == newest_.end()) return std::nullopt;
    // A slot still being written is not readable; an older complete slot of the
    // chain (kept until the new one is committed) or the device below still is.
    for (uint32_t slot = it->second; slot != kNoSlot; slot = slots_[slot].older)
        if (slots_[slot].state != SlotState::writing) return slot;
    return std::nullopt;
}

std::vector<uint64_t> CacheMap::cached_lbas(uint64_t first, uint64_t last) const {
    std::vector<uint64_t> out;
    if (last <= first) return out;
    if (last - first <= newest_.size()) {
        for (uint64_t lba = first; lba < last; ++lba)
            if (lookup(lba)) out.push_back(lba);
        return out;
    }
    for (const auto& [lba, slot] : newest_)
        if (lba >= first && lba < last && lookup(lba)) out.push_back(lba);
    std::sort(out.begin(), out.end());
    return out;
}

std::optional<uint32_t> CacheMap::acquire_read(uint64_t lba) {
    auto slot = lookup(lba);
    if (slot) ++slots_[*slot].pins;
    return slot;
}

void CacheMap::release_read(uint32_t slot) {
    Slot& s = slots_[slot];
    if (--s.pins == 0 && s.state == SlotState::free && !s.reusable) {
        --pinned_free_;
        make_reusable(slot);
    }
}

uint64_t CacheMap::committable_seq() const {
    uint64_t c = inflight_seqs_.empty() ? last_seq() : *inflight_seqs_.begin() - 1;
    return std::max(c, sb_.committed_seq);
}

bool CacheMap::needs_commit() const { return committable_seq() > sb_.committed_seq; }

CommitTicket CacheMap::begin_commit() {
    commit_in_progress_ = true;
    CommitTicket t;
    t.committed_seq = committable_seq();
    t.generation = sb_.generation + 1;
    t.superblock_offset = cache_superblock_offset(t.generation);
    CacheSuperblock next = sb_;
    next.generation = t.generation;
    next.committed_seq = t.committed_seq;
    t.superblock.resize(kCacheSuperblockSize);
    encode_superblock(next, std::span<uint8_t, kCacheSuperblockSize>(t.superblock.data(), kCacheSuperblockSize));
    t.sync_token = begin_cache_sync();
    return t;
}

void CacheMap::commit_done(const CommitTicket& ticket) {
    commit_in_progress_ = false;
    sb_.generation = ticket.generation;
    sb_.committed_seq = std::max(sb_.committed_seq, ticket.committed_seq);
    std::erase_if(uncommitted_, [&](uint32_t slot) {
        Slot& s = slots_[slot];
        if (s.state != SlotState::dirty_uncommitted) return true;
        if (s.seq > sb_.committed_seq) return false;
        set_state(slot, SlotState::dirty);
        refresh_flushable(s.lba);
        return true;
    });
    std::erase_if(stale_waiting_, [&](uint32_t slot) {
        if (slots_[slot].state == SlotState::stale) try_free_stale(slot);
        return slots_[slot].state != SlotState::stale;
    });
    end_cache_sync(ticket.sync_token);
}

void CacheMap::commit_failed(const CommitTicket&) {
    // The superblock in force stays; the next attempt writes the same slot again.
    commit_in_progress_ = false;
}

void CacheMap::try_free_stale(uint32_t slot) {
    const Slot& s = slots_[slot];
    // Chains are ordered by seq: if any newer slot is committed, the next one is (R4).
    if (s.newer == kNoSlot || slots_[s.newer].seq > sb_.committed_seq) return;
    set_state(slot, SlotState::stale_freeing);
    queue_free_entry(slot);
}

FlushBatch CacheMap::select_flush(uint64_t max_bytes) {
    FlushBatch batch;
    if (flushable_.empty()) return batch;
    auto it = flushable_.lower_bound(flush_cursor_);
    if (it == flushable_.end()) it = flushable_.begin();  // elevator: back to the lowest LBA
    while (it != flushable_.end() && (batch.blocks == 0 || (batch.blocks + 1) * kCacheBlockSize <= max_bytes)) {
        uint64_t lba = *it;
        uint32_t slot = newest_.at(lba);
        set_state(slot, SlotState::flushing);
        if (batch.runs.empty() || batch.runs.back().first_lba + batch.runs.back().slots.size() != lba)
            batch.runs.push_back(FlushRun{lba, {}});
        batch.runs.back().slots.push_back(slot);
        ++batch.blocks;
        flush_cursor_ = lba + 1;
        it = flushable_.erase(it);
    }
    return batch;
}

void CacheMap::flush_done(const FlushBatch& batch) {
    for (const FlushRun& run : batch.runs)
        for (uint32_t slot : run.slots) {
            set_state(slot, SlotState::clean_pending_free);
            queue_free_entry(slot);
        }
}

void CacheMap::flush_failed(const FlushBatch& batch) {
    for (const FlushRun& run : batch.runs)
        for (uint32_t slot : run.slots) {
            if (slots_[slot].newer != kNoSlot) {
                set_state(slot, SlotState::stale);
                stale_waiting_.push_back(slot);
                try_free_stale(slot);
            } else {
                set_state(slot, SlotState::dirty);
            }
            refresh_flushable(slots_[slot].lba);
        }
}

void CacheMap::queue_free_entry(uint32_t slot) {
    slots_[slot].free_phase = FreePhase::queued;
    free_queue_.push_back(slot);
}

std::vector<uint32_t> CacheMap::take_free_entry_writes() {
    std::vector<uint32_t> out;
    out.swap(free_queue_);
    for (uint32_t slot : out) slots_[slot].free_phase = FreePhase::issued;
    issued_free_entries_ += out.size();
    return out;
}

void CacheMap::free_entry_written(uint32_t slot) {
    Slot& s = slots_[slot];
    s.free_phase = FreePhase::written;
    --issued_free_entries_;
    free_written_.push_back(slot);
    if (s.state == SlotState::aborted) inflight_seqs_.erase(s.seq);
}

bool CacheMap::free_entries_pending() const {
    return !free_queue_.empty() || issued_free_entries_ > 0 || !free_written_.empty() || !free_syncing_.empty();
}

uint64_t CacheMap::begin_cache_sync() {
    uint64_t token = ++sync_counter_;
    for (uint32_t slot : free_written_) {
        slots_[slot].free_phase = FreePhase::syncing;
        free_syncing_.emplace_back(token, slot);
    }
    free_written_.clear();
    return token;
}

void CacheMap::end_cache_sync(uint64_t token) {
    // An fdatasync covers every write completed before it started, so it also
    // covers those tagged for earlier, still running syncs.
    while (!free_syncing_.empty() && free_syncing_.front().first <= token) {
        uint32_t slot = free_syncing_.front().second;
        free_syncing_.pop_front();
        finish_free(slot);
    }
}

void CacheMap::finish_free(uint32_t slot) {
    Slot& s = slots_[slot];
    s.free_phase = FreePhase::none;
    if (s.state != SlotState::aborted) unlink(slot);  // aborted ones left their chain at once
    set_state(slot, SlotState::free);
    s.lba = kCacheFreeLba;
    s.seq = 0;
    if (s.pins == 0) {
        make_reusable(slot);
    } else {
        ++pinned_free_;
    }
}

void CacheMap::unlink(uint32_t slot) {
    Slot& s = slots_[slot];
    uint32_t older = s.older, newer = s.newer;
    if (older != kNoSlot) slots_[older].newer = newer;
    if (newer != kNoSlot) {
        slots_[newer].older = older;
    } else if (older != kNoSlot) {
        newest_[s.lba] = older;
        settle_newest(older);
    } else {
        newest_.erase(s.lba);
    }
    s.older = s.newer = kNoSlot;
    refresh_flushable(s.lba);
}

void CacheMap::settle_newest(uint32_t slot) {
    // The slot that superseded this one failed: it holds the newest data again.
    if (slots_[slot].state != SlotState::stale) return;
    if (slots_[slot].seq <= sb_.committed_seq) {
        set_state(slot, SlotState::dirty);
    } else {
        set_state(slot, SlotState::dirty_uncommitted);
        uncommitted_.push_back(slot);
    }
}

void CacheMap::refresh_flushable(uint64_t lba) {
    auto it = newest_.find(lba);
    bool ok = it != newest_.end() && slots_[it->second].older == kNoSlot &&
              slots_[it->second].state == SlotState::dirty;
    if (ok) {
        flushable_.insert(lba);
    } else {
        flushable_.erase(lba);
    }
}

CacheCounts CacheMap::counts() const {
    auto n = [&](SlotState s) { return state_count_[static_cast<int>(s)]; };
    CacheCounts c;
    c.total = slots_.size();
    c.free = free_count_;
    c.writing = n(SlotState::writing);
    c.dirty_uncommitted = n(SlotState::dirty_uncommitted);
    c.dirty = n(SlotState::dirty);
    c.flushing = n(SlotState::flushing);
    c.stale = n(SlotState::stale);
    c.freeing = n(SlotState::clean_pending_free) + n(SlotState::stale_freeing) + n(SlotState::aborted) + pinned_free_;
    return c;
}

FlushUrgency CacheMap::urgency(const CacheWatermarks& wm) const {
    CacheCounts c = counts();
    uint64_t pct100 = c.used() * 100;
    if (pct100 > c.total * wm.high_percent) return FlushUrgency::urgent;
    if (pct100 > c.total * wm.low_percent) return FlushUrgency::background;
    return FlushUrgency::none;
}

Status CacheMap::check_invariants() const {
    auto fail = [](uint32_t slot, const std::string& what) {
        return Status::error(EFAULT, "cache map slot " + std::to_string(slot) + ": " + what);
    };
    uint64_t counted[9] = {}, reusable = 0, pinned_free = 0;
    std::set<uint64_t> inflight;
    for (uint32_t i = 0; i < slots_.size(); ++i) {
        const Slot& s = slots_[i];
        ++counted[static_cast<int>(s.state)];
        bool bit = (free_bits_[i / 64] >> (i % 64)) & 1;
        if (bit != s.reusable) return fail(i, "free bitmap disagrees");
        if (s.reusable) {
            ++reusable;
            if (s.state != SlotState::free || s.pins) return fail(i, "reusable but not free or pinned");
        }
        if (s.state == SlotState::free) {
            if (!s.reusable) ++pinned_free;
            if (!s.reusable && s.pins == 0) return fail(i, "free, unpinned, not reusable");
            if (s.older != kNoSlot || s.newer != kNoSlot) return fail(i, "free but chained");
            continue;
        }
        if (s.state == SlotState::writing) inflight.insert(s.seq);
        if (s.state == SlotState::aborted) {
            if (s.free_phase == FreePhase::queued || s.free_phase == FreePhase::issued) inflight.insert(s.seq);
            if (s.older != kNoSlot || s.newer != kNoSlot) return fail(i, "aborted but chained");
            continue;
        }
        if (s.older != kNoSlot) {
            const Slot& o = slots_[s.older];
            if (o.newer != i || o.lba != s.lba || o.seq >= s.seq) return fail(i, "broken chain (older)");
        }
        if (s.newer == kNoSlot) {
            auto it = newest_.find(s.lba);
            if (it == newest_.end() || it->second != i) return fail(i, "newest of its chain but not indexed");
            if (s.state == SlotState::stale || s.state == SlotState::stale_freeing)
                return fail(i, std::string("newest of its chain in state ") + to_string(s.state));
            bool flushable = s.older == kNoSlot && s.state == SlotState::dirty;
            if (flushable != (flushable_.count(s.lba) == 1)) return fail(i, "flushable set disagrees");
        } else if (s.state == SlotState::dirty || s.state == SlotState::dirty_uncommitted) {
            return fail(i, "superseded but still dirty");
        }
        if ((s.state == SlotState::dirty) != (s.seq <= sb_.committed_seq) &&
            (s.state == SlotState::dirty || s.state == SlotState::dirty_uncommitted))
            return fail(i, "commit state disagrees with committed_seq");
    }
    for (int k = 0; k < 9; ++k)
        if (counted[k] != state_count_[k])
            return Status::error(EFAULT, std::string("cache map: count of ") + to_string(static_cast<SlotState>(k)) +
                                             " is " + std::to_string(state_count_[k]) + ", counted " +
                                             std::to_string(counted[k]));
    if (reusable != free_count_ || pinned_free != pinned_free_)
        return Status::error(EFAULT, "cache map: free counts disagree");
    if (inflight != inflight_seqs_) return Status::error(EFAULT, "cache map: in-flight seqs disagree");
    for (auto& [lba, slot] : newest_)
        if (slots_[slot].lba != lba || slots_[slot].newer != kNoSlot)
            return Status::error(EFAULT, "cache map: index of LBA " + std::to_string(lba) + " is wrong");
    for (uint64_t lba : flushable_)
        if (!newest_.count(lba)) return Status::error(EFAULT, "cache map: flushable LBA not cached");
    return Status::ok();
}

}  // namespace icbd
