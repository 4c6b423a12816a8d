import FarrierBMC
import FarrierCore
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Synchronization

/// BMC jobs and their results as the site link's messages (`BMCWork`), both ways.
enum SiteBMCWire {
    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    static func message(_ job: BMCRelayJob) -> Farrier_V1_SiteBMCJob {
        var m = Farrier_V1_SiteBMCJob()
        m.id = job.id
        m.machineID = job.machineID
        m.bmcURL = job.reference.url
        m.insecureTls = job.reference.insecureTLS
        m.password = job.password
        m.operation = job.operation.name
        switch job.operation {
        case .power(let action): m.powerAction = action.rawValue
        case .setBootOverride(let o): m.bootOverride = message(o)
        case .info, .powerState, .bootOverride, .openConsole: break
        }
        return m
    }

    static func message(_ o: BootOverride) -> Farrier_V1_SiteBootOverride {
        var b = Farrier_V1_SiteBootOverride()
        b.device = o.device.rawValue
        b.persistent = o.persistent
        b.efi = o.efi
        return b
    }

    static func bootOverride(_ b: Farrier_V1_SiteBootOverride) throws -> BootOverride {
        guard let device = BootDevice(rawValue: b.device) else {
            throw Malformed(description: "boot device '\(b.device.prefix(20))'")
        }
        return BootOverride(device: device, persistent: b.persistent, efi: b.efi)
    }

    /// The site's reading of a job the region sent.
    static func job(_ m: Farrier_V1_SiteBMCJob) throws -> BMCRelayJob {
        let reference: BMCReference
        do { reference = try BMCReference(url: m.bmcURL, insecureTLS: m.insecureTls) } catch {
            throw Malformed(description: "\(error)")
        }
        let operation: BMCOperation
        switch m.operation {
        case "info": operation = .info
        case "power-state": operation = .powerState
        case "power":
            guard let action = PowerAction(rawValue: m.powerAction) else {
                throw Malformed(description: "power action '\(m.powerAction.prefix(20))'")
            }
            operation = .power(action)
        case "set-boot-override": operation = .setBootOverride(try bootOverride(m.bootOverride))
        case "boot-override": operation = .bootOverride
        case "open-console": operation = .openConsole
        default: throw Malformed(description: "operation '\(m.operation.prefix(20))'")
        }
        return BMCRelayJob(
            id: m.id,
            machineID: m.machineID,
            reference: reference,
            password: m.password,
            operation: operation
        )
    }

    /// The site's answer to job `id`.
    static func result(_ id: UInt64, _ outcome: Result<BMCOutcome, BMCError>) -> Farrier_V1_SiteBMCResult {
        var r = Farrier_V1_SiteBMCResult()
        r.id = id
        switch outcome {
        case .failure(let e):
            r.errorKind = e.kind.rawValue
            r.errorMessage = e.message
            r.address = e.address
        case .success(.done): break
        case .success(.powerState(let s)): r.powerState = s.rawValue
        case .success(.bootOverride(let o)): if let o { r.bootOverride = message(o) }
        case .success(.info(let i)):
            r.driver = i.driver
            r.address = i.address
            r.manufacturer = i.manufacturer
            r.model = i.model
            r.firmware = i.firmware
            r.details = i.details
        }
        return r
    }

    /// The region's reading of a site's answer; one it cannot read is the site's protocol error.
    static func outcome(_ r: Farrier_V1_SiteBMCResult) -> Result<BMCOutcome, BMCError> {
        if !r.errorKind.isEmpty {
            let kind = BMCError.Kind(rawValue: r.errorKind) ?? .protocolError
            return .failure(BMCError(kind, address: r.address, r.errorMessage))
        }
        if !r.powerState.isEmpty {
            guard let state = PowerState(rawValue: r.powerState) else {
                return .failure(BMCError(.protocolError, address: r.address, "site sent power state '\(r.powerState)'"))
            }
            return .success(.powerState(state))
        }
        if r.hasBootOverride {
            do { return .success(.bootOverride(try bootOverride(r.bootOverride))) } catch {
                return .failure(BMCError(.protocolError, address: r.address, "site sent \(error)"))
            }
        }
        if !r.driver.isEmpty {
            let info = BMCInfo(
                driver: r.driver,
                address: r.address,
                manufacturer: r.manufacturer,
                model: r.model,
                firmware: r.firmware,
                details: r.details
            )
            return .success(.info(info))
        }
        return .success(.done)
    }
}

