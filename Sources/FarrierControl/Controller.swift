import Crypto
import FarrierBMC
import FarrierCore
import Foundation
import Logging

/// Lifecycle settings of the server.
public struct ControlConfiguration: Sendable, Hashable {
    /// Deploys in their boot, agent or finish phase at once; more wait `queued`.
    public var maxConcurrentDeploys = 8
    /// Wipes (releases) at once.
    public var maxConcurrentWipes = 8
    /// How long each step may take, from the moment it is entered (time spent `queued` for a
    /// slot counts) to its end: no phase, queued included, can outlive it.
    /// A full wipe writes every byte (a 4 TB disk at 200 MB/s is over 5 hours), so releasing
    /// gets a long limit; a stalled agent is caught sooner by `progressStall`.
    public var timeouts: [MachineState: Duration] = [
        .commissioning: .seconds(30 * 60), .deploying: .seconds(60 * 60), .releasing: .seconds(24 * 3600),
        .rescuing: .seconds(30 * 60), .exitingRescue: .seconds(15 * 60),
    ]
    /// An agent that reported progress, then nothing for this long, has stalled: the step fails.
    public var progressStall: Duration = .seconds(15 * 60)
    /// How often the reconciler looks at every machine, besides being woken by transitions.
    public var tick: Duration = .seconds(2)
    /// Attempts of one BMC action before the step fails.
    public var bmcAttempts = 3
    public var bmcRetryDelay: Duration = .seconds(2)

    public init() {}

    public func timeout(_ step: MachineState) -> Duration { timeouts[step] ?? .seconds(60 * 60) }
}

/// A request that cannot be done as asked, with a message the user can act on.
public struct ControlError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable { case notFound, invalid, conflict, permission, unavailable }
    public var kind: Kind
    public var description: String
    public init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }
}

/// The lifecycle's single writer of transitions: every transition is committed here (state,
/// phase, generation and its event in one transaction) before anything acts on it. The API,
/// the agent endpoints and the reconciler all go through it.
public final class Controller: Sendable {
    public let store: any StateStore
    public let pool: BMCPool
    public let hub: EventHub
    public let configuration: ControlConfiguration
    let agentKey: SymmetricKey
    let logger: Logger

    public init(
        store: any StateStore, pool: BMCPool, agentKey: SymmetricKey, configuration: ControlConfiguration = .init(),
        logger: Logger = Logger(label: "farrier.control")
    ) {
        self.store = store
        self.pool = pool
        self.agentKey = agentKey
        self.configuration = configuration
        self.hub = EventHub()
        self.logger = logger
    }

    // MARK: Transitions

    /// Applies a lifecycle event to a machine and commits it, with `change` for what else the
    /// event carries (the deployment, inventory…). `guardGeneration` makes the commit conditional
    /// on the step being the one the caller saw (a stale worker or agent changes nothing).
    @discardableResult
    public func apply(
        _ event: Lifecycle.Event, machineID: String, guardGeneration: Int? = nil, reasonSuffix: String = "",
        change: (inout Machine) throws -> Void = { _ in }
    ) throws -> Machine {
        let m = try store.update(machineID: machineID) { m in
            if let g = guardGeneration, m.generation != g {
                throw ControlError(.conflict, "machine \(m.name) moved on to another step")
            }
            try Self.transition(&m, event, reasonSuffix: reasonSuffix)
            try change(&m)
            return [MachineEvent(m, kind: .transition, message: m.reason)]
        }
        Failpoint.hit("controller.after-commit.\(m.state.rawValue)")
        logger.info(
            "transition",
            metadata: ["machine": "\(m.name)", "event": "\(event)", "state": "\(m.state.rawValue)", "reason": "\(m.reason)"])
        hub.notify()
        return m
    }

    /// The pure part of a transition, on a machine value: state, and the step bookkeeping.
    static func transition(_ m: inout Machine, _ event: Lifecycle.Event, reasonSuffix: String = "", now: Date = Date()) throws {
        let from = m.state
        switch Lifecycle.apply(event, to: m.status) {
        case .failure(let refusal): throw ControlError(.conflict, "machine \(m.name): \(refusal.description)")
        case .success(var status):
            status.reason += reasonSuffix
            m.status = status
        }
        if Lifecycle.steps.contains(m.state) {
            m.generation += 1
            m.phase = .queued
            // The step's clock starts now: a step that waits for a slot times out like any other.
            m.stepStarted = now
            m.progress = nil
        } else {
            m.phase = .none
            m.stepStarted = nil
        }
        // A quick wipe completed the step but erased almost nothing: the disk stays dirty and
        // the machine stays the project's to reuse, never another's.
        if from == .releasing, m.state == .ready, m.deployment?.wipe == .quick {
            m.diskDirty = true
            m.dirtyFor = m.project
        } else if !m.diskDirty {
            m.dirtyFor = nil
        }
        // Back in the pool: no project, no deployment, no deploy tags.
        if m.state == .ready || m.state == .enrolled {
            m.project = nil
            m.deployment = nil
        }
        if m.state != .failed { m.failedStep = nil }
    }

