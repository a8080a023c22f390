#!/usr/bin/env python3
"""One line per storm JSON report (storm-measure.sh's NAME.json), then the
median and range of each figure per group (the name up to its last '-'):
background p99 before and during the storm (the tool's and the broker's own
/metrics view), publish answer p99, storm time, 503 retries, failures and
the box's send() floor.

    storm-summary.py results/storm-*/[a-z]*.json
"""
import json
import os
import statistics
import sys
from collections import defaultdict


def bucket(b):
    if not b:
        return "n/a"
    low, high = b["p99_ms"]
    return f"{low:g}-{high:g}" if high != float("inf") and high is not None else f">{low:g}"


rows = defaultdict(list)
for path in sys.argv[1:]:
    d = json.load(open(path))
    steps = d["background_steps"]
    storm = d["storm"]
    name = os.path.basename(path)[: -len(".json")]
    group = name.rsplit("-", 1)[0]
    before, during = steps[0], steps[1]
    retried = storm["failures"].get("refused with 503, retried", 0)
    failed = storm["failed"]
    r = {
        "before": before["latency"]["p99_ms"],
        "during": during["latency"]["p99_ms"],
        "ratio": during["latency"]["p99_ms"] / before["latency"]["p99_ms"],
        "storm_s": storm["elapsed_secs"],
        "retried": retried,
        "failed": failed,
        "ok": storm["ok"],
        "floor": d["floor"]["send_us"] if d.get("floor") else float("nan"),
        "ans_before": before.get("publish_answered", {}).get("p99_ms", float("nan")),
        "ans_during": during.get("publish_answered", {}).get("p99_ms", float("nan")),
        "broker_before": bucket(before.get("broker_delivery")),
        "broker_during": bucket(during.get("broker_delivery")),
        "lost": during["lost"],
    }
    rows[group].append(r)
    print(
        f"{name:28} p99 {r['before']:6.1f} -> {r['during']:6.1f} ms ({r['ratio']:4.1f}x)"
        f"  broker p99 {bucket(before.get('broker_delivery'))} -> {bucket(during.get('broker_delivery'))} ms"
        f"  answer p99 {r['ans_before']:.1f} -> {r['ans_during']:.1f} ms"
        f"  storm {r['ok']} in {r['storm_s']:.2f} s, 503 retried {retried}, failed {failed}"
        f"  floor {r['floor']:.1f} us"
    )
print()
for group, rs in rows.items():
    def med(key):
        values = [r[key] for r in rs]
        return f"{statistics.median(values):.2f} [{min(values):.2f}..{max(values):.2f}]"
    print(
        f"{group:24} n={len(rs)} before {med('before')} during {med('during')} ratio {med('ratio')}"
        f" storm_s {med('storm_s')} retried {med('retried')} failed {med('failed')} floor {med('floor')}"
        f" answer_p99 {med('ans_before')} -> {med('ans_during')} lost {med('lost')}"
        f" broker_p99_buckets {sorted(r['broker_before'] for r in rs)} -> {sorted(r['broker_during'] for r in rs)}"
    )
