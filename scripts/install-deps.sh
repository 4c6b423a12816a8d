#!/usr/bin/env bash
# Installs what Farrier needs on Debian 12 (as root): the iPXE binaries it serves, and the real
# peers its tests and lab use. Swift itself is expected at /opt/swift or on PATH.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(
    ipxe                      # undionly.kpxe, ipxe.efi, snponly.efi served over TFTP/HTTP
    iproute2 curl python3 procps
    isc-dhcp-client udhcpc    # DHCP clients (tests)
    kea-admin                 # perfdhcp (tests, bench)
    tftp-hpa atftp            # TFTP clients (tests, bench)
    tcpdump                   # fixture capture
    qemu-system-x86 qemu-utils ipxe-qemu ovmf dnsmasq-base openipmi ipmitool   # lab, fixtures
)
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
