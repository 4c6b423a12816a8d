#!/usr/bin/env bash
# Deploy speed in a lab VM: the agent writing a 2 GiB raw image onto the VM's disk, against the
# floor measured in the same VM (the rescue ramdisk) in the same run: busybox wget of the same
# bytes from the same HTTP server, piped to dd onto the same disk, then sync. Also the agent's
# peak RSS deploying 1 GiB and 4 GiB images (it must not grow with the image). Last line:
#   ratio deploy/floor=<agent seconds / floor seconds> rss_1g_mb=<MiB> rss_4g_mb=<MiB>
# Needs root and what `farrier lab up` needs; uses its own lab (fails if one is up).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
farrier=${FARRIER_BIN:-$root/.build/debug/farrier}
[ -x "$farrier" ] || (cd "$root" && /opt/swift/usr/bin/swift build --product farrier >/dev/null)
work=$(mktemp -d)
cleanup() { "$farrier" lab down >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
[ -e /run/farrier-lab/state.json ] && { echo "a lab is up; farrier lab down first"; exit 1; }
bench_header "$root"
"$farrier" lab up --machines 1 --firmware bios --no-image >/dev/null
f() { "$farrier" "$@"; }
for i in $(seq 120); do [ "$(f machine list -o json | grep -c '"state" : "ready"')" = 1 ] && break; sleep 2; done
ssh-keygen -q -t ed25519 -N "" -f "$work/id"
for g in 1 2 4; do
    head -c $((g << 30)) /dev/urandom > "$work/img-$g.raw"
    # A partition table, as real images have: the agent adds the config drive to it.
    printf 'label: gpt\nstart=2048, type=L\n' | sfdisk -q "$work/img-$g.raw"
    f image add "bench-${g}g" "$work/img-$g.raw" >/dev/null
done
# The agent's own report: "agent finished deploying in S s, agent peak RSS M MiB".
deploy() {
    f machine deploy lab-1 --image "bench-$1g" --ssh-key "$work/id.pub" --wait --timeout 3600 >/dev/null
    local line
    line=$(timeout 5 "$farrier" machine watch lab-1 --after 1 2>/dev/null | grep "agent finished deploying" | tail -1 || true)
    echo "$line" | sed -E 's/.* in ([0-9.]+) s, agent peak RSS ([0-9.]+) MiB.*/\1 \2/'
}
release() { f machine release lab-1 --wait --timeout 3600 >/dev/null; }
read -r s1 rss1 < <(deploy 1); release
read -r s4 rss4 < <(deploy 4); release
read -r s2 rss2 < <(deploy 2)
echo "agent: 1 GiB ${s1} s (peak RSS ${rss1} MiB), 2 GiB ${s2} s (${rss2} MiB), 4 GiB ${s4} s (${rss4} MiB)"
# The floor, in the rescue ramdisk of the same VM, same disk, same server.
f machine rescue lab-1 --wait --timeout 600 >/dev/null
sha=$(f image show bench-2g -o json | sed -n 's/.*"sha256" : "\([0-9a-f]*\)".*/\1/p')
floor=""
for i in $(seq 60); do
    floor=$(f machine ssh lab-1 -i "$work/id" -- \
        "s=\$(date +%s.%N); wget -q -O - --no-check-certificate --header 'Authorization: Bearer $(cat /var/lib/farrier-lab/data/admin.token)' https://198.18.0.1:8443/images/$sha | dd of=/dev/vda bs=4M 2>/dev/null; sync; e=\$(date +%s.%N); echo \"\$s \$e\" | awk '{printf \"%.1f\", \$2 - \$1}'" 2>/dev/null) && break
    sleep 5
done
echo "floor (wget | dd, sync): 2 GiB ${floor} s"
awk -v a="$s2" -v f="$floor" -v r1="$rss1" -v r4="$rss4" 'BEGIN {printf "ratio deploy/floor=%.2f rss_1g_mb=%.1f rss_4g_mb=%.1f\n", a / f, r1, r4}'
