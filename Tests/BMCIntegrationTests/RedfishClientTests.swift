import FarrierBMC
import Foundation
import TestSupport
import Testing

/// sushy-emulator (fake driver) is the Redfish peer; a strict stand-in (redfish_strict.py) covers
/// what sushy lacks: sessions, ETag/If-Match and 202 task monitors.
enum RedfishPeers {
    static let venv = ProcessInfo.processInfo.environment["FARRIER_PEERS_VENV"] ?? "/opt/farrier-peers/venv"
    static var sushyAvailable: Bool {
        Harness.canRun && FileManager.default.isExecutableFile(atPath: venv + "/bin/sushy-emulator")
    }
    static let user = "farrier"
    static let password = "redfish-pw"
    static let scriptDir: String = {
        var url = URL(fileURLWithPath: #filePath)
        url.deleteLastPathComponent()
        return url.path
    }()

    /// Starts sushy-emulator on a loopback port with two fake systems and basic auth (and HTTPS
    /// with a self-signed certificate made here, when `tls`).
    static func startSushy(_ h: Harness, tls: Bool = false) throws -> Int {
        let port = Int.random(in: 41000..<49000)
        let htpasswd = h.directory + "/htpasswd"
        try h.run([
            venv + "/bin/python3", "-c",
            "import bcrypt,sys; open(sys.argv[1],'w').write(sys.argv[2]+':'+bcrypt.hashpw(sys.argv[3].encode(), bcrypt.gensalt()).decode()+'\\n')",
            htpasswd, user, password,
        ])
        let config = h.directory + "/sushy.conf"
        try """
        SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'
        SUSHY_EMULATOR_LISTEN_PORT = \(port)
        SUSHY_EMULATOR_AUTH_FILE = '\(htpasswd)'
        SUSHY_EMULATOR_FAKE_DRIVER = True
        SUSHY_EMULATOR_FAKE_SYSTEMS = [
            {'uuid': '27946b59-9e44-4fa7-8e91-f3527a1ef094', 'name': 'node-a', 'power_state': 'Off',
             'external_notifier': False, 'nics': [{'mac': '52:54:00:18:10:01', 'ip': '198.18.10.1'}]},
            {'uuid': '48295ecf-3b1c-4e39-8d0a-4a5b5c6d7e8f', 'name': 'node-b', 'power_state': 'Off',
             'external_notifier': False, 'nics': [{'mac': '52:54:00:18:10:02', 'ip': '198.18.10.2'}]},
        ]
        """.write(toFile: config, atomically: true, encoding: .utf8)
        var args = [venv + "/bin/sushy-emulator", "--config", config, "--fake"]
        if tls {
            try h.run(
                [
                    "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", h.directory + "/tls.key", "-out", h.directory + "/tls.crt",
                ],
                timeout: 60
            )
            args += ["--ssl-certificate", h.directory + "/tls.crt", "--ssl-key", h.directory + "/tls.key"]
        }
        try h.start(args, log: "sushy.log")
        try h.waitUntil("sushy-emulator on \(port)", timeout: 30, interval: 0.2) {
            (try? h.run(["curl", "-sfk", "\(tls ? "https" : "http")://127.0.0.1:\(port)/redfish/v1/"], timeout: 5))
                != nil
        }
        return port
    }

    static func startStrict(_ h: Harness) throws -> (port: Int, events: String) {
        let port = Int.random(in: 49000..<57000)
        let events = h.directory + "/strict-events.jsonl"
        try h.start(
            ["python3", scriptDir + "/redfish_strict.py", String(port), user, password, events],
            log: "strict.log"
        )
        try h.waitUntil("strict Redfish on \(port)", timeout: 15, interval: 0.1) {
            (try? h.run(["curl", "-sf", "http://127.0.0.1:\(port)/redfish/v1/"], timeout: 5)) != nil
        }
        return (port, events)
    }

    static func events(_ path: String) -> [[String: Any]] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }
}

@Suite(
    .serialized,
    .enabled(if: RedfishPeers.sushyAvailable, "needs root and sushy-emulator (scripts/install-deps.sh)")
)
struct RedfishSushyTests {
    func client(_ port: Int, system: String? = nil, password: String = RedfishPeers.password) -> RedfishClient {
        RedfishClient(
            RedfishEndpoint(
                baseURL: "http://127.0.0.1:\(port)",
                user: RedfishPeers.user,
                password: password,
                system: system
            )
        )
    }

