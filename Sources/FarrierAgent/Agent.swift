import Crypto
import FarrierCore
import Foundation
import Synchronization
import SystemSupport
import WireSupport

#if canImport(Glibc)
import Glibc
#endif

/// How the agent finds its server and what it may touch.
public struct AgentConfiguration: Sendable {
    /// The server's agent channel, e.g. https://198.18.0.1:8443.
    public var serverURL: String
    /// SHA-256 of the server's certificate (hex, optionally `sha256:`), which the agent pins.
    public var certificateSHA256: String
    /// agent or rescue (informational: the server's task decides).
    public var mode: String
    /// Write deploys and wipes to this file or device instead of the machine's disks (tests).
    public var device: String?
    /// Prefix for /proc and /sys (tests).
    public var sysRoot: String
    /// What rescue runs to serve SSH.
    public var rescueCommand: [String]
    /// Where rescue writes root's authorized_keys.
    public var authorizedKeysPath: String
    /// How many times the hello and done calls are tried (2 s apart) while the network comes up.
    public var attempts: Int
    /// Where to write the task as received (secrets included), mode 0600, for debugging and
    /// tests; the console never shows a secret.
    public var taskFile: String?
    /// Where the agent keeps its nonce for this boot (the ramdisk's tmpfs): an agent restarted
    /// within the boot says hello with the same nonce and gets the same token.
    public var stateDirectory: String
    /// The source address of connections to the server (a machine with several addresses).
    public var sourceAddress: String?
    /// A directory searched before the standard ones for the tests' tools (tests).
    public var toolPath: String?

    public init(
        serverURL: String,
        certificateSHA256: String,
        mode: String = "agent",
        device: String? = nil,
        sysRoot: String = "",
        rescueCommand: [String] = ["dropbear", "-F", "-R", "-E", "-p", "22"],
        authorizedKeysPath: String = "/root/.ssh/authorized_keys",
        attempts: Int = 60,
        stateDirectory: String = "/run/farrier-agent"
    ) {
        self.serverURL = serverURL.hasSuffix("/") ? String(serverURL.dropLast()) : serverURL
        self.certificateSHA256 = certificateSHA256
        self.mode = mode
        self.device = device
        self.sysRoot = sysRoot
        self.rescueCommand = rescueCommand
        self.authorizedKeysPath = authorizedKeysPath
        self.attempts = attempts
        self.stateDirectory = stateDirectory
    }

    /// The agent channel's host and port, from `serverURL` (https://HOST:PORT).
    public func channelAddress() throws -> (host: String, port: Int) {
        let url = serverURL
        guard url.hasPrefix("https://") else {
            throw AgentFailure("the agent channel is HTTPS only; farrier.url is \(url)")
        }
        let rest = url.dropFirst("https://".count)
        let authority = rest.prefix { $0 != "/" }
        guard let colon = authority.lastIndex(of: ":"), let port = Int(authority[authority.index(after: colon)...])
        else {
            throw AgentFailure("farrier.url needs a port: \(url)")
        }
        return (String(authority[..<colon]), port)
    }

    /// Reads `farrier.url=`, `farrier.cert=` and `farrier.mode=` from a kernel command line.
    public static func fromKernelCommandLine(_ text: String) -> AgentConfiguration? {
        var values: [String: String] = [:]
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            guard let eq = word.firstIndex(of: "="), word.hasPrefix("farrier.") else { continue }
            values[String(word[..<eq])] = String(word[word.index(after: eq)...])
        }
        guard let url = values["farrier.url"], let cert = values["farrier.cert"] else { return nil }
        return AgentConfiguration(serverURL: url, certificateSHA256: cert, mode: values["farrier.mode"] ?? "agent")
    }
}

public struct AgentFailure: Error, CustomStringConvertible {
    public var description: String
    /// The kind, where the server acts on it (see `AgentFailureCode`).
    public var code: AgentFailureCode?
    public init(_ d: String, code: AgentFailureCode? = nil) {
        description = d
        self.code = code
    }
}

/// Writes all of `bytes` at `offset`, retrying short writes and EINTR.
func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
    var done = 0
    while done < bytes.count {
        let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
        if n < 0 {
            if errno == EINTR { continue }
            throw AgentFailure("write: \(String(cString: strerror(errno)))")
        }
        done += n
    }
}

