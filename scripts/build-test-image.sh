#!/usr/bin/env bash
# Builds the test image: Debian 12 (debootstrap) with cloud-init and openssh-server on a raw GPT
# disk that boots with BIOS (syslinux's gptmbr and extlinux on the root partition) and with UEFI
# (a standalone GRUB at the removable path EFI/BOOT/BOOTX64.EFI, so no NVRAM entry is needed),
# compressed with zstd. Partitions are reached through offset loop devices, so it needs no
# kernel partition scanning (not available in every container or VM).
#
#   bash scripts/build-test-image.sh [OUT-FILE]    (default: /var/cache/farrier/images/debian-12.raw.zst)
#
# Cached: an existing OUT-FILE whose recorded key (this script's hash) matches is kept.
# Needs root, debootstrap, sfdisk, mkfs.vfat, extlinux, losetup, zstd and the Debian mirror apt uses.
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
for tool in debootstrap sfdisk mkfs.vfat mkfs.ext4 losetup zstd extlinux blkid mcopy; do
    command -v $tool >/dev/null || { echo "build-test-image: needs $tool (bash scripts/install-deps.sh)" >&2; exit 1; }
done
gptmbr=/usr/lib/syslinux/mbr/gptmbr.bin
[ -f $gptmbr ] || { echo "build-test-image: needs $gptmbr (syslinux-common)" >&2; exit 1; }

work=$(mktemp -d /tmp/farrier-image.XXXXXX)
mnt=$work/root
loops=()
cleanup() {
    for m in dev/pts dev proc sys boot/efi ""; do
        if mountpoint -q "$mnt/$m" 2>/dev/null; then umount -l "$mnt/$m"; fi
    done
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
img=$work/disk.raw
truncate -s "$size" "$img"
# GPT: EFI system partition, root (legacy-BIOS-bootable, for gptmbr).
sfdisk -q "$img" <<'PARTS'
label: gpt
start=2048, size=100MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=efi
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root, attrs="LegacyBIOSBootable"
PARTS
dd if=$gptmbr of="$img" bs=440 count=1 conv=notrunc status=none
part() {  # a loop device for partition N of the image
    local line start sectors
    line=$(sfdisk --dump "$img" | grep "^$img$1 ")
    start=$(echo "$line" | sed -E 's/.*start= *([0-9]+).*/\1/')
    sectors=$(echo "$line" | sed -E 's/.*size= *([0-9]+).*/\1/')
    losetup --find --show --offset $((start * 512)) --sizelimit $((sectors * 512)) "$img"
}
efi=$(part 1); loops+=("$efi")
rootdev=$(part 2); loops+=("$rootdev")
mkfs.vfat -F 32 -n EFI "$efi" >/dev/null
# extlinux reads ext4 without the 64bit feature.
mkfs.ext4 -q -L root -O ^64bit "$rootdev"
mkdir -p "$mnt"
mount "$rootdev" "$mnt"
echo "build-test-image: debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$mnt" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2; tail -30 "$mnt/debootstrap/debootstrap.log" >&2 2>/dev/null; exit 1; }
mkdir -p "$mnt/boot/efi"
for m in dev dev/pts proc sys; do mount --bind "/$m" "$mnt/$m"; done
# The rest with apt inside the image, services kept from starting while it is built.
printf '#!/bin/sh\nexit 101\n' > "$mnt/usr/sbin/policy-rc.d"
chmod 755 "$mnt/usr/sbin/policy-rc.d"
echo "build-test-image: installing the kernel, cloud-init, openssh-server"
chroot "$mnt" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    linux-image-amd64 initramfs-tools systemd-sysv udev cloud-init openssh-server netplan.io systemd-resolved \
    netbase iproute2 grub-efi-amd64-bin e2fsprogs dosfstools ca-certificates python3-requests \
    dbus libpam-systemd iputils-ping >"$work/apt.log" 2>&1 || {
    tail -30 "$work/apt.log" >&2; exit 1; }
