#!/usr/bin/env bash
# Regenerates the committed gRPC/protobuf Swift code from Protos/*.proto.
#
# Building the two protoc plugins (protoc-gen-swift, protoc-gen-grpc-swift-2) takes about
# 10 minutes on 2 cores, so this is never run in CI: the generated files are committed.
# Needs: protoc and the well-known types (Debian packages protobuf-compiler, libprotobuf-dev).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${FARRIER_PROTOC_TOOLS:-/tmp/farrier-protoc-plugins}
mkdir -p "$tools"
cat > "$tools/Package.swift" <<'PKG'
// swift-tools-version:6.1
import PackageDescription
let package = Package(
    name: "protoc-plugins",
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
    ],
    targets: []
)
PKG
(cd "$tools" && swift build --product protoc-gen-swift && swift build --product protoc-gen-grpc-swift-2)
bin=$(cd "$tools" && swift build --show-bin-path)
out="$root/Sources/FarrierAPI/Generated"
mkdir -p "$out"
find "$out" -name "*.swift" -delete
protoc --proto_path="$root/Protos" --proto_path=/usr/include \
    --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
    --plugin=protoc-gen-grpc-swift="$bin/protoc-gen-grpc-swift-2" \
    --swift_opt=Visibility=Public --swift_out="$out" \
    --grpc-swift_opt=Visibility=Public,Server=true,Client=true --grpc-swift_out="$out" \
    "$root"/Protos/farrier/v1/*.proto
echo "generated into $out"
