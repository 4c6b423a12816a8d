#!/usr/bin/env bash
# TFTP throughput of a 64 MiB file on loopback inside a namespace of its own, in one run:
#   lockstep  blksize 1468, curl as client:            Farrier vs tftpd-hpa
#   windowed  blksize 1468 windowsize 8, atftp client: Farrier vs atftpd (the only Debian TFTP
#             server with RFC 7440; tftpd-hpa and dnsmasq ignore windowsize)
# Each transfer is checked with cmp; peer and Farrier runs alternate and the median of REPEAT
# runs counts. Last line:
#   ratio lockstep=<farrier/tftpd-hpa> windowed=<farrier/atftpd>
# Needs root, tftpd-hpa, atftp and the farrier binary (swift build). atftpd conflicts with
# tftpd-hpa in apt, so its binary is unpacked from the .deb into the work directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
farrier=${FARRIER_BIN:-$root/.build/release/farrier}
[ -x "$farrier" ] || (cd "$root" && /opt/swift/usr/bin/swift build -c release --product farrier >/dev/null)
repeat=${REPEAT:-5}
work=$(mktemp -d)
ns=frbt$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
command -v in.tftpd >/dev/null || { echo "needs tftpd-hpa (in.tftpd)"; exit 1; }
(cd "$work" && apt-get download -q atftpd >/dev/null 2>&1 && dpkg-deb -x atftpd_*.deb atftpd-root) \
    || { echo "needs atftpd's .deb (apt-get download atftpd)"; exit 1; }
atftpd=$work/atftpd-root/usr/sbin/atftpd
mkdir -p "$work/root"
head -c $((${BENCH_MIB:-64} << 20)) /dev/urandom > "$work/root/blob.bin"
ip netns add "$ns"
ip -n "$ns" link set lo up
# tftpd-hpa resolves its -a address with AI_ADDRCONFIG, which finds nothing in a namespace that
# has only loopback (it then exits 66). A veth pair with an address, both ends inside the
# namespace, satisfies it; the transfers themselves still run over 127.0.0.1.
ip -n "$ns" link add frbt0 type veth peer name frbt1
ip -n "$ns" addr add 198.18.254.1/30 dev frbt0
ip -n "$ns" link set frbt0 up
ip -n "$ns" link set frbt1 up
inns() { ip netns exec "$ns" "$@"; }
# Started directly (not through a shell function), so $! is the server itself: the cleanup
# trap ends exactly these processes.
ip netns exec "$ns" in.tftpd -L -a 127.0.0.1:6901 -s -B 65464 -u root "$work/root" >"$work/hpa.log" 2>&1 & pids+=($!)
ip netns exec "$ns" "$atftpd" --daemon --no-fork --port 6902 --bind-address 127.0.0.1 --user root.root --logfile "$work/atftpd.log" "$work/root" </dev/null >/dev/null 2>&1 & pids+=($!)
ip netns exec "$ns" "$farrier" server --data-dir "$work/data" --tftp-root "$work/root" --tftp-listen 127.0.0.1:6903 \
    --http-listen 127.0.0.1:18080 --grpc-listen 127.0.0.1:17700 --log-level warning >"$work/farrier.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do inns curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
size=$(stat -c %s "$work/root/blob.bin")
# One timed transfer: prints MB/s (10^6 bytes per second); fails if the copy is corrupt.
once() {
    rm -f "$work/out.bin"
    local t0 t1
    t0=$(date +%s.%N)
    inns "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    cmp -s "$work/out.bin" "$work/root/blob.bin" || { echo "transfer corrupted: $*" >&2; exit 1; }
    python3 -c "print(f'{$size / ($t1 - $t0) / 1e6:.1f}')"
}
median() { python3 -c "import statistics,sys; print(f'{statistics.median(float(x) for x in sys.argv[1:]):.1f}')" "$@"; }
curl_get() { curl -sS --tftp-blksize 1468 -o "$work/out.bin" "tftp://127.0.0.1:$1/blob.bin"; }
atftp_get() { atftp --option "blksize 1468" --option "windowsize 8" -g -r blob.bin -l "$work/out.bin" 127.0.0.1 "$1"; }
export -f curl_get atftp_get
export work
# Peer and Farrier alternate, run by run, so drift in this machine's speed hits both alike;
# the median of REPEAT runs counts.
lp=() lf=() wp=() wf=()
for _ in $(seq "$repeat"); do
    lp+=("$(once bash -c 'curl_get 6901')"); lf+=("$(once bash -c 'curl_get 6903')")
    wp+=("$(once bash -c 'atftp_get 6902')"); wf+=("$(once bash -c 'atftp_get 6903')")
done
lock_peer=$(median "${lp[@]}"); lock_farrier=$(median "${lf[@]}")
win_peer=$(median "${wp[@]}"); win_farrier=$(median "${wf[@]}")
echo "${BENCH_MIB:-64} MiB, median of $repeat alternating runs, MB/s:"
echo "  lockstep blksize 1468 (curl):          tftpd-hpa $lock_peer   farrier $lock_farrier   (runs: ${lp[*]} | ${lf[*]})"
echo "  windowsize 8 blksize 1468 (atftp):     atftpd $win_peer   farrier $win_farrier   (runs: ${wp[*]} | ${wf[*]})"
python3 -c "print(f'ratio lockstep={$lock_farrier/$lock_peer:.2f} windowed={$win_farrier/$win_peer:.2f}')"
