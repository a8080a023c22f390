#!/usr/bin/env python3
"""Reads the JSON reports compare.sh wrote and writes RESULTS.md: medians of
every run, stompede vs RabbitMQ with ratios, and DESIGN §4's targets."""
import argparse, glob, json, os, re, statistics

p = argparse.ArgumentParser()
p.add_argument("results")
p.add_argument("out")
p.add_argument("--fan-subs", type=int, default=5000)
p.add_argument("--lat-deliveries", type=int, default=10000)
p.add_argument("--idle-n", type=int, default=10000)
p.add_argument("--storm-n", type=int, default=10000)
a = p.parse_args()

BROKERS = ["stompede", "rabbitmq"]
NAMES = {"stompede": "stompede", "rabbitmq": "RabbitMQ Web-STOMP"}
runs = {}  # (broker, scenario) -> [json, ...] in run order
for path in sorted(glob.glob(os.path.join(a.results, "*-run*-*.json"))):
    m = re.match(r"(\w+)-run(\d+)-(\w+)\.json$", os.path.basename(path))
    if not m:
        continue
    with open(path) as f:
        runs.setdefault((m.group(1), m.group(3)), []).append(json.load(f))


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fig(broker, scenario, get):
    """Median over runs of get(report), and the per-run values."""
    vals = []
    for r in runs.get((broker, scenario), []):
        try:
            vals.append(get(r))
        except (KeyError, TypeError, IndexError, ValueError):
            vals.append(None)
    return med(vals), vals


def best_rate(r, max_p99):
    ok = [s for s in r["steps"] if s["lost"] == 0 and s["duplicated"] == 0 and s["subscribers_disconnected"] == 0
          and s["publish_failed"] == 0 and s["latency"]["count"] > 0 and s["latency"]["p99_ms"] <= max_p99]
    return max((s["deliveries_per_sec"] for s in ok), default=0.0)


def tool_cpu(r):
    return r["tool"]["cpu_percent"]


# (label, scenario, getter, unit, lower_is_better, format)
F = [
    (f"broker memory per idle subscribed connection ({a.idle_n:,} conns)", "idle",
     lambda r: r["broker_bytes_per_connection"] / 1000, "KB", True, "{:.1f}"),
    (f"highest fan-out to {a.fan_subs:,} subscribers, p99 < 1 s, nothing lost", "fanout",
     lambda r: best_rate(r, 1000), "deliveries/s", False, "{:,.0f}"),
    (f"highest fan-out to {a.fan_subs:,} subscribers, p99 < 200 ms, nothing lost", "fanout",
     lambda r: best_rate(r, 200), "deliveries/s", False, "{:,.0f}"),
]
for q, k in [("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"), ("max", "max_ms")]:
    F.append((f"latency {q} at {a.lat_deliveries:,} deliveries/s", "latency",
              (lambda k: lambda r: r["steps"][0]["latency"][k])(k), "ms", True, "{:.2f}"))
F += [
    (f"latency run: messages lost", "latency", lambda r: r["steps"][0]["lost"], "", True, "{:.0f}"),
    (f"storm: time to set up {a.storm_n:,} subscribed connections", "storm",
     lambda r: r["storm"]["elapsed_secs"], "s", True, "{:.2f}"),
    ("storm: failed setups", "storm", lambda r: r["storm"]["failed"], "", True, "{:.0f}"),
    ("storm: setup latency p99", "storm", lambda r: r["storm"]["setup_latency"]["p99_ms"], "ms", True, "{:.0f}"),
    ("storm: background subscribers' p99 before the storm", "storm",
     lambda r: r["background_steps"][0]["latency"]["p99_ms"], "ms", True, "{:.1f}"),
    ("storm: background subscribers' p99 during the storm", "storm",
     lambda r: r["background_steps"][1]["latency"]["p99_ms"], "ms", True, "{:.1f}"),
    ("storm: background messages lost during the storm", "storm",
     lambda r: r["background_steps"][1]["lost"], "", True, "{:.0f}"),
    ("churn: connects per second achieved", "churn", lambda r: r["churn"]["achieved_rate"], "/s", False, "{:,.0f}"),
    ("churn: failed connects", "churn", lambda r: sum(r["churn"]["failures"].values()), "", True, "{:.0f}"),
    ("churn: broker RSS before", "churn", lambda r: r["broker_rss_before"] / 2**20, "MiB", True, "{:.1f}"),
    ("churn: broker RSS peak during", "churn", lambda r: max(s["rss_bytes"] for s in r["broker_rss_during"]) / 2**20, "MiB", True, "{:.1f}"),
    ("churn: broker RSS after (5 s settle)", "churn", lambda r: r["broker_rss_after"] / 2**20, "MiB", True, "{:.1f}"),
]


