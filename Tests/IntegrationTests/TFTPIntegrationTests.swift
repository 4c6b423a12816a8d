import Foundation
import TestSupport
import Testing

/// TFTP against real clients: tftp-hpa, curl and atftp, in namespaces made here.
@Suite(.serialized, .enabled(if: Harness.canRun, "needs root and the peers from .ci/setup"))
struct TFTPIntegrationTests {
    /// A server namespace serving a root with a 3 MB random file, and a client namespace.
    func setUp(_ h: Harness) throws -> (server: String, client: String, sha: String) {
        let root = h.directory + "/root"
        try FileManager.default.createDirectory(atPath: root + "/sub", withIntermediateDirectories: true)
        try h.run(["dd", "if=/dev/urandom", "of=\(root)/sub/blob.bin", "bs=1000", "count=3000", "status=none"])
        try "secret\n".write(toFile: h.directory + "/outside.txt", atomically: true, encoding: .utf8)
        try h.run(["ln", "-s", h.directory + "/outside.txt", root + "/link.txt"])
        let sha = try h.run(["sha256sum", root + "/sub/blob.bin"]).stdout.prefix(64)
        let (s, _, c, cif) = try h.veth(serverIP: "198.18.20.1/24")
        try h.run(["ip", "-n", c, "addr", "add", "198.18.20.2/24", "dev", cif])
        try h.startFarrier(namespace: s, flags: ["--tftp-root", root, "--tftp-listen", "0.0.0.0:69"])
        return (s, c, String(sha))
    }

    func sha(_ h: Harness, _ path: String) throws -> String {
        String(try h.run(["sha256sum", path]).stdout.prefix(64))
    }

    @Test func tftpHPAFetchesInLockstep() throws {
        let h = try Harness("tftphpa")
        defer { h.cleanup() }
        let (_, c, expected) = try setUp(h)
        let out = h.directory + "/hpa.bin"
        try h.run(["ip", "netns", "exec", c, "tftp", "-m", "binary", "198.18.20.1", "-c", "get", "sub/blob.bin", out], timeout: 60)
        #expect(try sha(h, out) == expected)
    }

    @Test(arguments: [512, 1468, 8192, 65464])
    func curlWithBlockSizes(_ blksize: Int) throws {
        let h = try Harness("curl\(blksize)")
        defer { h.cleanup() }
        let (s, c, expected) = try setUp(h)
        let out = h.directory + "/curl.bin"
        try h.run(["ip", "netns", "exec", c, "curl", "-sS", "--tftp-blksize", "\(blksize)", "-o", out, "tftp://198.18.20.1/sub/blob.bin"], timeout: 60)
        #expect(try sha(h, out) == expected)
        try h.waitUntil("completed counter") { try h.metric(namespace: s, "farrier_tftp_transfers_completed_total") == 1 }
        #expect(try h.metric(namespace: s, "farrier_tftp_retransmissions_total") == 0)
    }

    @Test func atftpWithWindowSize() throws {
        let h = try Harness("atftp")
        defer { h.cleanup() }
        let (_, c, expected) = try setUp(h)
        let out = h.directory + "/atftp.bin"
        try h.run(
            ["ip", "netns", "exec", c, "atftp", "--option", "blksize 1468", "--option", "windowsize 8", "--option", "tsize 0",
             "-g", "-r", "sub/blob.bin", "-l", out, "198.18.20.1"], timeout: 60)
        #expect(try sha(h, out) == expected)
    }

    @Test func manyConcurrentTransfers() throws {
        let h = try Harness("concurrent")
        defer { h.cleanup() }
        let (s, c, expected) = try setUp(h)
        let n = 24
        // Separate processes, not `sh -c '… & wait'`: children of the test runner inherit a
        // blocked SIGCHLD, and a shell's `wait` then never returns.
        let clients = try (0..<n).map {
            try h.start(["ip", "netns", "exec", c, "curl", "-sS", "--tftp-blksize", "1468", "-o", "\(h.directory)/c\($0).bin",
                         "tftp://198.18.20.1/sub/blob.bin"], log: "curl\($0).log")
        }
        try h.waitUntil("\(n) concurrent transfers", timeout: 120) { clients.allSatisfy { !$0.isRunning } }
        #expect(clients.allSatisfy { $0.terminationStatus == 0 })
        for i in 0..<n { #expect(try sha(h, "\(h.directory)/c\(i).bin") == expected) }
        try h.waitUntil("completed counter") { try h.metric(namespace: s, "farrier_tftp_transfers_completed_total") == n }
    }

    @Test func pathsOutsideTheRootGetAnError() throws {
        let h = try Harness("traversal")
        defer { h.cleanup() }
        let (s, c, _) = try setUp(h)
        for path in ["../outside.txt", "sub/../../outside.txt", "link.txt", "/etc/passwd", "../../../../etc/passwd"] {
            let r = try h.run(
                ["ip", "netns", "exec", c, "curl", "-sS", "--path-as-is", "-o", h.directory + "/x", "tftp://198.18.20.1/\(path)"],
                timeout: 30, check: false)
            #expect(r.status != 0, "\(path) was served")
            let got = (try? String(contentsOfFile: h.directory + "/x", encoding: .utf8)) ?? ""
            #expect(!got.contains("secret"))
        }
        let hpa = try h.run(["ip", "netns", "exec", c, "tftp", "-m", "binary", "198.18.20.1", "-c", "get", "../outside.txt", h.directory + "/y"], timeout: 30, check: false)
        #expect(hpa.stdout.contains("Error code 2") || hpa.stderr.contains("Error code 2"), "tftp-hpa: \(hpa.stdout) \(hpa.stderr)")
        let missing = try h.run(["ip", "netns", "exec", c, "tftp", "-m", "binary", "198.18.20.1", "-c", "get", "nope.bin", h.directory + "/z"], timeout: 30, check: false)
        #expect(missing.stdout.contains("Error code 1") || missing.stderr.contains("Error code 1"), "tftp-hpa: \(missing.stdout) \(missing.stderr)")
        #expect(try h.metric(namespace: s, "farrier_tftp_requests_refused_total") >= 6)
    }
}
