#!/usr/bin/env bash
# The emulated host's fault rate under the six-VM overcommit test, per candidate setting
# (docs/testing.md, "Guest faults in the emulated host: what was measured"): RUNS runs of
# `overcommit::six_vms_in_a_2_gib_budget` per candidate, interleaved (a, b, c, a, b, c, …),
# each in a fresh emulated host; one log per run in OUT and a line per run in OUT/summary.txt.
#
#   docs/experiments/fault_rate.sh OUT RUNS CANDIDATE...
#
# Candidates: base (xtask's settings: -cpu max,vgif=off), vgif (-cpu max: the host's KVM
# uses virtual GIF, xtask's setting until 2026-12-07), noerms (erms=off,fsrm=off added),
# la57off (la57=off added: 4-level paging in host and guests), nothp (the host kernel with
# transparent_hugepage=never), tdpmmu0 (the host's KVM on its legacy MMU, kvm.tdp_mmu=0),
# single (-accel tcg,thread=single: one host thread for both emulated CPUs).
# Run it on an otherwise quiet machine: load changes the timing the faults depend on.
set -u
out=$1 runs=$2
shift 2
mkdir -p "$out"
cd "$(dirname "$0")/../.."
cmdline=$(sed -n 's/^const CMDLINE: &str = "\(.*\) \\$/\1/p; s/^ *\(i8042.*\)";$/\1/p' xtask/src/host.rs | tr '\n' ' ')
for i in $(seq 1 "$runs"); do
  for cand in "$@"; do
    unset SKIFF_HOST_QEMU_ARGS SKIFF_HOST_CMDLINE
    case $cand in
      base) ;;
      vgif) export SKIFF_HOST_QEMU_ARGS="-cpu max" ;;
      noerms) export SKIFF_HOST_QEMU_ARGS="-cpu max,vgif=off,erms=off,fsrm=off" ;;
      la57off) export SKIFF_HOST_QEMU_ARGS="-cpu max,vgif=off,la57=off" ;;
      single) export SKIFF_HOST_QEMU_ARGS="-accel tcg,thread=single" ;;
      nothp) export SKIFF_HOST_CMDLINE="$cmdline transparent_hugepage=never" ;;
      tdpmmu0) export SKIFF_HOST_CMDLINE="$cmdline kvm.tdp_mmu=0" ;;
      *) echo "unknown candidate $cand" >&2; exit 2 ;;
    esac
    n=1; while [ -e "$out/$cand-$n.log" ]; do n=$((n + 1)); done
    log=$out/$cand-$n.log
    start=$(date +%s)
    cargo xtask e2e overcommit::six_vms_in_a_2_gib_budget -- --exact > "$log" 2>&1
    rc=$?
    printf '%s %s run %d rc=%d secs=%d triple_faults=%d reruns=%d stalls=%d load=%s\n' \
      "$(date -u +%H:%M:%S)" "$cand" "$n" "$rc" "$(( $(date +%s) - start ))" \
      "$(grep -c 'triple fault' "$log")" "$(grep -c 'SKIFF-E2E-RERUN' "$log")" \
      "$(grep -c 'SKIFF-HOST-STALL' "$log")" "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/summary.txt"
  done
done