# logind (libpam-systemd, dbus): the BMC's soft off (ACPI power button) shuts down. The network, as
# in Debian's own cloud images: cloud-init hands the network-config to netplan, which has
# systemd-networkd carry it out (resolved for its DNS servers). Not ifupdown: with it, cloud-init
# 22.4 drops a bond's MAC, and ifenslave brings a bond that has DHCP up (and runs dhclient on it,
# with a random MAC) before it enslaves any NIC, so the bond got no lease at first boot (seen in
# the lab, issue 18 point 4). ping is for the lab's test of the networks (minbase has none).
rm -f "$mnt/usr/sbin/policy-rc.d"
root_uuid=$(blkid -s UUID -o value "$rootdev")
efi_uuid=$(blkid -s UUID -o value "$efi")
kver=$(ls "$mnt/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
[ -f "$mnt/boot/initrd.img-$kver" ] || chroot "$mnt" update-initramfs -c -k "$kver" >/dev/null
cmdline="root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200n8 net.ifnames=0"
cat > "$mnt/etc/fstab" <<FSTAB
UUID=$root_uuid / ext4 errors=remount-ro 0 1
UUID=$efi_uuid /boot/efi vfat umask=0077,nofail 0 2
FSTAB
echo debian > "$mnt/etc/hostname"
# BIOS: gptmbr, then extlinux on the root partition.
mkdir -p "$mnt/boot/extlinux"
extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1
# No waiting for a key at either boot loader: the BMC's SOL (ipmi_sim) connects to the VM's
# serial port with telnet, and its negotiation bytes reach the guest as input. Seen in CI: they
# came during GRUB's 1 s countdown, which stopped it, and lab-2 sat at the menu until its deploy
# timed out. extlinux: PROMPT 0 (its prompt only for a held Shift or Alt), TIMEOUT 1 (0.1 s; 0
# would wait for ever); GRUB: no countdown at all.
cat > "$mnt/boot/extlinux/extlinux.conf" <<EXTLINUX
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 1
LABEL debian
  KERNEL /boot/vmlinuz-$kver
  INITRD /boot/initrd.img-$kver
  APPEND $cmdline
EXTLINUX
# UEFI: a standalone GRUB that finds the root filesystem by its UUID.
mkdir -p "$mnt/boot/grub"
cat > "$mnt/boot/grub/grub.cfg" <<GRUBCFG
set timeout=0
set timeout_style=hidden
serial --speed=115200
terminal_input console serial
terminal_output console serial
menuentry 'Debian GNU/Linux 12' {
  search --no-floppy --fs-uuid --set=root $root_uuid
  linux /boot/vmlinuz-$kver $cmdline
  initrd /boot/initrd.img-$kver
}
GRUBCFG
printf 'search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n' "$root_uuid" > "$mnt/tmp/early.cfg"
chroot "$mnt" grub-mkstandalone -O x86_64-efi -o /tmp/BOOTX64.EFI \
    --modules="part_gpt ext2 fat normal linux search search_fs_uuid configfile serial terminal echo" \
    "boot/grub/grub.cfg=/tmp/early.cfg" >/dev/null
rm -f "$mnt/tmp/early.cfg"
# The ESP is written with mtools, straight into the image: no vfat mount needed on the build host.
esp="$img@@$(( $(sfdisk --dump "$img" | grep "^${img}1 " | sed -E 's/.*start= *([0-9]+).*/\1/') * 512 ))"
mmd -i "$esp" ::/EFI ::/EFI/BOOT
mcopy -i "$esp" "$mnt/tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
rm -f "$mnt/tmp/BOOTX64.EFI"
# Only the datasource Farrier configures at deploy; no waiting for clouds that are not there.
echo 'datasource_list: [ NoCloud, None ]' > "$mnt/etc/cloud/cloud.cfg.d/01-farrier-datasources.cfg"
# First boot under TCG: the locale module's locale-gen took about 25 s, and an RSA host key about
# 18 s. The image keeps C.UTF-8, and its host key is Ed25519 alone (what every OpenSSH since 6.5
# accepts).
cat > "$mnt/etc/cloud/cloud.cfg.d/02-farrier-first-boot.cfg" <<'CFG'
locale: false
ssh_genkeytypes: [ed25519]
CFG
mkdir -p "$mnt/etc/ssh/sshd_config.d"
echo 'HostKey /etc/ssh/ssh_host_ed25519_key' > "$mnt/etc/ssh/sshd_config.d/farrier-host-key.conf"
chroot "$mnt" systemctl enable serial-getty@ttyS0.service >/dev/null 2>&1 || true
chroot "$mnt" apt-get clean
rm -f "$mnt"/etc/ssh/ssh_host_*  # made fresh on first boot (cloud-init; the unit below if it did not)
mkdir -p "$mnt/etc/systemd/system/ssh.service.d"
# A hard power cycle soon after first boot (a BMC restart) can leave the keys cloud-init just
# wrote empty (ext4 had not flushed them yet): sshd would then refuse to start on every boot.
# Keys that do not parse are removed and made again, before each start. The unit's own check
# (sshd -t) fails on such keys, so the list is reset and the check goes after the repair. Then
# sync: a host key (or authorized key) a client may have seen is on disk before sshd answers, so
# a later hard cycle neither changes the key nor locks the user out.
cat > "$mnt/etc/systemd/system/ssh.service.d/farrier-host-keys.conf" <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'for k in /etc/ssh/ssh_host_*_key; do [ -e "$$k" ] || continue; ssh-keygen -l -f "$$k" >/dev/null 2>&1 && ssh-keygen -l -f "$$k.pub" >/dev/null 2>&1 || rm -f "$$k" "$$k.pub"; done; k=/etc/ssh/ssh_host_ed25519_key; [ -e $$k ] || ssh-keygen -q -t ed25519 -N "" -f $$k; exec sync'
ExecStartPre=/usr/sbin/sshd -t
UNIT
: > "$mnt/etc/machine-id"
# Free blocks still hold what debootstrap and apt unpacked and deleted (their .debs: about 230 MB
# that zstd cannot shrink). Discarding them punches holes in the image file through the loop
# device, so they read as zeros. sync first: ext4 does not trim blocks freed in a transaction not
# yet committed. Where discard is refused, a file of zeros fills the free space (written out before
# it is removed: delayed allocation would otherwise never write it).
sync
if ! fstrim -v "$mnt"; then
    dd if=/dev/zero of="$mnt/zero.fill" bs=1M conv=fsync status=none 2>/dev/null || true
    rm -f "$mnt/zero.fill"
fi
sync
for m in dev/pts dev proc sys ""; do umount "$mnt/$m"; done
for l in "${loops[@]}"; do losetup -d "$l"; done
loops=()
mkdir -p "$(dirname "$out")"
zstd -q -T0 -3 -f "$img" -o "$out.tmp"
mv "$out.tmp" "$out"
echo "$key" > "$out.key"
echo "build-test-image: built $out ($(du -h "$out" | cut -f1) compressed, $size raw)"