extension RPCError {
    /// The region refused the site itself (its certificate is not the site's current one, or
    /// none came): nothing the site sends will be accepted again. (A relayed agent call can be
    /// refused with PermissionDenied too; that one is the agent's, and names no certificate.)
    public var isSiteRefusal: Bool {
        code == .unauthenticated || (code == .permissionDenied && message.contains("not its current one"))
    }
}

/// The site's end of its BMC channel (`BMCWork`): it does the region's BMC operations on the
/// site's machines with drivers of its own (one per machine, so a BMC's limits hold), and
/// answers each. Passwords come with the jobs and stay in memory.
public struct SiteBMCWorker: Sendable {
    let drivers: BMCPool
    let logger: Logger
    let memory = SiteJobMemory()
    let jobs = JobRunner()
    let channels = OpenCount()
    /// How the region's name is resolved to its replicas' addresses (a test's stand-in for DNS).
    let resolve: @Sendable (String, Int) async throws -> [String]
    /// How often a region named by a DNS name is resolved again, to follow its replicas.
    let reresolve: Duration

    public init(
        logger: Logger,
        reresolve: Duration = .seconds(30),
        resolve: @escaping @Sendable (String, Int) async throws -> [String] = resolveSiteLinkAddresses
    ) {
        // Any driver idle for 15 minutes is closed, however few there are: with it go the
        // password and the BMC session of a machine the region no longer asks about.
        drivers = BMCPool(vault: nil, keepIdle: 0)
        self.logger = logger
        self.resolve = resolve
        self.reresolve = reresolve
    }

    /// The channels open now (accepted by the region and not yet ended), for the heartbeat.
    public var openChannels: Int { channels.value.load(ordering: .relaxed) }

    /// The site's BMC channels to the region in `--region` (each replica sends its own BMC jobs,
    /// on channels to itself), until cancelled or refused:
    /// - several `HOST:PORT` replicas: one channel to each;
    /// - an IP address: one channel, on `link`;
    /// - a DNS name: one channel to each address it resolves to, reached as that name (TLS
    ///   checks the region's certificate for it), resolved again every `reresolve` so that a
    ///   replica added behind the name gets its channel and a removed one loses it.
    public func run(
        region: String,
        credentials: SiteCredentials,
        link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>
    ) async {
        await jobs.running {
            let replicas = siteLinkRegions(region)
            if replicas.count > 1 {
                await withDiscardingTaskGroup { group in
                    for replica in replicas {
                        group.addTask { await channel(to: replica, credentials: credentials, authority: nil) }
                    }
                }
            } else if let (host, port) = try? splitHostPort(replicas.first ?? region), IPv4Address(host) == nil,
                !host.contains(":")
            {
                await follow(name: host, port: port, credentials: credentials)
            } else {
                await serve(link: link, region: region)
            }
        }
        await drivers.closeAll()
    }

    /// Keeps a channel to each address `name` resolves to, until cancelled. A failed resolution
    /// keeps the channels there are (and is tried again within 5 s while there are none).
    func follow(name: String, port: Int, credentials: SiteCredentials) async {
        var running: [String: Task<Void, Never>] = [:]
        var failing = false
        while !Task.isCancelled {
            do {
                let addresses = try await resolve(name, port)
                if failing || Set(addresses) != Set(running.keys) {
                    logger.info("region resolved", metadata: ["region": "\(name)", "addresses": "\(addresses)"])
                }
                failing = false
                // Those gone are cancelled, the new ones started, and only then are the gone
                // ones waited for.
                var gone: [Task<Void, Never>] = []
                for (address, task) in running where !addresses.contains(address) {
                    logger.info(
                        "BMC channel dropped: gone from DNS",
                        metadata: ["region": "\(name)", "address": "\(address)"]
                    )
                    task.cancel()
                    gone.append(task)
                    running[address] = nil
                }
                if !Task.isCancelled {
                    for address in addresses where running[address] == nil {
                        running[address] = Task {
                            await channel(to: address, credentials: credentials, authority: name)
                        }
                    }
                }
                for task in gone { await task.value }
            } catch {
                if !failing {
                    logger.warning("region not resolved", metadata: ["region": "\(name)", "error": "\(error)"])
                }
                failing = true
            }
            do { try await Task.sleep(for: running.isEmpty ? min(reresolve, .seconds(5)) : reresolve) } catch { break }
        }
        for task in running.values { task.cancel() }
        for task in running.values { await task.value }
    }

