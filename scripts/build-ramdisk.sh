#!/usr/bin/env bash
# Builds the Farrier ramdisk: Debian 12's kernel (linux-image-amd64) and an initramfs with
# busybox-static, dropbear (rescue SSH), the NIC and storage modules, and the `farrier` binary
# with its shared libraries, whose init runs `farrier agent`.
#
#   bash scripts/build-ramdisk.sh [OUT-DIR]      (default: .build/ramdisk)
#
# Output: OUT-DIR/vmlinuz, OUT-DIR/initrd.img, OUT-DIR/burnin.img (the commissioning tests'
# tools: stress-ng, memtester, smartctl and their libraries, an archive the boot script loads
# after initrd.img only for commissionings that run them), OUT-DIR/manifest.txt (package
# versions, sizes, sha256). Cached: when the inputs (this script, the package versions, the farrier binary) are
# unchanged, nothing is rebuilt. Reproducible: sorted cpio, fixed timestamps, gzip -n.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.build/ramdisk}
bin=${FARRIER_BIN:-$root/.build/debug/farrier}
cache=${FARRIER_RAMDISK_CACHE:-/var/cache/farrier/ramdisk-debs}
[ -x "$bin" ] || { echo "build-ramdisk: $bin not found; run swift build --product farrier first" >&2; exit 1; }
for tool in apt-get dpkg-deb cpio depmod ldd strip gzip zstd mtools stress-ng memtester smartctl; do
    command -v $tool >/dev/null || { echo "build-ramdisk: needs $tool (bash scripts/install-deps.sh)" >&2; exit 1; }
done

# Package versions pin the build; the kernel is whatever linux-image-amd64 depends on.
apt-get update -qq >/dev/null 2>&1 || true
kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kernel_pkg" ] || { echo "build-ramdisk: cannot resolve linux-image-amd64" >&2; exit 1; }
pkgs=("$kernel_pkg" busybox-static dropbear-bin libtomcrypt1 libtommath1)
versions=$(for p in "${pkgs[@]}"; do printf '%s=%s\n' "$p" "$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')"; done)
# The tests' tools come from this host's packages (scripts/install-deps.sh installs them).
tools=$(dpkg-query -W -f='${Package}=${Version}\n' stress-ng memtester smartmontools)
key=$( { cat "$0"; echo "$versions"; echo "$tools"; sha256sum "$bin" | cut -d' ' -f1; } | sha256sum | cut -c1-16)
if [ -f "$out/manifest.txt" ] && grep -q "^key=$key$" "$out/manifest.txt" && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ -s "$out/burnin.img" ]; then
    echo "build-ramdisk: up to date ($out, key $key)"
    exit 0
fi