/// The deploy agent: says hello with the inventory, runs the task the server gives
/// (commission, deploy, wipe, rescue), reports progress about once a second, and reports the
/// result. Blocking I/O on plain threads; memory is a few fixed buffers whatever the image size.
public final class Agent: Sendable {
    public let configuration: AgentConfiguration
    let progress = Mutex<AgentProgress?>(nil)
    /// This boot's token, from the hello answer.
    let token = Mutex<String>("")
    /// Where BlockingHTTP sends requests: the local end of the pinned TLS tunnel.
    let base = Mutex<String>("")
    /// What the current task's time goes to.
    let phases = PhaseClock()
    let log: @Sendable (String) -> Void

    public init(
        _ configuration: AgentConfiguration,
        log: @escaping @Sendable (String) -> Void = {
            FileHandle.standardError.write(Data(("farrier-agent: " + $0 + "\n").utf8))
        }
    ) {
        self.configuration = configuration
        self.log = log
    }

    static let version = "0.1.0"

    /// Runs one task end to end. Returns whether the task succeeded.
    @discardableResult
    public func run() throws -> Bool {
        let inventory = InventoryCollector(root: configuration.sysRoot).collect()
        let tunnel = try openTunnel()
        defer { tunnel.close() }
        base.withLock { $0 = tunnel.localURL }
        let nonce = try bootNonce()
        let task: AgentTask = try withRetries("hello") {
            try post(
                AgentAPI.hello,
                AgentHello(agentVersion: Self.version, inventory: inventory, nonce: nonce),
                as: AgentTask.self
            )
        }
        token.withLock { $0 = task.token }
        log("task \(task.kind.rawValue) for \(task.machine)")
        if let path = configuration.taskFile {
            // For debugging only: a task that cannot be written there does not stop the agent.
            try? SecretFile.create(path, Array((try? JSONEncoder().encode(task)) ?? Data()), exclusive: false)
        }
        let stop = Atomic<Bool>(false)
        let reporter = Thread { [self] in
            var last: String?
            var sent = Date.distantPast
            while !stop.load(ordering: .relaxed) {
                if let p = progress.withLock({ $0 }) {
                    let key = "\(p.stage)/\(p.bytesDone)"
                    // Unchanged progress is sent again every few minutes: a device's own erase
                    // (NVMe Format, ATA Security Erase) reports nothing for up to hours, and the
                    // server fails a step whose agent is silent for `progressStall` (15 min).
                    if key != last || Date().timeIntervalSince(sent) >= Self.heartbeat {
                        _ = try? post(AgentAPI.progress, p, as: Empty.self)
                        last = key
                        sent = Date()
                    }
                }
                for _ in 0..<10 where !stop.load(ordering: .relaxed) { usleep(100_000) }
            }
        }
        reporter.start()
        var result: AgentResult
        phases.begin()
        do {
            switch task.kind {
            case .commission:
                report("inventory", 0, 0)
                var taken = inventory
                if let seconds = task.lldpSeconds {
                    report("lldp", 0, 0)
                    let heard = phases.measure("lldp") {
                        LLDPListener(log: log).listen(on: taken.nics, seconds: seconds)
                    }
                    for i in taken.nics.indices { taken.nics[i].lldp = heard.neighbours[taken.nics[i].name] }
                }
                result = AgentResult(ok: true, inventory: taken)
                if let tests = task.tests, !tests.isEmpty {
                    result.tests = phases.measure("tests") { runTests(tests, task: task, inventory: taken) }
                }
            case .deploy:
                let installed = try deploy(task, inventory: inventory)
                result = AgentResult(ok: true)
                result.osReporter = installed
                // deploy() wrote the seed whole, network-config with it, or threw.
                if task.seed?.networkConfig != nil { result.networkConfig = true }
            case .wipe:
                try phases.measure("wipe") { try wipe(task.wipe ?? .full, inventory: inventory) }
                result = AgentResult(ok: true)
            case .rescue:
                try phases.measure("rescue") { try rescue(keys: task.sshKeys) }
                result = AgentResult(ok: true)
            }
        } catch {
            log("task failed: \(error)")
            result = AgentResult(ok: false, error: "\(error)", failure: (error as? AgentFailure)?.code)
        }
        // On the monotonic clock: the ramdisk's wall clock may be stepped mid-task (NTP).
        result.seconds = phases.offset(.now)
        result.trace = task.trace
        result.phases = phases.phases
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        result.peakRSSBytes = Int64(usage.ru_maxrss) * 1024
        stop.store(true, ordering: .relaxed)
        // The last progress goes out before the result.
        if let p = progress.withLock({ $0 }) { _ = try? post(AgentAPI.progress, p, as: Empty.self) }
        let final = result
        _ = try withRetries("done") { try post(AgentAPI.done, final, as: Empty.self) }
        log(
            (result.ok ? "done" : "reported failure")
                + String(
                    format: " in %.1f s, peak RSS %.1f MiB",
                    result.seconds ?? 0,
                    Double(result.peakRSSBytes ?? 0) / 1_048_576
                )
        )
        return result.ok
    }