    /// A channel over a link of its own to `address` (a replica, or one address of a name).
    func channel(to address: String, credentials: SiteCredentials, authority: String?) async {
        let shown = authority.map { "\(address) (\($0))" } ?? address
        do {
            try await withSiteLink(region: address, credentials: credentials, authority: authority) { link in
                await serve(link: link, region: shown)
            }
        } catch {
            logger.error("no BMC channel to \(shown)", metadata: ["error": "\(error)"])
        }
    }

    /// Keeps a channel open on `link` (reopened 1 to 5 s after it drops) until cancelled, or
    /// until the region refuses the site (the heartbeat then ends the site agent); then closes
    /// the site's BMC drivers.
    public func run(link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>, region: String) async {
        await jobs.running { await serve(link: link, region: region) }
        await drivers.closeAll()
    }

    /// Keeps a channel open on `link`, as `run` does, leaving the drivers to the caller (other
    /// channels may be using them).
    func serve(link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>, region: String) async {
        var delay = Duration.seconds(1)
        var failing = false
        while !Task.isCancelled {
            let opened = Flag()
            do {
                try await session(link, opened: opened, region: region)
                failing = false
            } catch let e as RPCError where e.isSiteRefusal {
                logger.error(
                    "the region refused the BMC channel",
                    metadata: ["region": "\(region)", "error": "\(e.message)"]
                )
                break
            } catch {
                if Task.isCancelled { break }
                if !failing || opened.isSet {
                    logger.warning("BMC channel down", metadata: ["region": "\(region)", "error": "\(error)"])
                }
                failing = true
            }
            // A channel that was open starts the back-off again.
            if opened.isSet { delay = .seconds(1) }
            do { try await Task.sleep(for: delay) } catch { break }
            delay = min(delay * 2, .seconds(5))
        }
    }

    /// One channel, until the region ends it: each job is done as it comes, concurrently (a
    /// machine's own driver does one operation at a time). `opened` is set once the region
    /// accepted the channel.
    func session(
        _ link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>,
        opened: Flag,
        region: String
    ) async throws {
        let (results, sink) = AsyncStream<Farrier_V1_SiteBMCResult>.makeStream()
        let request = StreamingClientRequest<Farrier_V1_SiteBMCResult> { writer in
            for await result in results { try await writer.write(result) }
        }
        // Every 5 s, an answer numbered 0: the region takes a channel silent for 15 s for cut off.
        let presence = Task {
            while !Task.isCancelled {
                sink.yield(Farrier_V1_SiteBMCResult())
                try? await Task.sleep(for: .seconds(5))
            }
        }
        defer { presence.cancel() }
        try await link.bmcWork(request: request) { response in
            defer { sink.finish() }
            // (Called once the region answered the call's opening: the channel is open.)
            opened.set()
            channels.value.add(1, ordering: .relaxed)
            defer { channels.value.subtract(1, ordering: .relaxed) }
            logger.info("BMC channel open", metadata: ["region": "\(region)"])
            try await withThrowingDiscardingTaskGroup { group in
                for try await job in response.messages {
                    guard job.operation == BMCOperation.openConsole.name else {
                        // Not cut off with the channel: an operation the BMC may already have
                        // taken runs to its end, and the site remembers what it did if it
                        // changes the BMC (its answer, if the channel is gone, is dropped).
                        // Cut off only when the worker stops.
                        jobs.submit { await self.handle(job, link: link, answer: { sink.yield($0) }) }
                        continue
                    }
                    group.addTask { await self.handle(job, link: link, answer: { sink.yield($0) }) }
                }
            }
        }
    }

