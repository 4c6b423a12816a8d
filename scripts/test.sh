#!/usr/bin/env bash
# Builds Farrier and runs every test: unit tests, then the integration tests against real
# clients (they need root for network namespaces; as another user they are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
# Fuzz the DHCP, TFTP and IPMI decoders for a bounded time (FARRIER_FUZZ_SECONDS each, default 30).
bash fuzz/run.sh "${FARRIER_FUZZ_SECONDS:-30}"
swift build --product farrier
swift build --build-tests
swift test --skip-build --skip IntegrationTests
# One at a time: these tests start QEMU VMs, BMC simulators and servers, and some assert on
# timing (DISCOVER to script under 2 s, a wrong BMC password refused under 5 s) that two cores
# shared with a neighbouring test's TCG guests cannot promise.
swift test --skip-build --no-parallel --filter IntegrationTests
