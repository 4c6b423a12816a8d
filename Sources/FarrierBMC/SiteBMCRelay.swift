import FarrierCore
import Foundation
import Synchronization

/// One operation of the `BMC` interface, as a value: what the region asks a site to do on a
/// BMC that only the site reaches.
public enum BMCOperation: Sendable, Hashable {
    case info
    case powerState
    case power(PowerAction)
    case setBootOverride(BootOverride)
    case bootOverride
    /// Opens the serial console: the site answers once it is open, and carries it on a stream
    /// of its own (`SiteBMCRelay.openConsole`); it has no outcome of its own.
    case openConsole

    /// It changes the BMC (power, the boot override): done twice, it is not the same as done
    /// once, so a site remembers what it did for it (`SiteBMCRelay.rememberFor`).
    public var changes: Bool {
        switch self {
        case .power, .setBootOverride: true
        case .info, .powerState, .bootOverride, .openConsole: false
        }
    }

    /// The operation's name on the site link.
    public var name: String {
        switch self {
        case .info: "info"
        case .powerState: "power-state"
        case .power: "power"
        case .setBootOverride: "set-boot-override"
        case .bootOverride: "boot-override"
        case .openConsole: "open-console"
        }
    }
}

/// Which retry of which request the BMC operations of this task serve, for the lifecycle's
/// BMC actions (`Reconciler.withBMC`: the machine's step generation and the action): a changing
/// operation through a site whose answer was lost is sent again under its job's id only by a
/// retry in the same scope, so the site answers what it did instead of doing it twice. Outside
/// a scope (a user's `machine power`) an operation is always a new one.
public enum BMCRetryScope {
    @TaskLocal public static var current: String?
}

/// What an operation answered.
public enum BMCOutcome: Sendable, Hashable {
    case done
    case info(BMCInfo)
    case powerState(PowerState)
    case bootOverride(BootOverride?)
}

extension BMC {
    /// Does `operation` on this BMC: the site's side of a relayed operation.
    public func perform(_ operation: BMCOperation) async throws -> BMCOutcome {
        switch operation {
        case .info: return .info(try await info())
        case .powerState: return .powerState(try await powerState())
        case .power(let action):
            try await power(action)
            return .done
        case .setBootOverride(let o):
            try await setBootOverride(o)
            return .done
        case .bootOverride: return .bootOverride(try await bootOverride())
        case .openConsole:
            throw BMCError.unsupported(
                address,
                operation: "open-console as a single operation",
                detail: "use openConsole()"
            )
        }
    }
}

/// A BMC operation for a site to do on one of its machines' BMCs.
public struct BMCRelayJob: Sendable {
    public var id: UInt64
    public var machineID: String
    public var reference: BMCReference
    /// In memory and on the mutual-TLS link only.
    public var password: String
    public var operation: BMCOperation

    public init(id: UInt64, machineID: String, reference: BMCReference, password: String, operation: BMCOperation) {
        self.id = id
        self.machineID = machineID
        self.reference = reference
        self.password = password
        self.operation = operation
    }
}

/// A machine's site has no BMC channel open to this replica: the site is away (or cut off, or
/// runs a Farrier without one). The operation was not done, or its answer was lost with the
/// channel; BMC actions on the site's machines wait for it rather than fail.
public struct SiteLinkAway: Error, Sendable, CustomStringConvertible {
    public var site: String
    public var inFlight: Bool

    public init(site: String, inFlight: Bool = false) {
        self.site = site
        self.inFlight = inFlight
    }

    public var description: String {
        inFlight
            ? "site \(site)'s link to the region closed before the BMC answered; it is done again when the site is back"
            : "site \(site) has no link to this region replica: its machines' BMCs are reached through it, when it is back"
    }
}

