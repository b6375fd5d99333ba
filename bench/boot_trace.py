#!/usr/bin/env python3
"""boot_trace.py: a guest's boot trace, from QEMU's virtio-blk trace events to
the replay format of icbd-boot-replay, and its summary (boot_storm_trace.sh).

  boot_trace.py convert QEMU_LOG TRACE   QEMU's log (-trace virtio_blk_handle_read,
                                         virtio_blk_handle_write, virtio_blk_rw_complete;
                                         -msg timestamp=on; -D QEMU_LOG) to TRACE
  boot_trace.py summary TRACE            one JSON object: requests, bytes, duration,
                                         concurrency, sizes

TRACE is text, one guest request a line, in issue order, '#' lines are comments:
    ISSUE_US  COMPLETE_US  OFFSET_BYTES  LENGTH_BYTES  R|W
times in microseconds from the first request. virtio-blk sectors are 512 bytes
whatever the LUN's block size. A request still in flight when QEMU stopped is
left out (and counted in the header).
"""
import json
import re
import sys

EVENT = re.compile(r"^\d+@(\d+)\.(\d+):(virtio_blk_handle_read|virtio_blk_handle_write|virtio_blk_rw_complete) (.*)$")
ARGS = re.compile(r"(\w+) (\S+)")


def convert(log_path, out_path):
    open_reqs = {}  # req pointer -> (issue_us, offset, length, op)
    done = []
    for line in open(log_path, errors="replace"):
        m = EVENT.match(line.strip())
        if not m:
            continue
        t = int(m.group(1)) * 1000000 + int(m.group(2))
        ev, args = m.group(3), dict(ARGS.findall(m.group(4)))
        req = args.get("req")
        if ev == "virtio_blk_rw_complete":
            if req in open_reqs:
                issue, off, length, op = open_reqs.pop(req)
                done.append((issue, t, off, length, op, args.get("ret", "0")))
            continue
        open_reqs[req] = (t, int(args["sector"]) * 512, int(args["nsectors"]) * 512,
                          "R" if ev == "virtio_blk_handle_read" else "W")
    if not done:
        sys.exit(f"boot_trace.py: {log_path}: no completed virtio-blk request (was QEMU run with -trace and -msg timestamp=on?)")
    failed = [d for d in done if d[5] != "0"]
    if failed:
        sys.exit(f"boot_trace.py: {log_path}: {len(failed)} request(s) failed in the guest (ret != 0), first at offset {failed[0][2]}")
    done.sort(key=lambda d: d[0])
    t0 = done[0][0]
    with open(out_path, "w") as out:
        out.write(f"# boot trace from {log_path}: {len(done)} requests, {len(open_reqs)} left in flight and dropped\n")
        out.write("# ISSUE_US COMPLETE_US OFFSET_BYTES LENGTH_BYTES R|W\n")
        for issue, comp, off, length, op, _ in done:
            out.write(f"{issue - t0} {comp - t0} {off} {length} {op}\n")


def summary(path):
    reqs = []
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        i, c, off, length, op = line.split()
        reqs.append((int(i), int(c), int(off), int(length), op))
    reads = [r for r in reqs if r[4] == "R"]
    events = sorted([(r[0], 1) for r in reads] + [(r[1], -1) for r in reads], key=lambda e: (e[0], e[1]))
    cur = peak = 0
    busy_us = 0
    last = None
    for t, d in events:
        if cur > 0 and last is not None:
            busy_us += t - last
        cur += d
        peak = max(peak, cur)
        last = t
    sectors = set()
    for r in reads:
        sectors.update(range(r[2] // 4096, (r[2] + r[3] + 4095) // 4096))
    sizes = sorted(r[3] for r in reads)
    # Concurrency the guest asked for: in flight when each read was issued.
    at_issue = []
    for r in reads:
        at_issue.append(sum(1 for o in reads if o[0] <= r[0] < o[1]))
    end = max(r[1] for r in reqs)
    print(json.dumps({
        "reads": len(reads),
        "read_bytes": sum(r[3] for r in reads),
        "distinct_read_bytes_4k": len(sectors) * 4096,
        "writes": len(reqs) - len(reads),
        "write_bytes": sum(r[3] for r in reqs if r[4] == "W"),
        "duration_s": round(end / 1e6, 3),
        "read_busy_s": round(busy_us / 1e6, 3),
        "max_in_flight": peak,
        "mean_in_flight_at_issue": round(sum(at_issue) / len(at_issue), 2),
        "read_size_bytes": {"min": sizes[0], "median": sizes[len(sizes) // 2], "max": sizes[-1],
                            "mean": round(sum(sizes) / len(sizes))},
        "span_bytes": max(r[2] + r[3] for r in reads) - min(r[2] for r in reads),
    }))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "convert":
        convert(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "summary":
        summary(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
