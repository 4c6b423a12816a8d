import Foundation
import TestSupport
import Testing

/// A real `farrier server` process for control-plane tests, the CLI against it, and a stand-in
/// for the deploy agent that speaks the agent's protocol with curl over the HTTPS agent channel.
///
/// Agent calls and boot scripts are answered only for the address a machine's MAC holds. Here
/// no DHCP runs: each test MAC gets a reservation on a loopback address of its own
/// (127.x.y.z from the MAC's last three bytes), and curl speaks for a machine from that address.
final class ControlPlane: @unchecked Sendable {
    let h: Harness
    private(set) var grpc: String
    private(set) var httpPort: Int
    private(set) var agentPort: Int
    private(set) var metricsPort: Int
    let data: String
    var server: Process?
    let extraFlags: [String]
    /// Flags every CLI call gets (e.g. --ca-file for a TLS server).
    var clientFlags: [String] = []
    /// NAME=VALUE pairs in the server's environment.
    var environment: [String] = []
    static let bin = Harness.farrierBinary

    init(_ h: Harness, flags: [String] = []) {
        self.h = h
        (grpc, httpPort, agentPort, metricsPort) = Self.randomPorts()
        data = h.directory + "/data"
        extraFlags = flags
    }

    /// Below Linux's ephemeral range (32768–60999 by default), where any outgoing connection
    /// (a PostgreSQL client's, a curl's) may hold a port for a while: a server told to listen on
    /// one such port failed its first start in CI (`Address already in use`).
    static func randomPorts() -> (String, Int, Int, Int) {
        (
            "127.0.0.1:\(Int.random(in: 20000..<24000))", Int.random(in: 24000..<28000), Int.random(in: 28000..<32000),
            Int.random(in: 15000..<20000)
        )
    }

    var http: String { "http://127.0.0.1:\(httpPort)" }
    /// The metrics listener's scrape URL.
    var metricsURL: String { "http://127.0.0.1:\(metricsPort)/metrics" }
    var agentURL: String { "https://127.0.0.1:\(agentPort)" }

    /// Every MAC the control-plane tests use: each gets a reservation (see `address(of:)`).
    static let testMACs = [
        "52:54:00:cc:00:01", "52:54:00:cc:00:02", "52:54:00:cc:00:09", "52:54:00:ee:00:01", "52:54:00:00:00:01",
        "52:54:00:aa:00:01", "52:54:00:aa:00:02", "52:54:00:aa:00:03", "52:54:00:18:10:01", "52:54:00:18:10:02",
        "52:54:00:dd:00:01",
    ]

    /// The loopback address reserved for a test MAC: 127 and its last three bytes.
    static func address(of mac: String) -> String {
        let b = mac.split(separator: ":").suffix(3).map { Int($0, radix: 16) ?? 0 }
        return "127.\(b[0]).\(b[1]).\(max(1, b[2]))"
    }

    /// Starts the server (optionally armed with failpoints) and waits until the API answers.
    @discardableResult
    func start(failpoints: [String] = [], log: String = "server.log") throws -> Process {
        // A first start whose port another process took (two tests' random picks can still
        // meet) is tried again on other ports, at most twice; later starts keep their ports, which
        // agents and clients already know.
        let first = server == nil
        for attempt in 1...3 {
            do { return try startOnce(failpoints: failpoints, log: log) } catch {
                guard first, attempt < 3, h.read(log).contains("Address already in use") else { throw error }
                (grpc, httpPort, agentPort, metricsPort) = Self.randomPorts()
                server = nil
            }
        }
        throw Harness.CommandError(description: "unreachable")
    }

