# shellcheck shell=bash
# Shared by the bench scripts (source "$root/bench/lib.sh"); defines functions only.

# One line saying what ran where, printed before a bench's result: the machine (CPUs, CPU model,
# kernel), the commit (-dirty when tracked files differ from it, as git describe --dirty) and the
# date in UTC. $1 is the repository's root.
bench_header() {
    local model commit
    model=$(awk -F': *' '/^(model name|Model|cpu model)[[:space:]]*:/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
    # --no-optional-locks: status must not take index.lock from someone working in the tree.
    if commit=$(git -C "$1" rev-parse --short HEAD 2>/dev/null); then
        [ -z "$(git -C "$1" --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null)" ] || commit+=-dirty
    else
        commit=unknown
    fi
    echo "machine: nproc=$(nproc) cpu=\"${model:-unknown}\" kernel=$(uname -r) commit=$commit date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}

# The farrier binary a bench runs: $FARRIER_BIN, or the release build of repository $1, built
# first if it is missing. Prints its path.
bench_farrier() {
    local bin=${FARRIER_BIN:-$1/.build/release/farrier}
    [ -x "$bin" ] || (cd "$1" && /opt/swift/usr/bin/swift build -c release --product farrier >/dev/null)
    echo "$bin"
}

# CPU time of process $1 in clock ticks (getconf CLK_TCK a second), as two numbers: its own,
# utime + stime of all its threads, live and exited; and its children's, cutime + cstime, which
# counts only children it has waited for. Fields 14-17 of /proc/PID/stat, counted after the ")"
# that ends the command name (which may hold spaces).
cpu_ticks() {
    local stat
    read -r stat < "/proc/$1/stat"
    stat=${stat##*) }
    # shellcheck disable=SC2086  # split into fields on purpose
    set -- $stat
    echo "$((${12} + ${13})) $((${14} + ${15}))"
}

# Waits until process $3 holds a UDP socket bound to port $2 in network namespace $1: the server
# is ready, and $3 (the PID that $! gave) is the server itself, not a wrapper that forked it.
# Polls every 0.1 s for at most ${4:-20} s; fails early if the process is gone.
wait_udp_bound() {
    local i
    for ((i = 0; i < ${4:-20} * 10; i++)); do
        [[ $(ip netns exec "$1" ss -Hulnp "sport = :$2") == *"pid=$3,"* ]] && return 0
        alive "$3" || return 1
        sleep 0.1
    done
    return 1
}

# Whether process $1 runs (exists and is not a zombie: kill -0 succeeds on an unreaped child).
alive() {
    local stat
    read -r stat 2>/dev/null < "/proc/$1/stat" || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# Ends process $1, a child of this shell started by the caller: SIGTERM, up to 10 s for it to
# exit, then SIGKILL; reaps it. The PID stays ours until reaped, so it cannot have been reused.
stop_pid() {
    local i
    kill "$1" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do alive "$1" || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