/// The region's end of the sites' BMC channels (`BMCWork` on the site link). A site keeps one
/// channel open to each replica; `perform` sends an operation down one of its site's channels
/// (round-robin when the site has several open here) and waits for the answer, at most
/// `timeout`. A channel that closes fails the operations it carried with `SiteLinkAway` (the
/// site link's handler closes one whose site has gone silent).
public actor SiteBMCRelay {
    struct Channel {
        var site: String
        var jobs: AsyncStream<BMCRelayJob>.Continuation
    }
    struct Pending {
        var channel: UInt64
        var site: String
        var address: String
        var machineID: String
        var operation: BMCOperation
        var scope: String?
        /// When this job id was first sent (a lost job sent again keeps its first time).
        var firstSent: ContinuousClock.Instant
        var continuation: CheckedContinuation<BMCOutcome, any Error>
        var timer: Task<Void, Never>
    }
    /// A changing operation on a machine, in a retry scope, whose answer was lost.
    struct Lost: Hashable {
        var machineID: String
        var scope: String
        var operation: BMCOperation
    }
    var channels: [UInt64: Channel] = [:]
    var pending: [UInt64: Pending] = [:]
    /// Changing operations in a retry scope whose answer was lost (their channel closed, no
    /// answer came in time, or their caller went), with their job's id and when it was first
    /// sent: the same operation on the same machine in the same scope is sent again under that
    /// id while the site still remembers it, and the site answers what it did then instead of
    /// doing it again (a retried power cycle is not done twice). An entry goes once its job is
    /// on a channel again (a retry that finds the site away keeps it).
    var lost: [Lost: (id: UInt64, sent: ContinuousClock.Instant)] = [:]
    /// Consoles opened (or being opened) through a site, by their open-console job's id.
    var consoles: [UInt64: RelayedConsole] = [:]
    var nextChannel: UInt64 = 1
    /// Job ids start anywhere below 2^62: a site tells a job sent again from a new one by its
    /// id, so a restarted region (or another replica) must not reuse the ids it saw.
    var nextJob = UInt64.random(in: 1..<(1 << 62))
    var turn: [String: Int] = [:]
    let timeout: Duration

    /// `timeout` bounds one operation end to end, its wait behind the BMC's other operations at
    /// the site included: longer than the slowest driver takes to give up (Redfish: 60 s, and as
    /// long again following a task), so the site's own answer (the BMC's error) comes first. An
    /// operation still unanswered then fails alone, as the BMC's timeout.
    public init(timeout: Duration = .seconds(300)) {
        self.timeout = timeout
    }

    /// How long a site remembers what it did for a changing job.
    public static let rememberFor = Duration.seconds(600)
    /// How long after first sending it a lost changing job is sent again under its id: a minute
    /// less than the site remembers it (the site counts from when it first came).
    static let resendWithin = rememberFor - .seconds(60)

    /// A site opened a channel: the jobs to send down it, until `close`.
    public func open(site: String) -> (UInt64, AsyncStream<BMCRelayJob>) {
        let id = nextChannel
        nextChannel += 1
        let (stream, continuation) = AsyncStream<BMCRelayJob>.makeStream()
        channels[id] = Channel(site: site, jobs: continuation)
        return (id, stream)
    }

    /// The channel closed: what it carried fails with `SiteLinkAway`.
    public func close(_ channel: UInt64) {
        guard let c = channels.removeValue(forKey: channel) else { return }
        c.jobs.finish()
        for (id, p) in pending where p.channel == channel {
            pending.removeValue(forKey: id)
            p.timer.cancel()
            noteLost(id, p)
            p.continuation.resume(throwing: SiteLinkAway(site: c.site, inFlight: true))
        }
    }

    /// Keeps a changing job in a retry scope whose answer was lost, to send again under its id.
    func noteLost(_ id: UInt64, _ p: Pending) {
        guard p.operation.changes, let scope = p.scope else { return }
        let now = ContinuousClock.now
        lost = lost.filter { now - $0.value.sent < Self.resendWithin }
        lost[Lost(machineID: p.machineID, scope: scope, operation: p.operation)] = (id, p.firstSent)
    }

    /// The machine's changing operations lost and not yet sent again (for tests).
    public func lostCount(machineID: String) -> Int { lost.keys.filter { $0.machineID == machineID }.count }

    /// The site's answer to job `id`, from `channel` (an answer from another channel, or to
    /// a job already ended, is ignored).
    public func answer(_ id: UInt64, from channel: UInt64, _ result: Result<BMCOutcome, BMCError>) {
        guard let p = pending[id], p.channel == channel else { return }
        pending.removeValue(forKey: id)
        p.timer.cancel()
        p.continuation.resume(with: result.mapError { $0 as any Error })
    }

    /// The number of channels `site` has open here.
    public func channelCount(site: String) -> Int { channels.values.filter { $0.site == site }.count }

    /// Does `operation` on the BMC of `machineID` at `site`, through one of the site's channels.
    public func perform(
        site: String,
        machineID: String,
        reference: BMCReference,
        password: String,
        operation: BMCOperation,
        scope: String? = nil
    ) async throws -> BMCOutcome {
        var again: (id: UInt64, sent: ContinuousClock.Instant)?
        // The same operation again, in the same scope, after its answer was lost: under the
        // lost job's id (not while that id is still out: two sends of one job at once would
        // share it).
        if operation.changes, let scope,
            let l = lost[Lost(machineID: machineID, scope: scope, operation: operation)],
            ContinuousClock.now - l.sent < Self.resendWithin, pending[l.id] == nil
        {
            again = l
        }
        let id: UInt64
        if let again {
            id = again.id
        } else {
            id = nextJob
            nextJob += 1
        }
        return try await dispatch(
            id,
            site: site,
            machineID: machineID,
            reference: reference,
            password: password,
            operation: operation,
            scope: scope,
            firstSent: again?.sent ?? .now
        )
    }

    /// Sends job `id` down one of the site's channels and waits for its answer.
    func dispatch(
        _ id: UInt64,
        site: String,
        machineID: String,
        reference: BMCReference,
        password: String,
        operation: BMCOperation,
        scope: String? = nil,
        firstSent: ContinuousClock.Instant = .now
    ) async throws -> BMCOutcome {
        let open = channels.filter { $0.value.site == site }.keys.sorted()
        guard !open.isEmpty else { throw SiteLinkAway(site: site) }
        let n = turn[site, default: 0]
        turn[site] = n &+ 1
        let channel = open[n % open.count]
        let job = BMCRelayJob(
            id: id,
            machineID: machineID,
            reference: reference,
            password: password,
            operation: operation
        )
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<BMCOutcome, any Error>) in
                let timeout = self.timeout
                let timer = Task { [weak self] in
                    try? await Task.sleep(for: timeout)
                    guard !Task.isCancelled else { return }
                    await self?.expire(id)
                }
                pending[id] = Pending(
                    channel: channel,
                    site: site,
                    address: reference.address,
                    machineID: machineID,
                    operation: operation,
                    scope: scope,
                    firstSent: firstSent,
                    continuation: continuation,
                    timer: timer
                )
                if case .terminated = channels[channel]?.jobs.yield(job) ?? .terminated {
                    pending.removeValue(forKey: id)
                    timer.cancel()
                    continuation.resume(throwing: SiteLinkAway(site: site))
                } else if let scope {
                    // On its way: a lost job sent again is no longer lost (if it is lost again,
                    // it is noted again, with its first time).
                    let key = Lost(machineID: machineID, scope: scope, operation: operation)
                    if lost[key]?.id == id { lost[key] = nil }
                }
            }
        } onCancel: {
            Task { await self.cancel(id) }
        }
    }

    /// No answer in time (the channel itself is alive: its handler closes a silent one).
    func expire(_ id: UInt64) {
        guard let p = pending.removeValue(forKey: id) else { return }
        noteLost(id, p)
        p.continuation.resume(
            throwing: BMCError.timeout(p.address, after: timeout, doing: "an operation through site \(p.site)")
        )
    }

    /// Whether job `id` still waits for its answer: one whose caller has gone (cancelled,
    /// timed out, its channel closed) is not sent.
    public func isPending(_ id: UInt64) -> Bool { pending[id] != nil }

    /// Opens the serial console of a machine at `site`: an open-console job, answered once the
    /// site has it open, then the site's `BMCConsole` stream for it (10 s at most).
    public func openConsole(
        site: String,
        machineID: String,
        reference: BMCReference,
        password: String
    ) async throws -> any ConsoleSession {
        let id = nextJob
        nextJob += 1
        let console = RelayedConsole(id: id, site: site, relay: self)
        consoles[id] = console
        do {
            _ = try await dispatch(
                id,
                site: site,
                machineID: machineID,
                reference: reference,
                password: password,
                operation: .openConsole
            )
            try await console.waitAttached(within: .seconds(10), address: reference.address)
        } catch {
            console.end()
            consoles.removeValue(forKey: id)
            throw error
        }
        return console
    }

    /// The site's stream for console `id`, which only that console's site may carry, once.
    public func attachConsole(_ id: UInt64, site: String) -> RelayedConsole? {
        guard let console = consoles[id], console.site == site, console.attach() else { return nil }
        return console
    }

    func forgetConsole(_ id: UInt64) { consoles.removeValue(forKey: id) }

    /// The consoles open through sites (or being opened).
    public var consoleCount: Int { consoles.count }

    func cancel(_ id: UInt64) {
        guard let p = pending.removeValue(forKey: id) else { return }
        p.timer.cancel()
        // The caller went: the job may have been done, and its answer is lost to a retry.
        noteLost(id, p)
        p.continuation.resume(throwing: CancellationError())
    }
}

