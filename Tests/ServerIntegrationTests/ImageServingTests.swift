import Foundation
import TestSupport
import Testing

/// Images on the agent channel (HTTPS) against curl and a raw TLS socket: whole files, ranges,
/// HEAD, 416, conditional requests, missing images, keep-alive, and pipelined requests answered
/// in order. Images are tenants' bytes: every request carries the admin token, and one without
/// it, with a member's, or on the plain-HTTP listener gets nothing.
@Suite(.serialized, .enabled(if: Harness.canRun, "needs root and curl"))
struct ImageServingTests {
    let size = 3_000_000
    /// Set by `setUp`: curl's `-H` for the admin token.
    nonisolated(unsafe) static var auth = ""

    func setUp(_ h: Harness) throws -> (ControlPlane, url: String, file: String) {
        let cp = ControlPlane(h)
        try cp.start()
        let file = h.directory + "/img.raw"
        try h.run(["dd", "if=/dev/urandom", "of=\(file)", "bs=1000", "count=\(size / 1000)", "status=none"])
        try cp.cli(["image", "add", "img", file])
        let sha = try #require(try cp.json(["image", "show", "img"])["sha256"] as? String)
        Self.auth = "Authorization: Bearer \(cp.adminToken)"
        return (cp, cp.agentURL + "/images/" + sha, file)
    }

    func sha(_ h: Harness, _ command: String) throws -> String {
        String(
            try h.run([
                "bash", "-c",
                "\(command.replacingOccurrences(of: "curl ", with: "curl -k -H '\(Self.auth)' ")) | sha256sum",
            ]).stdout.prefix(64)
        )
    }

    /// Status line and headers (lowercased names) of one curl request.
    func headers(_ h: Harness, _ args: [String]) throws -> (status: Int, headers: [String: String]) {
        let out = try h.run(["curl", "-s", "-k", "-o", "/dev/null", "-D", "-", "-H", Self.auth] + args).stdout
        var lines = out.split(separator: "\r\n").map(String.init)
        let status = Int(lines.removeFirst().split(separator: " ")[1]) ?? 0
        var fields: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return (status, fields)
    }

    @Test func wholeFilesRangesAndHead() throws {
        let h = try Harness("img-http")
        defer { h.cleanup() }
        let (_, url, file) = try setUp(h)

        #expect(try sha(h, "curl -sf '\(url)'") == sha(h, "cat '\(file)'"))
        let whole = try headers(h, [url])
        #expect(whole.status == 200)
        #expect(whole.headers["content-length"] == "\(size)")
        #expect(whole.headers["accept-ranges"] == "bytes")
        // The agent resumes with an open-ended range and checks Content-Range exactly.
        let part = try headers(h, ["-r", "1000000-", url])
        #expect(part.status == 206)
        #expect(part.headers["content-range"] == "bytes 1000000-\(size - 1)/\(size)")
        #expect(part.headers["content-length"] == "\(size - 1_000_000)")
        #expect(try sha(h, "curl -sf -r 1000000- '\(url)'") == sha(h, "tail -c +1000001 '\(file)'"))
        #expect(try sha(h, "curl -sf -r 1000-1999 '\(url)'") == sha(h, "tail -c +1001 '\(file)' | head -c 1000"))
        #expect(try sha(h, "curl -sf -r -100 '\(url)'") == sha(h, "tail -c 100 '\(file)'"))
        let past = try headers(h, ["-r", "\(size)-", url])
        #expect(past.status == 416)
        #expect(past.headers["content-range"] == "bytes */\(size)")
        let head = try h.run(["curl", "-sf", "-k", "-I", "-H", Self.auth, "-w", "%{size_download}", url]).stdout
        #expect(head.lowercased().contains("content-length: \(size)"))
        #expect(head.hasSuffix("\r\n0"), "HEAD sent a body: \(head.suffix(40))")
    }