work=$(mktemp -d /tmp/farrier-ramdisk.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache" "$out"
(cd "$cache" && for p in "${pkgs[@]}"; do ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -q -o APT::Sandbox::User=root "$p" >/dev/null; done)
ex="$work/extract"
mkdir -p "$ex"
for p in "${pkgs[@]}"; do dpkg-deb -x "$(ls -1 "$cache/${p}"_*.deb | sort | tail -1)" "$ex"; done
kver=$(ls "$ex/lib/modules" | head -1)
cp "$ex/boot/vmlinuz-$kver" "$work/vmlinuz"

rd="$work/root"
mkdir -p "$rd"/{bin,sbin,etc,proc,sys,dev,run,tmp,root/.ssh,mnt,usr/bin,usr/sbin,lib64,lib/modules,etc/dropbear,usr/share/udhcpc}
cp "$ex/bin/busybox" "$rd/bin/busybox"
for applet in $("$rd/bin/busybox" --list); do
    [ -e "$rd/bin/$applet" ] || ln -s busybox "$rd/bin/$applet"
done
ln -s ../../bin/busybox "$rd/usr/bin/env"  # the agent starts helpers through /usr/bin/env
# Kernel modules: NICs and storage the issue lists, with what they depend on.
# ext4 needs crc32c at mount time (a soft dependency --show-depends does not list); vfat its code pages.
mods="virtio_pci virtio_net virtio_blk virtio_scsi e1000 e1000e igb ixgbe i40e mlx5_core ahci nvme sd_mod ext4 vfat af_packet crc32c_generic crc32c-intel libcrc32c nls_cp437 nls_ascii nls_utf8"
mkdir -p "$rd/lib/modules/$kver"
cp "$ex/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$rd/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$ex" "$kver"
need=$(for m in $mods; do modprobe -d "$ex" -S "$kver" --show-depends "$m" 2>/dev/null | awk '/^insmod/ {print $2}'; done | sort -u)
for f in $need; do
    rel=${f#"$ex"}
    mkdir -p "$rd$(dirname "$rel")"
    cp "$f" "$rd$rel"
done
depmod -b "$rd" "$kver"

# farrier and dropbear with their shared libraries (from this Debian 12 host and the packages).
# ROOT (default: the ramdisk's) is where they go; a library the ramdisk already has is not
# copied again into another root.
copy_with_libs() {
    local file=$1 dest=$2 into=${3:-$rd}
    mkdir -p "$into$(dirname "$dest")"
    cp "$file" "$into$dest"
    strip --strip-debug "$into$dest" 2>/dev/null || true
    local libs
    libs=$(LD_LIBRARY_PATH="$ex/usr/lib/x86_64-linux-gnu" ldd "$file")
    if echo "$libs" | grep -q "not found"; then
        echo "build-ramdisk: $file needs a library this host lacks: $(echo "$libs" | grep "not found")" >&2
        exit 1
    fi
    echo "$libs" | awk '/=> \// {print $3} /^\s*\/lib64/ {print $1}' | while read -r lib; do
        local target=${lib#"$ex"}  # libraries from the unpacked packages go where the package puts them
        [ -e "$rd$target" ] && continue
        [ -e "$into$target" ] && continue
        mkdir -p "$into$(dirname "$target")"
        cp -L "$lib" "$into$target"
        strip --strip-debug "$into$target" 2>/dev/null || true
    done
}
copy_with_libs "$bin" /usr/bin/farrier
copy_with_libs "$ex/usr/sbin/dropbear" /usr/sbin/dropbear
copy_with_libs "$(command -v zstd)" /usr/bin/zstd   # raw.zst images (busybox has no zstd)
copy_with_libs "$(command -v mtools)" /usr/bin/mtools   # the config drive's files, written without mounting it
ln -s mtools "$rd/usr/bin/mcopy"
# mtools converts file names to the FAT's code page (850) with iconv: glibc's module for it.
gconv=$(ls -d /usr/lib/*-linux-gnu/gconv | head -1)  # where glibc looks (its built-in GCONV path)
mkdir -p "$rd$gconv"
cp "$gconv/IBM850.so" "$rd$gconv/"
printf 'alias\tCP850//\tIBM850//\nalias\t850//\tIBM850//\nmodule\tIBM850//\tINTERNAL\tIBM850\t1\nmodule\tINTERNAL\tIBM850//\tIBM850\t1\n' > "$rd$gconv/gconv-modules"
[ -e "$rd/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$rd/lib64/"
# Name resolution and users for glibc and dropbear.
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$rd/etc/passwd"
printf 'root:x:0:\n' > "$rd/etc/group"
printf '/bin/sh\n' > "$rd/etc/shells"
printf 'hosts: files dns\n' > "$rd/etc/nsswitch.conf"

cat > "$rd/usr/share/udhcpc/default.script" <<'SCRIPT'
#!/bin/sh
# udhcpc hook: configure the interface from the lease.
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        : > /etc/resolv.conf
        for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
        ;;
esac
exit 0
SCRIPT
chmod 755 "$rd/usr/share/udhcpc/default.script"

cat > "$rd/init" <<'INIT'
#!/bin/sh
# Farrier ramdisk init: modules, network, then the agent. The console stays usable.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
echo "farrier-ramdisk: $(uname -r), loading modules"
for m in crc32c_generic crc32c-intel libcrc32c virtio_pci virtio_net virtio_blk virtio_scsi e1000 e1000e igb ixgbe i40e mlx5_core ahci nvme sd_mod ext4 vfat nls_cp437 nls_ascii nls_utf8 af_packet; do
    modprobe -q "$m" 2>/dev/null
done
ip link set lo up
# DHCP on every Ethernet interface with a carrier (bounded: 3 tries each).
for n in /sys/class/net/*; do
    i=${n##*/}; [ "$i" = lo ] && continue
    ip link set "$i" up
done
sleep 1
for n in /sys/class/net/*; do
    i=${n##*/}; [ "$i" = lo ] && continue
    udhcpc -i "$i" -n -q -t 3 -T 2 -s /usr/share/udhcpc/default.script && break
done
hostname farrier-ramdisk
echo "farrier-ramdisk: network up: $(ip -4 -o addr show | awk '{print $2, $4}' | tr '\n' ' ')"
farrier agent
echo "farrier-ramdisk: agent exited with $?; the console is a shell"
while true; do setsid -c sh </dev/console >/dev/console 2>&1; done
INIT
chmod 755 "$rd/init"

# The tests' tools, a second archive over the first: only what the ramdisk lacks.
bi="$work/burnin"
mkdir -p "$bi"
copy_with_libs "$(command -v stress-ng)" /usr/bin/stress-ng "$bi"
copy_with_libs "$(command -v memtester)" /usr/sbin/memtester "$bi"
copy_with_libs "$(command -v smartctl)" /usr/sbin/smartctl "$bi"
# smartctl names drives from its database; without it only the generic names.
[ -f /usr/share/smartmontools/drivedb.h ] && { mkdir -p "$bi/usr/share/smartmontools"; cp /usr/share/smartmontools/drivedb.h "$bi/usr/share/smartmontools/"; }

# Reproducible archives: sorted names, fixed times, no owners but root.
archive() {
    find "$1" -exec touch -h -d @0 {} +
    (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) | gzip -n -6 > "$2"
}
archive "$rd" "$work/initrd.img"
archive "$bi" "$work/burnin.img"
# A heavy tool must be seen, not shipped on every commissioning boot silently.
budget=$((30 << 20))
[ "$(stat -c %s "$work/burnin.img")" -le $budget ] || { echo "build-ramdisk: burnin.img is over its 30 MiB budget: $(stat -c %s "$work/burnin.img") bytes" >&2; exit 1; }
install -m 0644 "$work/vmlinuz" "$out/vmlinuz"
install -m 0644 "$work/initrd.img" "$out/initrd.img"
install -m 0644 "$work/burnin.img" "$out/burnin.img"
{
    echo "key=$key"
    echo "kernel=$kver"
    echo "$versions"
    echo "vmlinuz_bytes=$(stat -c %s "$out/vmlinuz") sha256=$(sha256sum "$out/vmlinuz" | cut -d' ' -f1)"
    echo "initrd_bytes=$(stat -c %s "$out/initrd.img") sha256=$(sha256sum "$out/initrd.img" | cut -d' ' -f1)"
    echo "$tools"
    echo "burnin_bytes=$(stat -c %s "$out/burnin.img") sha256=$(sha256sum "$out/burnin.img" | cut -d' ' -f1)"
    for f in usr/bin/stress-ng usr/sbin/memtester usr/sbin/smartctl; do echo "burnin_${f##*/}_bytes=$(stat -c %s "$bi/$f")"; done
} > "$out/manifest.txt"
echo "build-ramdisk: built $out (kernel $kver, initrd $(du -h "$out/initrd.img" | cut -f1))"
