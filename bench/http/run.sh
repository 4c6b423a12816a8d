#!/usr/bin/env bash
# Image throughput over loopback, in one run: Farrier's agent channel (HTTPS, /images/<sha256>,
# as the agent downloads images) against nginx serving the same file over HTTPS with the same
# kind of key (P-256) and TLS 1.3: 1 client, then 16 concurrent clients (curl).
# Runs alternate; the median of REPEAT runs counts. Each run also reports the server's CPU seconds
# per GiB sent (utime+stime from /proc/PID/stat: Farrier's process; nginx's workers). Last line:
#   ratio https/nginx=<1 client> https16/nginx16=<16 clients> cpu_nginx/https=<1 client> cpu_nginx16/https16=<16>
# Needs root, nginx (apt) and the farrier binary (swift build -c release).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
farrier=$(bench_farrier "$root")
command -v nginx >/dev/null || { echo "needs nginx (bash scripts/install-deps.sh)"; exit 1; }
bench_header "$root"
repeat=${REPEAT:-3}
mib=${BENCH_MIB:-1024}
work=$(mktemp -d)
chmod 755 "$work"  # nginx's workers (www-data) read the file too
ns=frbh$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
inns() { ip netns exec "$ns" "$@"; }

head -c $((mib << 20)) /dev/urandom > "$work/blob"
sha=$(sha256sum "$work/blob" | cut -d' ' -f1)
mkdir -p "$work/data/images/sha256" "$work/www"
cp "$work/blob" "$work/data/images/sha256/$sha"
ln "$work/blob" "$work/www/$sha" 2>/dev/null || cp "$work/blob" "$work/www/$sha"
# Started with ip netns exec itself (not the inns function, a subshell), so $! is the server.
ip netns exec "$ns" "$farrier" server --data-dir "$work/data" --http-listen 127.0.0.1:8080 --grpc-listen 127.0.0.1:7700 \
    --agent-listen 127.0.0.1:8443 --tftp-listen "" --log-level warning >"$work/farrier.log" 2>&1 &
pids+=($!)
cat > "$work/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {
        listen 127.0.0.1:8081 ssl; root $work/www; location / { }
        ssl_certificate $work/nginx.crt; ssl_certificate_key $work/nginx.key; ssl_protocols TLSv1.3;
    }
}
CONF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench \
    -keyout "$work/nginx.key" -out "$work/nginx.crt" 2>/dev/null
ip netns exec "$ns" nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
nginx_pid=$!
for i in $(seq 100); do
    inns curl -sfk -o /dev/null https://127.0.0.1:8443/healthz && inns curl -sfk -o /dev/null -r 0-0 "https://127.0.0.1:8081/$sha" && break
    sleep 0.1
done
# Images need a token (an admin's here; the agent's in a deploy): every farrier request sends it.
auth="Authorization: Bearer $(cat "$work/data/admin.token")"

farrier_pid=${pids[0]}
clk=$(getconf CLK_TCK)
# CPU ticks of the processes serving: farrier itself; nginx's workers (its master only accepts
# configuration), found afresh each time.
serving_ticks() {
    local t=0 p own _
    if [ "$1" = farrier ]; then set -- "$farrier_pid"; else set -- $(pgrep -P "$nginx_pid"); fi
    for p in "$@"; do read -r own _ < <(cpu_ticks "$p"); t=$((t + own)); done
    echo "$t"
}
# One run: N clients fetch the whole file at once. Prints MB/s (total bytes / wall time) and the
# server's CPU seconds per GiB sent.
run() {
    local server=$1 port=$2 path=$3 n=$4 start end t0 t1 clients=()
    t0=$(serving_ticks "$server")
    start=$(date +%s.%N)
    for i in $(seq "$n"); do
        inns curl -sfk -o /dev/null -H "$auth" "https://127.0.0.1:$port$path" &
        clients+=($!)
    done
    for c in "${clients[@]}"; do wait "$c" || { echo "a client failed" >&2; exit 1; }; done
    end=$(date +%s.%N)
    t1=$(serving_ticks "$server")
    echo "$n $mib $start $end $((t1 - t0)) $clk" | awk '{printf "%.1f %.2f\n", $1 * $2 * 1.048576 / ($4 - $3), $5 / $6 / ($1 * $2 / 1024)}'
}
median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Correctness first: both serve the same bytes.
[ "$(inns curl -sfk -H "$auth" "https://127.0.0.1:8443/images/$sha" | sha256sum | cut -d' ' -f1)" = "$sha" ] || { echo "farrier served other bytes"; exit 1; }
[ "$(inns curl -sfk -H "$auth" -r 1000-1999 "https://127.0.0.1:8443/images/$sha" | wc -c)" = 1000 ] || { echo "farrier Range failed"; exit 1; }
for n in 1 16; do
    f=(); g=(); fc=(); gc=()
    for r in $(seq "$repeat"); do
        read -r rate cpu < <(run nginx 8081 "/$sha" $n); g+=("$rate"); gc+=("$cpu")
        read -r rate cpu < <(run farrier 8443 "/images/$sha" $n); f+=("$rate"); fc+=("$cpu")
    done
    fm=$(echo "${f[@]}" | median); gm=$(echo "${g[@]}" | median)
    fcm=$(echo "${fc[@]}" | median); gcm=$(echo "${gc[@]}" | median)
    echo "clients=$n nginx MB/s: ${g[*]} (median $gm), CPU s/GiB ${gc[*]} (median $gcm); farrier MB/s: ${f[*]} (median $fm), CPU s/GiB ${fc[*]} (median $fcm)"
    eval "f$n=$fm g$n=$gm fc$n=$fcm gc$n=$gcm"
done
awk -v f1="$f1" -v g1="$g1" -v f16="$f16" -v g16="$g16" -v fc1="$fc1" -v gc1="$gc1" -v fc16="$fc16" -v gc16="$gc16" \
    'BEGIN {printf "ratio https/nginx=%.2f https16/nginx16=%.2f cpu_nginx/https=%.2f cpu_nginx16/https16=%.2f\n", f1 / g1, f16 / g16, gc1 / fc1, gc16 / fc16}'