    /// The pure transition, for callers that commit it in their own transaction (allocation).
    public static func commitTransition(_ m: inout Machine, _ event: Lifecycle.Event) throws {
        try transition(&m, event)
    }

    /// Moves a step to its next phase, if the machine is still in that step and phase.
    @discardableResult
    func advance(machineID: String, generation: Int, from: StepPhase, to: StepPhase, message: String) throws -> Machine? {
        var moved = false
        let m = try store.update(machineID: machineID) { m in
            guard m.generation == generation, m.phase == from, Lifecycle.steps.contains(m.state) else { return [] }
            m.phase = to
            moved = true
            return [MachineEvent(m, kind: .action, message: message)]
        }
        if moved { hub.notify() }
        return moved ? m : nil
    }

    /// Fails the current step (if it is still `generation`) with a reason.
    public func fail(machineID: String, generation: Int, reason: String) {
        do {
            try apply(.stepFailed(reason: reason), machineID: machineID, guardGeneration: generation)
        } catch {
            logger.debug("fail not applied", metadata: ["machine.id": "\(machineID)", "error": "\(error)"])
        }
    }

    // MARK: Agent

    /// The token the agent of this machine's current step authenticates with: bound to the
    /// machine and the step's generation, so it is worthless for any other machine or step.
    public func agentToken(for m: Machine) -> String {
        "\(m.id).\(m.generation).\(Self.mac(agentKey, m.id, m.generation))"
    }