def fmt(v, f):
    return "n/a" if v is None else f.format(v)


lines = []
w = lines.append
w("# stompede vs RabbitMQ Web-STOMP")
w("")
w("Written by `load-tests/summarize.py` from the JSON reports of `load-tests/compare.sh`"
  f" (raw files: `{os.path.relpath(a.results, os.path.dirname(os.path.abspath(a.out)))}`, not committed).")
nruns = {b: max([len(v) for (bb, _), v in runs.items() if bb == b] or [0]) for b in BROKERS}
w(f"Every figure is the median of {', '.join(f'{nruns[b]} run(s) on {NAMES[b]}' for b in BROKERS)};"
  " the load generator ran on the same 2-core box as the broker, and each run started both brokers fresh.")
w("")
mt = os.path.join(a.results, "machine.txt")
if os.path.exists(mt):
    w("## Machine")
    w("")
    w("```")
    w(open(mt).read().rstrip())
    w("```")
    w("")

la = os.path.join(a.results, "loadavg.txt")
if os.path.exists(la):
    loads = [float(l.split()[1]) for l in open(la) if len(l.split()) >= 2]
    if loads:
        w(f"The box is shared with other developers: the 1-minute load average just before each scenario (brokers idle)"
          f" ranged {min(loads):.2f} .. {max(loads):.2f} (median {statistics.median(loads):.2f}; per scenario in `loadavg.txt`)."
          " Anything above ~0.5 means someone else was using the CPUs, and the figures are noisier for it.")
        w("")
w("## Results")
w("")
w("| figure | stompede | RabbitMQ | stompede ÷ RabbitMQ | better |")
w("|---|---|---|---|---|")
medians = {}
for label, scen, get, unit, lower, f in F:
    s, _ = fig("stompede", scen, get)
    r, _ = fig("rabbitmq", scen, get)
    medians[label] = (s, r)
    ratio = "n/a"
    better = ""
    if s is not None and r is not None:
        if r != 0:
            ratio = f"{s / r:.2f}"
        if s != r:
            better = "stompede" if (s < r) == lower else "RabbitMQ"
        else:
            better = "same"
    u = f" {unit}" if unit else ""
    w(f"| {label} | {fmt(s, f)}{u if s is not None else ''} | {fmt(r, f)}{u if r is not None else ''} | {ratio} | {better} |")
w("")
if not runs.get(("stompede", "idle")):
    w("**stompede has not been measured yet** (its broker did not build or run when this file was written);"
      " rerun `load-tests/compare.sh` once it does.")
    w("")

w("### Per run")
w("")
w("| figure | broker | runs |")
w("|---|---|---|")
for label, scen, get, unit, lower, f in F:
    for b in BROKERS:
        _, vals = fig(b, scen, get)
        if vals:
            w(f"| {label} | {NAMES[b]} | {', '.join(fmt(v, f) for v in vals)} |")
w("")

w("### The load tool's own CPU (100% = one of the 2 cores)")
w("")
w("| scenario | stompede run | RabbitMQ run |")
w("|---|---|---|")
for scen in ["idle", "fanout", "latency", "storm", "churn"]:
    s, _ = fig("stompede", scen, tool_cpu)
    r, _ = fig("rabbitmq", scen, tool_cpu)
    w(f"| {scen} | {fmt(s, '{:.0f}%')} | {fmt(r, '{:.0f}%')} |")
