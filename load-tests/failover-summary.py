#!/usr/bin/env python3
"""Summarizes failover.sh's reports: one line per run, then per variant the
median and range of the time until every reader had resumed.

    python3 load-tests/failover-summary.py DIR
"""
import glob
import json
import os
import re
import statistics
import sys


def delta(a, b):
    return sum(y - x for x, y in zip(a, b) if x is not None and y is not None)


def main(d):
    runs = {}
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
        m = re.match(r"(.+)-(\d+)\.json$", os.path.basename(path))
        if not m:
            continue
        r = json.load(open(path))
        f, s = r["failover"], r["samples"]
        res = f["result"]
        b, e = s["before_kill"], s["all_resumed"]
        evalsha = e["redis_calls"].get("evalsha", 0) - b["redis_calls"].get("evalsha", 0)
        row = {
            "variant": m.group(1),
            "run": int(m.group(2)),
            "floor_us": (r.get("floor") or {}).get("send_us"),
            "subscribed": f["subscribed"],
            "on_killed": f["on_killed_node"],
            "all_resumed_s": f["all_resumed_secs"],
            "all_back": f["all_back"],
            "since_kill_p50_ms": f["since_kill"]["p50_ms"],
            "since_drop_p50_ms": f["since_drop"]["p50_ms"],
            "sub_to_receipt_p50_ms": f["subscribe_to_receipt"]["p50_ms"],
            "sub_to_receipt_p99_ms": f["subscribe_to_receipt"]["p99_ms"],
            "recovered_true": res["recovered_true"],
            "recovered_false": res["recovered_false"],
            "missed": res["missed"],
            "duplicated": res["duplicated"],
            "complete": res["complete"],
            "history_reads": delta(b["history_reads"], e["history_reads"]),
            "evalsha": evalsha,
            "publishes_in_window": e["published"] - b["published"],
            "live_p99_before_ms": f["live_before"]["p99_ms"],
            "live_p99_during_ms": f["live_during"]["p99_ms"],
            "live_p99_after_ms": f["live_after"]["p99_ms"],
            "replayed_p50_ms": f["replayed_latency"]["p50_ms"],
            "published": f["published"]["published"],
            "accepted": f["published"]["accepted"],
        }
        runs.setdefault(row["variant"], []).append(row)
    for variant, rows in runs.items():
        print(f"== {variant}")
        for row in sorted(rows, key=lambda r: r["run"]):
            print("  " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items() if k != "variant"))
        for key in ["all_resumed_s", "since_kill_p50_ms", "sub_to_receipt_p50_ms",
                    "live_p99_before_ms", "live_p99_during_ms", "floor_us"]:
            vals = [r[key] for r in rows if r[key] is not None]
            if vals:
                print(f"  {key}: median {statistics.median(vals):.2f}, "
                      f"range {min(vals):.2f}-{max(vals):.2f} (n={len(vals)})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
