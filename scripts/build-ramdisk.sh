#!/usr/bin/env bash
# Builds the Farrier ramdisk: Debian 12's kernel (linux-image-amd64) and an initramfs with
# busybox-static, dropbear (rescue SSH), the NIC and storage modules, and the `farrier` binary
# with its shared libraries, whose init runs `farrier agent`.
#
#   bash scripts/build-ramdisk.sh [OUT-DIR]      (default: .build/ramdisk)
#
# Output: OUT-DIR/vmlinuz, OUT-DIR/initrd.img, OUT-DIR/manifest.txt (package versions, sizes,
# sha256). Cached: when the inputs (this script, the package versions, the farrier binary) are
# unchanged, nothing is rebuilt. Reproducible: sorted cpio, fixed timestamps, gzip -n.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.build/ramdisk}
bin=${FARRIER_BIN:-$root/.build/debug/farrier}
cache=${FARRIER_RAMDISK_CACHE:-/var/cache/farrier/ramdisk-debs}
[ -x "$bin" ] || { echo "build-ramdisk: $bin not found; run swift build --product farrier first" >&2; exit 1; }
for tool in apt-get dpkg-deb cpio depmod ldd strip gzip zstd mtools; do
    command -v $tool >/dev/null || { echo "build-ramdisk: needs $tool (bash scripts/install-deps.sh)" >&2; exit 1; }
done

# Package versions pin the build; the kernel is whatever linux-image-amd64 depends on.
apt-get update -qq >/dev/null 2>&1 || true
kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kernel_pkg" ] || { echo "build-ramdisk: cannot resolve linux-image-amd64" >&2; exit 1; }
pkgs=("$kernel_pkg" busybox-static dropbear-bin libtomcrypt1 libtommath1)
versions=$(for p in "${pkgs[@]}"; do printf '%s=%s\n' "$p" "$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')"; done)
key=$( { cat "$0"; echo "$versions"; sha256sum "$bin" | cut -d' ' -f1; } | sha256sum | cut -c1-16)
if [ -f "$out/manifest.txt" ] && grep -q "^key=$key$" "$out/manifest.txt" && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
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
copy_with_libs() {
    local file=$1 dest=$2
    cp "$file" "$rd$dest"
    strip --strip-debug "$rd$dest" 2>/dev/null || true
    LD_LIBRARY_PATH="$ex/usr/lib/x86_64-linux-gnu" ldd "$file" | awk '/=> \// {print $3} /^\s*\/lib64/ {print $1}' | while read -r lib; do
        local target=${lib#"$ex"}  # libraries from the unpacked packages go where the package puts them
        [ -e "$rd$target" ] && continue
        mkdir -p "$rd$(dirname "$target")"
        cp -L "$lib" "$rd$target"
        strip --strip-debug "$rd$target" 2>/dev/null || true
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

# Reproducible archive: sorted names, fixed times, no owners but root.
find "$rd" -exec touch -h -d @0 {} +
(cd "$rd" && find . -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) | gzip -n -6 > "$work/initrd.img"
install -m 0644 "$work/vmlinuz" "$out/vmlinuz"
install -m 0644 "$work/initrd.img" "$out/initrd.img"
{
    echo "key=$key"
    echo "kernel=$kver"
    echo "$versions"
    echo "vmlinuz_bytes=$(stat -c %s "$out/vmlinuz") sha256=$(sha256sum "$out/vmlinuz" | cut -d' ' -f1)"
    echo "initrd_bytes=$(stat -c %s "$out/initrd.img") sha256=$(sha256sum "$out/initrd.img" | cut -d' ' -f1)"
} > "$out/manifest.txt"
echo "build-ramdisk: built $out (kernel $kver, initrd $(du -h "$out/initrd.img" | cut -f1))"