/// A serial console carried by a site: the machine's output comes in on the site's
/// `BMCConsole` stream (`deliver`), what is typed goes out on it (`toSite`).
public final class RelayedConsole: ConsoleSession, Sendable {
    public let id: UInt64
    public let site: String
    let relay: SiteBMCRelay
    public let output: AsyncStream<[UInt8]>
    let outputSink: AsyncStream<[UInt8]>.Continuation
    /// What the user typed, for the site's stream to send.
    public let toSite: AsyncStream<[UInt8]>
    let toSiteSink: AsyncStream<[UInt8]>.Continuation
    let attached: AsyncStream<Void>
    let attachedSink: AsyncStream<Void>.Continuation
    let state = Mutex((attached: false, ended: false))

    init(id: UInt64, site: String, relay: SiteBMCRelay) {
        self.id = id
        self.site = site
        self.relay = relay
        (output, outputSink) = AsyncStream<[UInt8]>.makeStream()
        (toSite, toSiteSink) = AsyncStream<[UInt8]>.makeStream()
        (attached, attachedSink) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Marks the site's stream as this console's; false if one already was, or it ended.
    func attach() -> Bool {
        let ok = state.withLock { s in
            guard !s.attached, !s.ended else { return false }
            s.attached = true
            return true
        }
        if ok { attachedSink.yield() }
        return ok
    }

    func waitAttached(within limit: Duration, address: String) async throws {
        let attached = self.attached
        let came = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await _ in attached { return true }
                return false
            }
            group.addTask {
                try? await Task.sleep(for: limit)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        guard came else {
            throw BMCError.timeout(address, after: limit, doing: "opening the console through site \(site)")
        }
    }

    /// Output from the machine, from the site.
    public func deliver(_ bytes: [UInt8]) { outputSink.yield(bytes) }

    public func write(_ bytes: [UInt8]) async throws {
        guard !state.withLock({ $0.ended }) else {
            throw BMCError(.unreachable, address: site, "the console through site \(site) has ended")
        }
        toSiteSink.yield(bytes)
    }

    /// Ends the console on both sides (the user's output, the site's input).
    public func end() {
        let first = state.withLock { s in
            defer { s.ended = true }
            return !s.ended
        }
        guard first else { return }
        outputSink.finish()
        toSiteSink.finish()
        attachedSink.finish()
        Task { [relay, id] in await relay.forgetConsole(id) }
    }

    public func close() async { end() }
}

/// A machine's BMC reached through its site: each operation is a job on the site's channel.
struct RelayedBMC: BMC {
    let site: String
    let machineID: String
    let reference: BMCReference
    let password: String
    let relay: SiteBMCRelay