    func startOnce(failpoints: [String], log: String) throws -> Process {
        let env =
            environment + (failpoints.isEmpty ? [] : ["FARRIER_FAILPOINTS=" + failpoints.joined(separator: ",")])
        let p = try h.start(
            env + [
                Self.bin, "server", "--data-dir", data, "--log-level", "debug", "--grpc-listen", grpc,
                "--http-listen", "127.0.0.1:\(httpPort)", "--agent-listen", "127.0.0.1:\(agentPort)", "--tftp-listen",
                "", "--metrics-listen", "127.0.0.1:\(metricsPort)",
                "--dhcp-mode", "off",
            ] + Self.testMACs.flatMap { ["--dhcp-reservation", "\($0)=\(Self.address(of: $0))"] }
                + extraFlags,
            log: log
        )
        server = p
        try h.waitUntil("server up", timeout: 30, interval: 0.2) {
            guard p.isRunning else { throw Harness.CommandError(description: "server exited (\(log)): \(h.read(log))") }
            guard let t = try? h.adminToken(dataDir: data) else { return false }
            return
                (try? h.run([Self.bin, "token", "whoami", "--server", grpc, "--token", t] + clientFlags, timeout: 10))
                != nil
        }
        return p
    }

    /// Waits for the server to die (a failpoint SIGKILLed it) and checks that it was SIGKILL.
    func waitForCrash(timeout: Double = 60) throws {
        guard let p = server else { return }
        try h.waitUntil("server killed by its failpoint", timeout: timeout, interval: 0.1) { !p.isRunning }
        guard p.terminationReason == .uncaughtSignal, p.terminationStatus == SIGKILL else {
            throw Harness.CommandError(description: "server ended with \(p.terminationStatus), not SIGKILL")
        }
    }

    func stop() {
        guard let p = server, p.isRunning else { return }
        p.terminate()
        p.waitUntilExit()
    }

    var adminToken: String { (try? h.adminToken(dataDir: data)) ?? "" }

    @discardableResult
    func cli(_ args: [String], token: String? = nil, check: Bool = true) throws -> Harness.Result {
        try h.run(
            [Self.bin] + args + ["--server", grpc, "--token", token ?? adminToken] + clientFlags,
            timeout: 60,
            check: check
        )
    }