    @Test func enumeratesSystemsAndNeverAssumesOne() async throws {
        let h = try Harness("sushy-discover")
        defer { h.cleanup() }
        let port = try RedfishPeers.startSushy(h)
        // Two systems and none named: a clear error listing them.
        let anyClient = client(port)
        let error = await #expect(throws: BMCError.self) { try await anyClient.powerState() }
        #expect(error?.description.contains("manages 2 systems") == true)
        await anyClient.close()
        // Named by its UUID, or by its name (sushy redirects name paths to the UUID one).
        for name in ["48295ecf-3b1c-4e39-8d0a-4a5b5c6d7e8f", "node-b"] {
            let named = client(port, system: name)
            let info = try await named.info()
            #expect(info.details["uuid"] == "48295ecf-3b1c-4e39-8d0a-4a5b5c6d7e8f")
            await named.close()
        }
    }

    @Test func powerAndBootOverride() async throws {
        let h = try Harness("sushy-power")
        defer { h.cleanup() }
        let port = try RedfishPeers.startSushy(h)
        let bmc = client(port, system: "node-a")
        try await bmc.power(.on)
        // sushy's fake driver applies power changes 1–11 s later: poll, bounded.
        let deadline = ContinuousClock.now + .seconds(20)
        var state = try await bmc.powerState()
        while state != .on, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(500))
            state = try await bmc.powerState()
        }
        #expect(state == .on)
        try await bmc.setBootOverride(BootOverride(device: .pxe, persistent: false, efi: true))
        #expect(try await bmc.bootOverride()?.device == .pxe)
        // Read back with curl, independently of the client.
        let raw = try h.run([
            "curl", "-sfL", "-u", "\(RedfishPeers.user):\(RedfishPeers.password)",
            "http://127.0.0.1:\(port)/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094",
        ]).stdout
        #expect(raw.contains("\"BootSourceOverrideTarget\": \"Pxe\""))
        try await bmc.setBootOverride(BootOverride(device: .disk))
        #expect(try await bmc.bootOverride()?.device == .disk)
        await bmc.close()
    }

    @Test func tlsIsVerifiedUnlessThisBMCOptsOut() async throws {
        let h = try Harness("sushy-tls")
        defer { h.cleanup() }
        let port = try RedfishPeers.startSushy(h, tls: true)
        // A self-signed certificate: refused by default, with an error that says so.
        let strict = RedfishClient(
            RedfishEndpoint(
                baseURL: "https://127.0.0.1:\(port)",
                user: RedfishPeers.user,
                password: RedfishPeers.password,
                system: "node-a",
                timeouts: BMCTimeouts(attempt: .seconds(5), retries: 0, operation: .seconds(10))
            )
        )
        let error = await #expect(throws: BMCError.self) { try await strict.powerState() }
        #expect(error?.description.lowercased().contains("certificate") == true, "\(String(describing: error))")
        await strict.close()
        // The per-BMC opt-out.
        let lax = RedfishClient(
            RedfishEndpoint(
                baseURL: "https://127.0.0.1:\(port)",
                user: RedfishPeers.user,
                password: RedfishPeers.password,
                system: "node-a",
                verifyTLS: false
            )
        )
        #expect(try await lax.powerState() != .unknown)
        await lax.close()
    }

    @Test func wrongPasswordAndUnsupportedOperations() async throws {
        let h = try Harness("sushy-errors")
        defer { h.cleanup() }
        let port = try RedfishPeers.startSushy(h)
        let bad = client(port, system: "node-a", password: "wrong")
        let start = ContinuousClock.now
        let error = await #expect(throws: BMCError.self) { try await bad.powerState() }
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(error?.description == "authentication failed for BMC http://127.0.0.1:\(port)")
        await bad.close()
        let bmc = client(port, system: "node-a")
        let unsupported = await #expect(throws: BMCError.self) { _ = try await bmc.openConsole() }
        #expect(unsupported?.kind == .unsupported)
        #expect(unsupported?.description.contains("serial console") == true)
        await bmc.close()
    }
}

