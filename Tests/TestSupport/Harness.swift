import Foundation
import Synchronization

/// Runs commands and real peers for integration tests, and undoes everything it made.
///
/// Every process started is recorded by PID and killed (TERM, then KILL) at `cleanup()`; every
/// namespace made is deleted; every temporary directory removed. Tests call `cleanup()` in a
/// `defer`, so it runs on failure too.
public final class Harness: @unchecked Sendable {
    public let directory: String
    let lock = Mutex<(processes: [Process], namespaces: [String])>(([], []))
    let counter = Atomic<Int>(0)
    let pidFiles = Mutex<[String]>([])

    /// Records a pid file written by a daemon the test started (dhclient), so `cleanup()` ends it.
    public func trackPIDFile(_ path: String) { pidFiles.withLock { $0.append(path) } }
    public let id: String

    public init(_ name: String) throws {
        id = String(UInt32.random(in: 0..<UInt32.max), radix: 36)
        directory = NSTemporaryDirectory() + "farrier-\(name)-\(id)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    /// Integration tests need root (namespaces, ports 67/69) and the peers installed by `.ci/setup`.
    public static var canRun: Bool {
        getuid() == 0
            && (FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip")
                || FileManager.default.isExecutableFile(atPath: "/sbin/ip"))
    }

    /// Where `farrier lab up` records a running lab.
    public static let labStatePath = "/run/farrier-lab/state.json"

    /// The lab suites need the lab to themselves: a lab that is up (any of its processes alive)
    /// is a clear failure, never a silent skip, and is left as it is. What a lab that died left
    /// behind (a reboot, a run killed at its time limit: its state, namespaces, routes and
    /// files, with none of its processes alive) is removed with `farrier lab down --if-dead`,
    /// which refuses, changing nothing, while any process of the lab is alive.
    public static func requireNoLab() throws {
        guard FileManager.default.fileExists(atPath: labStatePath) else { return }
        let text = (try? String(contentsOfFile: labStatePath, encoding: .utf8)) ?? ""
        let summary = text.prefix(200).replacingOccurrences(of: "\n", with: " ")
        let h = try Harness("lab-stale")
        defer { h.cleanup() }
        let r = try h.run([farrierBinary, "lab", "down", "--if-dead"], timeout: 180, check: false)
        if r.status == 0 && !FileManager.default.fileExists(atPath: labStatePath) {
            print("removed what a lab that died left behind (\(summary))")
            return
        }
        throw CommandError(
            description: """
                a lab is up: \(labStatePath) exists (\(summary)) and `farrier lab down --if-dead` \
                refused (\(r.status)): \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines)). \
                Run `farrier lab down`, then run the tests again.
                """
        )
    }

    /// The farrier binary built by `swift build` (FARRIER_BIN overrides).
    public static var farrierBinary: String {
        if let b = ProcessInfo.processInfo.environment["FARRIER_BIN"] { return b }
        var dir = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { dir.deleteLastPathComponent() }
        return dir.appendingPathComponent(".build/debug/farrier").path
    }

    public struct Result: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    public struct CommandError: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// Runs a command to completion, bounded by `timeout` seconds (then killed).
    @discardableResult
    public func run(_ args: [String], timeout: Double = 60, check: Bool = true) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        // Output goes to files, not pipes: a child that daemonizes (dhclient does, once bound)
        // keeps inherited descriptors open, and a pipe would never reach end of file.
        let n = counter.add(1, ordering: .relaxed).newValue
        let outPath = "\(directory)/.run\(n).out"
        let errPath = "\(directory)/.run\(n).err"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        defer {
            try? out.close()
            try? err.close()
            try? FileManager.default.removeItem(atPath: outPath)
            try? FileManager.default.removeItem(atPath: errPath)
        }
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(10_000) }
        if p.isRunning {
            p.terminate()
            usleep(200_000)
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        p.waitUntilExit()
        let r = Result(
            status: p.terminationStatus,
            // Bytes that are not UTF-8 are shown replaced, not lost with the rest of the output.
            stdout: FileManager.default.contents(atPath: outPath).map { String(decoding: $0, as: UTF8.self) } ?? "",
            stderr: FileManager.default.contents(atPath: errPath).map { String(decoding: $0, as: UTF8.self) } ?? ""
        )
        if check && r.status != 0 {
            throw CommandError(
                description: "\(args.joined(separator: " ")) exited \(r.status): \(r.stderr) \(r.stdout)"
            )
        }
        return r
    }

