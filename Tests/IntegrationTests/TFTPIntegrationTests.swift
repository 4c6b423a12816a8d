import Foundation
import TestSupport
import Testing

/// TFTP against real clients: tftp-hpa, curl and atftp, in namespaces made here.
@Suite(.serialized, .enabled(if: Harness.canRun, "needs root and the peers from .ci/setup"))
struct TFTPIntegrationTests {
    /// A server namespace serving a root with a 3 MB random file, and a client namespace.
    func setUp(_ h: Harness, flags: [String] = []) throws -> (server: String, client: String, sha: String) {
        let root = h.directory + "/root"
        try FileManager.default.createDirectory(atPath: root + "/sub", withIntermediateDirectories: true)
        try h.run(["dd", "if=/dev/urandom", "of=\(root)/sub/blob.bin", "bs=1000", "count=3000", "status=none"])
        try "secret\n".write(toFile: h.directory + "/outside.txt", atomically: true, encoding: .utf8)
        try h.run(["ln", "-s", h.directory + "/outside.txt", root + "/link.txt"])
        let sha = try h.run(["sha256sum", root + "/sub/blob.bin"]).stdout.prefix(64)
        let (s, _, c, cif) = try h.veth(serverIP: "198.18.20.1/24")
        try h.run(["ip", "-n", c, "addr", "add", "198.18.20.2/24", "dev", cif])
        try h.startFarrier(namespace: s, flags: ["--tftp-root", root, "--tftp-listen", "0.0.0.0:69"] + flags)
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
        try h.run(
            ["ip", "netns", "exec", c, "tftp", "-m", "binary", "198.18.20.1", "-c", "get", "sub/blob.bin", out],
            timeout: 60
        )
        #expect(try sha(h, out) == expected)
    }

