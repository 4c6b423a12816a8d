#!/usr/bin/env bash
# Builds Farrier and runs every test: unit tests, then the integration tests against real
# clients (they need root for network namespaces, and the peers from scripts/install-deps.sh).
#
# A skipped test fails the run: a suite that skips for want of root, a peer or a clean lab has
# not shown anything. The run lists every skipped test with its reason and exits 1, unless
# FARRIER_ALLOW_SKIPS=1 (for a developer without root; never in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# Fuzz the DHCP, TFTP and IPMI decoders for a bounded time (FARRIER_FUZZ_SECONDS each, default 30).
bash fuzz/run.sh "${FARRIER_FUZZ_SECONDS:-30}"
swift build --product farrier
swift build --build-tests
# Each run's output goes to the terminal and to a log, which is read for skips afterwards.
run_tests() {
    local log=$1; shift
    set +e
    swift test --skip-build "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}
run_tests "$logs/unit.log" --skip IntegrationTests
# One at a time: these tests start QEMU VMs, BMC simulators and servers, and some assert on
# timing (DISCOVER to script under 2 s, a wrong BMC password refused under 5 s) that two cores
# shared with a neighbouring test's TCG guests cannot promise.
run_tests "$logs/integration.log" --no-parallel --filter IntegrationTests
# Swift Testing reports a skip as `Test|Suite NAME skipped: "reason"`.
skipped=$(grep -hE '^[^ ]* (Test|Suite) .* skipped' "$logs"/*.log || true)
if [ -n "$skipped" ]; then
    count=$(grep -cE '^[^ ]* Test .* skipped' <<<"$skipped" || true)
    echo
    echo "Skipped ($count tests):"
    sed -E 's/^[^ ]* /  /' <<<"$skipped"
    if [ "${FARRIER_ALLOW_SKIPS:-0}" = 1 ]; then
        echo "FARRIER_ALLOW_SKIPS=1: skipped tests allowed for this run."
    else
        echo "error: $count tests were skipped; a skipped test has shown nothing. Run as root after"
        echo "scripts/install-deps.sh, or set FARRIER_ALLOW_SKIPS=1 to allow skips on purpose."
        exit 1
    fi
fi