    /// Runs the jobs the channels hand over in one task group for the worker's whole run: a job
    /// is not cut off when its channel closes, and those still running are cancelled (and
    /// waited for) when the worker stops. One run per worker.
    final class JobRunner: Sendable {
        enum Item: Sendable {
            case job(@Sendable () async -> Void)
            case end
        }
        let items: AsyncStream<Item>
        let sink: AsyncStream<Item>.Continuation

        init() { (items, sink) = AsyncStream<Item>.makeStream() }

        func submit(_ job: @escaping @Sendable () async -> Void) { sink.yield(.job(job)) }

        /// Runs `channels` and the jobs submitted meanwhile, until `channels` returns (or this
        /// is cancelled); then cancels the jobs still running and waits for them.
        func running(_ channels: @escaping @Sendable () async -> Void) async {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    await channels()
                    self.sink.yield(.end)
                }
                for await item in items {
                    guard case .job(let job) = item else { break }
                    group.addTask { await job() }
                }
                group.cancelAll()
            }
        }
    }

    final class OpenCount: Sendable {
        let value = Atomic(0)
    }

    final class Flag: Sendable {
        let value = Atomic(false)
        var isSet: Bool { value.load(ordering: .relaxed) }
        func set() { value.store(true, ordering: .relaxed) }
    }

    /// Answers one job; an open-console job is answered once the console is open, which is
    /// then carried on its own stream until either side ends it.
    func handle(
        _ message: Farrier_V1_SiteBMCJob,
        link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>,
        answer: @Sendable (Farrier_V1_SiteBMCResult) -> Void
    ) async {
        let job: BMCRelayJob
        do { job = try SiteBMCWire.job(message) } catch {
            logger.warning("BMC job refused", metadata: ["job": "\(message.id)", "error": "\(error)"])
            let e = BMCError(.protocolError, address: "", "the site could not read the job: \(error)")
            return answer(SiteBMCWire.result(message.id, .failure(e)))
        }
        guard job.operation == .openConsole else { return answer(await result(of: job)) }
        let bmc = await drivers.bmc(machineID: job.machineID, reference: job.reference, password: job.password)
        let console: any ConsoleSession
        do { console = try await bmc.openConsole() } catch {
            logger.warning("console not opened", metadata: ["job": "\(job.id)", "error": "\(error)"])
            let e = error as? BMCError ?? BMCError(.protocolError, address: bmc.address, "\(error)")
            return answer(SiteBMCWire.result(job.id, .failure(e)))
        }
        logger.info("console open", metadata: ["machine.id": "\(job.machineID)", "session": "\(job.id)"])
        answer(SiteBMCWire.result(job.id, .success(.done)))
        let session = job.id
        do {
            let request = StreamingClientRequest<Farrier_V1_SiteConsoleFrame> { writer in
                var first = Farrier_V1_SiteConsoleFrame()
                first.session = session
                try await writer.write(first)
                for await chunk in console.output {
                    var frame = Farrier_V1_SiteConsoleFrame()
                    frame.data = Data(chunk)
                    try await writer.write(frame)
                }
            }
            try await link.bmcConsole(request: request) { response in
                for try await frame in response.messages where !frame.data.isEmpty {
                    try await console.write(Array(frame.data))
                }
            }
        } catch {
            logger.info("console stream ended", metadata: ["session": "\(session)", "error": "\(error)"])
        }
        await console.close()
        logger.info("console closed", metadata: ["machine.id": "\(job.machineID)", "session": "\(session)"])
    }

    /// Does a job other than opening the console, and gives its answer. A changing job the
    /// region sends again (its answer was lost) is answered as it was the first time, not done
    /// twice.
    func result(of job: BMCRelayJob) async -> Farrier_V1_SiteBMCResult {
        let bmc = await drivers.bmc(machineID: job.machineID, reference: job.reference, password: job.password)
        guard job.operation.changes else { return await perform(job, on: bmc) }
        if let before = await memory.begin(job) {
            logger.info(
                "BMC job sent again: answered as before",
                metadata: ["machine.id": "\(job.machineID)", "operation": "\(job.operation)", "job": "\(job.id)"]
            )
            return before
        }
        let result = await perform(job, on: bmc)
        // Cut off (the site is stopping): not what the BMC did, so not kept for a resend.
        await memory.finish(job, result, keep: !Task.isCancelled)
        return result
    }

    /// Does one operation; any failure is its answer.
    func perform(_ job: BMCRelayJob, on bmc: any BMC) async -> Farrier_V1_SiteBMCResult {
        do {
            let outcome = try await bmc.perform(job.operation)
            logger.debug(
                "BMC operation",
                metadata: ["machine.id": "\(job.machineID)", "operation": "\(job.operation)", "bmc": "\(bmc.address)"]
            )
            return SiteBMCWire.result(job.id, .success(outcome))
        } catch {
            let e = error as? BMCError ?? BMCError(.protocolError, address: bmc.address, "\(error)")
            logger.warning(
                "BMC operation failed",
                metadata: ["machine.id": "\(job.machineID)", "operation": "\(job.operation)", "error": "\(e)"]
            )
            return SiteBMCWire.result(job.id, .failure(e))
        }
    }
}

