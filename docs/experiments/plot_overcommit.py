#!/usr/bin/env python3
"""Plots an overcommit run (docs/experiments.md): per-VM and total resident memory over time.

Input: the CSV the e2e test `overcommit::*` writes (its `OVERCOMMIT-CSV` lines, or the
overcommit.csv in its scratch directory): t_s,vm,rss_mib,cgroup_mib,balloon_mib,target_mib,state.

    python3 -m venv ~/.cache/skiff/venv-plot && ~/.cache/skiff/venv-plot/bin/pip install matplotlib
    ~/.cache/skiff/venv-plot/bin/python docs/experiments/plot_overcommit.py \
        docs/experiments/overcommit.csv docs/experiments/overcommit.svg --budget 2048
"""
import argparse
import csv
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("out")
    ap.add_argument("--budget", type=float, default=2048, help="MiB")
    ap.add_argument("--min", type=float, default=128, help="each VM's min, MiB")
    args = ap.parse_args()

    per_vm = defaultdict(lambda: defaultdict(list))
    totals = defaultdict(lambda: [0.0, 0.0])
    with open(args.csv) as f:
        for row in csv.DictReader(f):
            t = float(row["t_s"])
            vm = per_vm[row["vm"]]
            for key in ("rss_mib", "balloon_mib", "target_mib"):
                vm[key].append(float(row[key]))
            vm["t"].append(t)
            totals[t][0] += float(row["rss_mib"])
            totals[t][1] += float(row["cgroup_mib"])

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True)
    for name, vm in sorted(per_vm.items()):
        (line,) = top.plot(vm["t"], vm["rss_mib"], label=f"{name} VMM RSS")
        size = [512 - b for b in vm["balloon_mib"]]
        top.plot(vm["t"], size, linestyle=":", color=line.get_color(), linewidth=1)
    top.axhline(args.min, color="black", linestyle="--", linewidth=1, label="min (128 MiB)")
    top.set_ylabel("MiB")
    top.set_title("Per VM: VMM resident memory (solid), 512 MiB − balloon (dotted)")
    top.legend(fontsize=7, ncol=4, loc="center right")
    top.grid(alpha=0.3)

    ts = sorted(totals)
    bottom.plot(ts, [totals[t][0] for t in ts], label="Σ VMM RSS")
    bottom.plot(ts, [totals[t][1] for t in ts], label="Σ cgroup memory.current")
    bottom.axhline(args.budget, color="red", linestyle="--", label=f"budget ({args.budget:.0f} MiB)")
    bottom.set_xlabel("seconds since the first VM was created")
    bottom.set_ylabel("MiB")
    bottom.set_title("All six VMs")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