    /// Seconds between two reports of the same progress (a third of the server's stall limit).
    static let heartbeat: TimeInterval = 300

    func report(_ stage: String, _ done: Int64, _ total: Int64) {
        progress.withLock { $0 = AgentProgress(stage: stage, bytesDone: done, bytesTotal: total) }
    }

    struct Empty: Codable {}

    /// The TLS tunnel to the server's agent channel, pinned to the certificate the kernel
    /// command line names.
    func openTunnel() throws -> PinnedTunnel {
        let (host, port) = try configuration.channelAddress()
        return try PinnedTunnel(
            host: host,
            port: port,
            fingerprint: configuration.certificateSHA256,
            sourceAddress: configuration.sourceAddress,
            log: log
        )
    }

    /// The nonce of this boot: made by the first agent of the boot and kept in the ramdisk's
    /// memory (tmpfs), so an agent restarted within the boot says hello as the same agent.
    func bootNonce() throws -> String {
        let path = configuration.stateDirectory + "/nonce"
        if let text = try? String(contentsOfFile: path, encoding: .utf8), text.count >= 32 {
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        try FileManager.default.createDirectory(
            atPath: configuration.stateDirectory,
            withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700]
        )
        let nonce = SecureRandom.bytes(32).hexString
        do { try SecretFile.create(path, Array(nonce.utf8), exclusive: true) } catch {
            throw AgentFailure("cannot keep the boot nonce: \(error)")
        }
        return nonce
    }

    func post<B: Encodable, R: Decodable>(_ path: String, _ body: B, as: R.Type) throws -> R {
        var headers = ["Content-Type": "application/json"]
        let t = token.withLock { $0 }
        if !t.isEmpty { headers["Authorization"] = "Bearer \(t)" }
        let r = try BlockingHTTP.request(
            "POST",
            base.withLock { $0 } + path,
            headers: headers,
            body: Array(try JSONEncoder().encode(body))
        )
        let bytes = try r.readAll()
        guard r.status == 200 else {
            throw Rejected(
                status: r.status,
                message: String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            )
        }
        return try JSONDecoder().decode(R.self, from: Data(bytes))
    }

    /// The server said no (4xx): retrying will not help.
    struct Rejected: Error, CustomStringConvertible {
        var status: Int
        var message: String
        var description: String { "server answered \(status): \(message)" }
    }

    /// Retries network failures (not refusals), 2 s apart, a bounded number of times.
    func withRetries<T>(_ what: String, _ body: () throws -> T) throws -> T {
        var lastError: any Error = AgentFailure("\(what): no attempt made")
        for attempt in 1...max(1, configuration.attempts) {
            do { return try body() } catch let r as Rejected where r.status < 500 { throw r } catch {
                lastError = error
                log("\(what) attempt \(attempt) failed: \(error)")
                if attempt < configuration.attempts { sleep(2) }
            }
        }
        throw lastError
    }

    // MARK: Deploy

