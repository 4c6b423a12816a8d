#!/usr/bin/env bash
# Power status of N (default 200) OpenIPMI ipmi_sim BMCs: Farrier's sweep (one process, its own
# RMCP+ client, PARALLEL BMCs at once) against ipmitool run once per BMC at the same parallelism
# (xargs -P). ipmitool is given -C 3: without it, ipmitool 1.8.19 asks ipmi_sim for its cipher
# suites in a form ipmi_sim does not answer and waits 10 s per BMC, which would flatter Farrier.
# Farrier asks the BMC (v1.5 framing, which ipmi_sim answers) and settles on suite 3 itself.
# The BMCs listen on 127.0.0.1 inside a namespace made here.
# Last line: ratio ipmitool/farrier=<wall-time ratio> p99_ms=<Farrier's p99 per-BMC latency>
# FARRIER_BIN_B=<another farrier build>: compares two builds of Farrier instead (no ipmitool): the
# same BMCs, ROUNDS (default 8) alternated sweeps of each, medians of wall and user+system CPU
# time; last line: ratio b/a=<wall-time ratio> (over 1: B is slower).
# Needs root, openipmi (ipmi_sim), ipmitool, and a release build of farrier (built if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
farrier=$(bench_farrier "$root")
n=${BMCS:-200}
parallel=${PARALLEL:-16}
repeat=${REPEAT:-3}
work=$(mktemp -d)
ns=frbb$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
bench_header "$root"
ip netns add "$ns"
ip -n "$ns" link set lo up
inns() { ip netns exec "$ns" "$@"; }
echo "bmc-bench-pw" > "$work/password"
chmod 600 "$work/password"
printf 'mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n' > "$work/bmc.emu"
: > "$work/targets"
for i in $(seq "$n"); do
    port=$((30000 + i))
    d="$work/bmc$i"
    mkdir -p "$d/state"
    cat > "$d/lan.conf" <<CONF
name "bench$i"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 $port
    priv_limit admin
    allowed_auths_admin none md2 md5 straight
    guid $(printf '%08x' "$i")a18b4c5d6e7f8091a2b3c4d5
  endlan
  user 2 true "admin" "bmc-bench-pw" admin 10 none md2 md5 straight
CONF
    ip netns exec "$ns" ipmi_sim -c "$d/lan.conf" -f "$work/bmc.emu" -s "$d/state" -n </dev/null >"$d/log" 2>&1 & pids+=($!)
    echo "127.0.0.1:$port" >> "$work/targets"
done
# All up: every BMC answers ipmitool once (bounded).
for i in $(seq "$n"); do
    port=$((30000 + i))
    for _ in $(seq 50); do
        inns ipmitool -I lanplus -C 3 -H 127.0.0.1 -p $port -U admin -f "$work/password" -R 1 -N 1 chassis power status >/dev/null 2>&1 && break
        sleep 0.1
    done
done
now() { date +%s.%N; }
ipmitool_sweep() {
    sed 's/127.0.0.1://' "$work/targets" | inns xargs -P "$parallel" -I{} \
        ipmitool -I lanplus -C 3 -H 127.0.0.1 -p {} -U admin -f "$work/password" chassis power status >"$work/ipmitool.out" 2>&1
    [ "$(grep -c 'Chassis Power is' "$work/ipmitool.out")" = "$n" ] || { echo "ipmitool: not every BMC answered" >&2; exit 1; }
}
farrier_sweep() {
    inns "${1:-$farrier}" bmc power status --targets-file "$work/targets" --password-file "$work/password" \
        --parallel "$parallel" >"$work/farrier.out" 2>"$work/farrier.err"
    [ "$(grep -c ' off \| on ' "$work/farrier.out")" = "$n" ] || { echo "farrier: not every BMC answered" >&2; cat "$work/farrier.err" >&2; exit 1; }
}
if [ -n "${FARRIER_BIN_B:-}" ]; then
    # Two builds, alternated. A sweep's CPU time: this shell's waited-for children's ticks
    # (cpu_ticks) before and after it.
    : > "$work/ab"
    for _ in $(seq "${ROUNDS:-8}"); do
        for side in a b; do
            bin=$farrier
            [ "$side" = b ] && bin=$FARRIER_BIN_B
            read -r _ kids0 < <(cpu_ticks $$)
            t0=$(now); farrier_sweep "$bin"; t1=$(now)
            read -r _ kids1 < <(cpu_ticks $$)
            echo "$side $t0 $t1 $(( kids1 - kids0 )) $(getconf CLK_TCK)" >> "$work/ab"
        done
    done
    python3 - "$work/ab" "$farrier" "$FARRIER_BIN_B" "$n" "$parallel" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
names = {"a": sys.argv[2], "b": sys.argv[3]}
wall = {}
print(f"power status of {sys.argv[4]} ipmi_sim BMCs, {sys.argv[5]} at a time, {len(rows) // 2} alternated sweeps each, medians:")
for side in "ab":
    mine = [r for r in rows if r[0] == side]
    w = [float(r[2]) - float(r[1]) for r in mine]
    cpu = [int(r[3]) / int(r[4]) for r in mine]
    wall[side] = statistics.median(w)
    print(f"  {side} {names[side]}: {wall[side]:.3f} s wall, {statistics.median(cpu):.3f} s CPU   runs {' '.join(f'{x:.2f}' for x in w)}")
print(f"ratio b/a={wall['b'] / wall['a']:.3f}")
PY
    exit 0
fi
# Alternate, REPEAT times; medians count.
ti=() tf=() p99s=()
for _ in $(seq "$repeat"); do
    t0=$(now); ipmitool_sweep; t1=$(now); ti+=("$(python3 -c "print($t1-$t0)")")
    t0=$(now); farrier_sweep; t1=$(now); tf+=("$(python3 -c "print($t1-$t0)")")
    p99s+=("$(python3 -c "
import sys
ms = sorted(float(l.split()[-1].rstrip('ms')) for l in open('$work/farrier.out'))
print(ms[min(len(ms) - 1, int(len(ms) * 0.99 + 0.999) - 1)])")")
done
python3 - "${ti[*]}" "${tf[*]}" "${p99s[*]}" "$n" "$parallel" <<'PY'
import statistics, sys
ti = [float(x) for x in sys.argv[1].split()]
tf = [float(x) for x in sys.argv[2].split()]
p99 = [float(x) for x in sys.argv[3].split()]
n, par = sys.argv[4], sys.argv[5]
mi, mf, mp = statistics.median(ti), statistics.median(tf), statistics.median(p99)
print(f"power status of {n} ipmi_sim BMCs, {par} at a time, median of {len(ti)} alternating runs:")
print(f"  ipmitool (one process per BMC): {mi:.2f} s   runs {' '.join(f'{x:.2f}' for x in ti)}")
print(f"  farrier bmc power status:       {mf:.2f} s   runs {' '.join(f'{x:.2f}' for x in tf)}")
print(f"ratio ipmitool/farrier={mi / mf:.1f} p99_ms={mp:.1f}")
PY