    /// Clients that hang up mid-body leave nothing behind: the server closes its descriptor of
    /// the image (and so its read ahead) for each, and still serves the whole file afterwards.
    @Test func abandonedDownloadsLetGoOfTheImage() throws {
        let h = try Harness("img-abandon")
        defer { h.cleanup() }
        let cp = ControlPlane(h)
        let server = try cp.start()
        let file = h.directory + "/big.raw"
        // 32 MiB: more than loopback's socket buffers hold, so every client leaves mid-body.
        try h.run(["dd", "if=/dev/urandom", "of=\(file)", "bs=1048576", "count=32", "status=none"])
        try cp.cli(["image", "add", "big", file])
        let sha = try #require(try cp.json(["image", "show", "big"])["sha256"] as? String)
        let url = cp.agentURL + "/images/" + sha
        let auth = "Authorization: Bearer \(cp.adminToken)"
        /// The server's open descriptors of the image file.
        func open() -> Int {
            let dir = "/proc/\(server.processIdentifier)/fd"
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            return fds.filter {
                ((try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + $0)) ?? "").hasSuffix(sha)
            }
            .count
        }
        // Each client takes the first MiB and hangs up (head exits, curl dies of SIGPIPE).
        let got = try h.run([
            "bash", "-c",
            "for i in 1 2 3 4 5 6 7 8; do curl -sk -H '\(auth)' '\(url)' | head -c 1048576 | wc -c; done",
        ]).stdout
        #expect(got.split(separator: "\n") == Array(repeating: "1048576", count: 8))
        try h.waitUntil("the server to close the abandoned image streams", timeout: 20) { open() == 0 }
        let whole = try h.run(["bash", "-c", "curl -sfk -H '\(auth)' '\(url)' | sha256sum"]).stdout
        #expect(whole.prefix(64) == Substring(sha))
        try h.waitUntil("the server to close the finished image stream", timeout: 20) { open() == 0 }
    }

    /// Boot files over plain HTTP (paced like images): whole, a range, and four at once.
    @Test func bootFilesOverPlainHTTP() throws {
        let h = try Harness("img-bootfile")
        defer { h.cleanup() }
        let cp = ControlPlane(h)
        try cp.start()
        let file = cp.data + "/boot/big.bin"
        try h.run(["dd", "if=/dev/urandom", "of=\(file)", "bs=1048576", "count=8", "status=none"])
        let url = cp.http + "/tftp/big.bin"
        let whole = try sha(h, "cat '\(file)'")
        #expect(try sha(h, "curl -sf '\(url)'") == whole)
        #expect(
            try sha(h, "curl -sf -r 1000000-2999999 '\(url)'") == sha(h, "tail -c +1000001 '\(file)' | head -c 2000000")
        )
        let four = try h.run([
            "bash", "-c", "for i in 1 2 3 4; do curl -sf '\(url)' | sha256sum & done; wait",
        ]).stdout
        #expect(four.split(separator: "\n").map { String($0.prefix(64)) } == Array(repeating: whole, count: 4))
    }

    @Test func imagesNeedAnAdminOrDeployingAgentToken() throws {
        let h = try Harness("img-auth")
        defer { h.cleanup() }
        let (cp, url, _) = try setUp(h)
        func status(_ args: [String], _ target: String? = nil) throws -> String {
            try h.run(["curl", "-s", "-k", "-o", "/dev/null", "-w", "%{http_code}"] + args + [target ?? url]).stdout
        }
        #expect(try status([]) == "401")
        // Spelled so that a prefix check on the raw path would miss it.
        let sha = String(url.split(separator: "/").last ?? "")
        #expect(try status(["--path-as-is"], cp.agentURL + "/%69mages/" + sha) == "401")
        #expect(try status(["--path-as-is"], cp.agentURL + "/images%2f" + sha) != "200")
        // Never over plain HTTP, whoever asks.
        #expect(try status(["-H", Self.auth], cp.http + "/images/" + sha) == "404")
        #expect(try status(["-r", "0-9"]) == "401")
        #expect(try status(["-I"]) == "401")
        #expect(try status(["-H", "Authorization: Bearer not-a-token"]) == "403")
        try cp.cli(["project", "create", "p"])
        let member = try cp.cli(["token", "create", "--project", "p"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        let secret = try #require(member.split(separator: "\n").last.map(String.init))
        #expect(try status(["-H", "Authorization: Bearer \(secret)"]) == "403")
        #expect(try status(["-H", Self.auth]) == "200")
    }

    @Test func conditionalMissingAndOutsideRequests() throws {
        let h = try Harness("img-router")
        defer { h.cleanup() }
        let (cp, url, _) = try setUp(h)
        // FileMiddleware answers conditionals: its ETag, then 304 for it.
        let first = try headers(h, ["-H", "If-None-Match: \"other\"", url])
        #expect(first.status == 200)
        let etag = try #require(first.headers["etag"])
        #expect(try headers(h, ["-H", "If-None-Match: \(etag)", url]).status == 304)
        #expect(try headers(h, [cp.agentURL + "/images/" + String(repeating: "0", count: 64)]).status == 404)
        // A path out of the image store is refused: a name that is not a SHA-256 (400), or no route (404).
        #expect(try headers(h, [cp.agentURL + "/images/..%2f..%2fetc%2fpasswd"]).status == 400)
        #expect(
            [400, 404].contains(try headers(h, ["--path-as-is", cp.agentURL + "/images/../../etc/passwd"]).status)
        )
    }

    @Test func oneConnectionCarriesImagesAndRouterRequestsInOrder() throws {
        let h = try Harness("img-pipeline")
        defer { h.cleanup() }
        let (cp, url, file) = try setUp(h)
        let expected = try sha(h, "cat '\(file)'")
        // curl reuses one connection for consecutive URLs: image, router, image.
        let out = h.directory + "/out"
        let r = try h.run([
            "curl", "-sf", "-k", "-H", Self.auth, "-w", "%{http_code} %{num_connects}\\n", url, "-o", out + "1",
            cp.agentURL + "/healthz", "-o", out + "2",
            url, "-o", out + "3",
        ]).stdout
        #expect(r == "200 1\n200 0\n200 0\n", "status and new connections per request")
        #expect(try sha(h, "cat '\(out)1'") == expected)
        #expect(try String(contentsOfFile: out + "2", encoding: .utf8) == "ok\n")
        #expect(try sha(h, "cat '\(out)3'") == expected)

        // Pipelined in one write: each answer comes back in request order, whichever side gives it.
        let script = """
            import socket, ssl, sys
            host, port, path, size, auth = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
            tls = ssl.create_default_context(); tls.check_hostname = False; tls.verify_mode = ssl.CERT_NONE
            s = tls.wrap_socket(socket.create_connection((host, port), timeout=20))
            reqs = [("GET", path, "Range: bytes=0-9\\r\\n"), ("GET", "/healthz", ""), ("HEAD", path, ""),
                    ("GET", path, "Range: bytes=10-19\\r\\nConnection: close\\r\\n")]
            s.sendall("".join(f"{m} {p} HTTP/1.1\\r\\nHost: x\\r\\n{auth}\\r\\n{h}\\r\\n" for m, p, h in reqs).encode())
            data = b""
            while True:
                try:
                    b = s.recv(1 << 16)
                except (ssl.SSLEOFError, ConnectionResetError):
                    break
                if not b: break
                data += b
            for m, _, _ in reqs:
                head, data = data.split(b"\\r\\n\\r\\n", 1)
                lines = head.decode().split("\\r\\n")
                fields = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
                n = 0 if m == "HEAD" else int(fields["content-length"])
                body, data = data[:n], data[n:]
                print(lines[0].split(" ")[1], fields.get("content-range", "-"), (body.hex() or "-") if n <= 10 else len(body))
            print("left", len(data))
            """
        let py = h.directory + "/pipeline.py"
        try script.write(toFile: py, atomically: true, encoding: .utf8)
        let answer = try h.run(
            [
                "python3", py, "127.0.0.1", "\(cp.agentPort)", String(url.dropFirst(cp.agentURL.count)), "\(size)",
                Self.auth,
            ],
            timeout: 30
        ).stdout
        let hex = { (from: Int) in
            try h.run(["bash", "-c", "tail -c +\(from + 1) '\(file)' | head -c 10 | od -An -tx1 | tr -d ' \\n'"]).stdout
        }
        #expect(
            answer == """
                206 bytes 0-9/\(size) \(try hex(0))
                200 - 6f6b0a
                200 - -
                206 bytes 10-19/\(size) \(try hex(10))
                left 0

                """
        )
    }
}
