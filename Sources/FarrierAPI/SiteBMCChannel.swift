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

    public init(logger: Logger) {
        // Any driver idle for 15 minutes is closed, however few there are: with it go the
        // password and the BMC session of a machine the region no longer asks about.
        drivers = BMCPool(vault: nil, keepIdle: 0)
        self.logger = logger
    }

    /// Keeps a channel open on `link` (reopened 1 to 5 s after it drops) until cancelled, or
    /// until the region refuses the site (the heartbeat then ends the site agent).
    public func run(link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>, region: String) async {
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
        await drivers.closeAll()
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
            logger.info("BMC channel open", metadata: ["region": "\(region)"])
            try await withThrowingDiscardingTaskGroup { group in
                for try await job in response.messages {
                    group.addTask { await self.handle(job, link: link, answer: { sink.yield($0) }) }
                }
            }
        }
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
        let bmc = await drivers.bmc(machineID: job.machineID, reference: job.reference, password: job.password)
        guard job.operation == .openConsole else { return answer(await perform(job, on: bmc)) }
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
