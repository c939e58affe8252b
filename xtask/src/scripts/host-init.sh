#!/bin/sh
# Init of the emulated AMD-V host (built by `cargo xtask host`; see docs/testing.md).
# Loads KVM and friends, then runs /etc/skiff/run (if present) and prints
# "$SKIFF_HOST_MARKER status=N" for xtask to pick up, or else an interactive shell.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm /sys/fs/cgroup
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
while read -r module; do
    insmod "/lib/modules/$module" || echo "skiff-host: cannot load $module" >&2
done </etc/skiff/modules
ip link set lo up
[ -r /etc/skiff/env ] && . /etc/skiff/env
cd /root
[ -n "$SKIFF_HOST_MARKER" ] && echo "$SKIFF_HOST_MARKER up"

if [ -x /etc/skiff/run ]; then
    # A heartbeat while the command runs: xtask takes a console silent for --stall seconds
    # for a hung host, and a test's own output is captured until it ends.
    alive=
    if [ -n "$SKIFF_HOST_MARKER" ]; then
        ( while sleep 30; do echo "$SKIFF_HOST_MARKER alive"; done ) &
        alive=$!
    fi
    /etc/skiff/run
    status=$?
    [ -n "$alive" ] && kill "$alive"
    echo "$SKIFF_HOST_MARKER status=$status"
else
    setsid cttyhack sh
fi
# Give the UART a moment to send what is still in its buffer before the power goes.
usleep 20000
poweroff -f