/// What a site did for the region's changing BMC jobs (power, boot override) in the last
/// `SiteBMCRelay.rememberFor`, by job id. The region sends a job again under its id when its
/// answer was lost (the channel closed, or it timed out), not knowing whether it was done: the
/// site answers it from here (waiting for it if it is still being done) instead of doing it
/// twice. Held in memory: a restarted site does a job sent again.
actor SiteJobMemory {
    enum State {
        case running([CheckedContinuation<Farrier_V1_SiteBMCResult, Never>])
        case done(Farrier_V1_SiteBMCResult)
    }
    struct Entry {
        var machineID: String
        var operation: BMCOperation
        var received: ContinuousClock.Instant
        var state: State
    }
    var entries: [UInt64: Entry] = [:]
    var pruned = ContinuousClock.now
    let keep: Duration
    let limit: Int

    /// `limit` bounds the memory at about 20 MB (two changing jobs for each of 50 000 machines).
    init(keep: Duration = SiteBMCRelay.rememberFor, limit: Int = 100_000) {
        self.keep = keep
        self.limit = limit
    }

    /// nil: `job` is new, and is now being done (`finish` must follow). Otherwise the answer it
    /// had when it was done before, once it is done.
    func begin(_ job: BMCRelayJob) async -> Farrier_V1_SiteBMCResult? {
        let now = ContinuousClock.now
        prune(now)
        if let e = entries[job.id] {
            // (Another machine's or operation's job under the same id is not this one: done,
            // and not remembered.)
            guard e.machineID == job.machineID, e.operation == job.operation else { return nil }
            switch e.state {
            case .done(let result): return result
            case .running(let waiting):
                return await withCheckedContinuation { c in
                    entries[job.id]?.state = .running(waiting + [c])
                }
            }
        }
        entries[job.id] = Entry(machineID: job.machineID, operation: job.operation, received: now, state: .running([]))
        return nil
    }

    /// `job` was done, with `result`: given to any who waited for it, and kept (unless not
    /// `keep`: then a resend does it again).
    func finish(_ job: BMCRelayJob, _ result: Farrier_V1_SiteBMCResult, keep: Bool = true) {
        guard let e = entries[job.id], e.machineID == job.machineID, e.operation == job.operation,
            case .running(let waiting) = e.state
        else { return }
        if keep { entries[job.id]?.state = .done(result) } else { entries[job.id] = nil }
        for c in waiting { c.resume(returning: result) }
    }

    /// How many wait for job `id` to be done (for tests).
    func waiting(_ id: UInt64) -> Int {
        guard case .running(let waiting) = entries[id]?.state else { return 0 }
        return waiting.count
    }

    /// Forgets jobs done longer ago than `keep`, and past `limit` the oldest done ones (a job
    /// still being done is kept: someone may wait for it).
    func prune(_ now: ContinuousClock.Instant) {
        // At most once a second, unless full.
        guard now - pruned >= .seconds(1) || entries.count >= limit else { return }
        pruned = now
        entries = entries.filter { e in
            if case .running = e.value.state { return true }
            return now - e.value.received < keep
        }
        guard entries.count >= limit else { return }
        let oldest = entries.filter { e in
            if case .done = e.value.state { return true }
            return false
        }.sorted { $0.value.received < $1.value.received }
        for (id, _) in oldest.prefix(entries.count - limit + 1) { entries[id] = nil }
    }

    /// The jobs remembered (for tests).
    var count: Int { entries.count }
}