@Suite(.serialized, .enabled(if: Harness.canRun, "needs root"))
struct RedfishStrictServiceTests {
    @Test func sessionsETagsAndTaskMonitors() async throws {
        let h = try Harness("redfish-strict")
        defer { h.cleanup() }
        let (port, events) = try RedfishPeers.startStrict(h)
        let bmc = RedfishClient(
            RedfishEndpoint(
                baseURL: "http://127.0.0.1:\(port)",
                user: RedfishPeers.user,
                password: RedfishPeers.password
            )
        )
        // One system, found by enumeration (its id is System.Embedded.1, not 1).
        #expect(try await bmc.powerState() == .off)
        // Reset answers 202: the client follows the task monitor to Completed.
        try await bmc.power(.on)
        #expect(try await bmc.powerState() == .on)
        // The first PATCH meets a concurrent writer (412): re-read, retry with the new ETag.
        try await bmc.setBootOverride(BootOverride(device: .pxe, persistent: true, efi: true))
        #expect(try await bmc.bootOverride() == BootOverride(device: .pxe, persistent: true, efi: true))
        // Cycle is not allowed here (no PowerCycle in ActionInfo): ForceRestart stands in.
        try await bmc.power(.cycle)
        await bmc.close()
        let log = RedfishPeers.events(events)
        let kinds = log.compactMap { $0["event"] as? String }
        #expect(kinds.filter { $0 == "login" }.count == 1, "\(kinds)")
        #expect(kinds.contains("patch-412"))
        #expect(kinds.contains("patch"))
        #expect(log.contains { $0["event"] as? String == "reset" && $0["type"] as? String == "ForceRestart" })
        // Logged out at close: no session leaks.
        #expect(kinds.last == "logout", "\(kinds)")

        // Wrong password against the SessionService: the clear error, fast.
        let bad = RedfishClient(
            RedfishEndpoint(baseURL: "http://127.0.0.1:\(port)", user: RedfishPeers.user, password: "nope")
        )
        let error = await #expect(throws: BMCError.self) { try await bad.powerState() }
        #expect(error?.kind == .authenticationFailed)
        await bad.close()
    }
}

/// A BMC (or whoever answers in its place) that points the client elsewhere, by an absolute
/// `@odata.id` or by a redirect: the client refuses to leave the BMC's origin, and nothing,
/// least of all the password, reaches the other listener.
@Suite(.serialized, .enabled(if: Harness.canRun, "needs root"))
struct RedfishOriginTests {
    static let script = """
        import json, sys, threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        mode, log = sys.argv[1], sys.argv[2]
        class Thief(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self):
                with open(log, "a") as f: f.write(json.dumps({"path": self.path, "auth": self.headers.get("Authorization")}) + "\\n")
                self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
            do_POST = do_PATCH = do_GET
        thief = ThreadingHTTPServer(("127.0.0.2", 0), Thief)
        elsewhere = "http://127.0.0.2:%d" % thief.server_address[1]
        class BMC(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def reply(self, code, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(code); self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers: self.send_header(k, v)
                self.end_headers(); self.wfile.write(data)
            def do_GET(self):
                if self.path.rstrip("/") == "/redfish/v1":
                    systems = elsewhere + "/redfish/v1/Systems" if mode == "odata" else "/redfish/v1/Systems"
                    self.reply(200, {"Systems": {"@odata.id": systems}})
                elif mode == "redirect":
                    self.reply(307, {}, [("Location", elsewhere + self.path)])
                else:
                    self.reply(404, {})
            def do_POST(self): self.reply(404, {})
        bmc = ThreadingHTTPServer(("127.0.0.1", 0), BMC)
        print(bmc.server_address[1], flush=True)
        threading.Thread(target=thief.serve_forever, daemon=True).start()
        bmc.serve_forever()
        """

    @Test(arguments: ["odata", "redirect"])
    func credentialsStayOnTheBMCsOrigin(_ mode: String) async throws {
        let h = try Harness("redfish-origin-\(mode)")
        defer { h.cleanup() }
        let py = h.directory + "/bmc.py"
        let log = h.directory + "/thief.log"
        try Self.script.write(toFile: py, atomically: true, encoding: .utf8)
        try h.start(["python3", py, mode, log], log: "bmc.out")
        var port = 0
        try h.waitUntil("the fake BMC's port", timeout: 10, interval: 0.1) {
            port =
                Int(
                    (try? String(contentsOfFile: h.directory + "/bmc.out", encoding: .utf8))?.trimmingCharacters(
                        in: .whitespacesAndNewlines
                    ) ?? ""
                ) ?? 0
            return port > 0
        }
        let bmc = RedfishClient(
            RedfishEndpoint(baseURL: "http://127.0.0.1:\(port)", user: "admin", password: "hunter2")
        )
        let error = await #expect(throws: BMCError.self) { try await bmc.powerState() }
        #expect(
            error?.kind == .protocolError && "\(error.map { "\($0)" } ?? "")".contains("off its own origin"),
            "\(String(describing: error))"
        )
        await bmc.close()
        #expect(
            !FileManager.default.fileExists(atPath: log),
            "a request left the BMC's origin: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")"
        )
    }
}
