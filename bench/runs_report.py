# Reading the per-run TSV that compare_backends.sh and slow_device_bench.sh
# write (one line per run: workload, bstype, ops or FAILED, figures) and the
# Markdown pieces both reports print. Imported by their embedded Python.
import csv
import statistics


class Runs:
    def __init__(self, path):
        self.rows = list(csv.DictReader(open(path), delimiter="\t"))
        self.workloads = list(dict.fromkeys(r["workload"] for r in self.rows))

    def vals(self, w, b, key):
        """The numeric `key` of every run of workload w on backend b that did not fail."""
        out = []
        for r in self.rows:
            if r["workload"] == w and r["bstype"] == b and r["ops"] != "FAILED":
                try:
                    out.append(float(r[key]))
                except ValueError:
                    pass
        return out

    def failed(self, w, b):
        return sum(1 for r in self.rows if r["workload"] == w and r["bstype"] == b and r["ops"] == "FAILED")

    def failed_note(self, w, b):
        n = self.failed(w, b)
        return f" ({n} failed)" if n else ""


def med(v):
    return statistics.median(v) if v else None


def fmt(x, nd=0):
    return "n/a" if x is None else f"{x:,.{nd}f}"


def ratio(a, b, nd=2):
    return f"{a / b:.{nd}f}x" if a and b else "n/a"


def median_iops_table(runs, bstypes, names, ratios, sep="/", nd=2):
    """One row per workload: median IOPS per backend, then each ratio "a<sep>b"
    of `ratios` whose two backends both ran."""
    cols = [c for c in ratios if all(x in bstypes for x in c.split(sep))]
    hdr = ["workload"] + bstypes + cols
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
    for w in runs.workloads:
        m = {b: med(runs.vals(w, b, "iops")) for b in bstypes}
        cells = [names.get(w, w)] + [fmt(m[b]) + runs.failed_note(w, b) for b in bstypes]
        for c in cols:
            a, b = c.split(sep)
            cells.append(ratio(m[a], m[b], nd))
        print("| " + " | ".join(cells) + " |")