    /// Starts a long-running process with output to `log` (under the harness directory).
    @discardableResult
    public func start(_ args: [String], log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let path = directory + "/" + log
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        p.standardOutput = h
        p.standardError = h
        p.standardInput = FileHandle.nullDevice
        try p.run()
        lock.withLock { $0.processes.append(p) }
        return p
    }

    public func read(_ log: String) -> String {
        (try? String(contentsOfFile: directory + "/" + log, encoding: .utf8)) ?? ""
    }

    /// Polls `condition` every `interval` until it holds or `timeout` passes. It ends early, with
    /// an error, when the task it runs in is cancelled: a test running two machines' steps as
    /// child tasks stops the second one's wait when the first fails.
    public func waitUntil(
        _ what: String,
        timeout: Double = 30,
        interval: Double = 0.1,
        _ condition: () throws -> Bool
    ) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            if Task.isCancelled { throw CommandError(description: "cancelled while waiting for \(what)") }
            usleep(UInt32(interval * 1_000_000))
        }
        throw CommandError(description: "timed out after \(timeout)s waiting for \(what)")
    }

    /// Makes a network namespace (deleted at cleanup) with loopback up, and a resolv.conf of its
    /// own: `ip netns exec` mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf, so a DHCP
    /// client in it (dhclient-script writes the DNS servers it was offered there) does not
    /// overwrite the host's. One such run once left a lab address as this machine's only DNS
    /// server, and apt failed.
    public func namespace(_ suffix: String) throws -> String {
        let name = "frt\(id.prefix(6))\(suffix)"
        try run(["ip", "netns", "add", name])
        lock.withLock { $0.namespaces.append(name) }
        // Twice at most: another test's cleanup may remove /etc/netns between the two calls.
        var made = false
        for _ in 0..<2 where !made {
            try? FileManager.default.createDirectory(atPath: Self.netnsEtc(name), withIntermediateDirectories: true)
            made = FileManager.default.createFile(atPath: Self.netnsEtc(name) + "/resolv.conf", contents: Data())
        }
        guard made else { throw CommandError(description: "cannot write \(Self.netnsEtc(name))/resolv.conf") }
        try run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name
    }

    /// The files `ip netns exec` puts over /etc's in namespace `name`.
    static func netnsEtc(_ name: String) -> String { "/etc/netns/" + name }

    /// Two namespaces joined by a veth pair: the server side gets `serverIP/len`, the client side
    /// none (DHCP clients configure it). Returns (server ns, server if, client ns, client if).
    public func veth(serverIP: String) throws -> (String, String, String, String) {
        let s = try namespace("s")
        let c = try namespace("c")
        try run(["ip", "-n", s, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", c])
        try run(["ip", "-n", s, "addr", "add", serverIP, "dev", "vs"])
        try run(["ip", "-n", s, "link", "set", "vs", "up"])
        try run(["ip", "-n", c, "link", "set", "vc", "up"])
        return (s, "vs", c, "vc")
    }

    /// Whether `pid` is a process that has not exited (a zombie has).
    static func isLive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0, let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else {
            return false
        }
        return !status.contains("State:\tZ")
    }

    /// Whether `pid` is a live child of this process (a process the harness started: env,
    /// setpriv and ip netns exec exec in place, so the program keeps that pid).
    static func isLiveChild(_ pid: Int32) -> Bool {
        guard isLive(pid), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        // Fields after the command's closing parenthesis: state, ppid, ...
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 && Int32(fields[1]) == getpid()
    }

    public func cleanup() {
        for path in pidFiles.withLock({ $0 }) {
            if let text = try? String(contentsOfFile: path, encoding: .utf8),
                let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1
            {
                let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)
                kill(pid, SIGTERM)
                // A process started from here inherits a test thread's blocked signals and may
                // never see the TERM (dnsmasq does not unblock them): KILL after 3 s, if the pid
                // still names the same program.
                let deadline = Date().addingTimeInterval(3)
                while Self.isLive(pid) && Date() < deadline { usleep(20_000) }
                if Self.isLive(pid), comm != nil,
                    (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) == comm
                {
                    kill(pid, SIGKILL)
                }
            }
        }
        let (procs, namespaces) = lock.withLock { ($0.processes, $0.namespaces) }
        // Liveness by pid and /proc, not Process.isRunning: that has been seen false for a live
        // child (a PostgreSQL server) while several tests started processes at once.
        // Only our own children are signalled (a pid reused by another process is not).
        for p in procs where Self.isLiveChild(p.processIdentifier) { kill(p.processIdentifier, SIGTERM) }
        for p in procs {
            let pid = p.processIdentifier
            let deadline = Date().addingTimeInterval(5)
            while Self.isLiveChild(pid) && Date() < deadline { usleep(20_000) }
            if Self.isLiveChild(pid) { kill(pid, SIGKILL) }
            p.waitUntilExit()
        }
        for ns in namespaces.reversed() {
            _ = try? run(["ip", "netns", "del", ns], check: false)
            try? FileManager.default.removeItem(atPath: Self.netnsEtc(ns))
        }
        // /etc/netns too, once no test's namespace has files there (rmdir refuses otherwise).
        if !namespaces.isEmpty { rmdir("/etc/netns") }
        lock.withLock { $0 = ([], []) }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts `farrier server` inside `namespace` with the given extra flags; waits for /healthz.
    @discardableResult
    public func startFarrier(namespace: String, flags: [String], log: String = "farrier.log") throws -> Process {
        let data = directory + "/data"
        let p = try start(
            [
                "ip", "netns", "exec", namespace, Harness.farrierBinary, "server", "--data-dir", data, "--log-level",
                "debug",
                "--http-listen", "0.0.0.0:8080", "--grpc-listen", "127.0.0.1:7700",
            ] + flags,
            log: log
        )
        try waitUntil("farrier /healthz", timeout: 30) {
            guard p.isRunning else { throw CommandError(description: "farrier exited: \(read(log))") }
            return
                (try? run(
                    ["ip", "netns", "exec", namespace, "curl", "-sf", "http://127.0.0.1:8080/healthz"],
                    timeout: 5
                ).stdout) == "ok\n"
        }
        return p
    }

    /// The admin token a server made at first start in `dataDir` (default: the harness's).
    public func adminToken(dataDir: String? = nil) throws -> String {
        let path = (dataDir ?? directory + "/data") + "/admin.token"
        guard let t = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw CommandError(description: "no admin token at \(path)")
        }
        return t.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs the farrier CLI inside `namespace` and decodes its JSON output.
    public func farrierJSON(namespace: String, _ args: [String]) throws -> Any {
        let r = try run(
            ["ip", "netns", "exec", namespace, Harness.farrierBinary] + args
                + ["-o", "json", "--server", "127.0.0.1:7700", "--token", try adminToken()],
            timeout: 30
        )
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8))
    }

    /// Reads one unlabelled counter or gauge from the server's metrics listener (its default,
    /// 127.0.0.1:7790, in `namespace`); -1 when it is not there.
    public func metric(namespace: String, _ name: String, port: Int = 7790) throws -> Int {
        let text = try run(
            ["ip", "netns", "exec", namespace, "curl", "-sf", "http://127.0.0.1:\(port)/metrics"],
            timeout: 10
        ).stdout
        return Harness.metric(text, name) ?? -1
    }

    /// The value of the series `series` (a name, with its labels as exposed: `name{a="b"}`) in
    /// Prometheus text, as a whole number; nil when it is not there.
    public static func metric(_ text: String, _ series: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.split(separator: " ")[1]).map { Int($0) }
        }
        return nil
    }

    /// The IPv4 address `ifname` in `namespace` has in `prefix` (e.g. "198.18.10."), if any.
    public func leasedAddress(_ namespace: String, _ ifname: String, prefix: String) throws -> String? {
        let out = try run(["ip", "-n", namespace, "-4", "-o", "addr", "show", "dev", ifname]).stdout
        return out.split(separator: " ").first(where: { $0.hasPrefix(prefix) })?.split(separator: "/").first.map(
            String.init
        )
    }

    /// Runs dhclient in the foreground (a daemonizing dhclient would outlive the test) until it
    /// has bound an address in `prefix` (30 s at most), then stops it. Returns the address and
    /// dhclient's log.
    public func dhclient(_ namespace: String, _ ifname: String, tag: String, prefix: String) throws -> (String?, String)
    {
        // dhclient-script writes the offered DNS servers to /etc/resolv.conf: in a namespace made
        // by `namespace(_:)` that is the namespace's own. The host's must come out unchanged.
        let hostResolver = FileManager.default.contents(atPath: "/etc/resolv.conf")
        let p = try start(
            [
                "ip", "netns", "exec", namespace, "dhclient", "-d", "-1", "-v", "-lf", "\(directory)/\(tag).leases",
                "-pf", "\(directory)/\(tag).pid", ifname,
            ],
            log: "\(tag).log"
        )
        var address: String?
        try? waitUntil("dhclient lease", timeout: 30) {
            address = try leasedAddress(namespace, ifname, prefix: prefix)
            return address != nil || !p.isRunning
        }
        p.terminate()
        try? waitUntil("dhclient to stop", timeout: 5) { !p.isRunning }
        if let hostResolver, FileManager.default.contents(atPath: "/etc/resolv.conf") != hostResolver {
            // Put back, then fail the test: a test must not change the host's DNS.
            try? hostResolver.write(to: URL(fileURLWithPath: "/etc/resolv.conf"))
            throw CommandError(description: "dhclient in \(namespace) changed the host's /etc/resolv.conf (put back)")
        }
        return (address, read("\(tag).log"))
    }
}

