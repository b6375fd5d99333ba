#!/usr/bin/env python3
"""dup_blocks.py: how many of the 4 KiB blocks that differ between two versions
of a raw disk are copies of another changed block (what sending each content
once would save), for the "duplicate blocks within an update" study in
bench/RESULTS.md. Reads both files whole; not part of any test.

usage: bench/dup_blocks.py PARENT CHILD OUTPREFIX
  e.g. on what `bench/replication_bench.sh --keep` leaves:
  bench/dup_blocks.py MASTER/images/vm/1/disk.raw MASTER/images/vm/2/disk.raw /tmp/u12
Writes OUTPREFIX.changed (the changed blocks, in offset order), OUTPREFIX.dedup
(the first occurrence of each distinct non-zero changed block) and
OUTPREFIX.dups.tsv (child_block, first_block, in_parent_block or - for every
further copy), and prints a JSON summary. The wire sizes in RESULTS are
`zstd -3` of .changed and .dedup, whole and in 1 MiB pieces (`split -b 1M`).
"""
import hashlib, json, os, sys, time

BS = 4096
CHUNK = 16 << 20
ZERO = bytes(BS)
ZERO_CHUNK = bytes(CHUNK)


def h(b):
    return hashlib.blake2b(b, digest_size=16).digest()


def main():
    parent, child, out = sys.argv[1:4]
    t0 = time.monotonic()
    size_p = os.path.getsize(parent)
    size_c = os.path.getsize(child)
    assert size_p == size_c, (size_p, size_c)
    parent_set = {}          # digest -> first parent block number
    first = {}               # digest -> first changed child block number
    changed = zero = 0
    nonzero_changed = 0
    dup_extra_all = 0        # changed - distinct (zero blocks included)
    dup_extra_nz = 0         # non-zero changed - distinct non-zero
    in_parent = 0            # changed blocks whose content is somewhere in parent
    in_parent_nz = 0
    dup_and_in_parent = 0    # non-zero dup copies whose content is also in parent
    zero_seen = False
    fc = open(out + ".changed", "wb")
    fd = open(out + ".dedup", "wb")
    fdup = open(out + ".dups.tsv", "w")
    # Pass 1: hash every parent block (set of contents of the parent).
    with open(parent, "rb", buffering=0) as fp:
        blk = 0
        while True:
            buf = fp.read(CHUNK)
            if not buf:
                break
            if buf == ZERO_CHUNK[:len(buf)]:
                parent_set.setdefault(h(ZERO), blk)
                blk += len(buf) // BS
                continue
            mv = memoryview(buf)
            for i in range(0, len(buf), BS):
                parent_set.setdefault(h(mv[i:i + BS]), blk)
                blk += 1
    t1 = time.monotonic()
    # Pass 2: compare child with parent at the same offset.
    with open(parent, "rb", buffering=0) as fp, open(child, "rb", buffering=0) as fch:
        blk = 0
        while True:
            pb = fp.read(CHUNK)
            cb = fch.read(CHUNK)
            if not cb:
                break
            if pb == cb:
                blk += len(cb) // BS
                continue
            pm, cm = memoryview(pb), memoryview(cb)
            for i in range(0, len(cb), BS):
                c = cm[i:i + BS]
                if c != pm[i:i + BS]:
                    changed += 1
                    fc.write(c)
                    d = h(c)
                    pblk = parent_set.get(d)
                    if pblk is not None:
                        in_parent += 1
                    if c == ZERO:
                        zero += 1
                        if zero_seen:
                            dup_extra_all += 1
                        zero_seen = True
                    else:
                        nonzero_changed += 1
                        if pblk is not None:
                            in_parent_nz += 1
                        f = first.get(d)
                        if f is None:
                            first[d] = blk
                            fd.write(c)
                        else:
                            dup_extra_all += 1
                            dup_extra_nz += 1
                            if pblk is not None:
                                dup_and_in_parent += 1
                            fdup.write(f"{blk}\t{f}\t{pblk if pblk is not None else '-'}\n")
                blk += 1
    fc.close(); fd.close(); fdup.close()
    t2 = time.monotonic()
    mib = lambda n: round(n * BS / 1048576, 2)
    r = dict(parent=parent, child=child, blocks=size_c // BS,
             changed=changed, changed_mib=mib(changed),
             zero=zero, zero_mib=mib(zero),
             nonzero_changed=nonzero_changed,
             distinct_nonzero=len(first), distinct_nonzero_mib=mib(len(first)),
             dup_extra_incl_zero=dup_extra_all, dup_extra_incl_zero_mib=mib(dup_extra_all),
             dup_extra_nonzero=dup_extra_nz, dup_extra_nonzero_mib=mib(dup_extra_nz),
             in_parent=in_parent, in_parent_mib=mib(in_parent),
             in_parent_nonzero=in_parent_nz, in_parent_nonzero_mib=mib(in_parent_nz),
             dup_nonzero_also_in_parent=dup_and_in_parent,
             parent_distinct_contents=len(parent_set),
             t_parent_hash_s=round(t1 - t0, 1), t_compare_s=round(t2 - t1, 1))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
