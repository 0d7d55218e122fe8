#!/bin/sh
# /init of the nine test VM (busybox, runs as PID 1).
#
# Fixed part of the initramfs; everything that changes per boot comes from the
# second cpio archive the harness appends: /run/config (shell variables),
# /run/lib.sh (check definitions) and /run/script.sh (what to run).
# Output for the host is on the serial console, in lines starting with "@@".
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
umask 022
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing
exec </dev/console >/dev/console 2>&1
echo "@@BOOTED $(cut -d' ' -f1 /proc/uptime)"

while read -r m; do
    insmod "/lib/modules/$m" || echo "@@WARN insmod $m failed"
done </lib/modules/order

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

. /run/config
. /lib/nine.sh

nine_trace_start
echo "@@MOUNTING $(cut -d' ' -f1 /proc/uptime) $NINE_OPTS"
if nine_mount /mnt; then
    echo "@@MOUNT OK $(grep ' /mnt ' /proc/mounts)"
    nine_snapshot mount
    cd /mnt
    sh -c ". /lib/nine.sh; . /run/script.sh"
    cd /
    nine_mark umount
    umount /mnt || { echo "@@WARN umount /mnt failed"; ls -l /proc/*/cwd /proc/*/fd 2>/dev/null | grep /mnt; }
    nine_snapshot umount
else
    echo "@@MOUNT FAIL"
    dmesg | tail -n 20 | sed 's/^/@@DMESG /'
    nine_snapshot mount
fi
nine_trace_dump
echo "@@DONE $(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
