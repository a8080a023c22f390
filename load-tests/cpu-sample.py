#!/usr/bin/env python3
"""Samples CPU use per process (and, for chosen processes, per thread) from
/proc every INTERVAL seconds until DURATION seconds pass or the processes
named by --pid are all gone, and prints a timeline: one line per sample with
each process's share of one core over the interval, plus the whole box's
busy share from /proc/stat (everything, other users' builds included).

    cpu-sample.py --pid BROKER --comm stompede-load --interval 0.1 --duration 60 > cpu.tsv

--comm NAME adds every process whose comm is NAME (found again at each
sample, so worker processes started later are included). Loopback load
tests only read /proc; nothing is written but stdout.
"""
import argparse
import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


def comm_of(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def box_busy():
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    values = [int(v) for v in cpu]
    idle = values[3] + values[4]
    return sum(values) / TICK, idle / TICK


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, action="append", default=[])
    parser.add_argument("--comm", action="append", default=[])
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--duration", type=float, default=120.0)
    args = parser.parse_args()
    prev = {}
    names = {}
    prev_box = box_busy()
    start = time.monotonic()
    last = start
    print("t\tbox_busy%\t" + "process cpu% (of one core) ...", flush=True)
    while time.monotonic() - start < args.duration:
        time.sleep(args.interval)
        pids = set(args.pid)
        if args.comm:
            for entry in os.listdir("/proc"):
                if entry.isdigit() and comm_of(entry) in args.comm:
                    pids.add(int(entry))
        now = time.monotonic()
        dt = now - last
        last = now
        box = box_busy()
        total = box[0] - prev_box[0]
        busy = 100.0 * (total - (box[1] - prev_box[1])) / total if total > 0 else 0.0
        prev_box = box
        row = [f"{now - start:.2f}", f"{busy:.0f}"]
        alive = False
        for pid in sorted(pids):
            cpu = proc_cpu(pid)
            if cpu is None:
                continue
            if pid in args.pid:
                alive = True
            names.setdefault(pid, comm_of(pid))
            if pid in prev:
                row.append(f"{names[pid]}:{pid}={100.0 * (cpu - prev[pid]) / dt:.0f}")
            prev[pid] = cpu
        print("\t".join(row), flush=True)
        if args.pid and not alive:
            break


if __name__ == "__main__":
    sys.exit(main())
