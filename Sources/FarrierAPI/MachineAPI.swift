import FarrierBMC
import FarrierControl
import FarrierCore
import Foundation
import GRPCCore
import Logging
import SwiftProtobuf

/// `farrier.v1.MachineService`: the machine lifecycle, scoped by the caller's token.
public struct MachineAPI: Farrier_V1_MachineService.SimpleServiceProtocol {
    let controller: Controller
    let vault: CredentialVault
    let logger: Logger
    var store: any StateStore { controller.store }
    var pool: any BMCProvider { controller.pool }

    public init(controller: Controller, vault: CredentialVault, logger: Logger = Logger(label: "farrier.api")) {
        self.controller = controller
        self.vault = vault
        self.logger = logger
    }

    public func listMachines(
        request: Farrier_V1_ListMachinesRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_ListMachinesResponse {
        let caller = try Caller.current()
        let pageSize = Int(request.pageSize == 0 ? 100 : request.pageSize)
        guard (1...1000).contains(pageSize) else {
            throw RPCError(
                code: .invalidArgument,
                message: "page_size must be between 1 and 1000, got \(request.pageSize)"
            )
        }
        if !request.state.isEmpty, MachineState(rawValue: request.state) == nil {
            throw RPCError(
                code: .invalidArgument,
                message:
                    "unknown state '\(request.state)'; valid: \(MachineState.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        for (k, v) in request.tags {
            if let p = Validation.tagProblem(key: k, value: v) { throw RPCError(code: .invalidArgument, message: p) }
        }
        if !caller.isAdmin, !request.project.isEmpty, request.project != caller.project {
            throw RPCError(
                code: .permissionDenied,
                message: "a member token of project \(caller.project ?? "-") lists only that project"
            )
        }
        // The page token is the name of the last machine of the previous page (names are unique
        // and the list is ordered by name). The database filters by state, project and zone and
        // reads from the token on, a page (and one more, to know whether another follows) at a
        // time: a page costs a page, not the fleet. Tags are filtered here, reading on until the
        // page is full (bounded by the fleet).
        var after: String?
        if !request.pageToken.isEmpty {
            guard let token = String(data: Data(base64Encoded: request.pageToken) ?? Data(), encoding: .utf8),
                !token.isEmpty
            else {
                throw RPCError(code: .invalidArgument, message: "page_token is not one this server issued")
            }
            after = token
        }
        guard caller.isAdmin || caller.project != nil else { return Farrier_V1_ListMachinesResponse() }
        var query = MachineQuery(
            states: request.state.isEmpty ? nil : MachineState(rawValue: request.state).map { [$0] },
            project: caller.isAdmin ? (request.project.isEmpty ? nil : request.project) : caller.project,
            zone: request.zone.isEmpty ? nil : request.zone,
            site: request.site.isEmpty ? nil : request.site,
            after: after,
            limit: pageSize + 1
        )
        var machines: [Machine] = []
        while machines.count <= pageSize {
            let batch = try await store.machines(query)
            machines += batch.filter { m in
                caller.canSee(m)
                    && request.tags.allSatisfy { m.tags[$0.key] == $0.value || m.deployment?.tags[$0.key] == $0.value }
            }
            guard batch.count == query.limit, let last = batch.last else { break }
            query.after = last.name
        }
        var response = Farrier_V1_ListMachinesResponse()
        let page = machines.prefix(pageSize)
        let addresses = try await addressBook(page.map(\.mac))
        response.machines = page.map { m in
            var v = Farrier_V1_Machine(m, timeline: [])
            v.address = m.staticBootAddress?.description ?? addresses[m.mac] ?? ""
            // Hundreds of PCI functions a server, a thousand servers a page: GetMachine has them.
            if v.hasInventory { v.inventory.pciDevices = [] }
            return v
        }
        if machines.count > pageSize, let last = response.machines.last {
            response.nextPageToken = Data(last.name.utf8).base64EncodedString()
        }
        return response
    }

    public func getMachine(
        request: Farrier_V1_GetMachineRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        // Tests' output is the admins': asked for by a member, refused before anything is read.
        if request.testOutput { _ = try Caller.admin("reading test output") }
        let limit = Int(request.timelineLimit == 0 ? 100 : request.timelineLimit)
        guard (1...500).contains(limit) else {
            throw RPCError(
                code: .invalidArgument,
                message: "timeline_limit must be between 1 and 500, got \(request.timelineLimit)"
            )
        }
        let machine: Machine
        let lastEvent: Int64
        do {
            let found = try await visibleMachine(request.nameOrMac)
            // The machine is read again after its newest event: whatever that event did is in
            // the reply, and anything the reply misses comes after it (last_event_id). That holds
            // because event ids commit in order: one writer in SQLite, PostgresStore's event lock.
            lastEvent = try await store.lastEventID(machineID: found.id)
            guard let again = try await store.machine(id: found.id), try Caller.current().canSee(again) else {
                throw RPCError(code: .notFound, message: "no machine named or with MAC '\(request.nameOrMac)'")
            }
            machine = again
        } catch let error as RPCError where error.code == .notFound {
            // Released from the caller's project and not moved since: how the release ended,
            // and nothing about the machine now in the pool.
            let caller = try Caller.current()
            guard let project = caller.project,
                let m = try await store.machine(nameOrMAC: request.nameOrMac), m.releasedFrom == project
            else { throw error }
            var v = Farrier_V1_Machine()
            v.id = m.id
            v.name = m.name
            v.state = m.state.rawValue
            v.reason = m.reason
            return v
        }
        var v = Farrier_V1_Machine(machine, timeline: try await store.timeline(mac: machine.mac, limit: limit))
        if let fixed = machine.staticBootAddress {
            v.address = fixed.description
        } else {
            v.address = try await addressBook([machine.mac])[machine.mac] ?? ""
        }
        v.lastEventID = lastEvent
        if request.testOutput, let run = machine.burnIn {
            let outputs = try await store.testOutputs(machineID: machine.id, runID: run.runID)
            for i in v.burnIn.results.indices {
                let r = v.burnIn.results[i]
                if let o = outputs.first(where: { $0.name == r.name && $0.target == r.target }) {
                    v.burnIn.results[i].output = o.output
                }
            }
        }
        return v
    }

    /// Current DHCP leases by MAC: the region's own, and those sites reported for their
    /// machines (the later-expiring one where both have one).
    func addressBook(_ macs: [MACAddress]) async throws -> [MACAddress: String] {
        let now = Date()
        var best: [MACAddress: Lease] = [:]
        let leases = try await store.currentLeases(macs: macs) + store.siteLeases(macs: macs)
        for l in leases where l.expires > now && l.expires > best[l.mac]?.expires ?? .distantPast { best[l.mac] = l }
        return best.mapValues(\.address.description)
    }

    /// The machine named (or with this MAC), if the caller may see it. A machine of another
    /// project is reported exactly like a missing one: NOT_FOUND, so names do not leak.
    func visibleMachine(_ key: String) async throws -> Machine {
        let caller = try Caller.current()
        guard !key.isEmpty else { throw RPCError(code: .invalidArgument, message: "a machine name or MAC is required") }
        guard key.count <= 100 else {
            throw RPCError(code: .invalidArgument, message: "machine name is longer than 100 characters")
        }
        guard let machine = try await store.machine(nameOrMAC: key), caller.canSee(machine) else {
            throw RPCError(code: .notFound, message: "no machine named or with MAC '\(key)'")
        }
        return machine
    }

    /// Runs a lifecycle transition (a refusal ends the call with its code: ErrorMapping.swift).
    func transition(
        _ event: Lifecycle.Event,
        _ m: Machine,
        change: @escaping @Sendable (inout Machine) throws -> Void = { _ in }
    ) async throws -> Farrier_V1_Machine {
        Farrier_V1_Machine(try await controller.apply(event, machineID: m.id, change: change), timeline: [])
    }

}

// MARK: BMC operations

/// A request stream's iterator, handed to the one child task that reads it after the first
/// message (the console calls: the user's, and a site's).
final class InputBox<Element: Sendable>: @unchecked Sendable {
    var iterator: RPCAsyncSequence<Element, any Error>.AsyncIterator
    init(_ i: RPCAsyncSequence<Element, any Error>.AsyncIterator) { iterator = i }
    func next() async throws -> Element? { try await iterator.next() }
}

extension MachineAPI {
    public func enrollMachine(
        request: Farrier_V1_EnrollMachineRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        _ = try Caller.admin("enrolling a machine")
        if let problem = Machine.nameProblem(request.name) { throw RPCError(code: .invalidArgument, message: problem) }
        try Self.checkCommissionTests(
            commission: request.commission,
            tests: request.commissionTests,
            parameters: request.commissionParameters
        )
        // Checked before anything is written.
        let run = try await testRun(tests: request.commissionTests, parameters: request.commissionParameters)
        guard let mac = MACAddress(request.mac) else {
            throw RPCError(
                code: .invalidArgument,
                message: "mac '\(request.mac)' is not a MAC address (like 52:54:00:12:34:56)"
            )
        }
        // The password: the request's, or a named credential's (whose user the URL may leave out).
        var url = request.bmcURL
        let password: String
        var credential: String?
        switch (request.bmcPassword.isEmpty, request.bmcCredential.isEmpty) {
        case (true, true):
            throw RPCError(code: .invalidArgument, message: "bmc_password or bmc_credential is required")
        case (false, false):
            throw RPCError(code: .invalidArgument, message: "give bmc_password or bmc_credential, not both")
        case (false, true): password = request.bmcPassword
        case (true, false):
            guard let (c, secret) = try await openCredential(request.bmcCredential) else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "no BMC credential named '\(request.bmcCredential)' (farrier bmc credential list)"
                )
            }
            switch Self.url(url, credential: c) {
            case .success(let u): url = u
            case .failure(let p): throw RPCError(code: .invalidArgument, message: p.description)
            }
            password = secret
            credential = c.name
        }
        let reference: BMCReference
        do {
            reference = try BMCReference(url: url, insecureTLS: request.bmcInsecureTls)
        } catch {
            throw RPCError(code: .invalidArgument, message: error.description)
        }
        let site = try await knownSite(request.site)
        // The password is sealed to the machine's ID: the existing one for a known MAC.
        let id = try await store.machine(mac: mac)?.id ?? UUID().uuidString.lowercased()
        let sealed = try vault.seal(password, machineID: id)
        var machine = try await controller.enroll(
            name: request.name,
            mac: mac,
            bmc: reference,
            sealedPassword: sealed,
            credential: credential
        )
        if machine.id != id {
            // A new machine got a new ID in the store: seal again under it.
            machine = try await controller.enroll(
                name: request.name,
                mac: mac,
                bmc: reference,
                sealedPassword: try vault.seal(password, machineID: machine.id),
                credential: credential
            )
        }
        // Enrolling again without a site keeps the machine's (`update --site ''` clears it).
        if let site, machine.site != site {
            machine = try await controller.record("enrolled at site \(site)", machineID: machine.id) {
                $0.site = site
            }
        }
        logger.info(
            "machine enrolled",
            metadata: [
                "machine": "\(machine.name)", "mac": "\(mac)", "bmc": "\(reference.url)", "site": "\(site ?? "-")",
            ]
        )
        if request.commission, machine.state == .enrolled || machine.state == .ready {
            return try await transition(.commission, machine, change: Self.opening(run))
        }
        return Farrier_V1_Machine(machine, timeline: [])
    }