extension Harness {
    /// The end of a log for a failure message: its last `lines` lines, and before them, when the
    /// process crashed, the runtime's reason ("Fatal error: …") and the crashed thread's first
    /// frames from Swift's backtrace. CI shows only part of the output, and a crash's register
    /// dump and image list alone (what the tail holds) say nothing about its cause.
    public static func logExcerpt(_ text: String, lines: Int = 15) -> String {
        let all = text.split(separator: "\n", omittingEmptySubsequences: false)
        let tail = all.suffix(lines).joined(separator: "\n")
        guard let crashed = all.firstIndex(where: { $0.hasPrefix("*** Program crashed:") }) else { return tail }
        let reasons = all[..<crashed].filter { line in
            ["Fatal error", "Precondition failed", "Assertion failed", "MISUSE"].contains { line.contains($0) }
        }.suffix(3)
        // The crashed thread's header and its frames, up to the blank line that ends them.
        let thread = all[crashed...].firstIndex { $0.hasPrefix("Thread ") && $0.hasSuffix("crashed:") }
        var frames: [Substring] = []
        if let thread {
            for line in all[thread...].prefix(40) {
                if line.isEmpty && frames.count > 2 { break }
                frames.append(line)
            }
        }
        return (["(crashed) " + all[crashed]] + reasons + frames + ["(last lines)", Substring(tail)])
            .joined(separator: "\n")
    }
}
