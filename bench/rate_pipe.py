#!/usr/bin/env python3
# rate_pipe.py: copies stdin to stdout at most RATE bytes/s, a stand-in for a
# limited link in a shell pipeline (what `pv -L` does; pv is not a
# dependency). Idle time is saved up for at most 0.5 s (a sleep that
# overshoots is made up for; a pause is not). Prints the bytes
# it passed to stderr at the end.
# Usage: ... | bench/rate_pipe.py RATE | ...
import os
import sys
import time

rate = float(sys.argv[1])
if rate <= 0:
    sys.exit("rate_pipe: RATE must be a positive number of bytes per second")
chunk = 64 * 1024
fin, fout = sys.stdin.fileno(), sys.stdout.fileno()
total = 0
due = time.monotonic()
while True:
    b = os.read(fin, chunk)
    if not b:
        break
    now = time.monotonic()
    due = max(due, now - 0.5) + len(b) / rate
    if due > now:
        time.sleep(due - now)
    view = memoryview(b)
    while view:
        n = os.write(fout, view)
        view = view[n:]
    total += len(b)
print(f"rate_pipe: {total} bytes", file=sys.stderr)
