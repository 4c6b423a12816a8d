#!/usr/bin/env bash
# DHCP DORA rate at <= 1 % drops, with no ceiling set by the bench, for Farrier (durable leases),
# Kea (memfile, persist=true) and dnsmasq (lease file), over the same veth with the same clients;
# and each server's CPU per 10 000 DORA at one rate they all get.
#
# perfdhcp runs in relay mode (unicast to the server, giaddr set) from namespace frbdc; each server
# runs alone in namespace frbds. A ramp offers START_RATE (2000/s) for STEP_SECONDS (5), then 1.5x
# the rate per step until a step fails or MAX_RATE (200 000/s) is reached; then it bisects between
# the last good and the first failing rate, BISECT_STEPS (4) times or until they are within 5 %.
# A step fails when over 1 % of DISCOVER-OFFER or REQUEST-ACK exchanges drop twice in a row (a
# step over 1 % is run once more: on a shared 2-core machine one noisy step should not decide).
# The DORA/s achieved at the highest good step counts. Each server ramps REPEAT (3) times, the
# servers taking turns; the median ramp counts. About 10 minutes at the defaults.
#
# Where the losses were: datagrams dropped for want of socket buffer (UdpRcvbufErrors) in the
# client's namespace and in the server's, over the lowest failing step (both of its runs). If the
# server's socket lost none and the client's did, the client was the limit and the rate is a
# lower bound, printed "farrier>=N" (so is a ramp that reaches MAX_RATE); otherwise the server was.
#
# Clients: CLIENTS (2) perfdhcp processes, each offering half the rate for half the 60 000
# clients, with MACs from its own base (perfdhcp -b mac=) and its own relay address (-l
# 198.19.0.2, 198.19.0.3; achieved rates and drops are added up). Two for every server, always:
# a single perfdhcp runs out of CPU near 20 000/s and loses replies in its one socket whenever it
# is preempted, which capped Farrier's ramps; choosing the client count from a first ramp would
# measure the servers with different loads on the same two cores. CLIENTS=1 gives one client.
#
# CPU: the server's utime+stime+cutime+cstime (/proc/PID/stat, in CLK_TCK ticks) over the first
# step of each ramp, START_RATE on a freshly started server, per 10 000 completed DORA; median of
# the REPEAT ramps. PID is the server itself: ip netns exec execs it, and the script checks that
# this PID owns the UDP port 67 socket and has the server's name before it measures.
# dnsmasq manages about 200-300/s here (it rewrites its whole lease file for every lease, so its
# CPU per lease grows with the leases it holds). It is kept, with a low ladder of its own: it
# ramps from DNSMASQ_START (100/s) by the same rules, about a minute a round; its CPU figure, at
# that rate, is printed for information only, and it is not in the ratio line.
# SERVERS (default "farrier kea dnsmasq") picks the servers; the ratio line needs farrier and kea.
# Last line:
#   ratio farrier/kea=<rate ratio> cpu_kea/farrier=<CPU ratio> farrier_bound=client|server
# Needs root, kea-dhcp4-server, kea-admin (perfdhcp), dnsmasq-base, and a release build of farrier
# (built here if missing). perfdhcp and the server share this machine's cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
export PATH="/opt/swift/usr/bin:$PATH"
servers=${SERVERS:-farrier kea dnsmasq}
farrier=${FARRIER_BIN:-$root/.build/release/farrier}
if [[ " $servers " == *" farrier "* ]]; then farrier=$(bench_farrier "$root"); fi
step=${STEP_SECONDS:-5}
repeat=${REPEAT:-3}
clients=${CLIENTS:-2}
start_rate=${START_RATE:-2000}
dnsmasq_start=${DNSMASQ_START:-100}
max_rate=${MAX_RATE:-200000}
bisect=${BISECT_STEPS:-4}
case $clients in 1 | 2) ;; *) echo "CLIENTS must be 1 or 2"; exit 1 ;; esac
for x in perfdhcp nstat ss; do command -v $x >/dev/null || { echo "needs $x"; exit 1; }; done
for name in $servers; do
    case $name in
    farrier) ;;
    kea) command -v kea-dhcp4 >/dev/null || { echo "needs kea-dhcp4-server"; exit 1; } ;;
    dnsmasq) command -v dnsmasq >/dev/null || { echo "needs dnsmasq-base"; exit 1; } ;;
    *) echo "unknown server $name in SERVERS"; exit 1 ;;
    esac
