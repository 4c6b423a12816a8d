#!/usr/bin/env bash
# The fleet at scale: MACHINES (default 10000) simulated machines (`farrier sim`: one simulated
# Redfish service, the machines' script fetches and agents from 127.x addresses) against two
# `farrier server` replicas on one PostgreSQL 15, then the same run on one server on SQLite.
# Each run: enroll all machines from one file (with --commission) and wait until all are ready;
# deploy them, PROJECT_SIZE (100) per project, through the API, as fast as the caps let them go,
# and wait until all are deployed; release them all and wait until all are ready. In the
# PostgreSQL run, replica B (API and reconciler; A also serves the boot path and the agents) is
# killed with SIGKILL halfway through the deploys and restarted a minute later.
# While it runs, a probe process times a page of `machine list` (100) and a `machine show` every
# second (against both replicas, failing over), and so does the simulator (in_sim: its calls wait
# behind its own agents), and then for 30 s with the fleet at rest (idle). Everything runs in a network namespace made
# here (its own loopback); nothing leaves it.
# A third run (sites) is the PostgreSQL run with the machines spread over SITES (default 20)
# site agents (`farrier site run --boot`, each linked to both replicas): the machines boot, say
# hello and download from their site's HTTP and agent channel, and the region serves none of
# the boot path; the sites relay the agents' calls, deliver their timelines and pull the image
# once each. It shows what the region's load and memory become behind sites.
# Prints minutes per phase, machines stuck (not where they should be at the end), BMC resets per
# machine and phase (the repeats after a kill show there), list/show p50/p99, peak RSS of each
# server and the most malloc held in it at once (sampled), each server's CPU seconds, PostgreSQL's
# size; with sites, the site agents' peak RSS (largest, sum) and CPU seconds. Last line:
#   scale machines=N stuck=N minutes=M list_p99_ms=X rss_mb=R sqlite_minutes=M sites=K sites_stuck=N sites_minutes=M sites_rss_mb=R sites_region_cpu_s=C
# Knobs: MACHINES, PROJECT_SIZE, MAX_DEPLOYS/MAX_WIPES (the caps, default 500), AGENT_SECONDS
# (simulated agent work, default 5), IMAGE_MIB (default 4), PHASE_TIMEOUT (minutes, default 60),
# SKIP_SQLITE=1, SKIP_POSTGRES=1, SKIP_SITES=1, SITES (default 20), LOG_LEVEL (the servers', default warning), WRAP_A (a command to run replica A under, e.g. "heaptrack -o FILE": A's RSS is
# then the wrapper's). Every process is started by this shell (its child: reaped, killed by its
# own PID). Needs root, postgresql-15, python3, and a release build (built if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
farrier=$(bench_farrier "$root")
n=${MACHINES:-10000}
per_project=${PROJECT_SIZE:-100}
max_deploys=${MAX_DEPLOYS:-500}
max_wipes=${MAX_WIPES:-500}
agent_seconds=${AGENT_SECONDS:-5}
image_mib=${IMAGE_MIB:-4}
phase_timeout=${PHASE_TIMEOUT:-60}
pgbin=/usr/lib/postgresql/15/bin
work=$(mktemp -d /tmp/farrier-scale.XXXXXX)
chmod 755 "$work"
ns=frsc$$
pids=()
cleanup() {
    # Newest first: the servers and the simulator before PostgreSQL (which waits for its clients).
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
inns() { ip netns exec "$ns" "$@"; }
bench_header "$root"
ip netns add "$ns"
ip -n "$ns" link set lo up
head -c $((image_mib << 20)) /dev/urandom > "$work/image.raw"

# PostgreSQL 15 as nobody, in the namespace, durable as shipped (fsync, synchronous_commit on).
mkdir -p "$work/pg"
chown nobody:nogroup "$work/pg"
chmod 700 "$work/pg"
asnobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$@"; }
asnobody "$pgbin/initdb" -D "$work/pg" -U farrier -A trust -E UTF8 --no-sync >/dev/null
# Started with `ip netns exec` itself, not through a function, so $! is the process (ip execs it).
ip netns exec "$ns" setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$pgbin/postgres" -D "$work/pg" -k "$work/pg" -p 5432 \
    -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=128MB >"$work/postgres.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do inns "$pgbin/pg_isready" -h 127.0.0.1 -p 5432 -U farrier -t 1 >/dev/null 2>&1 && break; sleep 0.2; done
psql_() { inns psql -h 127.0.0.1 -p 5432 -U farrier -At -v ON_ERROR_STOP=1 "$@"; }

# $1: "postgres", "sqlite" or "sites"; prints "key=value" lines into $work/$1.result.
run_fleet() {
    local kind=$1 dir="$work/$1" url="" replicas=1 sites=0 db=scale
    mkdir -p "$dir/data"
    if [ "$kind" = postgres ] || [ "$kind" = sites ]; then
        [ "$kind" = sites ] && db=scale_sites && sites=${SITES:-20}
        psql_ -d postgres -c "CREATE DATABASE $db" >/dev/null
        url="postgres://farrier@127.0.0.1:5432/$db?sslmode=disable"
        replicas=2
    fi
    # Where the machines boot: replica A, or their site (machine i at site (i mod SITES) + 1).
    local boot=(--boot-url http://127.0.0.1:8080) k
    if [ "$sites" -gt 0 ]; then
        boot=()
        for k in $(seq "$sites"); do boot+=(--site "site-$k=http://127.0.0.1:$((9000 + k))"); done
    fi
    ip netns exec "$ns" "$farrier" sim --machines "$n" --redfish-listen 127.0.0.1:8200 "${boot[@]}" \
        --boot-seconds 2 --agent-seconds "$agent_seconds" --poll-seconds 5 \
        --write-enroll "$dir/enroll.yaml" --write-config "$dir/sim.yaml" --write-password "$dir/bmc.pw" \
        --probe --server 127.0.0.1:7700,127.0.0.1:7701 --probe-token-file "$dir/data/admin.token" >"$dir/sim.log" 2>&1 & local sim=$!
    pids+=($sim)
    # The same probe in a process of its own, as an operator's CLI is: the simulator's thousands of
    # agents share its process's threads with the probe above, and delay its calls.
    ip netns exec "$ns" "$farrier" sim --machines "$n" --probe --probe-only \
        --server 127.0.0.1:7700,127.0.0.1:7701 --probe-token-file "$dir/data/admin.token" >"$dir/probe.out" 2>"$dir/probe.log" &
    local prober=$!
    pids+=($prober)
    for _ in $(seq 600); do [ -s "$dir/sim.yaml" ] && [ -s "$dir/enroll.yaml" ] && break; sleep 0.1; done
    started=""
    start_replica() {  # $1: replica number (0: A, with the boot path; 1: B); sets $started to its PID
        local r=$1 args
        args=(--data-dir "$dir/data" --config "$dir/sim.yaml" --dhcp-mode off --tftp-listen ""
            --http-listen "127.0.0.1:$((8080 + r))" --agent-listen "127.0.0.1:$((8443 + r))" --grpc-listen "127.0.0.1:$((7700 + r))"
            --metrics-listen "127.0.0.1:$((7790 + r))"
            --api-insecure --log-level "${LOG_LEVEL:-warning}" --lifecycle-max-deploys "$max_deploys" --lifecycle-max-wipes "$max_wipes")
        [ -n "$url" ] && args+=(--database "$url")
        [ "$sites" -gt 0 ] && args+=(--site-listen "127.0.0.1:$((7710 + r))")
        local wrap=()
        # WRAP_A: a command to run replica A under (heaptrack -o FILE, perf record …), to see where its time and memory go.
        [ "$r" = 0 ] && [ -n "${WRAP_A:-}" ] && read -r -a wrap <<<"$WRAP_A"
        ip netns exec "$ns" "${wrap[@]}" "$farrier" server "${args[@]}" >>"$dir/server-$r.log" 2>&1 &
        started=$!
        pids+=("$started")
    }
    local a b="" restart_b_at=""
    start_replica 0; a=$started
    for _ in $(seq 300); do [ -s "$dir/data/admin.token" ] && break; sleep 0.1; done
    if [ "$replicas" = 2 ]; then start_replica 1; b=$started; fi
    restart_b() {  # B comes back a minute after its kill (or when the phase ends, if sooner)
        [ -n "$restart_b_at" ] || return 0
        [ "${1:-}" = now ] || [ "$SECONDS" -ge "$restart_b_at" ] || return 0
        echo "restarting replica B" >&2
        start_replica 1; b=$started; restart_b_at=""
    }
    local token
    token=$(cat "$dir/data/admin.token")
    cli() { inns "$farrier" "$@" --server "127.0.0.1:7700$( [ "$replicas" = 2 ] && echo ,127.0.0.1:7701)" --token "$token"; }
    for _ in $(seq 300); do cli token whoami >/dev/null 2>&1 && break; sleep 0.2; done
    # The sites: each added, joined with its one-time token, and run with boot services for its
    # machines (the simulator's reservations), linked to both replicas.
    local site_pids=()
    if [ "$sites" -gt 0 ]; then
        for _ in $(seq 300); do
            inns "$farrier" token whoami --server 127.0.0.1:7701 --token "$token" >/dev/null 2>&1 && break
            sleep 0.2
        done
        for k in $(seq "$sites"); do
            local join
            join=$(cli site add "site-$k" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["joinToken"])')
            inns env -u FARRIER_TOKEN FARRIER_CONFIG_FILE=/nonexistent "$farrier" site join --join-token "$join" \
                --name "site-$k" --data-dir "$dir/site-$k" --server 127.0.0.1:7700 >/dev/null
            ip netns exec "$ns" "$farrier" site run --region 127.0.0.1:7710,127.0.0.1:7711 --data-dir "$dir/site-$k" \
                --interval 5 --log-level "${LOG_LEVEL:-warning}" --cache-size 1 --boot --config "$dir/sim.yaml" \
                --dhcp-mode off --tftp-listen "" --http-listen "127.0.0.1:$((9000 + k))" \
                --agent-listen "127.0.0.1:$((9500 + k))" --metrics-listen "127.0.0.1:$((9800 + k))" >"$dir/site-$k.log" 2>&1 &
            site_pids+=($!)
            pids+=($!)
        done
        local up=0
        for _ in $(seq 300); do
            up=$(cli site list -o json | python3 -c 'import json,sys; print(sum(s["link"] == "up" for s in json.load(sys.stdin)))')
            [ "$up" -ge "$sites" ] && break
            sleep 1
        done
        echo "sites=$sites sites_up_at_start=$up" >>"$dir/result.pre"
    fi
    # CPU seconds a process has used (user + system), from /proc/PID/stat.
    cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.0f", ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
    # Peak RSS (VmHWM) of each server process: read while it runs (a killed one's is its last reading).
    hwm() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$1/status" 2>/dev/null || echo 0; }
    # And the most malloc held for each at once (farrier_heap_in_use_bytes on its metrics port): what
    # of the RSS is live memory, and what is arenas, stacks and the binary.
    heap() { inns curl -sf "http://127.0.0.1:$1/metrics" | awk '/^farrier_heap_in_use_bytes / {print int($2 / 1048576)}' || echo 0; }
    declare -A peak=([a]=0 [b]=0) heap_peak=([a]=0 [b]=0)
    local phase=setup heap_phase=setup
    sample_rss() {
        local v
        v=$(hwm "$a"); [ "$v" -gt "${peak[a]}" ] && peak[a]=$v
        v=$(heap 7790); [ "${v:-0}" -gt "${heap_peak[a]}" ] && heap_peak[a]=$v && heap_phase=$phase
        if [ -n "$b" ]; then
            v=$(hwm "$b"); [ "$v" -gt "${peak[b]}" ] && peak[b]=$v
            v=$(heap 7791); [ "${v:-0}" -gt "${heap_peak[b]}" ] && heap_peak[b]=$v
        fi
        return 0
    }
    count_state() {  # machines in state $1
        cli machine list --state "$1" -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
    }
    wait_all() {  # $1: state; $2: phase name; runs $3 (a function) once at half way, if given
        local state=$1 hook=${3:-} start=$SECONDS got=0 hooked=0
        phase=$2
        while :; do
            sample_rss
            restart_b
            got=$(count_state "$state" 2>/dev/null || echo "$got")
            [ "$got" -ge "$n" ] && break
            if [ -n "$hook" ] && [ "$hooked" = 0 ] && [ "$got" -ge $((n / 2)) ]; then "$hook"; hooked=1; fi
            if [ $((SECONDS - start)) -gt $((phase_timeout * 60)) ]; then
                echo "$phase: timed out with $got of $n $state" >&2
                break
            fi
            sleep 5
        done
        echo "$phase.seconds=$((SECONDS - start))" >>"$dir/result"
        echo "$phase.done=$got" >>"$dir/result"
    }
    resets() { inns curl -sf http://127.0.0.1:8200/sim/v1/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["resets"])'; }
    local cpu_b_before=0
    kill_b() {
        [ -n "$b" ] || return 0
        cpu_b_before=$(cpu "$b")
        echo "killing replica B (pid $b) with SIGKILL" >&2
        kill -KILL "$b"; wait "$b" 2>/dev/null || true
        echo "killed_at_deployed=$(count_state deployed || echo unknown)" >>"$dir/result"
        b=""
        restart_b_at=$((SECONDS + 60))
    }
    : >"$dir/result"
    [ -f "$dir/result.pre" ] && cat "$dir/result.pre" >>"$dir/result"
    local r0 r1 r2 r3
    r0=$(resets)
    local t0=$SECONDS
    cli machine enroll --from "$dir/enroll.yaml" --bmc-password-file "$dir/bmc.pw" --commission >/dev/null || echo "enroll: some failed" >&2
    wait_all ready commission
    r1=$(resets)
    cli image add img "$work/image.raw" >/dev/null
    local projects=$(((n + per_project - 1) / per_project)) p
    for p in $(seq "$projects"); do cli project create "p$p" >/dev/null; done
    local deploy_start=$SECONDS
    (
        for p in $(seq "$projects"); do
            left=$((n - (p - 1) * per_project)); count=$((left < per_project ? left : per_project))
            cli machine deploy --project "p$p" --image img --count "$count" -o json >/dev/null || echo "deploy into p$p failed" >&2
        done
    ) & local deployer=$!
    wait_all deployed deploy kill_b
    wait "$deployer" || true
    echo "deploy.api_seconds_inside=$((SECONDS - deploy_start))" >>"$dir/result"
    restart_b now
    r2=$(resets)
    cli machine list --state deployed -o json | python3 -c 'import json,sys; [print(m["name"]) for m in json.load(sys.stdin)]' >"$dir/deployed"
    split -l 500 "$dir/deployed" "$dir/release."
    for f in "$dir"/release.*; do
        # shellcheck disable=SC2046  # names, one per line
        cli machine release $(cat "$f") >/dev/null || echo "release batch $f failed" >&2
    done
    wait_all ready release
    r3=$(resets)
    # The same calls with the fleet at rest, 30 s at 10 a second: what they cost the server
    # itself, apart from the load the run put on the machine.
    stop_pid "$prober"
    tail -n 1 "$dir/probe.out" >"$dir/probe-stats.json"
    ip netns exec "$ns" "$farrier" sim --machines "$n" --probe --probe-only --probe-interval 0.1 \
        --server 127.0.0.1:7700,127.0.0.1:7701 --probe-token-file "$dir/data/admin.token" >"$dir/idle-probe.out" 2>&1 &
    local idle_prober=$!
    pids+=($idle_prober)
    sleep 30
    stop_pid "$idle_prober"
    tail -n 1 "$dir/idle-probe.out" >"$dir/idle-probe-stats.json"
    local stuck=0 s
    for s in commissioning deploying releasing failed enrolled deployed; do
        c=$(count_state "$s" || count_state "$s" || echo 1000000000); stuck=$((stuck + c)); [ "$c" = 0 ] || echo "stuck.$s=$c" >>"$dir/result"
    done
    echo "stuck=$stuck" >>"$dir/result"
    echo "total.seconds=$((SECONDS - t0))" >>"$dir/result"
    python3 - "$n" "$r0" "$r1" "$r2" "$r3" >>"$dir/result" <<'PY'
import sys
n, r0, r1, r2, r3 = map(int, sys.argv[1:])
print(f"resets_per_machine.commission={(r1 - r0) / n:.2f}")
print(f"resets_per_machine.deploy={(r2 - r1) / n:.2f}")
print(f"resets_per_machine.release={(r3 - r2) / n:.2f}")
print(f"resets.commission={r1 - r0} resets.deploy={r2 - r1} resets.release={r3 - r2} (undisturbed: {2 * n}, {2 * n}, {3 * n})")
PY
    inns curl -sf http://127.0.0.1:8200/sim/v1/stats >"$dir/sim-stats.json"
    # list/show: the probe in its own process; in_sim.list/show: the one inside the simulator;
    # idle.list/show: after the run.
    python3 - "$dir/probe-stats.json" "$dir/sim-stats.json" "$dir/idle-probe-stats.json" >>"$dir/result" <<'PY'
import json, sys
own, sim, idle = (json.load(open(f)) for f in sys.argv[1:4])
for prefix, s in (("", own), ("in_sim.", sim), ("idle.", idle)):
    for call in ("list", "show"):
        p = s.get("probes", {}).get(call, {})
        k = prefix + call
        print(f"{k}.count={p.get('count', 0)} {k}.failures={p.get('failures', 0)} {k}.p50_ms={p.get('p50Ms', 0):.1f} {k}.p99_ms={p.get('p99Ms', 0):.1f} {k}.max_ms={p.get('maxMs', 0):.1f}")
print(f"agent_errors={sim['agentErrors']} hello_refusals={sim['helloRefusals']} image_mib={sim['imageBytes'] / 1048576:.0f}")
PY
    sample_rss
    echo "rss_mb.a=${peak[a]} rss_mb.b=${peak[b]}" >>"$dir/result"
    # B's CPU is that before its kill and since its restart.
    echo "cpu_seconds.a=$(cpu "$a") cpu_seconds.b=$((cpu_b_before + $( [ -n "$b" ] && cpu "$b" || echo 0)))" >>"$dir/result"
    if [ "$sites" -gt 0 ]; then
        local p site_rss_max=0 site_rss_sum=0 site_cpu=0 v
        for p in "${site_pids[@]}"; do
            v=$(hwm "$p"); site_rss_sum=$((site_rss_sum + v)); [ "$v" -gt "$site_rss_max" ] && site_rss_max=$v
            site_cpu=$((site_cpu + $(cpu "$p")))
        done
        echo "site_rss_mb.max=$site_rss_max site_rss_mb.sum=$site_rss_sum site_cpu_seconds=$site_cpu" >>"$dir/result"
        echo "site_queue_left=$(cli site list -o json | python3 -c 'import json,sys; print(sum(s.get("queueDepth", 0) for s in json.load(sys.stdin)))')" >>"$dir/result"
    fi
    echo "heap_in_use_peak_mb.a=${heap_peak[a]} (in $heap_phase) heap_in_use_peak_mb.b=${heap_peak[b]}" >>"$dir/result"
    if [ -n "$url" ]; then echo "postgres_mb=$(psql_ -d "$db" -c "SELECT pg_database_size('$db') / 1048576")" >>"$dir/result"; fi
    stop_pid "$sim"
    for p in "${site_pids[@]}"; do stop_pid "$p"; done
    stop_pid "$a"; [ -z "$b" ] || stop_pid "$b"
    sed "s/^/$kind: /" "$dir/result"
}

pg_minutes=skipped stuck=skipped list_p99=skipped rss=skipped
if [ -z "${SKIP_POSTGRES:-}" ]; then
    run_fleet postgres
    pg_minutes=$(awk -F= '/^total.seconds=/ {printf "%.1f", $2 / 60}' "$work/postgres/result")
    stuck=$(awk -F= '/^stuck=/ {print $2}' "$work/postgres/result")
    list_p99=$(grep -o '^list.count=.* list.p99_ms=[0-9.]*' "$work/postgres/result" | grep -o 'list.p99_ms=[0-9.]*' | cut -d= -f2)
    rss=$(grep -o 'rss_mb.a=[0-9]* rss_mb.b=[0-9]*' "$work/postgres/result" | awk '{split($1,a,"="); split($2,b,"="); print (a[2] > b[2] ? a[2] : b[2])}')
fi
sqlite_minutes=skipped
if [ -z "${SKIP_SQLITE:-}" ]; then
    run_fleet sqlite
    sqlite_minutes=$(awk -F= '/^total.seconds=/ {printf "%.1f", $2 / 60}' "$work/sqlite/result")
fi
sites_summary="sites=skipped"
if [ -z "${SKIP_SITES:-}" ]; then
    run_fleet sites
    r=$work/sites/result
    sites_summary="sites=${SITES:-20} sites_stuck=$(awk -F= '/^stuck=/ {print $2}' "$r") sites_minutes=$(awk -F= '/^total.seconds=/ {printf "%.1f", $2 / 60}' "$r")"
    sites_summary+=" sites_rss_mb=$(grep -o 'rss_mb.a=[0-9]* rss_mb.b=[0-9]*' "$r" | awk '{split($1,a,"="); split($2,b,"="); print (a[2] > b[2] ? a[2] : b[2])}')"
    sites_summary+=" sites_region_cpu_s=$(grep -o 'cpu_seconds.a=[0-9]* cpu_seconds.b=[0-9]*' "$r" | awk '{split($1,a,"="); split($2,b,"="); print a[2] + b[2]}')"
fi
echo "scale machines=$n stuck=$stuck minutes=$pg_minutes list_p99_ms=$list_p99 rss_mb=$rss sqlite_minutes=$sqlite_minutes $sites_summary"
