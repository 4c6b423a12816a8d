#!/usr/bin/env bash
# Builds the libFuzzer targets for the DHCP, TFTP and IPMI decoders and runs each for a bounded time.
#
# SwiftPM cannot link a -sanitize=fuzzer executable (it renames the entry point), so the codec
# modules are compiled here with swiftc, instrumented, and linked with each fuzz entry file.
# Usage: fuzz/run.sh [SECONDS per target, default 30]. Crashes are kept in fuzz/out/.
set -euo pipefail
seconds=${1:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/fuzz/out"
mkdir -p "$out"
export PATH="/opt/swift/usr/bin:$PATH"
flags=(-sanitize=fuzzer,address -parse-as-library -O -g)
build_module() {  # name, sources…
    local name=$1; shift
    swiftc "${flags[@]}" -module-name "$name" -emit-module -emit-module-path "$out/$name.swiftmodule" \
        -I "$out" -c "$@" -o "$out/$name.o" -wmo
}
# The linker warns about every sanitizer helper symbol; keep its real errors only.
quiet_link() { "$@" 2>&1 | { grep -v "ld.gold: warning" || true; }; return "${PIPESTATUS[0]}"; }
build_module WireSupport "$root"/Sources/WireSupport/*.swift
build_module DHCPWire "$root"/Sources/DHCPWire/*.swift
build_module TFTPWire "$root"/Sources/TFTPWire/*.swift
# IPMIWire's decoders, without the files that need swift-crypto (RAKP key derivation, the
# session's integrity and encryption): those act only on packets that already decoded.
build_module IPMIWire "$root"/Sources/IPMIWire/{Bytes,RMCP,Message,Commands,CipherSuite,RAKPMessages}.swift
for target in DHCP TFTP IPMI; do
    quiet_link swiftc "${flags[@]}" -I "$out" "$root/fuzz/${target}Fuzz.swift" "$out/WireSupport.o" "$out/${target}Wire.o" \
        -o "$out/${target,,}-fuzz" 2> >(grep -v "ld.gold: warning" >&2)
    corpus="$out/${target,,}-corpus"
    mkdir -p "$corpus"
    if [ "$target" = DHCP ]; then cp "$root"/Tests/DHCPWireTests/Fixtures/*.bin "$corpus/"; fi
    echo "fuzzing the $target decoder for ${seconds}s"
    (cd "$out" && SWIFT_BACKTRACE=enable=no "./${target,,}-fuzz" -max_total_time="$seconds" -max_len=1500 -print_final_stats=1 "$corpus" 2>&1 \
        | grep -E "stat::number_of_executed_units|ERROR|SUMMARY|Fatal error|crash-|Done" || true)
    if ls "$out"/crash-* >/dev/null 2>&1; then echo "fuzz: crash found in $target decoder"; exit 1; fi
done
