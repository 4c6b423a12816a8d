#!/usr/bin/env bash
# DHCP DORA rate at the point where 1 % of exchanges drop, for Farrier (durable leases), Kea
# (memfile, persist=true) and dnsmasq (lease file), over the same veth with the same client.
#
# perfdhcp runs in relay mode (unicast to the server, giaddr set) from namespace frbdc; each
# server runs alone in namespace frbds. The offered rate ramps up (STEP_SECONDS per step) until
# more than 1 % of DISCOVER-OFFER or REQUEST-ACK exchanges drop twice in a row; the last rate
# under 1 % counts. Each server ramps REPEAT (3) times, alternating; the median counts.
# Last line: ratio farrier/kea=… farrier/dnsmasq=…
# Needs root, kea-dhcp4-server, kea-admin (perfdhcp), dnsmasq-base, and a release build of farrier
# (built here if missing). perfdhcp and the server share this machine's cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="/opt/swift/usr/bin:$PATH"
farrier=${FARRIER_BIN:-$root/.build/release/farrier}
[ -x "$farrier" ] || (cd "$root" && /opt/swift/usr/bin/swift build -c release --product farrier >/dev/null)
step=${STEP_SECONDS:-5}
repeat=${REPEAT:-3}
work=$(mktemp -d)
s=frbds$$ c=frbdc$$
pids=()
stop_servers() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
cleanup() { stop_servers; ip netns del $s 2>/dev/null || true; ip netns del $c 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
command -v kea-dhcp4 >/dev/null || { echo "needs kea-dhcp4-server"; exit 1; }
ip netns add $s; ip netns add $c
ip -n $s link set lo up; ip -n $c link set lo up
ip -n $s link add veth-s type veth peer name veth-c netns $c
ip -n $s addr add 198.19.0.1/16 dev veth-s; ip -n $c addr add 198.19.0.2/16 dev veth-c
ip -n $s link set veth-s up; ip -n $c link set veth-c up

cat > "$work/kea.json" <<JSON
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "veth-s" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "memfile", "persist": true, "name": "$work/kea-leases4.csv", "lfc-interval": 0 },
  "valid-lifetime": 4000, "renew-timer": 1000, "rebind-timer": 2000, "authoritative": true,
  "subnet4": [ { "id": 1, "subnet": "198.19.0.0/16", "pools": [ { "pool": "198.19.1.0 - 198.19.255.254" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "$work/kea.log" } ], "severity": "WARN" } ] } }
JSON
start() {
    case $1 in
    farrier) ip netns exec $s "$farrier" server --data-dir "$work/farrier" --log-level warning --tftp-listen "" \
                 --http-listen 127.0.0.1:18080 --grpc-listen 127.0.0.1:17700 --dhcp-interface veth-s \
                 --dhcp-subnet 198.19.0.0/16,pool=198.19.1.0-198.19.255.254,lease=4000 >"$work/farrier.log" 2>&1 & pids+=($!) ;;
    kea) KEA_LOCKFILE_DIR=$work KEA_PIDFILE_DIR=$work ip netns exec $s kea-dhcp4 -c "$work/kea.json" >"$work/kea.out" 2>&1 & pids+=($!) ;;
    dnsmasq) ip netns exec $s dnsmasq --keep-in-foreground --port=0 --interface=veth-s --bind-interfaces --no-ping \
                 --dhcp-range=198.19.1.0,198.19.255.254,255.255.0.0,4000s --dhcp-lease-max=100000 --dhcp-authoritative \
                 --quiet-dhcp --dhcp-leasefile="$work/dnsmasq.leases" --pid-file= --log-facility="$work/dnsmasq.log" & pids+=($!) ;;
    esac
    sleep 2
}
# Prints "achieved drop%" for one step at the offered rate.
step_at() {
    local out
    out=$(ip netns exec $c timeout $((step + 20)) perfdhcp -4 -g single -l veth-c -r "$1" -R 60000 -p "$step" 198.19.0.1 2>&1 || true)
    echo "$out" | python3 -c '
import re, sys
t = sys.stdin.read()
rate = re.search(r"Rate: ([0-9.]+)", t)
sent = [int(x) for x in re.findall(r"sent packets: (\d+)", t)]
drops = [int(x) for x in re.findall(r"drops: (\d+)", t)]
pct = max((d * 100.0 / s if s else 100.0) for s, d in zip(sent, drops)) if sent else 100.0
print(f"{float(rate.group(1)) if rate else 0:.0f} {pct:.2f}")'
}
rcvbuf_errors() { ip netns exec "$1" nstat -az UdpRcvbufErrors | awk '/UdpRcvbufErrors/ {print $2}'; }
ramp() {  # server, rates…
    local name=$1 best=0; shift
    start "$name"
    for r in "$@"; do
        # A step over 1 % is run once more before the ramp stops: on a shared 2-core machine
        # one noisy step should not decide the result (the same rule for every server).
        local ok=0
        for _ in 1 2; do
            local cb sb
            cb=$(rcvbuf_errors $c) sb=$(rcvbuf_errors $s)
            read -r got pct < <(step_at "$r")
            # Where packets were lost for want of socket buffer: the client's socket (replies
            # arriving faster than perfdhcp reads them) or the server's (requests).
            echo "  $name offered $r/s: $got DORA/s, drops $pct % (socket overflows: client $(( $(rcvbuf_errors $c) - cb )), server $(( $(rcvbuf_errors $s) - sb )))" >&2
            if python3 -c "import sys; sys.exit(0 if $pct <= 1.0 else 1)"; then ok=1; break; fi
        done
        if [ $ok = 1 ]; then best=$got; else break; fi
    done
    stop_servers
    rm -rf "$work/farrier" "$work/kea-leases4.csv" "$work/dnsmasq.leases"
    echo "$best"
}
rates=(1000 2000 3000 4000 5000 6000 7000 8000 9000 10000 11000 12000 13000 14000 16000 18000 20000 24000)
# Each server ramps REPEAT times, the servers taking turns round by round, and the median counts:
# one ramp ends at the first step that drops over 1 % twice, and on this shared 2-core machine
# the client's own socket sometimes overflows on a burst, so a single ramp can end early.
f=() k=() d=()
for round in $(seq "$repeat"); do
    f+=("$(ramp farrier "${rates[@]}")")
    k+=("$(ramp kea "${rates[@]}")")
    d+=("$(ramp dnsmasq 100 200 400 600 800 1000 1500 2000 3000)")
    echo "round $round: farrier ${f[-1]}  kea ${k[-1]}  dnsmasq ${d[-1]}" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
farrier_rate=$(median "${f[@]}") kea_rate=$(median "${k[@]}") dnsmasq_rate=$(median "${d[@]}")
echo "DORA/s at <= 1 % drops (${step}s steps, relay mode, 60000 clients), median of $repeat ramps: farrier $farrier_rate (${f[*]})  kea $kea_rate (${k[*]})  dnsmasq $dnsmasq_rate (${d[*]})"
python3 -c "print(f'ratio farrier/kea={$farrier_rate/max($kea_rate,1):.2f} farrier/dnsmasq={$dnsmasq_rate and $farrier_rate/$dnsmasq_rate or 0:.2f}')"