    @Test(arguments: [512, 1468, 8192, 65464])
    func curlWithBlockSizes(_ blksize: Int) throws {
        let h = try Harness("curl\(blksize)")
        defer { h.cleanup() }
        let (s, c, expected) = try setUp(h, flags: ["--tftp-busy-poll", "50"])
        let out = h.directory + "/curl.bin"
        try h.run(
            [
                "ip", "netns", "exec", c, "curl", "-sS", "--tftp-blksize", "\(blksize)", "-o", out,
                "tftp://198.18.20.1/sub/blob.bin",
            ],
            timeout: 60
        )
        #expect(try sha(h, out) == expected)
        try h.waitUntil("completed counter") {
            try h.metric(namespace: s, "farrier_tftp_transfers_completed_total") == 1
        }
        #expect(try h.metric(namespace: s, "farrier_tftp_retransmissions_total") == 0)
        // Polling turned on, one transfer on a machine of two or more CPUs polls for its ACKs (BusyPoll); with small
        // blocks over a veth pair, some ACKs land within the 50 µs it polls. (A 64 KB block takes
        // curl longer than that to take in, so those polls miss and back off.)
        if ProcessInfo.processInfo.activeProcessorCount >= 2 {
            let hits = try h.metric(namespace: s, "farrier_tftp_poll_hits_total")
            let misses = try h.metric(namespace: s, "farrier_tftp_poll_misses_total")
            print("blksize \(blksize): poll hits \(hits), misses \(misses)")
            #expect(hits + misses > 0, "polled")
            if blksize <= 1468 { #expect(hits > 0, "hits \(hits) misses \(misses)") }
        }
    }

    /// By default (tftp.busy-poll 0) every wait sleeps in recv(2), and the transfer is the same.
    @Test func busyPollOffByDefault() throws {
        let h = try Harness("nopoll")
        defer { h.cleanup() }
        let (s, c, expected) = try setUp(h)
        let out = h.directory + "/curl.bin"
        try h.run(
            [
                "ip", "netns", "exec", c, "curl", "-sS", "--tftp-blksize", "1468", "-o", out,
                "tftp://198.18.20.1/sub/blob.bin",
            ],
            timeout: 60
        )
        #expect(try sha(h, out) == expected)
        try h.waitUntil("completed counter") {
            try h.metric(namespace: s, "farrier_tftp_transfers_completed_total") == 1
        }
        #expect(try h.metric(namespace: s, "farrier_tftp_poll_hits_total") == 0)
        #expect(try h.metric(namespace: s, "farrier_tftp_poll_misses_total") == 0)
    }

    @Test func atftpWithWindowSize() throws {
        let h = try Harness("atftp")
        defer { h.cleanup() }
        let (_, c, expected) = try setUp(h)
        let out = h.directory + "/atftp.bin"
        try h.run(
            [
                "ip", "netns", "exec", c, "atftp", "--option", "blksize 1468", "--option", "windowsize 8", "--option",
                "tsize 0",
                "-g", "-r", "sub/blob.bin", "-l", out, "198.18.20.1",
            ],
            timeout: 60
        )
        #expect(try sha(h, out) == expected)
    }

    @Test func manyConcurrentTransfers() throws {
        let h = try Harness("concurrent")
        defer { h.cleanup() }
        let (s, c, expected) = try setUp(h)
        let n = 24
        // 24 machines booting at once: each client from an address of its own (one address
        // gets at most 4 transfers at once, --tftp-max-transfers-per-client).
        for i in 0..<n { try h.run(["ip", "-n", c, "addr", "add", "198.18.20.\(100 + i)/24", "dev", "vc"]) }
        // Separate processes, not `sh -c '… & wait'`: children of the test runner inherit a
        // blocked SIGCHLD, and a shell's `wait` then never returns.
        let clients = try (0..<n).map {
            try h.start(
                [
                    "ip", "netns", "exec", c, "curl", "-sS", "--interface", "198.18.20.\(100 + $0)", "--tftp-blksize",
                    "1468",
                    "-o", "\(h.directory)/c\($0).bin", "tftp://198.18.20.1/sub/blob.bin",
                ],
                log: "curl\($0).log"
            )
        }
        try h.waitUntil("\(n) concurrent transfers", timeout: 120) { clients.allSatisfy { !$0.isRunning } }
        #expect(clients.allSatisfy { $0.terminationStatus == 0 })
        for i in 0..<n { #expect(try sha(h, "\(h.directory)/c\(i).bin") == expected) }
        try h.waitUntil("completed counter") {
            try h.metric(namespace: s, "farrier_tftp_transfers_completed_total") == n
        }
    }

    /// Files over the in-memory cache limit (4 MiB) are read from disk, ahead of the client;
    /// a size that is no multiple of the block or read-ahead size checks the last blocks.
    @Test func largeFilesFromDisk() throws {
        let h = try Harness("large")
        defer { h.cleanup() }
        let (_, c, _) = try setUp(h)
        let big = h.directory + "/root/big.bin"
        try h.run(["bash", "-c", "head -c 6000001 /dev/urandom > '\(big)'"])
        let expected = try sha(h, big)
        for blksize in [512, 1468] {
            let out = h.directory + "/big\(blksize).bin"
            try h.run(
                [
                    "ip", "netns", "exec", c, "curl", "-sS", "--tftp-blksize", "\(blksize)", "-o", out,
                    "tftp://198.18.20.1/big.bin",
                ],
                timeout: 120
            )
            #expect(try sha(h, out) == expected, "curl blksize \(blksize)")
        }
        let out = h.directory + "/bigw.bin"
        try h.run(
            [
                "ip", "netns", "exec", c, "atftp", "--option", "blksize 1468", "--option", "windowsize 8", "-g", "-r",
                "big.bin",
                "-l", out, "198.18.20.1",
            ],
            timeout: 120
        )
        #expect(try sha(h, out) == expected, "atftp windowsize 8")
    }

    /// A client that stops acknowledging gets the block again once per timeout (1 s), up to the
    /// retry limit (5), then nothing; one that ignores a block now and then gets it again and
    /// the transfer completes intact. Raw UDP from Python, so the losses are exact.
    @Test func retransmitsOnTimeoutThenGivesUp() throws {
        let h = try Harness("retransmit")
        defer { h.cleanup() }
        let (s, c, expected) = try setUp(h)
        let script = """
            import socket, sys, time, hashlib
            mode = sys.argv[1]
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.sendto(b"\\x00\\x01sub/blob.bin\\x00octet\\x00", ("198.18.20.1", 69))
            if mode == "silent":
                times = []
                try:
                    while True:
                        data, peer = s.recvfrom(2048)
                        if data[:4] == b"\\x00\\x03\\x00\\x01": times.append(time.monotonic())
                except socket.timeout:
                    pass
                gaps = [round(b - a, 2) for a, b in zip(times, times[1:])]
                print(len(times), min(gaps) if gaps else 0, max(gaps) if gaps else 0)
            else:
                out, expect, skipped = bytearray(), 1, set()
                while True:
                    data, peer = s.recvfrom(2048)
                    block = int.from_bytes(data[2:4], "big")
                    if block != expect & 0xFFFF:
                        continue
                    if expect % 500 == 0 and expect not in skipped:
                        skipped.add(expect)
                        continue
                    out += data[4:]
                    s.sendto(b"\\x00\\x04" + data[2:4], peer)
                    expect += 1
                    if len(data) < 516: break
                print(len(skipped), hashlib.sha256(out).hexdigest())
            """
        let py = h.directory + "/client.py"
        try script.write(toFile: py, atomically: true, encoding: .utf8)
        let silent = try h.run(["ip", "netns", "exec", c, "python3", py, "silent"], timeout: 30).stdout.split(
            separator: " "
        )
        #expect(silent.first == "6", "first DATA + 5 retransmissions: \(silent)")
        #expect(
            (Double(silent[1]) ?? 0) >= 0.9
                && (Double(silent[2].trimmingCharacters(in: .whitespacesAndNewlines)) ?? 9) <= 1.5,
            "one retransmission per second: \(silent)"
        )
        try h.waitUntil("failed counter") { try h.metric(namespace: s, "farrier_tftp_transfers_failed_total") == 1 }
        let lossy = try h.run(["ip", "netns", "exec", c, "python3", py, "lossy"], timeout: 120).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ")
        #expect(lossy.count == 2 && Int(lossy[0]) ?? 0 >= 11, "blocks ignored once: \(lossy)")
        #expect(lossy.last.map(String.init) == expected)
        #expect(try h.metric(namespace: s, "farrier_tftp_retransmissions_total") >= 16)
    }

    /// A client that takes block 1 and closes its socket: the retransmission draws an ICMP port
    /// unreachable, and the transfer ends on it (ECONNREFUSED) instead of retrying 5 times over
    /// 5 s. Polling for the ACK (BusyPoll) meets that error first and must not swallow it.
    @Test func aClientThatVanishesEndsTheTransferAtOnce() throws {
        let h = try Harness("vanish")
        defer { h.cleanup() }
        let (s, c, _) = try setUp(h)
        let script = """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.sendto(b"\\x00\\x01sub/blob.bin\\x00octet\\x00", ("198.18.20.1", 69))
            data, peer = s.recvfrom(2048)
            print(data[:4].hex())
            s.close()
            """
        let py = h.directory + "/vanish.py"
        try script.write(toFile: py, atomically: true, encoding: .utf8)
        #expect(try h.run(["ip", "netns", "exec", c, "python3", py], timeout: 30).stdout.hasPrefix("00030001"))
        let start = ContinuousClock.now
        // The first retransmission is due 1 s after block 1; with the retry limit it would take 6 s.
        try h.waitUntil("the transfer to fail on ICMP port unreachable", timeout: 3.5) {
            try h.metric(namespace: s, "farrier_tftp_transfers_failed_total") == 1
        }
        print("transfer failed \(ContinuousClock.now - start) after the client vanished")
        #expect(try h.metric(namespace: s, "farrier_tftp_retransmissions_total") <= 1)
    }

    /// One client address holds at most --tftp-max-transfers-per-client transfers (default 4):
    /// the fifth request from it, from a fifth port, gets ERROR 0, while another address is
    /// served at once. A `timeout=255` option is refused (left out of the OACK), so a silent
    /// client holds a slot for the default 1 s × 5 retries, not 255 s × 5.
    @Test func oneClientCannotHoldTheSlots() throws {
        let h = try Harness("per-client")
        defer { h.cleanup() }
        let (s, c, expected) = try setUp(h)
        // Asks five times from five ports of one address, reports the answers, then holds its
        // four transfers without acknowledging anything for 12 s.
        let script = """
            import socket, time
            socks, answers = [], []
            for i in range(5):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("198.18.20.2", 0))
                s.settimeout(3)
                s.sendto(b"\\x00\\x01sub/blob.bin\\x00octet\\x00timeout\\x00255\\x00blksize\\x001468\\x00", ("198.18.20.1", 69))
                data, peer = s.recvfrom(2048)
                answers.append(data)
                socks.append(s)
            for a in answers:
                if a[:2] == b"\\x00\\x06":
                    print("OACK", a[2:].replace(b"\\x00", b" ").decode().strip(), flush=True)
                elif a[:2] == b"\\x00\\x05":
                    print("ERROR", a[4:-1].decode(), flush=True)
                else:
                    print("OTHER", a[:4].hex(), flush=True)
            time.sleep(12)
            """
        let py = h.directory + "/hold.py"
        try script.write(toFile: py, atomically: true, encoding: .utf8)
        try h.start(["ip", "netns", "exec", c, "python3", py], log: "hold.out")
        var lines: [String] = []
        try h.waitUntil("the holder's five answers", timeout: 20, interval: 0.1) {
            lines = h.read("hold.out").split(separator: "\n").map(String.init)
            return lines.count >= 5
        }
        #expect(lines.prefix(4).allSatisfy { $0 == "OACK blksize 1468" }, "timeout=255 must be refused: \(lines)")
        #expect(lines.last?.hasPrefix("ERROR too many transfers from this client") == true, "\(lines)")
        #expect(try h.metric(namespace: s, "farrier_tftp_refused_per_client_total") == 1)
        #expect(try h.metric(namespace: s, "farrier_tftp_transfers_active") == 4)
        // Another address on the same segment is served while the first still holds its four.
        try h.run(["ip", "-n", c, "addr", "add", "198.18.20.3/24", "dev", "vc"])
        let out = h.directory + "/other.bin"
        try h.run(
            [
                "ip", "netns", "exec", c, "curl", "-sS", "--interface", "198.18.20.3", "-o", out,
                "tftp://198.18.20.1/sub/blob.bin",
            ],
            timeout: 60
        )
        #expect(try sha(h, out) == expected)
        #expect(try h.metric(namespace: s, "farrier_tftp_transfers_active") == 4, "the holder's transfers ended early")
        // The silent holder's transfers give up at the default 1 s × 5 retries (the 255 s it
        // asked for was refused), well before it closes its sockets at 12 s.
        let held = Date()
        try h.waitUntil("the held transfers to give up", timeout: 10) {
            try h.metric(namespace: s, "farrier_tftp_transfers_active") == 0
        }
        #expect(Date().timeIntervalSince(held) < 9)
        #expect(try h.metric(namespace: s, "farrier_tftp_transfers_failed_total") == 4)
    }

    /// Past --tftp-max-transfers, a request gets ERROR 0 "server busy" instead of a thread; once
    /// the transfer holding the slot ends, requests are served again.
    @Test func transfersBeyondTheLimitAreRefused() throws {
        let h = try Harness("busy")
        defer { h.cleanup() }
        let (s, c, expected) = try setUp(h, flags: ["--tftp-max-transfers", "1"])
        // Holds the one slot: asks for the file, then never acknowledges (the server gives up
        // after its 5 retransmissions, about 6 s).
        try h.start(
            [
                "ip", "netns", "exec", c, "python3", "-c",
                "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.sendto(b'\\x00\\x01sub/blob.bin\\x00octet\\x00',('198.18.20.1',69))\ntime.sleep(8)",
            ],
            log: "holder.log"
        )
        try h.waitUntil("the slot taken") { try h.metric(namespace: s, "farrier_tftp_transfers_active") == 1 }
        let busy = try h.run(
            [
                "ip", "netns", "exec", c, "tftp", "-m", "binary", "198.18.20.1", "-c", "get", "sub/blob.bin",
                h.directory + "/b",
            ],
            timeout: 30,
            check: false
        )
        #expect((busy.stdout + busy.stderr).contains("server busy"), "tftp-hpa: \(busy.stdout) \(busy.stderr)")
        try h.waitUntil("the slot freed", timeout: 20) {
            try h.metric(namespace: s, "farrier_tftp_transfers_active") == 0
        }
        let out = h.directory + "/after.bin"
        try h.run(["ip", "netns", "exec", c, "curl", "-sS", "-o", out, "tftp://198.18.20.1/sub/blob.bin"], timeout: 60)
        #expect(try sha(h, out) == expected)
    }

    @Test func pathsOutsideTheRootGetAnError() throws {
        let h = try Harness("traversal")
        defer { h.cleanup() }
        let (s, c, _) = try setUp(h)
        for path in ["../outside.txt", "sub/../../outside.txt", "link.txt", "/etc/passwd", "../../../../etc/passwd"] {
            let r = try h.run(
                [
                    "ip", "netns", "exec", c, "curl", "-sS", "--path-as-is", "-o", h.directory + "/x",
                    "tftp://198.18.20.1/\(path)",
                ],
                timeout: 30,
                check: false
            )
            #expect(r.status != 0, "\(path) was served")
            let got = (try? String(contentsOfFile: h.directory + "/x", encoding: .utf8)) ?? ""
            #expect(!got.contains("secret"))
        }
        let hpa = try h.run(
            [
                "ip", "netns", "exec", c, "tftp", "-m", "binary", "198.18.20.1", "-c", "get", "../outside.txt",
                h.directory + "/y",
            ],
            timeout: 30,
            check: false
        )
        #expect(
            hpa.stdout.contains("Error code 2") || hpa.stderr.contains("Error code 2"),
            "tftp-hpa: \(hpa.stdout) \(hpa.stderr)"
        )
        let missing = try h.run(
            [
                "ip", "netns", "exec", c, "tftp", "-m", "binary", "198.18.20.1", "-c", "get", "nope.bin",
                h.directory + "/z",
            ],
            timeout: 30,
            check: false
        )
        #expect(
            missing.stdout.contains("Error code 1") || missing.stderr.contains("Error code 1"),
            "tftp-hpa: \(missing.stdout) \(missing.stderr)"
        )
        #expect(try h.metric(namespace: s, "farrier_tftp_requests_refused_total") >= 6)
    }
}
