#!/usr/bin/env python3
"""Plots the page-sharing experiment (docs/experiments.md): memory shared and reclaimed by KSM
against the number of identical guests, beside the paper's figures.

Input: the `SHARING,...` lines the ignored e2e test `page_sharing::*` prints (other lines are
skipped, so its whole output will do):
    SHARING,n,settle_s,resident_mib,merging_mib,pages_shared_mib,pages_sharing_mib,configured_mib

"Shared" is guest memory backed by a KSM page (Σ ksm_merging_pages), "reclaimed" what KSM
saves (pages_sharing: every mapping of a KSM page but the first), as in the paper's Figure 4.

    python3 -m venv ~/.cache/skiff/venv-plot && ~/.cache/skiff/venv-plot/bin/pip install matplotlib
    ~/.cache/skiff/venv-plot/bin/python docs/experiments/plot_page_sharing.py \
        docs/experiments/page-sharing.csv docs/experiments/page-sharing.svg
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The paper (Waldspurger, OSDI 2002, §4.3, Figure 4; ../shared/DESIGN.md §3): with ten
# identical Linux VMs, 67 % of all VM memory shared and nearly 60 % reclaimed. Its per-N
# points are not in the text; the reference curve below is what those two figures imply if a
# fixed fraction s = 0.67 of each VM is identical in all of them: N copies shared, N − 1 of
# them reclaimed, so reclaimed = s (N − 1) / N (60 % at N = 10).
PAPER_SHARED = 0.67


def read(path):
    rows = []
    with open(path) as f:
        for line in f:
            fields = line.strip().split(",")
            if fields[0] != "SHARING" or len(fields) != 8 or fields[1] == "n":
                continue
            n, _settle, resident, merging, _shared, sharing, configured = map(float, fields[1:])
            rows.append((int(n), resident, merging, sharing, configured))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("out")
    args = ap.parse_args()
    rows = read(args.input)
    n = [r[0] for r in rows]
    resident = [r[1] for r in rows]
    shared = [r[2] for r in rows]
    reclaimed = [r[3] for r in rows]
    configured = [r[4] for r in rows]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    top.plot(n, configured, color="gray", linestyle="--", marker=".", label="configured (N × 256 MiB)")
    top.plot(n, resident, color="black", marker="o", label="resident (Σ VmRSS)")
    top.plot(n, shared, color="tab:blue", marker="o", label="shared (Σ ksm_merging_pages)")
    top.plot(n, reclaimed, color="tab:red", marker="o", label="reclaimed (pages_sharing)")
    # VmRSS counts a KSM page in every process that maps it: the host holds the difference.
    top.plot(n, [r - s for r, s in zip(resident, reclaimed)], color="tab:green", marker="o",
             label="host memory held (resident − reclaimed)")
    top.set_ylabel("MiB")
    top.set_title("KSM with N identical idle 256 MiB guests (emulated host)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)

    pct = lambda part, whole: [100.0 * p / w if w else 0.0 for p, w in zip(part, whole)]  # noqa: E731
    bottom.plot(n, pct(shared, configured), color="tab:blue", marker="o", label="shared, % of configured")
    bottom.plot(n, pct(reclaimed, configured), color="tab:red", marker="o", label="reclaimed, % of configured")
    bottom.plot(n, pct(shared, resident), color="tab:blue", marker="s", linestyle=":",
                label="shared, % of resident")
    bottom.plot(n, pct(reclaimed, resident), color="tab:red", marker="s", linestyle=":",
                label="reclaimed, % of resident")
    ref_n = list(range(1, max(n + [10]) + 1))
    bottom.plot(ref_n, [100 * PAPER_SHARED] * len(ref_n), color="tab:blue", linestyle="--",
                linewidth=0.8, label="paper: shared approaches 67 %")
    bottom.plot(ref_n, [100 * PAPER_SHARED * (k - 1) / k for k in ref_n], color="tab:red",
                linestyle="--", linewidth=0.8, label="paper-implied reclaimed, 0.67 (N−1)/N")
    bottom.scatter([10, 10], [67, 60], color="black", marker="x", zorder=3,
                   label="paper, 10 VMs: 67 % shared, ~60 % reclaimed")
    bottom.set_ylabel("% of VM memory")
    bottom.set_xlabel("identical guests N")
    bottom.set_ylim(0, 100)
    bottom.legend(fontsize=7, loc="upper left")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
