#!/bin/sh
# Skiff guest init (built by `cargo xtask assets`; see docs/testing.md). The same script is
# /init of the test initramfs and /sbin/init of the test root file-system image.
#
# Kernel command line:
#   skiff.cmd=<base64 of a shell command>  run it, print SKIFF-GUEST-EXIT status=N, power off
#   (no skiff.cmd)                         interactive shell on the console
#   skiff.nopoweroff                       stay up after the command instead of powering off
#   root=DEV|LABEL=L|UUID=U [rw] [rootfstype=T] [rootflags=O] [rootdelay=S] [init=PATH]
#       from the initramfs: load the modules, wait for DEV (up to S s, default 30), mount it
#       (read-only unless rw) and switch_root to PATH (default /sbin/init) on it, as a
#       distribution's initramfs does
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root

# The command line decides what this init is for, so /proc comes first. Until the marker,
# only builtins besides that mount: boot benchmarks time the marker.
[ -e /proc/self ] || mount -t proc proc /proc
read -r cmdline </proc/cmdline
cmd64= poweroff=1 root= rootfstype= rootflags= rootmode=ro rootdelay=30 init=/sbin/init
for arg in $cmdline; do
    case "$arg" in
    skiff.cmd=*) cmd64=${arg#skiff.cmd=} ;;
    skiff.nopoweroff) poweroff= ;;
    root=*) root=${arg#root=} ;;
    rootfstype=*) rootfstype=${arg#rootfstype=} ;;
    rootflags=*) rootflags=${arg#rootflags=} ;;
    rootdelay=*) rootdelay=${arg#rootdelay=} ;;
    init=*) init=${arg#init=} ;;
    rw) rootmode=rw ;;
    ro) rootmode=ro ;;
    esac
done

# The initramfs is the kernel's "rootfs" mount; a disk root is anything else.
mounted() { grep -q "^[^ ]* $1 $2" /proc/mounts; }
switching=
[ -n "$root" ] && mounted / rootfs && switching=1

# The marker says "the init that runs the command is up": on a disk root, that is the disk's.
[ -z "$switching" ] && echo SKIFF-INIT-READY

cmd=
[ -n "$cmd64" ] && cmd=$(echo "$cmd64" | base64 -d)
mounted /dev || mount -t devtmpfs devtmpfs /dev
mounted /sys || mount -t sysfs sysfs /sys
mounted /tmp || mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts && { mounted /dev/pts || mount -t devpts devpts /dev/pts; }
if [ -e /etc/skiff/modules ]; then
    while read -r module; do
        insmod "/lib/modules/$module" 2>/dev/null
    done </etc/skiff/modules
fi

# The device node of $root once it exists (LABEL=/UUID= through findfs), else nothing.
root_device() {
    case "$root" in
    LABEL=* | UUID=*) findfs "$root" 2>/dev/null ;;
    *) [ -b "$root" ] && echo "$root" ;;
    esac
}

# Mounts $root on /newroot and switch_roots into it; returns only on failure.
switch_to_root() {
    tries=$((rootdelay * 10))
    while ! dev=$(root_device) || [ -z "$dev" ]; do
        if [ "$tries" -le 0 ]; then
            echo "skiff init: root device $root did not appear within ${rootdelay} s"
            return 1
        fi
        tries=$((tries - 1))
        usleep 100000
    done
    options=$rootmode${rootflags:+,$rootflags}
    mkdir -p /newroot
    if ! mount ${rootfstype:+-t "$rootfstype"} -o "$options" "$dev" /newroot; then
        echo "skiff init: cannot mount $dev ($root) on /newroot"
        return 1
    fi
    if [ ! -x "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
        echo "skiff init: $root has no $init"
        umount /newroot
        return 1
    fi
    # The kernel's file systems go along, as a distribution's initramfs moves them.
    for fs in /dev /proc /sys; do
        mkdir -p "/newroot$fs" 2>/dev/null
        mount --move "$fs" "/newroot$fs" 2>/dev/null || umount -l "$fs"
    done
    umount /tmp 2>/dev/null
    exec switch_root /newroot "$init"
}

if [ -n "$switching" ]; then
    switch_to_root
    # Only failures get here: without a command, a rescue shell; with one, power off.
    [ -z "$cmd" ] && setsid cttyhack sh
elif [ -n "$cmd" ]; then
    sh -c "$cmd"
    echo "SKIFF-GUEST-EXIT status=$?"
else
    setsid cttyhack sh
fi
# Give the UART a moment to send what is still in its buffer before the power goes.
usleep 20000
[ -n "$poweroff" ] && poweroff -f
while :; do sleep 3600; done
