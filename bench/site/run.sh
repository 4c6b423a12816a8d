#!/usr/bin/env bash
# One image, many machines, one site (issue 16): MACHINES (default 50) simulated machines
# (`farrier sim`) at site site-1 are commissioned, then all deploy one IMAGE_MIB (default 1024)
# MiB image at once. Their boot scripts, agent calls and image downloads go to the site agent
# (`farrier site run --boot`), which relays the calls to the region over the site link and
# serves the image from its cache, pulled from the region once.
#
# Bytes out of the region: what the region process wrote during the deploys (wchar in
# /proc/PID/io: every write, send and sendfile, to sockets, logs and its database alike: an upper
# bound on what it sent). Bytes the machines received: the simulator's count of image bytes its
# agents downloaded. Also what the site process wrote (it serves the image with sendfile, which
# wchar counts too). Everything runs in a network namespace made here (its own loopback);
# nothing leaves it. Every process is started by this shell (with `ip netns exec` itself, so
# that $! is the process) and stopped by its PID.
# Last line:
#   site machines=N image_mib=M region_out_bytes=R machines_in_bytes=I ratio=R/I site_out_bytes=S deploy_seconds=T
# Knobs: MACHINES, IMAGE_MIB, PHASE_TIMEOUT (minutes, default 20), LOG_LEVEL (default warning).
# Needs root, python3, curl and a release build (built if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
farrier=$(bench_farrier "$root")
n=${MACHINES:-50}
image_mib=${IMAGE_MIB:-1024}
phase_timeout=${PHASE_TIMEOUT:-20}
log_level=${LOG_LEVEL:-warning}
work=$(mktemp -d /tmp/farrier-site-bench.XXXXXX)
ns=frst$$
pids=()
cleanup() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
inns() { ip netns exec "$ns" "$@"; }
bench_header "$root"
ip netns add "$ns"
ip -n "$ns" link set lo up
head -c $((image_mib << 20)) /dev/urandom >"$work/image.raw"

# The simulated fleet: its Redfish service, and machines that boot from the site's HTTP.
ip netns exec "$ns" "$farrier" sim --machines "$n" --redfish-listen 127.0.0.1:8200 --boot-url http://127.0.0.1:8090 \
    --boot-seconds 1 --agent-seconds 1 --poll-seconds 2 \
    --write-enroll "$work/enroll.yaml" --write-config "$work/sim.yaml" --write-password "$work/bmc.pw" \
    >"$work/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do [ -s "$work/sim.yaml" ] && [ -s "$work/enroll.yaml" ] && break; sleep 0.1; done

# The region: the API, the site link; its own boot network is not used (DHCP off, no reservations).
ip netns exec "$ns" "$farrier" server --data-dir "$work/region" --grpc-listen 127.0.0.1:7700 --http-listen 127.0.0.1:8080 \
    --agent-listen 127.0.0.1:8443 --tftp-listen "" --dhcp-mode off --site-listen 127.0.0.1:7710 \
    --log-level "$log_level" --lifecycle-max-deploys "$n" >"$work/region.log" 2>&1 &
region=$!
pids+=($region)
for _ in $(seq 300); do [ -s "$work/region/admin.token" ] && break; sleep 0.1; done
token=$(cat "$work/region/admin.token")
cli() { inns "$farrier" "$@" --server 127.0.0.1:7700 --token "$token"; }
for _ in $(seq 300); do cli token whoami >/dev/null 2>&1 && break; sleep 0.2; done

# The site: joined with a one-time token, then its agent with boot services for the sim's addresses.
join=$(cli site add site-1 -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["joinToken"])')
inns env -u FARRIER_TOKEN FARRIER_CONFIG_FILE=/nonexistent "$farrier" site join --join-token "$join" --name site-1 \
    --data-dir "$work/site" --server 127.0.0.1:7700 >/dev/null
ip netns exec "$ns" "$farrier" site run --region 127.0.0.1:7710 --data-dir "$work/site" --interval 2 --log-level "$log_level" \
    --cache-size $(((image_mib >> 10) + 2)) --boot --config "$work/sim.yaml" --dhcp-mode off --tftp-listen "" \
    --http-listen 127.0.0.1:8090 --agent-listen 127.0.0.1:8453 >"$work/site.log" 2>&1 &
site=$!
pids+=($site)
for _ in $(seq 300); do
    [ "$(cli site list -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["link"])')" = up ] && break
    sleep 0.2
done

count_state() {
    cli machine list --state "$1" -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
}
wait_all() {  # $1: state; $2: phase
    local start=$SECONDS got=0
    while :; do
        got=$(count_state "$1" 2>/dev/null || echo "$got")
        [ "$got" -ge "$n" ] && break
        if [ $((SECONDS - start)) -gt $((phase_timeout * 60)) ]; then
            echo "$2: timed out with $got of $n $1" >&2
            break
        fi
        sleep 2
    done
    echo "$got"
}
io() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/io"; }
image_bytes() { inns curl -sf http://127.0.0.1:8200/sim/v1/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["imageBytes"])'; }

# Every machine at the site, commissioned through it.
sed 's/^  mac: /  site: site-1\n  mac: /' "$work/enroll.yaml" >"$work/enroll-site.yaml"
cli machine enroll --from "$work/enroll-site.yaml" --bmc-password-file "$work/bmc.pw" --commission >/dev/null
ready=$(wait_all ready commission)
cli image add img "$work/image.raw" >/dev/null 2>&1
cli project create p >/dev/null

# All deploy at once.
region0=$(io "$region" wchar)
site0=$(io "$site" wchar)
in0=$(image_bytes)
t0=$SECONDS
cli machine deploy --project p --image img --count "$n" -o json >/dev/null
deployed=$(wait_all deployed deploy)
seconds=$((SECONDS - t0))
region_out=$(($(io "$region" wchar) - region0))
site_out=$(($(io "$site" wchar) - site0))
machines_in=$(($(image_bytes) - in0))
echo "ready=$ready deployed=$deployed of $n"
if [ "$ready" -lt "$n" ] || [ "$deployed" -lt "$n" ]; then
    echo "site: not every machine got there (ready $ready, deployed $deployed of $n); no ratio" >&2
    exit 1
fi
python3 - "$n" "$image_mib" "$region_out" "$machines_in" "$site_out" "$seconds" <<'PY'
import sys
n, mib, region, machines, site, seconds = sys.argv[1:]
region, machines, site = int(region), int(machines), int(site)
ratio = region / machines if machines else float("nan")
print(f"region out {region / 2**30:.2f} GiB; machines received {machines / 2**30:.2f} GiB; site out {site / 2**30:.2f} GiB; deploys took {seconds} s")
print(f"site machines={n} image_mib={mib} region_out_bytes={region} machines_in_bytes={machines} ratio={ratio:.4f} site_out_bytes={site} deploy_seconds={seconds}")
PY
