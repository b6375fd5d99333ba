#!/usr/bin/env bash
# repush_cuts.sh: what a cut costs (issue 15): N kill -9 cuts of the push of
# VERSION on the filesystems `replication_bench.sh --keep` left, each at a
# seeded random time in [LO, HI] s, each followed by the push that resumes it
# (bench/repush.sh --cut). Prints per cut (bytes sent before the cut + bytes
# of the resume) / (bytes of one uncut push), and their mean and max.
#
#   bench/repush_cuts.sh SCRATCH VERSION LO HI [--runs N] [--bin PATH] [-- PUSH_ARGS...]
#   e.g. bench/repush_cuts.sh /tmp/icbd-replbench.XXXX 3 0.2 1.4 -- --compress zstd
# Needs root (drop_caches) and ss. Figures, never a failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "repush_cuts: $*" >&2; exit 2; }
[ $# -ge 4 ] || die "usage: repush_cuts.sh SCRATCH VERSION LO HI [--runs N] [--bin PATH] [-- PUSH_ARGS...]"
w=$1 v=$2 lo=$3 hi=$4
shift 4
runs=10 bin=$here/../build/release/replicator/icbd-replicate
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option '$1'" ;;
  esac
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$here/repush.sh" "$w" "$v" --bin "$bin" --json "$out/full.json" -- "$@"
for i in $(seq "$runs"); do
  c=$(python3 -c "import random; random.seed($i * 7 + 1); print('%.2f' % random.uniform($lo, $hi))")
  "$here/repush.sh" "$w" "$v" --bin "$bin" --cut "$c" --json "$out/resume-$i.json" -- "$@" | tee "$out/cut-$i.log"
done
python3 - "$out" "$runs" <<'PY'
import json, re, sys
out, runs = sys.argv[1], int(sys.argv[2])
wire = lambda f: sum(r.get('wire_bytes', 0) for r in json.load(open(f))['replicas'])
full = wire(out + '/full.json')
ratios = []
for i in range(1, runs + 1):
    try:
        m = re.search(r'cut after ([\d.]+) s: (\d+) bytes', open('%s/cut-%d.log' % (out, i)).read())
        rep = json.load(open('%s/resume-%d.json' % (out, i)))['replicas'][0]
    except (OSError, ValueError):
        continue
    if not m:
        continue
    r = (int(m.group(2)) + rep['wire_bytes']) / full
    ratios.append(r)
    print('cut %s s: %.1f MiB sent, resume after change %d: %.1f MiB; %.3fx one push' %
          (m.group(1), int(m.group(2)) / 2**20, rep['resume_seq'], rep['wire_bytes'] / 2**20, r))
if ratios:
    print('%d cuts: mean %.3fx, max %.3fx of one push (%.1f MiB)' % (len(ratios), sum(ratios) / len(ratios), max(ratios), full / 2**20))
PY