done
clk=$(getconf CLK_TCK)
work=$(mktemp -d)
s=frbds$$ c=frbdc$$
server_pid="" client_pids=()
cleanup() {
    local p
    for p in "${client_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${client_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -z "$server_pid" ] || stop_pid "$server_pid"
    ip netns del $s 2>/dev/null || true
    ip netns del $c 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
ip netns add $s; ip netns add $c
ip -n $s link set lo up; ip -n $c link set lo up
ip -n $s link add veth-s type veth peer name veth-c netns $c
ip -n $s addr add 198.19.0.1/16 dev veth-s
for ((i = 1; i <= clients; i++)); do ip -n $c addr add "198.19.0.$((i + 1))/16" dev veth-c; done
ip -n $s link set veth-s up; ip -n $c link set veth-c up

cat > "$work/kea.json" <<JSON
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "veth-s" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "memfile", "persist": true, "name": "$work/kea-leases4.csv", "lfc-interval": 0 },
  "valid-lifetime": 4000, "renew-timer": 1000, "rebind-timer": 2000, "authoritative": true,
  "subnet4": [ { "id": 1, "subnet": "198.19.0.0/16", "pools": [ { "pool": "198.19.1.0 - 198.19.255.254" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "$work/kea.log" } ], "severity": "WARN" } ] } }
