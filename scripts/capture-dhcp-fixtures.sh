#!/usr/bin/env bash
# Captures DHCP packets from real clients into Tests/DHCPWireTests/Fixtures/ (run as root).
#
# In a network namespace of its own (198.18.250.0/24, inside the lab range), dnsmasq answers
# three clients while tcpdump records: dhclient, QEMU's iPXE ROM under SeaBIOS (BIOS), and OVMF's
# own EDK2 PXE client on a virtio NIC with no option ROM (UEFI). Every process and the namespace
# are removed on exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/Tests/DHCPWireTests/Fixtures"
work=$(mktemp -d)
ns=frfx$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    ip netns del "${ns}c" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip netns add "${ns}c"
ip -n "$ns" link set lo up
ip -n "$ns" link add br0 type bridge
ip -n "$ns" addr add 198.18.250.1/24 dev br0
ip -n "$ns" link set br0 up
ip -n "$ns" tuntap add dev tap0 mode tap
ip -n "$ns" link set tap0 master br0 up
ip -n "$ns" link add vc type veth peer name vc0 netns "${ns}c"
ip -n "$ns" link set vc master br0 up
ip -n "${ns}c" link set vc0 address 52:54:00:fa:00:01 up
ip netns exec "$ns" tcpdump -i br0 -U -s 0 -w "$work/cap.pcap" udp port 67 or udp port 68 2>/dev/null & pids+=($!)
ip netns exec "$ns" dnsmasq --no-daemon --port=0 --interface=br0 --bind-interfaces --no-ping \
    --dhcp-range=198.18.250.100,198.18.250.199,255.255.255.0,1h --dhcp-leasefile="$work/leases" \
    --dhcp-boot=stage1.ipxe,,198.18.250.1 --dhcp-option-force=60,PXEClient 2>"$work/dnsmasq.log" & pids+=($!)
sleep 1
# 1. dhclient (ISC 4.4, Debian 12): DISCOVER, REQUEST.
timeout 20 ip netns exec "${ns}c" dhclient -1 -v -lf "$work/dhclient.leases" -pf "$work/dhclient.pid" \
    -sf /bin/true vc0 2>"$work/dhclient.log" || true
kill "$(cat "$work/dhclient.pid" 2>/dev/null)" 2>/dev/null || true
# 2. QEMU iPXE ROM (BIOS). 3. OVMF PXE (UEFI, EDK2's own client: virtio NIC without iPXE ROM).
for fw in bios uefi; do
    args=(-accel tcg -m 256 -nographic -monitor none -no-reboot -boot n -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)
    if [ $fw = bios ]; then
        args+=(-device e1000,netdev=n0,mac=52:54:00:fa:00:02)
    else
        args+=(-bios /usr/share/ovmf/OVMF.fd -device virtio-net-pci,netdev=n0,mac=52:54:00:fa:00:03,romfile=)
    fi
    ip netns exec "$ns" qemu-system-x86_64 "${args[@]}" </dev/null >"$work/qemu-$fw.log" 2>&1 & qp=$!
    pids+=($qp)
    mac=$([ $fw = bios ] && echo 52:54:00:fa:00:02 || echo 52:54:00:fa:00:03)
    for _ in $(seq 120); do grep -q "DHCPACK.*$mac" "$work/dnsmasq.log" && break; sleep 0.5; done
    sleep 1
    kill $qp 2>/dev/null || true
done
sleep 1
python3 - "$work/cap.pcap" "$out" <<'PY'
import struct, sys, os
data = open(sys.argv[1], 'rb').read()
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
names = {'52:54:00:fa:00:01': 'dhclient', '52:54:00:fa:00:02': 'ipxe-bios', '52:54:00:fa:00:03': 'ovmf-pxe'}
types = {1: 'discover', 2: 'offer', 3: 'request', 5: 'ack', 6: 'nak'}
off = 24; seen = {}
while off + 16 <= len(data):
    incl = struct.unpack('<I', data[off+8:off+12])[0]
    pkt = data[off+16:off+16+incl]; off += 16 + incl
    if pkt[12:14] != b'\x08\x00': continue
    ihl = (pkt[14] & 15) * 4
    payload = pkt[14+ihl+8:]
    if len(payload) < 240 or payload[0] != 1: continue   # client messages only
    mac = ':'.join('%02x' % b for b in payload[28:34])
    t = None; i = 240
    while i < len(payload) and payload[i] != 255:
        if payload[i] == 0: i += 1; continue
        if payload[i] == 53: t = payload[i+2]
        i += 2 + payload[i+1]
    if mac not in names or t not in types: continue
    name = f"{names[mac]}-{types[t]}.bin"
    if name in seen: continue
    seen[name] = 1
    open(os.path.join(out, name), 'wb').write(payload)
    print(name, len(payload))
PY