    var address: String { reference.address }

    func run(_ operation: BMCOperation) async throws -> BMCOutcome {
        try await relay.perform(
            site: site,
            machineID: machineID,
            reference: reference,
            password: password,
            operation: operation,
            scope: BMCRetryScope.current
        )
    }

    func unexpected(_ outcome: BMCOutcome, _ operation: BMCOperation) -> BMCError {
        BMCError(
            .protocolError,
            address: address,
            "site \(site) answered \(operation.name) for BMC \(address) with \(outcome)"
        )
    }

    func info() async throws -> BMCInfo {
        let r = try await run(.info)
        guard case .info(let i) = r else { throw unexpected(r, .info) }
        return i
    }

    func powerState() async throws -> PowerState {
        let r = try await run(.powerState)
        guard case .powerState(let s) = r else { throw unexpected(r, .powerState) }
        return s
    }

    func power(_ action: PowerAction) async throws {
        _ = try await run(.power(action))
    }

    func setBootOverride(_ override: BootOverride) async throws {
        _ = try await run(.setBootOverride(override))
    }

    func bootOverride() async throws -> BootOverride? {
        switch try await run(.bootOverride) {
        case .bootOverride(let o): return o
        // An answer with no override in it: the BMC reports none.
        case .done: return nil
        case let r: throw unexpected(r, .bootOverride)
        }
    }

    func openConsole() async throws -> any ConsoleSession {
        try await relay.openConsole(site: site, machineID: machineID, reference: reference, password: password)
    }

    func close() async {}
}

/// The region's BMC provider: a machine at a site gets its BMC through the site's channel
/// (`SiteBMCRelay`), any other machine a driver of its own from `local`.
public struct SiteRoutedBMCs: BMCProvider {
    let local: any BMCProvider
    let relay: SiteBMCRelay
    let vault: CredentialVault

    public init(local: any BMCProvider, relay: SiteBMCRelay, vault: CredentialVault) {
        self.local = local
        self.relay = relay
        self.vault = vault
    }

    public func bmc(
        machineID: String,
        reference: BMCReference,
        sealedPassword: [UInt8],
        site: String?
    ) async throws -> any BMC {
        guard let site else {
            return try await local.bmc(
                machineID: machineID,
                reference: reference,
                sealedPassword: sealedPassword,
                site: nil
            )
        }
        return RelayedBMC(
            site: site,
            machineID: machineID,
            reference: reference,
            password: try vault.open(sealedPassword, machineID: machineID),
            relay: relay
        )
    }

    public func forget(machineID: String) async { await local.forget(machineID: machineID) }
}