JSON
# Started with ip netns exec itself in the background (no subshell, no function run in $(...)),
# so $! is the server's own PID: the cleanup trap and the CPU readings use exactly that process.
start_server() {
    case $1 in
    farrier) ip netns exec $s "$farrier" server --data-dir "$work/farrier" --log-level warning --tftp-listen "" \
                 --http-listen 127.0.0.1:18080 --grpc-listen 127.0.0.1:17700 --dhcp-interface veth-s \
                 --dhcp-subnet 198.19.0.0/16,pool=198.19.1.0-198.19.255.254,lease=4000 >"$work/farrier.log" 2>&1 & ;;
    kea) KEA_LOCKFILE_DIR=$work KEA_PIDFILE_DIR=$work ip netns exec $s kea-dhcp4 -c "$work/kea.json" >"$work/kea.log.out" 2>&1 & ;;
    dnsmasq) ip netns exec $s dnsmasq --keep-in-foreground --port=0 --interface=veth-s --bind-interfaces --no-ping \
                 --dhcp-range=198.19.1.0,198.19.255.254,255.255.0.0,4000s --dhcp-lease-max=100000 --dhcp-authoritative \
                 --quiet-dhcp --dhcp-leasefile="$work/dnsmasq.leases" --pid-file= --log-facility="$work/dnsmasq.log" & ;;
    esac
    server_pid=$!
    local comm
    case $1 in farrier) comm=$(basename "$farrier") ;; kea) comm=kea-dhcp4 ;; *) comm=$1 ;; esac
    comm=${comm:0:15}  # what /proc/PID/comm holds
    if ! wait_udp_bound $s 67 "$server_pid" 30 || [ "$(cat "/proc/$server_pid/comm")" != "$comm" ]; then
        echo "$1 (pid $server_pid) did not come up holding UDP port 67 itself:" >&2
        tail -n 20 "$work/$1".log* >&2 || true
        exit 1
    fi
}
stop_server() {
    stop_pid "$server_pid"
    server_pid=""
    rm -rf "$work/farrier" "$work"/kea-leases4.csv* "$work/dnsmasq.leases"
}
rcvbuf_errors() { ip netns exec "$1" nstat -asz UdpRcvbufErrors | awk '/UdpRcvbufErrors/ {print $2}'; }
# CLIENTS perfdhcp processes at once, sharing the offered rate $1; each writes its report to
# $work/perfdhcp<i>.out. Each is started directly (ip netns exec execs timeout, which runs
# perfdhcp), so cleanup can end them by PID; timeout bounds a step that would hang.
run_clients() {
    local i p
    client_pids=()
    for ((i = 1; i <= clients; i++)); do
        ip netns exec $c timeout $((step + 20)) perfdhcp -4 -g single -l "198.19.0.$((i + 1))" -b "mac=00:0c:0$i:00:00:00" \
            -r $(($1 / clients + (i <= $1 % clients ? 1 : 0))) -R $((60000 / clients)) -p "$step" 198.19.0.1 \
            >"$work/perfdhcp$i.out" 2>&1 &
        client_pids+=($!)
    done
    for p in "${client_pids[@]}"; do wait "$p" || true; done
    client_pids=()
}
# One step at offered rate $1 (name $2 for the log). Sets got (DORA/s achieved, all clients),
# pct (the worse drop % of DISCOVER-OFFER and REQUEST-ACK), cpu10k (server CPU seconds per
# 10 000 completed DORA) and cov, sov (socket overflows in the client's and the server's netns).
run_step() {
    local cb sb own0 kids0 own1 kids1
    cb=$(rcvbuf_errors $c) sb=$(rcvbuf_errors $s)
    read -r own0 kids0 < <(cpu_ticks "$server_pid")
    run_clients "$1"
    alive "$server_pid" || { echo "$2 exited during a step:" >&2; tail -n 20 "$work/$2".log* >&2 || true; exit 1; }
    read -r own1 kids1 < <(cpu_ticks "$server_pid")
    cov=$(($(rcvbuf_errors $c) - cb)) sov=$(($(rcvbuf_errors $s) - sb))
    read -r got pct cpu10k < <(python3 - "$((own1 + kids1 - own0 - kids0))" "$clk" "$work"/perfdhcp?.out <<'PY'
import re, sys
ticks, clk = int(sys.argv[1]), int(sys.argv[2])
rate, sent, drops, acks = 0.0, [0, 0], [0, 0], 0
for path in sys.argv[3:]:
    t = open(path).read()
    m = re.search(r"Rate: ([0-9.]+)", t)
    rate += float(m.group(1)) if m else 0.0
    s = [int(x) for x in re.findall(r"sent packets: (\d+)", t)]
    d = [int(x) for x in re.findall(r"drops: (\d+)", t)]
    r = [int(x) for x in re.findall(r"received packets: (\d+)", t)]
    if len(s) != 2 or len(d) != 2 or len(r) != 2:  # a client that failed: count the step as lost
        s, d, r = [1, 1], [1, 1], [0, 0]
    sent = [a + b for a, b in zip(sent, s)]
    drops = [a + b for a, b in zip(drops, d)]
    acks += r[1]
pct = max(d * 100.0 / s if s else 100.0 for s, d in zip(sent, drops))
print(f"{rate:.0f} {pct:.2f} {ticks / clk / max(acks, 1) * 10000:.3f}")
PY
    )
}
# Step at rate $2 for server $1, run once more if over 1 %. Sets ok (1 if a run was at most 1 %),
# got, pct, cpu10k of the run that counted, and scov, ssov: overflows summed over both runs.
try_rate() {
    local _
    ok=0 scov=0 ssov=0
    for _ in 1 2; do
        run_step "$2" "$1"
        scov=$((scov + cov)) ssov=$((ssov + sov))
        echo "  $1 offered $2/s: $got DORA/s, drops $pct % (socket overflows: client $cov, server $sov), server CPU $cpu10k s per 10k DORA" >&2
        if awk -v p="$pct" 'BEGIN {exit !(p <= 1.0)}'; then ok=1; return; fi
    done
}
# One ramp of server $1 from rate $2, on a fresh server; appends to $work/results:
#   name rate bound first_failing_rate client_overflows server_overflows cpu10k cpu_step_drop%
ramp() {
    local name=$1 r=$2 i mid good=0 good_got=0 bad=0 bad_cov=0 bad_sov=0 cpu="" cpu_pct="" bound
    start_server "$name"
    # Geometric: 1.5x a step. Bounded by MAX_RATE; 60 steps is a second bound for odd settings.
    for ((i = 0; i < 60; i++)); do
        try_rate "$name" "$r"
        [ "$i" != 0 ] || { cpu=$cpu10k cpu_pct=$pct; }
        if [ "$ok" = 1 ]; then
            good=$r good_got=$got
            [ "$r" -lt "$max_rate" ] || break
            r=$((r * 3 / 2 > r ? r * 3 / 2 : r + 1))
            r=$((r < max_rate ? r : max_rate))
        else
            bad=$r bad_cov=$scov bad_sov=$ssov
            break
        fi
    done
    # Bisection between the last good and the first failing rate.
    for ((i = 0; i < bisect && bad > 0; i++)); do
        [ $(((bad - good) * 20)) -ge "$good" ] || break
        mid=$(((good + bad) / 2))
        [ "$mid" -gt "$good" ] || break
        try_rate "$name" "$mid"
        if [ "$ok" = 1 ]; then good=$mid good_got=$got; else bad=$mid bad_cov=$scov bad_sov=$ssov; fi
    done
    stop_server
    if [ "$bad" = 0 ] || { [ "$bad_sov" = 0 ] && [ "$bad_cov" -gt 0 ]; }; then bound=client; else bound=server; fi
    echo "$name $good_got $bound $bad $bad_cov $bad_sov $cpu $cpu_pct" >> "$work/results"
    if [ "$bad" = 0 ]; then
        echo "  $name: $good_got DORA/s at <= 1 % drops, no failing step up to MAX_RATE: a lower bound" >&2
    else
        echo "  $name: $good_got DORA/s at <= 1 % drops; lowest failing step ${bad}/s, socket overflows there: client $bad_cov, server $bad_sov: $bound-bound" >&2
    fi
}
bench_header "$root"
: > "$work/results"
for round in $(seq "$repeat"); do
    for name in $servers; do
        if [ "$name" = dnsmasq ]; then ramp "$name" "$dnsmasq_start"; else ramp "$name" "$start_rate"; fi
    done
    echo "round $round: $(tail -n "$(wc -w <<<"$servers")" "$work/results" | awk '{printf "%s %s (%s-bound)  ", $1, $2, $3}')" >&2
