#!/usr/bin/env bash
# Builds the test image: Debian 12 (debootstrap) with cloud-init and openssh-server on a raw
# disk that boots with BIOS (GRUB i386-pc, BIOS boot partition) and UEFI (GRUB x86_64-efi, the
# removable path EFI/BOOT/BOOTX64.EFI, so no NVRAM entry is needed), compressed with zstd.
#
#   bash scripts/build-test-image.sh [OUT-FILE]    (default: /var/cache/farrier/images/debian-12.raw.zst)
#
# Cached: an existing OUT-FILE whose recorded key (this script's hash) matches is kept.
# Needs root, debootstrap, sfdisk, mkfs.vfat, losetup and the Debian mirror apt uses.
set -euo pipefail
out=${1:-/var/cache/farrier/images/debian-12.raw.zst}
size=${FARRIER_TEST_IMAGE_SIZE:-2G}
mirror=${FARRIER_DEBIAN_MIRROR:-$(awk '/^URIs:/ && $2 ~ /debian$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
key=$( { cat "$0"; echo "$size $mirror"; } | sha256sum | cut -c1-16)
if [ -s "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
    echo "build-test-image: up to date ($out)"
    exit 0
fi
for tool in debootstrap sfdisk mkfs.vfat mkfs.ext4 losetup zstd; do
    command -v $tool >/dev/null || { echo "build-test-image: needs $tool (bash scripts/install-deps.sh)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/farrier-image.XXXXXX)
mnt=$work/root
loop=""
cleanup() {
    for m in dev/pts dev proc sys boot/efi ""; do mountpoint -q "$mnt/$m" 2>/dev/null && umount -l "$mnt/$m"; done
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
img=$work/disk.raw
truncate -s "$size" "$img"
# GPT: BIOS boot (GRUB core), EFI system, root.
sfdisk -q "$img" <<'PARTS'
label: gpt
size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios
size=100MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=efi
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
PARTS
loop=$(losetup --find --show --partscan "$img")
mkfs.vfat -F 32 -n EFI "${loop}p2" >/dev/null
mkfs.ext4 -q -L root "${loop}p3"
mkdir -p "$mnt"
mount "${loop}p3" "$mnt"
echo "build-test-image: debootstrap bookworm from $mirror"
debootstrap --variant=minbase \
    --include=linux-image-amd64,systemd-sysv,udev,cloud-init,openssh-server,isc-dhcp-client,ifupdown,netbase,iproute2,grub-pc-bin,grub-efi-amd64-bin,grub2-common,e2fsprogs,dosfstools,ca-certificates \
    bookworm "$mnt" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
mkdir -p "$mnt/boot/efi"
mount "${loop}p2" "$mnt/boot/efi"
for m in dev dev/pts proc sys; do mount --bind "/$m" "$mnt/$m"; done
root_uuid=$(blkid -s UUID -o value "${loop}p3")
efi_uuid=$(blkid -s UUID -o value "${loop}p2")
cat > "$mnt/etc/fstab" <<EOF
UUID=$root_uuid / ext4 errors=remount-ro 0 1
UUID=$efi_uuid /boot/efi vfat umask=0077 0 2
EOF
echo debian > "$mnt/etc/hostname"
# Any first NIC gets DHCP (cloud-init also writes its fallback network config).
cat > "$mnt/etc/network/interfaces" <<'EOF'
auto lo
iface lo inet loopback
source /etc/network/interfaces.d/*
EOF
# GRUB on the serial console too, with a short timeout.
cat >> "$mnt/etc/default/grub" <<'EOF'
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 net.ifnames=0"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
EOF
chroot "$mnt" grub-install --target=i386-pc "$loop" >/dev/null 2>&1
chroot "$mnt" grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram >/dev/null 2>&1
chroot "$mnt" update-grub >/dev/null 2>&1
# Only the datasource Farrier configures at deploy; no waiting for clouds that are not there.
echo 'datasource_list: [ NoCloud, None ]' > "$mnt/etc/cloud/cloud.cfg.d/01-farrier-datasources.cfg"
chroot "$mnt" systemctl enable serial-getty@ttyS0.service >/dev/null 2>&1 || true
chroot "$mnt" apt-get clean
rm -f "$mnt"/etc/ssh/ssh_host_*  # made fresh on first boot by cloud-init
: > "$mnt/etc/machine-id"
sync
cleanup_mounts() { for m in dev/pts dev proc sys boot/efi ""; do umount "$mnt/$m"; done; }
cleanup_mounts
losetup -d "$loop"
loop=""
mkdir -p "$(dirname "$out")"
zstd -q -T0 -3 -f "$img" -o "$out.tmp"
mv "$out.tmp" "$out"
echo "$key" > "$out.key"
echo "build-test-image: built $out ($(du -h "$out" | cut -f1) compressed, $size raw)"
