#!/usr/bin/env bash
# Installs what Farrier needs on Debian 12 (as root): the iPXE binaries it serves, and the real
# peers its tests and lab use. Swift itself is expected at /opt/swift or on PATH.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(
    ipxe                      # undionly.kpxe, ipxe.efi, snponly.efi served over TFTP/HTTP
    iproute2 curl python3 procps
    python3-yaml              # network-config YAML read back as cloud-init reads it (unit tests)
    isc-dhcp-client udhcpc    # DHCP clients (tests)
    kea-admin                 # perfdhcp (tests, bench)
    tftp-hpa atftp            # TFTP clients (tests, bench)
    tcpdump                   # fixture capture
    qemu-system-x86 qemu-utils ipxe-qemu ovmf dnsmasq-base openipmi ipmitool   # lab, fixtures
    openssl                   # AES known-answer checks (IPMI tests)
    openssh-client            # farrier machine ssh; test keys
    zstd                      # raw.zst images (agent, tests)
    debootstrap fdisk dosfstools   # the test image (scripts/build-test-image.sh)
    cpio kmod binutils        # the ramdisk (scripts/build-ramdisk.sh): initramfs, depmod, strip
    extlinux syslinux-common mtools   # the test image: BIOS boot loader, the ESP without mounting it
    python3-venv              # the sushy-emulator venv (Redfish tests)
    kea-dhcp4-server tftpd-hpa nginx-light   # reference servers for bench/dhcp, bench/tftp, bench/http
    postgresql-15 postgresql-client-15       # the replicas' shared store (tests start their own server)
    lldpd                     # the lab's "switch": LLDP on the VMs' taps (inventory's LLDP neighbours)
    stress-ng memtester smartmontools   # commissioning tests: the agent runs them (tests), the ramdisk's burn-in overlay
    prometheus                # promtool: the SLO rules' checks and unit tests (deploy/prometheus)
    mtail                     # the log-based SLO: deploy/mtail's program over the server's log lines
    chromium chromium-driver python3-selenium   # the web console's browser test (headless)
)
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    # The reference servers are for benchmarks, run by hand in namespaces: never let their
    # packages start them as system services answering DHCP or TFTP (or sending LLDP) on this machine.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod 755 $policy; made_policy=1; fi
    apt-get install -y -q --no-install-recommends "${missing[@]}" || { [ $made_policy = 1 ] && rm -f $policy; exit 1; }
    [ $made_policy = 1 ] && rm -f $policy
    if command -v systemctl >/dev/null; then
        systemctl disable --now tftpd-hpa kea-dhcp4-server nginx postgresql lldpd prometheus mtail smartmontools >/dev/null 2>&1 || true
    fi
fi

# Redfish peer: sushy-tools (PyPI) in a venv of its own.
venv=/opt/farrier-peers/venv
if [ ! -x $venv/bin/sushy-emulator ]; then
    python3 -m venv $venv
    $venv/bin/pip install -q --disable-pip-version-check sushy-tools
fi