    static func mac(_ key: SymmetricKey, _ id: String, _ generation: Int) -> String {
        let code = HMAC<SHA256>.authenticationCode(for: Data("farrier-agent:\(id):\(generation)".utf8), using: key)
        return Data(code).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// Verifies an agent token: the machine it names, in the step it was made for.
    public func agentMachine(token: String) throws -> Machine {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, let generation = Int(parts[1]) else {
            throw ControlError(.permission, "malformed agent token")
        }
        guard ConstantTime.equal(Self.mac(agentKey, parts[0], generation), parts[2]) else {
            throw ControlError(.permission, "agent token is not valid")
        }
        guard let m = try store.machine(id: parts[0]) else {
            throw ControlError(.permission, "agent token names no machine")
        }
        guard m.generation == generation, Lifecycle.steps.contains(m.state) else {
            throw ControlError(.permission, "agent token has expired: machine \(m.name) is \(m.state.rawValue)")
        }
        return m
    }

    /// The agent is up: the boot phase is over. Returns what it must do.
    public func agentHello(token: String, hello: AgentHello) throws -> AgentTask {
        let m = try agentMachine(token: token)
        // The step's agent work is done (the disk written, the wipe finished): a ramdisk that
        // booted again anyway gets no task, so nothing is done twice.
        guard m.phase != .finish else {
            throw ControlError(.conflict, "machine \(m.name): the agent already finished \(m.state.rawValue)")
        }
        // A queued step has no slot yet: its agent may not start (the deploy and wipe caps, and
        // the step's clock, apply from admission on).
        guard m.phase != .queued else {
            throw ControlError(.conflict, "machine \(m.name): \(m.state.rawValue) is queued for a free slot; the agent may not start yet")
        }
        let updated = try store.update(machineID: m.id) { x in
            guard x.generation == m.generation, x.phase != .queued else { return [] }
            if x.phase == .boot { x.phase = .agent }
            x.progress = StepProgress(stage: "started", updated: Date())
            return [MachineEvent(x, kind: .action, message: "agent \(hello.agentVersion) started")]
        }
        Failpoint.hit("agent.hello.after-commit")
        hub.notify()
        return try task(for: updated)
    }

    /// The task an agent would get for this machine now (tests).
    public func task(forTesting m: Machine) throws -> AgentTask { try task(for: m) }

    func task(for m: Machine) throws -> AgentTask {
        switch m.state {
        case .commissioning: return AgentTask(kind: .commission, machine: m.name)
        case .deploying:
            guard let d = m.deployment, let image = try store.image(name: d.image) else {
                throw ControlError(.conflict, "machine \(m.name) has no deployable image")
            }
            return AgentTask(
                kind: .deploy, machine: m.name,
                image: .init(path: "/images/\(image.sha256)", sha256: image.sha256, size: image.size, format: image.format),
                sshKeys: d.sshKeys, hostname: d.hostname, metadataURL: metadataPath(for: m))
        case .releasing: return AgentTask(kind: .wipe, machine: m.name, wipe: m.deployment?.wipe ?? .full)
        case .rescuing: return AgentTask(kind: .rescue, machine: m.name, sshKeys: m.deployment?.sshKeys ?? [])
        default: throw ControlError(.conflict, "machine \(m.name) has no agent work (it is \(m.state.rawValue))")
        }
    }

    // MARK: Metadata (cloud-init NoCloud)

    /// The machine's metadata path, `/metadata/<token>/`: the token is bound to the machine and
    /// to this deployment, so it serves nothing once the machine is released or redeployed.
    public func metadataPath(for m: Machine) -> String? {
        guard let instance = m.deployment?.instanceID else { return nil }
        return "/metadata/\(m.id).\(Self.mac(agentKey, "metadata:\(instance)", 0))/"
    }

    /// The deployment a metadata token belongs to, if it is still the current one.
    public func metadataMachine(token: String) throws -> Machine {
        let parts = token.split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2, let m = try store.machine(id: parts[0]), let path = metadataPath(for: m),
            ConstantTime.equal(path, "/metadata/\(token)/")
        else { throw ControlError(.notFound, "no such metadata") }
        guard [.deploying, .deployed, .rescuing, .rescue, .exitingRescue].contains(m.state) else {
            throw ControlError(.notFound, "no such metadata")
        }
        return m
    }

    /// NoCloud files: meta-data (instance-id, hostname, keys), user-data (as given at deploy),
    /// vendor-data (Farrier's defaults: root may log in with the deploy keys).
    public func metadataFile(token: String, name: String) throws -> String {
        let m = try metadataMachine(token: token)
        let d = m.deployment!
        switch name {
        case "meta-data":
            var text = "instance-id: \(d.instanceID ?? m.id)\nlocal-hostname: \(d.hostname)\n"
            if !d.sshKeys.isEmpty {
                text += "public-keys:\n" + d.sshKeys.map { "  - \"\($0.replacingOccurrences(of: "\"", with: ""))\"\n" }.joined()
            }
            return text
        case "user-data":
            return d.userData.isEmpty ? "#cloud-config\n{}\n" : d.userData
        case "vendor-data":
            // Root may log in with the deploy keys (meta-data's public-keys go to the default
            // user, and to root when disable_root is false); no passwords over SSH.
            return "#cloud-config\ndisable_root: false\nssh_pwauth: false\n"
        case "network-config":
            throw ControlError(.notFound, "no network-config: the image's default (DHCP) applies")
        default:
            throw ControlError(.notFound, "no such metadata file '\(name)'")
        }
    }

    public func agentProgress(token: String, report: AgentProgress) throws {
        let m = try agentMachine(token: token)
        _ = try store.update(machineID: m.id) { x in
            guard x.generation == m.generation else { return [] }
            x.progress = StepProgress(stage: report.stage, bytesDone: report.bytesDone, bytesTotal: report.bytesTotal, updated: Date())
            return [MachineEvent(x, kind: .progress, message: report.stage)]
        }
        hub.notify()
    }

    /// The agent finished its task: on success the step moves to its finish phase (the
    /// reconciler then sets the final boot device and power), on failure the step fails.
    public func agentDone(token: String, result: AgentResult) throws {
        let m = try agentMachine(token: token)
        guard result.ok else {
            try apply(.stepFailed(reason: "agent: \(result.error ?? "no reason given")"), machineID: m.id, guardGeneration: m.generation)
            return
        }
        if m.state == .commissioning, result.inventory == nil {
            throw ControlError(.invalid, "commissioning needs the inventory in the result")
        }
        _ = try store.update(machineID: m.id) { x in
            guard x.generation == m.generation, x.phase == .agent || x.phase == .boot else { return [] }
            if let inv = result.inventory, x.state == .commissioning {
                x.inventory = inv
                if inv.firmware != .unknown { x.firmware = inv.firmware }
            }
            x.phase = .finish
            var note = ""
            if let s = result.seconds { note += String(format: " in %.1f s", s) }
            if let rss = result.peakRSSBytes { note += String(format: ", agent peak RSS %.1f MiB", Double(rss) / 1_048_576) }
            return [MachineEvent(x, kind: .action, message: "agent finished \(x.state.rawValue)\(note)")]
        }
        Failpoint.hit("agent.done.after-commit")
        hub.notify()
    }
}

/// Wakes watchers and the reconciler when something was committed. Holds no events itself:
/// they are read from the store, so nothing is lost or duplicated between a wake-up and a read.
public final class EventHub: Sendable {
    let subscribers = Mutex<[UUID: AsyncStream<Void>.Continuation]>([:])

    public init() {}

    public func notify() {
        for c in subscribers.withLock({ Array($0.values) }) { c.yield() }
    }

    /// A stream of wake-ups; coalesced (at most one pending).
    public func subscribe() -> (AsyncStream<Void>, cancel: @Sendable () -> Void) {
        let id = UUID()
        let (stream, c) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        subscribers.withLock { $0[id] = c }
        return (stream, { [weak self] in _ = self?.subscribers.withLock { $0.removeValue(forKey: id) }; c.finish() })
    }
}

import Synchronization