    func json(_ args: [String], token: String? = nil) throws -> [String: Any] {
        let out = try cli(args + ["-o", "json"], token: token).stdout
        guard let obj = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] else {
            throw Harness.CommandError(description: "not a JSON object: \(out)")
        }
        return obj
    }

    func machine(_ name: String) throws -> [String: Any] { try json(["machine", "show", name]) }

    /// m1's stored events after `id`, as this server streams them (the watch replays them, then
    /// `timeout` ends it: 6 s, for a CLI started on two cores shared with the lab's VMs); and the
    /// last event id seen (`id` when none).
    func eventsSince(_ id: Int64) throws -> (text: String, last: Int64) {
        let text = try h.run(
            [
                "timeout", "6", Self.bin, "machine", "watch", "m1", "--after", String(id), "--server", grpc,
                "--token", adminToken,
            ],
            timeout: 20,
            check: false
        ).stdout
        let ids = text.split(separator: "\n").compactMap { line in
            line.split(separator: " ").first(where: { $0.hasPrefix("#") }).flatMap { Int64($0.dropFirst()) }
        }
        return (text, ids.max() ?? id)
    }

    func state(_ name: String) throws -> String {
        let m = try machine(name)
        let phase = m["phase"] as? String
        return (m["state"] as? String ?? "?") + (phase.map { "/" + $0 } ?? "")
    }

    /// Polls until the machine's state (with phase, `deploying/agent`) is `expected`.
    func waitFor(_ name: String, _ expected: String, timeout: Double = 60) throws {
        var last = ""
        do {
            try h.waitUntil("\(name) to be \(expected)", timeout: timeout, interval: 0.2) {
                last = (try? state(name)) ?? last
                return last == expected
            }
        } catch {
            throw Harness.CommandError(
                description: "\(error); last seen \(last); reason: \((try? machine(name)["reason"]) as? String ?? "")"
            )
        }
    }

    // MARK: The stand-in agent

    /// The machine's iPXE script, fetched from its reserved address (or `from`).
    func script(mac: String, from: String? = nil) throws -> String {
        try h.run(
            [
                "curl", "-sf", "--interface", from ?? Self.address(of: mac),
                "\(http)/boot/\(mac.replacingOccurrences(of: ":", with: "-")).ipxe?platform=pcbios&buildarch=x86_64",
            ],
            timeout: 10
        ).stdout
    }

    /// Whether the script boots the ramdisk (the agent or rescue).
    func offersRamdisk(mac: String) throws -> Bool { try script(mac: mac).contains("farrier.mode=") }

    /// POSTs JSON to an agent endpoint over the agent channel (the region's, or `url`: a
    /// site's), from the machine's reserved address (or `from`); returns (HTTP status, body).
    /// The stand-in does not pin the certificate (-k): the real agent's pinning is tested in
    /// AgentTests.
    func agent(
        _ path: String,
        mac: String,
        token: String?,
        _ body: String,
        from: String? = nil,
        url: String? = nil
    ) throws -> (Int, String) {
        try Self.agentCall(h, url: url ?? agentURL, path, token: token, body, interface: from ?? Self.address(of: mac))
    }

    /// POSTs an agent call with curl, as a stand-in agent: from the address `interface` or
    /// inside `namespace`, to `url` + `path`. Answers the HTTP status and the body.
    static func agentCall(
        _ h: Harness,
        url: String,
        _ path: String,
        token: String?,
        _ body: String,
        interface: String? = nil,
        namespace: String? = nil
    ) throws -> (Int, String) {
        let out = try h.run(
            (namespace.map { ["ip", "netns", "exec", $0] } ?? []) + ["curl", "-s", "-k"]
                + (interface.map { ["--interface", $0] } ?? [])
                + ["-X", "POST", "-H", "Content-Type: application/json"]
                + (token.map { ["-H", "Authorization: Bearer \($0)"] } ?? [])
                + ["--data-binary", body, "-w", "\n%{http_code}", url + path],
            timeout: 15
        ).stdout
        let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    var nonces: [String: String] = [:]
    /// The deployed OS's token, by MAC, from the deploy tasks the stand-in took (as the agent
    /// puts it into the OS's vendor-data).
    var osTokens: [String: String] = [:]

    /// Plays the installed OS reporting in: waits until `awaited` holds of the machine (by
    /// default: it boots its disk for its step, phase `os`), runs `before`, then posts a new
    /// boot ID with the deployment's OS token from the machine's reserved address. Answers the
    /// boot ID.
    @discardableResult
    func reportOS(
        mac: String,
        timeout: Double = 60,
        awaited: ([String: Any]) -> Bool = { $0["phase"] as? String == "os" },
        before: () throws -> Void = {}
    ) throws -> String {
        guard let token = osTokens[mac] else {
            throw Harness.CommandError(description: "no deploy task of \(mac) carried an OS token")
        }
        try h.waitUntil("\(mac) to wait for its OS", timeout: timeout, interval: 0.2) { awaited(try machine(mac)) }
        try before()
        let boot = UUID().uuidString.lowercased()
        let (status, body) = try agent("/os/v1/ready", mac: mac, token: token, #"{"bootID":"\#(boot)"}"#)
        guard status == 200 else { throw Harness.CommandError(description: "OS report: \(status) \(body)") }
        return boot
    }

    static func hello(nonce: String) -> String { #"{"agentVersion":"stand-in","nonce":"\#(nonce)"}"# }

    static let inventory = """
        {"cpuModel":"QEMU Virtual CPU","cores":4,"memoryBytes":4294967296,"vendor":"QEMU","product":"Standard PC","serial":"S1",\
        "firmware":"bios","disks":[{"name":"vda","sizeBytes":21474836480,"model":"QEMU HARDDISK","serial":"D1","rotational":false}],\
        "nics":[{"name":"ens3","mac":"52:54:00:00:00:01","driver":"virtio_net","link":true}]}
        """

    /// Plays the agent for one step: waits for the ramdisk script, says hello, reports progress,
    /// and reports success (with the inventory when commissioning); after a deploy, plays its
    /// OS reporting in (`reportOS`). With `reportsOS` false the deploy's agent does not say it
    /// installed the reporter (an agent from before it existed), so nothing reports in and the
    /// deploy ends once the disk boots; `osReports` false keeps the agent's word but no OS
    /// reports in (the test plays it, or it never does). Returns the task it got.
    @discardableResult
    func runAgent(
        mac: String,
        timeout: Double = 60,
        fail: String? = nil,
        reportsOS: Bool = true,
        osReports: Bool = true,
        progress: String = #"{"stage":"write","bytesDone":1048576,"bytesTotal":3145728}"#,
        beforeDone: () throws -> Void = {},
        withTask: ([String: Any]) throws -> Void = { _ in }
    ) throws -> [String: Any] {
        try h.waitUntil("ramdisk script for \(mac)", timeout: timeout, interval: 0.2) { try offersRamdisk(mac: mac) }
        // Like the ramdisk's agent, the stand-in keeps one nonce: said again after a lost answer
        // (a server killed after committing the hello), it gets the same token back.
        let nonce = nonces[mac] ?? UUID().uuidString
        nonces[mac] = nonce
        // 503 while Farrier is still powering the machine for the step (the real agent retries too).
        var (status, body) = (0, "")
        try h.waitUntil("hello from \(mac) past the boot phase", timeout: timeout, interval: 0.2) {
            (status, body) = try agent("/agent/v1/hello", mac: mac, token: nil, Self.hello(nonce: nonce))
            return status != 503
        }
        guard status == 200, let task = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
            let t = task["token"] as? String, !t.isEmpty
        else {
            throw Harness.CommandError(description: "hello: \(status) \(body)")
        }
        if let os = task["osToken"] as? String { osTokens[mac] = os }
        try withTask(task)
        _ = try agent("/agent/v1/progress", mac: mac, token: t, progress)
        let result: String
        if let fail {
            result = #"{"ok":false,"error":"\#(fail)"}"#
        } else if task["kind"] as? String == "commission" {
            result = #"{"ok":true,"inventory":\#(Self.inventory)}"#
        } else if task["kind"] as? String == "deploy", reportsOS, task["osToken"] != nil {
            // The agent says it gave the OS the reporter (as the real one does with the token).
            result = #"{"ok":true,"osReporter":true}"#
        } else {
            result = #"{"ok":true}"#
        }
        try beforeDone()
        let (s2, b2) = try agent("/agent/v1/done", mac: mac, token: t, result)
        guard s2 == 200 else { throw Harness.CommandError(description: "done: \(s2) \(b2)") }
        // The deployed OS boots and reports in, as its vendor-data's reporter would.
        if task["kind"] as? String == "deploy", fail == nil, reportsOS, osReports, task["osToken"] != nil {
            try reportOS(mac: mac, timeout: timeout)
        }
        return task
    }

    /// Adds the image `img` that tests deploy: 1 MiB of one repeated byte.
    func addTestImage(byte: UInt8) throws {
        let path = h.directory + "/img.raw"
        try Data(repeating: byte, count: 1 << 20).write(to: URL(fileURLWithPath: path))
        try cli(["image", "add", "img", path])
    }

    /// Adds site `name` at the region and joins it with its key in `dir`, as an operator would.
    func joinSite(_ name: String, dir: String) throws {
        let token = try #require(try json(["site", "add", name])["joinToken"] as? String)
        let r = try h.run(
            [
                "env", "-u", "FARRIER_TOKEN", "FARRIER_CONFIG_FILE=/nonexistent", Self.bin, "site", "join",
                "--join-token", token, "--name", name, "--data-dir", dir, "--server", grpc,
            ],
            check: false
        )
        #expect(r.status == 0, "\(r.stderr)")
    }
}