done
python3 - "$work/results" "$servers" "$step" "$clients" "$start_rate" "$dnsmasq_start" <<'PY'
import sys
path, servers, step, clients, start, dstart = sys.argv[1], sys.argv[2].split(), *sys.argv[3:]
runs = {n: [] for n in servers}
for line in open(path):
    name, rate, bound, bad, cov, sov, cpu, cpu_pct = line.split()
    runs[name].append(dict(rate=float(rate), bound=bound, bad=int(bad), cov=int(cov), sov=int(sov),
                           cpu=float(cpu), cpu_pct=float(cpu_pct)))
def median_low(xs):
    return sorted(xs)[(len(xs) - 1) // 2]
med = {}
for n, rs in runs.items():
    m = sorted(rs, key=lambda r: r["rate"])[(len(rs) - 1) // 2]  # the median ramp, whose bound counts
    med[n] = dict(m, cpu=median_low([r["cpu"] for r in rs]))
print(f"DORA/s at <= 1 % drops ({step} s steps, relay mode, {clients} perfdhcp, 60000 clients), median of {len(runs[servers[0]])} ramps:")
for n in servers:
    m = med[n]
    where = (f"lowest failing step {m['bad']}/s lost {m['cov']} datagrams in the client's socket, {m['sov']} in the server's"
             if m["bad"] else "no failing step up to MAX_RATE, so a lower bound")
    ramps = " ".join(f"{r['rate']:.0f}" for r in runs[n])
    print(f"  {n}{'>=' if m['bound'] == 'client' else ' '}{m['rate']:.0f}  (ramps {ramps}; {where}: {m['bound']}-bound)")
cpus = []
for n in servers:
    at = dstart if n == "dnsmasq" else start
    note = "" if n != "dnsmasq" else ", information only"
    drops = max(r["cpu_pct"] for r in runs[n])
    cpus.append(f"{n} {med[n]['cpu']:.3f} (at {at}/s{note}; drops up to {drops:.2f} %)")
print("server CPU s per 10000 DORA (utime+stime+cutime+cstime over a ramp's first step), median: " + "  ".join(cpus))
if "farrier" in med and "kea" in med:
    f, k = med["farrier"], med["kea"]
    print(f"ratio farrier/kea={f['rate'] / max(k['rate'], 1):.2f} cpu_kea/farrier={k['cpu'] / max(f['cpu'], 1e-9):.2f} farrier_bound={f['bound']}")
else:
    print("ratio: needs farrier and kea in SERVERS")
PY