    /// Streams the image from the server onto the disk: compressed images through `gzip -dc`
    /// or `zstd -dc`, hashing the bytes as they arrive, then checks the SHA-256, re-reads the
    /// partition table and points cloud-init at the metadata service. True when the config
    /// drive's vendor-data carries the OS's report-in script (`OSReportScript`).
    @discardableResult
    func deploy(_ task: AgentTask, inventory: Inventory) throws -> Bool {
        guard let image = task.image else { throw AgentFailure("deploy task without an image") }
        let target = try targetDisk(
            inventory,
            hints: task.rootDevice,
            imageBytes: image.format == .raw ? image.size : 0
        )
        log("writing \(image.path) (\(image.format.rawValue), \(image.size) bytes) to \(target)")
        // The download joins the step's trace, the W3C way.
        var headers = ["Authorization": "Bearer \(token.withLock { $0 })"]
        for key in ["traceparent", "tracestate"] { if let v = task.trace?[key] { headers[key] = v } }
        let downloadStart = ContinuousClock.now
        let response = try ResumableDownload(
            url: base.withLock { $0 } + image.path,
            headers: headers,
            attempts: configuration.attempts,
            log: log
        )
        let fd = open(target, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw AgentFailure("cannot open \(target): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var hasher = SHA256()
        var downloaded: Int64 = 0
        report("write", 0, image.size)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        // Time in the network's reads and the disk's writes: they overlap, and the busier one
        // is what held the deploy back.
        var readBusy = Duration.zero
        let writeBusy = Mutex(Duration.zero)
        var writeStart: ContinuousClock.Instant?
        var downloadEnd = ContinuousClock.now
        func timedRead() throws -> Int {
            let t = ContinuousClock.now
            defer { readBusy += ContinuousClock.now - t }
            return try response.read(into: buffer)
        }
        switch image.format {
        case .raw:
            var offset: Int64 = 0
            while true {
                let n = try timedRead()
                if n == 0 { break }
                hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                let t = ContinuousClock.now
                if writeStart == nil { writeStart = t }
                try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: buffer[0..<n]), at: offset)
                writeBusy.withLock { $0 += ContinuousClock.now - t }
                offset += Int64(n)
                downloaded += Int64(n)
                report("write", downloaded, image.size)
            }
        case .rawGzip, .rawZstd:
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = image.format == .rawGzip ? ["gzip", "-dc"] : ["zstd", "-dc", "-q"]
            let input = Pipe()
            let output = Pipe()
            let errors = Pipe()
            p.standardInput = input
            p.standardOutput = output
            p.standardError = errors
            try p.run()
            // The decompressed stream goes to the disk on a thread of its own.
            let writeError = Mutex<String?>(nil)
            let outFD = output.fileHandleForReading.fileDescriptor
            let done = DispatchSemaphore(value: 0)
            let writer = Thread {
                defer { done.signal() }
                let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
                defer { out.deallocate() }
                var offset: Int64 = 0
                while true {
                    let n = Glibc.read(outFD, out.baseAddress, out.count)
                    if n < 0, errno == EINTR { continue }
                    if n <= 0 { break }
                    let t = ContinuousClock.now
                    do { try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: out[0..<n]), at: offset) } catch {
                        writeError.withLock { $0 = "\(error)" }
                        break
                    }
                    writeBusy.withLock { $0 += ContinuousClock.now - t }
                    offset += Int64(n)
                }
            }
            writer.start()
            writeStart = .now
            let inFD = input.fileHandleForWriting.fileDescriptor
            var failure: String?
            while failure == nil {
                let n = try timedRead()
                if n == 0 { break }
                hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                var off = 0
                while off < n {
                    let w = Glibc.write(inFD, buffer.baseAddress! + off, n - off)
                    if w < 0 {
                        if errno == EINTR { continue }
                        failure = "decompressor stopped reading: \(String(cString: strerror(errno)))"
                        break
                    }
                    off += w
                }
                downloaded += Int64(n)
                report("write", downloaded, image.size)
            }
            try? input.fileHandleForWriting.close()
            done.wait()
            p.waitUntilExit()
            if let e = writeError.withLock({ $0 }) { throw AgentFailure("writing \(target): \(e)") }
            if let failure { throw AgentFailure(failure) }
            guard p.terminationStatus == 0 else {
                let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                throw AgentFailure(
                    "\(p.arguments?.first ?? "decompressor") failed: \(text.trimmingCharacters(in: .whitespacesAndNewlines))"
                )
            }
        }
        downloadEnd = .now
        phases.add("download", from: downloadStart, to: downloadEnd, bytes: downloaded, busy: readBusy)
        guard downloaded == image.size else {
            throw AgentFailure("downloaded \(downloaded) bytes, expected \(image.size)")
        }
        report("verify", downloaded, image.size)
        try phases.measure("verify") {
            let digest = hasher.finalize().hexString
            guard digest == image.sha256 else {
                throw AgentFailure("image sha256 \(digest) does not match \(image.sha256)")
            }
        }
        guard fsync(fd) == 0 || errno == EINVAL else {
            throw AgentFailure("fsync \(target): \(String(cString: strerror(errno)))")
        }
        // Writing ends once the disk has it all (fsync), which the digest's check did not wait for.
        phases.add("write", from: writeStart ?? downloadEnd, bytes: downloaded, busy: writeBusy.withLock { $0 })
        _ = ioctl(fd, 0x125F)  // BLKRRPART: the kernel re-reads the new partition table (not for files)
        var reporter = false
        if var seed = task.seed {
            report("configure", downloaded, image.size)
            // The installed OS reports in to the channel this agent talks to (the region's, or
            // its site's), pinning the same certificate.
            if let token = task.osToken {
                do {
                    seed.vendorData = try OSReportScript.vendorData(
                        cloudConfig: seed.vendorData,
                        url: configuration.serverURL,
                        certificateSHA256: try CertificatePin.normalized(configuration.certificateSHA256),
                        token: token
                    )
                } catch let e as OSReportScript.Refusal {
                    throw AgentFailure("the OS's report-in script: \(e.description)")
                }
                reporter = true
            }
            try phases.measure("configure") { try ConfigDrive(disk: target, log: log).write(seed) }
        }
        return reporter
    }

    /// The disk to deploy onto: the configured device (tests), else the one the root device
    /// hints pick (`RootDeviceHints.choose`: without hints, the smallest of at least 4 GiB that
    /// holds the image). A compressed image's size is not known before it is written: 0.
    func targetDisk(_ inventory: Inventory, hints: RootDeviceHints?, imageBytes: Int64) throws -> String {
        if let d = configuration.device { return d }
        switch RootDeviceHints.choose(inventory.disks, hints: hints, imageBytes: imageBytes) {
        case .success(let disk):
            log(
                "target disk: \(RootDeviceHints.describe(disk))\(hints.map { " by the hints \($0.items.joined(separator: " "))" } ?? " (default: the smallest of at least 4 GiB that holds the image)")"
            )
            return "/dev/" + disk.name
        case .failure(let why): throw AgentFailure(why.description)
        }
    }

    /// Starts a program in a session of its own, with clean signal state (`ProcessSpawn`).
    static func spawnDetached(_ args: [String]) throws -> pid_t {
        do { return try ProcessSpawn.spawn(args, output: nil, newSession: true) } catch {
            throw AgentFailure(error.description)
        }
    }

    static func canConnect(port: UInt16) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    static func run(_ args: [String]) -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return false }
        p.waitUntilExit()
        return p.terminationStatus == 0
    }

    // MARK: Tests

    /// Runs a commissioning's tests, after the inventory: every one, each under its own limit.
    /// The agent makes itself the OOM killer's last choice first (each test makes itself its
    /// first), so a memory test that overreaches ends as that test's failure, not the agent's.
    func runTests(_ tests: [TestSpec], task: AgentTask, inventory: Inventory) -> [TestResult] {
        _ = try? "-1000".write(toFile: "/proc/self/oom_score_adj", atomically: false, encoding: .utf8)
        let disks = configuration.device.map { [$0] } ?? inventory.disks.map { "/dev/" + $0.name }
        let clock = phases
        let runner = TestRunner(
            toolPath: configuration.toolPath,
            scratchRoot: configuration.stateDirectory + "/tests",
            log: log,
            clock: { clock.offset(.now) }
        )
        // (The runner logs each test's start and end to the console.)
        let results = runner.run(
            tests,
            machine: task.machine,
            disks: disks,
            memoryBytes: inventory.memoryBytes,
            threads: inventory.threads ?? inventory.cores
        ) { stage in report(stage, 0, 0) }
        return Self.withinBudget(results)
    }

    /// All the outputs a result may carry: the server takes 1 MiB a body, the inventory and
    /// the results' numbers included (a machine with 40 disks has 80 per-disk results).
    static let outputBudget = 768 * 1024

    /// The results with their outputs cut to `outputBudget` in all: the first results keep
    /// theirs whole, the one that meets the limit keeps its tail, the rest none (their
    /// `outputBytes` still say how much there was).
    static func withinBudget(_ results: [TestResult], budget: Int = outputBudget) -> [TestResult] {
        var left = budget
        return results.map { r in
            guard let output = r.output else { return r }
            var cut = r
            let bytes = Array(output.utf8)
            if bytes.count > left {
                cut.output = left > 0 ? String(decoding: bytes.suffix(left), as: UTF8.self) : nil
            }
            left = max(0, left - bytes.count)
            return cut
        }
    }

    // MARK: Wipe

    /// Full (the default): erase every byte of every disk, then read back random blocks (see
    /// `DiskEraser`). Quick (a project's explicit, unsafe-between-tenants policy): discard
    /// where supported, then zero the first and last MiB of every disk (partition tables, the
    /// GPT backup, filesystem and RAID signatures); the rest keeps the last tenant's bytes.
    func wipe(_ mode: WipeMode, inventory: Inventory) throws {
        let targets = configuration.device.map { [$0] } ?? inventory.disks.map { "/dev/" + $0.name }
        // No disk seen (a missing driver) is a failed wipe, never a wipe of nothing.
        guard !targets.isEmpty else {
            throw AgentFailure("no disk to wipe: the ramdisk sees no disk (a missing storage driver?)")
        }
        var sizes: [(String, Int64)] = []
        for t in targets {
            let fd = open(t, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw AgentFailure("cannot open \(t): \(String(cString: strerror(errno)))") }
            let size = lseek(fd, 0, SEEK_END)
            close(fd)
            guard size > 0 else { throw AgentFailure("cannot wipe \(t): its size reads as \(size)") }
            sizes.append((t, Int64(size)))
        }
        switch mode {
        case .full:
            let total = sizes.reduce(Int64(0)) { $0 + $1.1 }
            var before: Int64 = 0
            report("wipe", 0, total)
            for (t, size) in sizes {
                let base = before
                let outcome = try DiskEraser(path: t, size: size).erase(log: log) { done in
                    self.report("wipe", base + done, total)
                }
                before += size
                log(
                    "erased \(t) (\(size) bytes) by \(outcome.method.rawValue); \(outcome.verifiedBlocks) random 4 KiB blocks read back as zeroes"
                )
            }
        case .quick:
            try quickWipe(sizes)
        }
    }

    func quickWipe(_ sizes: [(String, Int64)]) throws {
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        let total = sizes.reduce(Int64(0)) { $0 + min($1.1, 2 << 20) }
        var done: Int64 = 0
        report("wipe", 0, total)
        for (t, size) in sizes {
            let fd = open(t, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { throw AgentFailure("cannot open \(t): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            var range: (UInt64, UInt64) = (0, UInt64(size))
            let discarded = ioctl(fd, DiskEraser.BLKDISCARD, &range) == 0
            let mib: Int64 = 1 << 20
            let head: (Int64, Int64) = (0, min(mib, size))
            let tail: (Int64, Int64) = (max(Int64(0), size - mib), min(mib, size))
            for (start, length) in [head, tail] {
                try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: zeros[0..<Int(length)]), at: start)
                done += length
                report("wipe", min(done, total), total)
            }
            guard fsync(fd) == 0 || errno == EINVAL else {
                throw AgentFailure("fsync \(t): \(String(cString: strerror(errno)))")
            }
            log("wiped \(t) (quick: first and last MiB\(discarded ? ", discarded" : "")); the rest was not erased")
        }
    }

    // MARK: Rescue

    /// Installs the deployer's keys for root and starts the SSH server.
    func rescue(keys: [String]) throws {
        guard !keys.isEmpty else { throw AgentFailure("rescue needs at least one SSH key (deploy with --ssh-key)") }
        let dir = (configuration.authorizedKeysPath as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(
            atPath: dir,
            withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700]
        )
        do {
            try SecretFile.replace(
                configuration.authorizedKeysPath,
                Array((keys.joined(separator: "\n") + "\n").utf8),
                mode: 0o600
            )
        } catch {
            throw AgentFailure("rescue: \(error.description)")
        }
        // Started with a clean signal mask and default dispositions, in a session of its own:
        // inheriting this process's blocked SIGCHLD, the SSH server would never notice a
        // session's command ending, and every ssh would hang after its output.
        let pid = try Self.spawnDetached(configuration.rescueCommand)
        func alive() -> Bool { kill(pid, 0) == 0 && waitpid(pid, nil, WNOHANG) == 0 }
        // Up means answering on port 22 (bounded: 10 s).
        var listening = false
        for _ in 0..<50 where alive() {
            if Self.canConnect(port: 22) {
                listening = true
                break
            }
            usleep(200_000)
        }
        guard listening else {
            throw AgentFailure(
                "the SSH server (\(configuration.rescueCommand.joined(separator: " "))) \(alive() ? "does not answer on port 22" : "exited")"
            )
        }
        report("rescue", 0, 0)
        log("rescue: \(configuration.rescueCommand.joined(separator: " ")) serving on port 22 (pid \(pid))")
    }
}
