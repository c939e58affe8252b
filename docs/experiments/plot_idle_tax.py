#!/usr/bin/env python3
"""Plots the idle-tax experiment (docs/experiments.md): both VMs' target and allocation over
time with τ = 0 and τ = 0.75, and B's throughput in each run.

Input: the `ALLOC,...` and `TPUT,...` lines the ignored e2e test `idle_tax::*` prints (other
lines are skipped, so its whole output will do):
    ALLOC,tau,t_s,vm,target_mib,allocated_mib,ballooned_mib,active_mib,paused,state[,vm_state]
    TPUT,tau,t_s,throughput_mib_s

    python3 -m venv ~/.cache/skiff/venv-plot && ~/.cache/skiff/venv-plot/bin/pip install matplotlib
    ~/.cache/skiff/venv-plot/bin/python docs/experiments/plot_idle_tax.py \
        docs/experiments/idle-tax.csv docs/experiments/idle-tax.svg
"""
import argparse
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    alloc = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    tput = defaultdict(lambda: ([], []))
    with open(path) as f:
        for line in f:
            fields = line.strip().split(",")
            if fields[0] == "ALLOC" and len(fields) >= 8:
                _, tau, t, vm, target, allocated, ballooned, active = fields[:8]
                series = alloc[tau][vm]
                series["t"].append(float(t))
                series["target"].append(float(target))
                series["allocated"].append(float(allocated))
                series["active"].append(float(active))
            elif fields[0] == "TPUT" and len(fields) == 4:
                _, tau, t, value = fields
                tput[tau][0].append(float(t))
                tput[tau][1].append(float(value))
    return alloc, tput


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("out")
    ap.add_argument("--budget", type=float, default=640, help="MiB")
    args = ap.parse_args()
    alloc, tput = read(args.input)
    taus = sorted(alloc, key=float)

    fig, axes = plt.subplots(len(taus) + 1, 1, figsize=(9, 3.2 * (len(taus) + 1)), sharex=True)
    colors = {"vm-a": "tab:blue", "vm-b": "tab:red"}
    for ax, tau in zip(axes, taus):
        for vm, s in sorted(alloc[tau].items()):
            c = colors.get(vm)
            ax.plot(s["t"], s["allocated"], color=c, label=f"{vm} allocated")
            ax.plot(s["t"], s["target"], color=c, linestyle="--", label=f"{vm} target")
            ax.plot(s["t"], s["active"], color=c, linestyle=":", linewidth=1, label=f"{vm} active")
        ax.axhline(args.budget, color="black", linewidth=0.8, label="budget")
        ax.set_ylabel("MiB")
        ax.set_title(f"τ = {tau}: allocation (solid), target (dashed), active f×P (dotted)")
        ax.legend(fontsize=7, ncol=4, loc="upper left")
        ax.grid(alpha=0.3)
    ax = axes[-1]
    for tau in taus:
        t, v = tput[tau]
        ax.plot(t, v, marker=".", label=f"τ = {tau}")
    ax.set_ylabel("MiB/s")
    ax.set_xlabel("seconds since B started its workload")
    ax.set_title("B's throughput (random 64-byte read-modify-writes over its working set)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
