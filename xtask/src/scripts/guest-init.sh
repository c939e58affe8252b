#!/bin/sh
# Skiff guest init (built by `cargo xtask assets`; see docs/testing.md).
#
# Kernel command line:
#   skiff.cmd=<base64 of a shell command>  run it, print SKIFF-GUEST-EXIT status=N, power off
#   (no skiff.cmd)                         interactive shell on the console
#   skiff.nopoweroff                       stay up after the command instead of powering off
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
echo SKIFF-INIT-READY
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
while read -r module; do
    insmod "/lib/modules/$module" 2>/dev/null
done </etc/skiff/modules

cmd= poweroff=1
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    skiff.cmd=*) cmd=$(echo "${arg#skiff.cmd=}" | base64 -d) ;;
    skiff.nopoweroff) poweroff= ;;
    esac
done

if [ -n "$cmd" ]; then
    sh -c "$cmd"
    echo "SKIFF-GUEST-EXIT status=$?"
else
    setsid cttyhack sh
fi
# Give the UART a moment to send what is still in its buffer before the power goes.
usleep 20000
[ -n "$poweroff" ] && poweroff -f
while :; do sleep 3600; done
