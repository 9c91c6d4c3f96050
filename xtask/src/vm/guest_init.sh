#!/bin/busybox sh
# PID 1 of a `cargo xtask vm-test` guest. It mounts the host's root (9p,
# read-only) with tmpfs where tests write, bpffs, and the writable share
# `vmout` at /tmp/vmout; then runs /tmp/vmout/run.sh chrooted into the
# host's root and powers off. Results travel through the share only.
/bin/busybox mkdir -p /bin /proc /sys /dev /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do
  insmod "/modules/$m" || echo "init: insmod $m failed"
done
P9=trans=virtio,version=9p2000.L,msize=1048576
if ! mount -t 9p -o "$P9,ro,cache=loose" hostroot /newroot; then
  echo "init: mounting the host root failed"
  poweroff -f
fi
for d in tmp run var/tmp dev/shm; do mount -t tmpfs tmpfs "/newroot/$d"; done
mkdir -p /newroot/tmp/vmout
mount -t 9p -o "$P9" vmout /newroot/tmp/vmout
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mount -t bpf bpf /newroot/sys/fs/bpf
mount -t tracefs tracefs /newroot/sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
# Modules (nft, veth, cls_bpf, ...) load on demand from the kernel package.
# The kernel runs this helper in init's root, not the chroot: it enters the
# host's root to run modprobe on the package's module tree.
cat > /tl-modprobe <<'EOF2'
#!/bin/sh
exec /bin/chroot /newroot /usr/sbin/modprobe -d "$(cat /newroot/tmp/vmout/modules-dir)" "$@"
EOF2
chmod 755 /tl-modprobe
echo /tl-modprobe > /proc/sys/kernel/modprobe
chroot /newroot /bin/sh /tmp/vmout/run.sh
echo "init: run.sh exited $?"
sync
poweroff -f