    /// The site a request names: nil for none (the region's own boot network), or one that
    /// `site add` made; any other name is a precise error.
    func knownSite(_ name: String) async throws -> String? {
        guard !name.isEmpty else { return nil }
        guard try await store.site(name: name) != nil else {
            throw RPCError(
                code: .invalidArgument,
                message: "no site named '\(name.prefix(80))' (farrier site list; add one with farrier site add)"
            )
        }
        return name
    }

    /// The machine and its BMC driver, or a precise error.
    func bmc(for name: String) async throws -> (Machine, any BMC) {
        let machine = try await visibleMachine(name)
        guard let reference = machine.bmc, let sealed = try await store.sealedBMCPassword(machineID: machine.id) else {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "machine \(machine.name) has no BMC; enroll it: farrier machine enroll \(machine.name) --mac \(machine.mac) --bmc ipmi://USER@HOST --bmc-password-file FILE"
            )
        }
        do {
            let bmc = try await pool.bmc(
                machineID: machine.id,
                reference: reference,
                sealedPassword: sealed,
                site: machine.site
            )
            return (machine, bmc)
        } catch {
            throw RPCError(code: .failedPrecondition, message: "\(error)")
        }
    }

    /// Maps BMC errors to gRPC status codes a client can act on.
    static func rpcError(_ error: any Error, machine: String) -> any Error {
        if let away = error as? SiteLinkAway {
            return RPCError(
                code: .unavailable,
                message: "machine \(machine): \(away)",
                metadata: [farrierErrorMetadataKey: "site-away"]
            )
        }
        guard let e = error as? BMCError else { return error }
        let code: RPCError.Code =
            switch e.kind {
            case .authenticationFailed: .failedPrecondition
            case .timeout, .unreachable: .unavailable
            case .unsupported: .unimplemented
            case .rejected: .failedPrecondition
            case .protocolError: .internalError
            }
        return RPCError(
            code: code,
            message: "machine \(machine): \(e.description)",
            metadata: [farrierErrorMetadataKey: "bmc-\(e.kind)"]
        )
    }

    public func power(request: Farrier_V1_PowerRequest, context: ServerContext) async throws -> Farrier_V1_PowerResponse
    {
        let action: PowerAction?
        if request.action == "status" {
            action = nil
        } else if let a = PowerAction(rawValue: request.action) {
            action = a
        } else {
            throw RPCError(
                code: .invalidArgument,
                message:
                    "unknown power action '\(request.action)'; valid: status, \(PowerAction.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        let (machine, bmc) = try await bmc(for: request.name)
        // In maintenance the machine is the admins': a tenant's power action would undo their work.
        if action != nil, let hold = machine.maintenance, !(Caller.principal?.isAdmin ?? false) {
            throw RPCError(code: .failedPrecondition, message: Controller.inMaintenance(machine.name, hold))
        }
        // During a step the power is Farrier's: a tenant cycling a wipe or a deploy would restart
        // its boot under the agent's feet. Admins may (a hung machine), which starts a new boot.
        if action != nil, Lifecycle.steps.contains(machine.state), !(Caller.principal?.isAdmin ?? false) {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "machine \(machine.name) is \(machine.state.rawValue): Farrier controls its power until the step ends (an admin may override)"
            )
        }
        do {
            if let action {
                // Powering on or cycling starts a new boot: an agent of the old one loses its token.
                if action == .on || action == .cycle || action == .reset {
                    try await controller.beginBoot(machineID: machine.id, generation: machine.generation)
                }
                try await bmc.power(action)
                logger.info("power action", metadata: ["machine": "\(machine.name)", "action": "\(action.rawValue)"])
            }
            var response = Farrier_V1_PowerResponse()
            response.powerState = try await bmc.powerState().rawValue
            return response
        } catch {
            throw Self.rpcError(error, machine: machine.name)
        }
    }

    public func setBootDevice(
        request: Farrier_V1_SetBootDeviceRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_SetBootDeviceResponse {
        _ = try Caller.admin("setting a boot device by hand (the lifecycle sets it)")
        guard let device = BootDevice(rawValue: request.device) else {
            throw RPCError(code: .invalidArgument, message: "unknown boot device '\(request.device)'; valid: pxe, disk")
        }
        let (machine, bmc) = try await bmc(for: request.name)
        do {
            try await bmc.setBootOverride(
                BootOverride(device: device, persistent: request.persistent, efi: request.efi)
            )
            logger.info("boot device set", metadata: ["machine": "\(machine.name)", "device": "\(device.rawValue)"])
            return Farrier_V1_SetBootDeviceResponse()
        } catch {
            throw Self.rpcError(error, machine: machine.name)
        }
    }

    public func console(
        request: RPCAsyncSequence<Farrier_V1_ConsoleInput, any Error>,
        response: RPCWriter<Farrier_V1_ConsoleOutput>,
        context: ServerContext
    ) async throws {
        let inputs = InputBox(request.makeAsyncIterator())
        guard let first = try await inputs.next() else { return }
        let (machine, bmc) = try await bmc(for: first.name)
        let console: any ConsoleSession
        do {
            console = try await bmc.openConsole()
        } catch {
            throw Self.rpcError(error, machine: machine.name)
        }
        logger.info("console opened", metadata: ["machine": "\(machine.name)"])
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                // BMC → client. Ends when SOL ends (BMC deactivated it).
                group.addTask {
                    for await chunk in console.output {
                        var out = Farrier_V1_ConsoleOutput()
                        out.data = Data(chunk)
                        try await response.write(out)
                    }
                }
                // Client → BMC. Ends when the client half-closes (it detached).
                group.addTask {
                    if !first.data.isEmpty { try await console.write(Array(first.data)) }
                    while let input = try await inputs.next() {
                        if !input.data.isEmpty { try await console.write(Array(input.data)) }
                    }
                }
                // Whichever side ends first ends the call.
                try await group.next()
                group.cancelAll()
            }
        } catch {
            await console.close()
            logger.info("console closed", metadata: ["machine": "\(machine.name)", "reason": "\(error)"])
            throw Self.rpcError(error, machine: machine.name)
        }
        await console.close()
        logger.info("console closed", metadata: ["machine": "\(machine.name)"])
    }
}

