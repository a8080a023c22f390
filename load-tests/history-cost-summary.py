#!/usr/bin/env python3
"""Summarizes history-cost.sh's reports: per variant (history100, history0,
before) the fan-out ceiling (highest step with nothing lost and p99 < 1 s,
and < 200 ms), p50/p99 at 10,000 deliveries/s, the broker's CPU per
delivery at the steps every run reached, and the box floor; each as the
runs' values, their median and range.

    python3 load-tests/history-cost-summary.py DIR
"""
import glob
import json
import os
import statistics
import sys

VARIANTS = ["history100", "history0", "before"]


def med(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"median {statistics.median(values):.4g} (range {min(values):.4g}-{max(values):.4g}, n={len(values)})"


def main(d):
    for variant in VARIANTS:
        fanouts = sorted(glob.glob(os.path.join(d, f"fanout-{variant}-*.json")))
        latencies = sorted(glob.glob(os.path.join(d, f"latency-{variant}-*.json")))
        if not fanouts and not latencies:
            continue
        c1, c2, floors, cpu = [], [], [], {}
        for path in fanouts:
            r = json.load(open(path))
            steps = r["steps"]
            ok = [s for s in steps if s["lost"] == 0 and s["delivered"] == s["expected_deliveries"]]
            c1.append(max([s["deliveries_per_sec"] for s in ok if s["latency"]["p99_ms"] < 1000] or [0]) / 1000)
            c2.append(max([s["deliveries_per_sec"] for s in ok if s["latency"]["p99_ms"] < 200] or [0]) / 1000)
            floors.append((r.get("floor") or {}).get("send_us"))
            for s in steps:
                secs = s["publish_secs"] + s["drain_secs"]
                if s["delivered"]:
                    us = s["broker_cpu_percent"] / 100 * secs * 1e6 / s["delivered"]
                    cpu.setdefault(s["target_rate"], []).append(us)
        p50, p99 = [], []
        for path in latencies:
            r = json.load(open(path))
            s = r["steps"][-1]
            p50.append(s["latency"]["p50_ms"])
            p99.append(s["latency"]["p99_ms"])
            floors.append((r.get("floor") or {}).get("send_us"))
        print(f"== {variant}")
        print(f"  ceiling, p99 < 1 s (k deliveries/s): {[round(x) for x in c1]} {med(c1)}")
        print(f"  ceiling, p99 < 200 ms (k deliveries/s): {[round(x) for x in c2]} {med(c2)}")
        print(f"  10k deliveries/s p50 ms: {p50} {med(p50)}")
        print(f"  10k deliveries/s p99 ms: {p99} {med(p99)}")
        for rate in sorted(cpu):
            if len(cpu[rate]) == len(fanouts):
                print(f"  broker CPU us/delivery at {rate:g}/s: {[round(x, 2) for x in cpu[rate]]} {med(cpu[rate])}")
        print(f"  floor us: {floors} {med(floors)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
