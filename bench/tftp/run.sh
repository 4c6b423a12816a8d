#!/usr/bin/env bash
# TFTP throughput of a 64 MiB file on loopback inside a namespace of its own, in one run, and the
# server's CPU seconds per GiB sent:
#   lockstep  blksize 1468, curl as client:            Farrier vs tftpd-hpa
#   windowed  blksize 1468 windowsize 8, atftp client: Farrier vs atftpd (the only Debian TFTP
#             server with RFC 7440; tftpd-hpa and dnsmasq ignore windowsize)
# Each transfer is checked with cmp; peer and Farrier runs alternate and the median of REPEAT
# runs counts (throughput and CPU each).
# CPU: the server process's utime+stime+cutime+cstime (/proc/PID/stat) over the transfer. The
# PID is the server itself (started by ip netns exec, which execs it; checked: it owns the UDP
# socket and has the server's name). Farrier and atftpd serve transfers on threads, which the
# process's times include. tftpd-hpa forks a child per transfer but ignores SIGCHLD, so the kernel
# reaps the child and its CPU never reaches the parent's cutime (it stays 0); a sampler reads each
# child's /proc stat every 10 ms during the transfer and its last reading counts, which misses
# at most the child's last 10 ms (so tftpd-hpa's figure is, if anything, low). Were children
# waited for, the larger of the sampled and the cutime figures counts, so nothing counts twice.
# Last line:
#   ratio lockstep=<farrier/tftpd-hpa> windowed=<farrier/atftpd> cpu_lockstep=<farrier/tftpd-hpa CPU per GiB>
# Needs root, tftpd-hpa, atftp and the farrier binary (swift build). atftpd conflicts with
# tftpd-hpa in apt, so its binary is unpacked from the .deb into the work directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
farrier=$(bench_farrier "$root")
repeat=${REPEAT:-5}
clk=$(getconf CLK_TCK)
work=$(mktemp -d)
ns=frbt$$
pids=() sampler_pid=""
cleanup() {
    local p
    [ -z "$sampler_pid" ] || { kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; }
    for p in "${pids[@]}"; do stop_pid "$p"; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
command -v in.tftpd >/dev/null || { echo "needs tftpd-hpa (in.tftpd)"; exit 1; }
(cd "$work" && apt-get download -q atftpd >/dev/null 2>&1 && dpkg-deb -x atftpd_*.deb atftpd-root) \
    || { echo "needs atftpd's .deb (apt-get download atftpd)"; exit 1; }
atftpd=$work/atftpd-root/usr/sbin/atftpd
mkdir -p "$work/root"
head -c $((${BENCH_MIB:-64} << 20)) /dev/urandom > "$work/root/blob.bin"
mkfifo "$work/tick"  # never written: the sampler's 10 ms wait is a read on it that times out
ip netns add "$ns"
ip -n "$ns" link set lo up
# tftpd-hpa resolves its -a address with AI_ADDRCONFIG, which finds nothing in a namespace that
# has only loopback (it then exits 66). A veth pair with an address, both ends inside the
# namespace, satisfies it; the transfers themselves still run over 127.0.0.1.
ip -n "$ns" link add frbt0 type veth peer name frbt1
ip -n "$ns" addr add 198.18.254.1/30 dev frbt0
ip -n "$ns" link set frbt0 up
ip -n "$ns" link set frbt1 up
# Started directly (not through a shell function), so $! is the server itself: the cleanup
# trap ends exactly these processes, and their CPU is read from them.
ip netns exec "$ns" in.tftpd -L -a 127.0.0.1:6901 -s -B 65464 -u root "$work/root" >"$work/hpa.log" 2>&1 &
hpa=$!; pids+=("$hpa")
ip netns exec "$ns" "$atftpd" --daemon --no-fork --port 6902 --bind-address 127.0.0.1 --user root.root --logfile "$work/atftpd.log" "$work/root" </dev/null >/dev/null 2>&1 &
atftpd_pid=$!; pids+=("$atftpd_pid")
ip netns exec "$ns" "$farrier" server --data-dir "$work/data" --tftp-root "$work/root" --tftp-listen 127.0.0.1:6903 \
    --http-listen 127.0.0.1:18080 --grpc-listen 127.0.0.1:17700 --log-level warning >"$work/farrier.log" 2>&1 &
farrier_pid=$!; pids+=("$farrier_pid")
farrier_comm=$(basename "$farrier")
for x in "in.tftpd 6901 $hpa hpa.log" "atftpd 6902 $atftpd_pid atftpd.log" "${farrier_comm:0:15} 6903 $farrier_pid farrier.log"; do
    read -r name port pid log <<<"$x"
    if ! wait_udp_bound "$ns" "$port" "$pid" 30 || [ "$(cat "/proc/$pid/comm")" != "$name" ]; then
        echo "$name (pid $pid) did not come up holding UDP port $port itself:" >&2
        tail -n 20 "$work/$log" >&2 || true
        exit 1
    fi
done
size=$(stat -c %s "$work/root/blob.bin")
bench_header "$root"
# Until $work/stop exists (at most an hour), every 10 ms: the utime+stime of each child of
# process $1, as last read. Prints their sum in ticks when stopped.
sample_children() {
    local i halt kids k stat fd sum=0
    local -A last=()
    exec {fd}<>"$work/tick"
    for ((i = 0; i < 360000; i++)); do
        halt=0
        [ ! -e "$work/stop" ] || halt=1
        kids=""
        read -r kids 2>/dev/null < "/proc/$1/task/$1/children" || true  # one line, no newline
        for k in $kids; do
            read -r stat 2>/dev/null < "/proc/$k/stat" && last[$k]=${stat##*) }
        done
        [ "$halt" = 0 ] || break
        read -r -t 0.01 -u "$fd" _ || true
    done
    for stat in "${last[@]}"; do
        # shellcheck disable=SC2086  # split into fields on purpose
        set -- $stat
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}
# One timed transfer from the server with PID $1 by the client command after it (run in the
# namespace, writing $work/out.bin). Sets mbs (MB/s, 10^6 bytes a second) and cpu (the server's
# CPU seconds per GiB); exits if the copy is corrupt.
once() {
    local pid=$1 t0 t1 own0 kids0 own1 kids1 sampled
    shift
    rm -f "$work/out.bin" "$work/stop"
    read -r own0 kids0 < <(cpu_ticks "$pid")
    sample_children "$pid" >"$work/sampled" &
    sampler_pid=$!
    t0=$(date +%s.%N)
    ip netns exec "$ns" "$@" >/dev/null 2>&1 || true
    t1=$(date +%s.%N)
    touch "$work/stop"
    wait "$sampler_pid"
    sampler_pid=""
    read -r own1 kids1 < <(cpu_ticks "$pid")
    sampled=$(cat "$work/sampled")
    cmp -s "$work/out.bin" "$work/root/blob.bin" || { echo "transfer corrupted: $*" >&2; exit 1; }
    read -r mbs cpu < <(python3 -c "
own, waited, sampled = $own1 - $own0, $kids1 - $kids0, $sampled
print(f'{$size / ($t1 - $t0) / 1e6:.1f} {(own + max(waited, sampled)) / $clk / ($size / 2**30):.2f}')")
}
# Median of $2.. with $1 decimals.
median() { python3 -c "import statistics,sys; print(f'{statistics.median(float(x) for x in sys.argv[2:]):.{sys.argv[1]}f}')" "$@"; }
# Peer and Farrier alternate, run by run, so drift in this machine's speed hits both alike;
# the median of REPEAT runs counts.
lp=() lf=() wp=() wf=() clp=() clf=() cwp=() cwf=()
for _ in $(seq "$repeat"); do
    once "$hpa" curl -sS --tftp-blksize 1468 -o "$work/out.bin" tftp://127.0.0.1:6901/blob.bin; lp+=("$mbs"); clp+=("$cpu")
    once "$farrier_pid" curl -sS --tftp-blksize 1468 -o "$work/out.bin" tftp://127.0.0.1:6903/blob.bin; lf+=("$mbs"); clf+=("$cpu")
    once "$atftpd_pid" atftp --option "blksize 1468" --option "windowsize 8" -g -r blob.bin -l "$work/out.bin" 127.0.0.1 6902
    wp+=("$mbs"); cwp+=("$cpu")
    once "$farrier_pid" atftp --option "blksize 1468" --option "windowsize 8" -g -r blob.bin -l "$work/out.bin" 127.0.0.1 6903
    wf+=("$mbs"); cwf+=("$cpu")
done
lock_peer=$(median 1 "${lp[@]}"); lock_farrier=$(median 1 "${lf[@]}")
win_peer=$(median 1 "${wp[@]}"); win_farrier=$(median 1 "${wf[@]}")
cpu_lock_peer=$(median 2 "${clp[@]}"); cpu_lock_farrier=$(median 2 "${clf[@]}")
cpu_win_peer=$(median 2 "${cwp[@]}"); cpu_win_farrier=$(median 2 "${cwf[@]}")
echo "${BENCH_MIB:-64} MiB, median of $repeat alternating runs, MB/s and server CPU s per GiB:"
echo "  lockstep blksize 1468 (curl):       tftpd-hpa $lock_peer MB/s $cpu_lock_peer s/GiB   farrier $lock_farrier MB/s $cpu_lock_farrier s/GiB"
echo "    runs MB/s: ${lp[*]} | ${lf[*]}   CPU s/GiB: ${clp[*]} | ${clf[*]}"
echo "  windowsize 8 blksize 1468 (atftp):  atftpd $win_peer MB/s $cpu_win_peer s/GiB   farrier $win_farrier MB/s $cpu_win_farrier s/GiB"
echo "    runs MB/s: ${wp[*]} | ${wf[*]}   CPU s/GiB: ${cwp[*]} | ${cwf[*]}"
python3 -c "print(f'ratio lockstep={$lock_farrier/$lock_peer:.2f} windowed={$win_farrier/$win_peer:.2f} cpu_lockstep={$cpu_lock_farrier/max($cpu_lock_peer, 1e-9):.2f}')"