extension Farrier_V1_Progress {
    init(_ p: StepProgress) {
        self.init()
        stage = p.stage
        bytesDone = p.bytesDone
        bytesTotal = p.bytesTotal
        updated = Google_Protobuf_Timestamp(date: p.updated)
    }
}

extension Farrier_V1_Machine {
    init(_ m: Machine, timeline: [TimelineEvent]) {
        self.init()
        id = m.id
        name = m.name
        mac = m.mac.description
        architecture = m.architecture.rawValue
        firmware = m.firmware.rawValue
        state = m.state.rawValue
        firstSeen = Google_Protobuf_Timestamp(date: m.firstSeen)
        lastSeen = Google_Protobuf_Timestamp(date: m.lastSeen)
        // Members see their machine, not the fleet's plumbing: no BMC (its host and user
        // name), and no timeline from before their project was given the machine.
        let admin = Caller.principal?.isAdmin ?? false
        if admin, let b = m.bmc {
            var ref = Farrier_V1_BMC()
            ref.driver = b.driver.rawValue
            ref.url = b.url
            ref.insecureTls = b.insecureTLS
            bmc = ref
        }
        reason = m.reason
        failedStep = m.failedStep?.rawValue ?? ""
        phase = m.phase == .none ? "" : m.phase.rawValue
        project = m.project ?? ""
        tags = m.tags.merging(m.deployment?.tags ?? [:]) { a, _ in a }
        labels = m.labels
        zone = m.zone
        rack = m.rack
        site = m.site ?? ""
        nextBoot = Lifecycle.nextBoot(m.state, phase: m.phase).rawValue
        if let inv = m.inventory {
            var i = Farrier_V1_Inventory()
            i.cpuModel = inv.cpuModel
            i.cores = Int32(clamping: inv.cores)
            i.memoryBytes = inv.memoryBytes
            i.vendor = inv.vendor
            i.product = inv.product
            i.serial = inv.serial
            i.firmware = inv.firmware.rawValue
            i.threads = Int32(clamping: inv.threads ?? 0)
            i.numaNodes = Int32(clamping: inv.numaNodes ?? 0)
            i.pciDevices = (inv.pciDevices ?? []).map { d in
                var x = Farrier_V1_PCIDevice()
                x.address = d.address
                x.vendor = d.vendor
                x.device = d.device
                x.classCode = d.pciClass
                x.driver = d.driver ?? ""
                return x
            }
            i.gpus = inv.gpus.map(\.name)
            i.biosVendor = inv.biosVendor ?? ""
            i.biosVersion = inv.biosVersion ?? ""
            i.biosDate = inv.biosDate ?? ""
            i.boardSerial = inv.boardSerial ?? ""
            i.chassisSerial = inv.chassisSerial ?? ""
            i.disks = inv.disks.map { d in
                var x = Farrier_V1_Disk()
                x.name = d.name
                x.sizeBytes = d.sizeBytes
                x.model = d.model
                x.serial = d.serial
                x.rotational = d.rotational
                x.wwn = d.wwn ?? ""
                return x
            }
            i.nics = inv.nics.map { n in
                var x = Farrier_V1_NIC()
                x.name = n.name
                x.mac = n.mac
                x.driver = n.driver
                x.link = n.link
                x.speedMbps = Int32(clamping: n.speedMbps ?? 0)
                x.pciAddress = n.pciAddress ?? ""
                x.firmware = n.firmware ?? ""
                // The network's layout (switches, ports, VLANs, addresses) is for admins.
                if admin, let l = n.lldp {
                    var y = Farrier_V1_LLDPNeighbour()
                    y.chassisID = l.chassisID
                    y.portID = l.portID
                    y.systemName = l.systemName ?? ""
                    y.portDescription = l.portDescription ?? ""
                    y.systemDescription = l.systemDescription ?? ""
                    y.vlan = Int32(l.vlan ?? 0)
                    y.managementAddress = l.managementAddress ?? ""
                    x.lldp = y
                }
                return x
            }
            inventory = i
        }
        if let run = m.burnIn {
            var x = Farrier_V1_BurnInRun()
            x.runID = run.runID
            x.tests = run.tests.map(\.label)
            // Members see their machine's hardware results: no admin's name, no script's words.
            if admin { x.requestedBy = run.requestedBy }
            x.requested = Google_Protobuf_Timestamp(date: run.requested)
            if let f = run.finished { x.finished = Google_Protobuf_Timestamp(date: f) }
            x.results = run.results.map { r in
                var y = Farrier_V1_TestResult()
                y.name = r.name
                y.version = Int32(clamping: r.version ?? 0)
                y.target = r.target ?? ""
                y.status = r.status.rawValue
                y.seconds = r.seconds
                y.exitCode = r.exitCode ?? -1
                y.metrics = r.metrics
                // A script's summary is its last line of output: admins' only.
                if admin || r.version == nil { y.summary = r.summary }
                // How much a test wrote is the admins' (output itself: GetMachine's test_output).
                if admin { y.outputBytes = r.outputBytes ?? 0 }
                return y
            }
            burnIn = x
        }
        if let d = m.deployment {
            var x = Farrier_V1_Deployment()
            x.image = d.image
            x.imageSha256 = d.imageSHA256
            x.hostname = d.hostname
            x.sshKeyCount = Int32(d.sshKeys.count)
            x.requestedBy = d.requestedBy
            x.rootDevice = d.rootDevice?.items ?? []
            if let os = d.os {
                x.osTracked = true
                x.osAwaiting = os.awaiting
                if let t = os.reported { x.osReported = Google_Protobuf_Timestamp(date: t) }
            }
            x.interfaces = (d.networking?.interfaces ?? []).map { i in
                var o = Farrier_V1_DeployedInterface()
                o.name = i.name
                o.kind = i.kind.rawValue
                o.mac = i.mac?.description ?? ""
                o.members = i.members
                o.mode = i.mode?.rawValue ?? ""
                o.parent = i.parent ?? ""
                o.vlan = Int32(i.vlan)
                o.mtu = Int32(i.mtu ?? 0)
                o.addresses = i.addresses
                o.network = i.network ?? ""
                o.dhcp4 = i.dhcp4
                return o
            }
            deployment = x
        }
        if let p = m.progress { progress = Farrier_V1_Progress(p) }
        if admin, let c = m.bmcCredential { bmcCredential = c }
        otherMacs = m.otherMACs ?? []
        rootDevice = m.rootDevice?.items ?? []
        if let hold = m.maintenance {
            var x = Farrier_V1_Maintenance()
            x.reason = hold.reason
            x.since = Google_Protobuf_Timestamp(date: hold.since)
            if admin { x.by = hold.by }
            maintenance = x
        }
        if let p = m.power {
            var x = Farrier_V1_PowerReading()
            x.state = p.state.rawValue
            if let read = p.read { x.read = Google_Protobuf_Timestamp(date: read) }
            // The BMC's error names its address: the fleet's plumbing, for admins only.
            if admin, let e = p.error { x.error = e }
            if let f = p.failingSince { x.failingSince = Google_Protobuf_Timestamp(date: f) }
            x.expected = p.expected?.rawValue ?? ""
            power = x
        }
        let since = admin ? Date.distantPast : (m.deployment?.allocated ?? .distantFuture)
        self.timeline = timeline.filter { $0.time >= since }.map { e in
            var t = Farrier_V1_TimelineEvent()
            t.time = Google_Protobuf_Timestamp(date: e.time)
            t.stage = e.stage.rawValue
            t.event = e.event
            t.detail = e.detail
            return t
        }
    }
}