w("")

w("## DESIGN §4 targets, for stompede")
w("")
def target(label, key, ok, want):
    s = medians.get(key, (None, None))[0]
    if s is None:
        w(f"- {label}: target {want}; **not measured yet**.")
    else:
        w(f"- {label}: target {want}; measured {s:,.2f} — **{'met' if ok(s) else 'NOT met'}**.")
mem19 = med([r["broker_bytes_per_connection"] / 1000 for r in runs.get(("stompede", "idle19k"), []) if r.get("broker_bytes_per_connection")])
if mem19 is None:
    w("- memory at 19k idle subscribed connections: target ≤ 8 KB; **not measured yet**.")
else:
    w(f"- memory at 19k idle subscribed connections: target ≤ 8 KB; measured {mem19:.1f} KB — **{'met' if mem19 <= 8 else 'NOT met'}**.")
target(f"memory per idle connection at {a.idle_n:,}", F[0][0], lambda s: s <= 8, "≤ 8 KB")
target("fan-out", F[2][0], lambda s: s >= 1_000_000, "≥ 1,000,000 deliveries/s to 5,000 subscribers with p99 < 200 ms, nothing lost")
target("latency", f"latency p99 at {a.lat_deliveries:,} deliveries/s", lambda s: s < 50, "p99 < 50 ms at 10,000 deliveries/s")
target("storm", F[[x[0] for x in F].index(f"storm: time to set up {a.storm_n:,} subscribed connections")][0], lambda s: s < 5, "10,000 subscribed connections in < 5 s")
target("storm refusals", "storm: failed setups", lambda s: s == 0, "none")
target("storm: existing subscribers keep receiving (lost)", "storm: background messages lost during the storm", lambda s: s == 0, "0 lost")
target("churn failures", "churn: failed connects", lambda s: s == 0, "0")
w("- churn memory: target 'memory where it started'; compare the churn rows above (RSS before vs after).")
# Registry counts from stompede's /metrics (compare.sh passes --metrics-url since 2026-12-01).
registry = [(r.get("broker_registry_before"), r.get("broker_registry_after")) for r in runs.get(("stompede", "churn"), [])]
registry = [(b, x) for b, x in registry if b and x]
if not registry:
    w("- churn registry: target 'registry size where it started'; **not measured in these runs** (no --metrics-url).")
else:
    same = all(b == x for b, x in registry)
    shown = "; ".join(f"{x['connections']:.0f} connections, {x['subscriptions']:.0f} subscriptions, {x['destinations']:.0f} destinations after vs {b['connections']:.0f}, {b['subscriptions']:.0f}, {b['destinations']:.0f} before" for b, x in registry)
    w(f"- churn registry: target 'registry size where it started'; measured {shown} — **{'met' if same else 'NOT met'}**.")
w("- O(1) SUBSCRIBE/UNSUBSCRIBE/publish across 10 to 1,000,000 destinations: measured by the broker's benchmarks, not by this tool.")
w("")
w("## Commands")
w("")
w("`load-tests/compare.sh` ran, per broker and run (paths shortened):")
w("")
w("```")
for b in BROKERS:
    for scen in ["idle", "fanout", "latency", "storm", "churn", "idle19k"]:
        rs = runs.get((b, scen))
        if rs:
            cmd = " ".join(rs[0]["command"][1:])
            cmd = re.sub(r"--json \S+", "--json FILE", cmd)
            cmd = re.sub(r"--svg \S+", "--svg FILE", cmd)
            cmd = re.sub(r"--broker-pid \d+", "--broker-pid PID", cmd)
            w(f"stompede-load {cmd}")
w("```")
w("")
notes = os.path.join(os.path.dirname(os.path.abspath(a.out)), "RESULTS-notes.md")
if os.path.exists(notes):
    w(open(notes).read().rstrip())
    w("")
with open(a.out, "w") as f:
    f.write("\n".join(lines) + "\n")
