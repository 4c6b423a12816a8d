import FarrierBMC
import FarrierControl
import FarrierCore
import Foundation
import GRPCCore
import Logging
import SwiftProtobuf

extension MachineAPI {
    public func updateMachine(
        request: Farrier_V1_UpdateMachineRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        let caller = try Caller.current()
        let m = try await visibleMachine(request.name)
        let adminFields =
            !request.setTags.isEmpty || !request.removeTags.isEmpty || request.hasZone || request.hasRack
            || !request.newName.isEmpty || request.hasSite
        if adminFields { _ = try Caller.admin("changing tags, zone, rack, site or name") }
        for (k, v) in request.setLabels {
            if let p = Validation.tagProblem(key: k, value: v) {
                throw RPCError(code: .invalidArgument, message: "label: \(p)")
            }
        }
        for (k, v) in request.setTags {
            if let p = Validation.tagProblem(key: k, value: v) { throw RPCError(code: .invalidArgument, message: p) }
        }
        for field in [request.zone, request.rack] where field.count > Validation.maxFieldLength {
            throw RPCError(
                code: .invalidArgument,
                message: "zone and rack are at most \(Validation.maxFieldLength) characters"
            )
        }
        if !request.newName.isEmpty, let p = Machine.nameProblem(request.newName) {
            throw RPCError(code: .invalidArgument, message: p)
        }
        let site = request.hasSite ? try await knownSite(request.site) : nil
        let updated = try await controller.record("updated by \(caller.tokenName)", machineID: m.id) { x in
            for (k, v) in request.setLabels { x.labels[k] = v }
            for k in request.removeLabels { x.labels[k] = nil }
            for (k, v) in request.setTags { x.tags[k] = v }
            for k in request.removeTags { x.tags[k] = nil }
            if request.hasZone { x.zone = request.zone }
            if request.hasRack { x.rack = request.rack }
            if request.hasSite { x.site = site }
            if !request.newName.isEmpty { x.name = request.newName }
            if x.labels.count > Validation.maxTags || x.tags.count > Validation.maxTags {
                throw RPCError(
                    code: .invalidArgument,
                    message: "a machine carries at most \(Validation.maxTags) tags and \(Validation.maxTags) labels"
                )
            }
        }
        return Farrier_V1_Machine(updated, timeline: [])
    }

    public func commissionMachine(
        request: Farrier_V1_CommissionMachineRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        _ = try Caller.admin("commissioning")
        let m = try await visibleMachine(request.name)
        let run = try await testRun(tests: request.tests, parameters: request.parameters)
        return try await transition(.commission, m, change: Self.opening(run))
    }

    public func deployMachine(
        request: Farrier_V1_DeployMachineRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        let caller = try Caller.current()
        // Project: members deploy into their own; admins must say which.
        let projectName: String
        if caller.isAdmin {
            // Admins name the project, or get the `default` one made at first start.
            let hasDefault = try await store.project(name: "default") != nil
            guard !request.project.isEmpty || hasDefault else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "project is required with an admin token (--project NAME)"
                )
            }
            projectName = request.project.isEmpty ? "default" : request.project
        } else {
            guard let own = caller.project else {
                throw RPCError(code: .permissionDenied, message: "token has no project")
            }
            if !request.project.isEmpty, request.project != own {
                throw RPCError(
                    code: .permissionDenied,
                    message: "a member token of project \(own) deploys only into \(own)"
                )
            }
            projectName = own
        }
        guard let project = try await store.project(name: projectName) else {
            throw RPCError(code: .notFound, message: "no project named '\(projectName)'")
        }
        // Image.
        guard !request.image.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "an image is required (--image NAME)")
        }
        let image = try await knownImage(request.image)
        // Keys, user-data, hostname, tags.
        guard request.sshKeys.count <= Validation.maxSSHKeys else {
            throw RPCError(code: .invalidArgument, message: "at most \(Validation.maxSSHKeys) SSH keys")
        }
        for (i, key) in request.sshKeys.enumerated() {
            let fields = key.split(separator: " ")
            let types = [
                "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
            ]
            guard fields.count >= 2, types.contains(String(fields[0])), Data(base64Encoded: String(fields[1])) != nil,
                key.count <= 16384, !key.contains("\n")
            else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "ssh key \(i + 1) is not an OpenSSH public key line (type base64 [comment])"
                )
            }
        }
        guard request.userData.utf8.count <= Validation.maxUserData else {
            throw RPCError(
                code: .invalidArgument,
                message: "user_data is \(request.userData.utf8.count) bytes; at most \(Validation.maxUserData)"
            )
        }
        try Self.checkDeployment(hostname: request.hostname, tags: request.tags, project: project, on: "deploy")
        let placement = try Self.placement(request.constraints)
        let hints = try Self.rootDeviceHints(request.rootDevice)
        let (networkRequest, networks) = try await networkPlan(request, caller: caller, project: project.name)
        if let a = placement.architecture, image.architecture != .unknown, a != image.architecture {
            throw RPCError(
                code: .invalidArgument,
                message: "image \(image.name) is \(image.architecture.rawValue), constraints ask \(a.rawValue)"
            )
        }
        @Sendable func fill(_ m: inout Machine) {
            m.project = project.name
            m.deployment = Deployment(
                image: image.name,
                imageSHA256: image.sha256,
                sshKeys: request.sshKeys,
                userData: request.userData,
                hostname: request.hostname.isEmpty ? m.name : request.hostname,
                requestedBy: caller.tokenName,
                tags: request.tags
            )
            m.deployment?.rootDevice = hints
            // `compatible` has resolved the same plan on the same machine.
            if !networkRequest.isEmpty {
                let plan = try? DeployedNetworking.resolve(
                    networkRequest,
                    machine: m,
                    networks: networks,
                    project: project.name
                ).get()
                m.deployment?.networking = plan
            }
        }
        @Sendable func compatible(_ m: Machine) -> String? {
            // A quick-wiped machine still holds its last project's data: only that project gets it.
            if let owner = m.dirtyFor, owner != project.name {
                return
                    "machine \(m.name) may still hold another project's data (it was quick-wiped); an admin can commission it, which wipes it fully"
            }
            if image.architecture != .unknown, m.architecture != .unknown, m.architecture != image.architecture {
                return
                    "image \(image.name) is \(image.architecture.rawValue) but machine \(m.name) is \(m.architecture.rawValue)"
            }
            if image.firmware != .unknown, m.firmware != .unknown, m.firmware != image.firmware {
                return
                    "image \(image.name) needs \(image.firmware.rawValue) but machine \(m.name) boots \(m.firmware.rawValue)"
            }
            // A member may deploy a pool machine it cannot see: it is told no more than that.
            if let why = Self.rootDeviceProblem(m, hints: hints ?? m.rootDevice, image: image, detailed: caller.isAdmin)
            {
                return why
            }
            if !networkRequest.isEmpty,
                case .failure(let p) = DeployedNetworking.resolve(
                    networkRequest,
                    machine: m,
                    networks: networks,
                    project: project.name
                )
            {
                // A member deploying a pool machine by name learns no more of its NICs than this.
                return caller.canSee(m) ? p.description : "machine \(m.name)'s NICs do not fit the network plan"
            }
            return nil
        }
        let deployed: Machine
        if !request.name.isEmpty {
            // By name: a pool machine (ready, unallocated) or one of the caller's.
            guard let m = try await store.machine(nameOrMAC: request.name),
                caller.canSee(m) || (m.project == nil && m.state == .ready)
            else { throw RPCError(code: .notFound, message: "no machine named or with MAC '\(request.name)'") }
            if let why = compatible(m) { throw RPCError(code: .failedPrecondition, message: why) }
            deployed = try await controller.apply(.deploy, machineID: m.id) { x in
                guard x.project == nil else {
                    throw ControlError(
                        .conflict,
                        "machine \(x.name) is allocated to project \(x.project ?? ""); release it first"
                    )
                }
                if let why = compatible(x) { throw ControlError(.conflict, why) }
                fill(&x)
            }
        } else {
            // A deploy's root device hints are a constraint: only a machine whose inventory
            // lists a matching disk is picked (one never commissioned lists none).
            let chosen = try await controller.allocate(
                { placement.matches($0) && compatible($0) == nil && (hints == nil || $0.inventory != nil) },
                fill: fill
            )
            guard let chosen else {
                throw RPCError(
                    code: .resourceExhausted,
                    message: "no ready machine in the pool meets the constraints \(Self.describe(placement))"
                        + (hints.map {
                            " with a disk matching the root device hints \($0.items.joined(separator: " "))"
                        } ?? "")
                )
            }
            deployed = chosen
        }
        logger.info(
            "deploy",
            metadata: ["machine": "\(deployed.name)", "project": "\(project.name)", "image": "\(image.name)"]
        )
        return Farrier_V1_Machine(deployed, timeline: [])
    }

    /// A deploy's network plan as asked (`bonds`, `networks`, `mtus`), and the networks it
    /// names, each open to the project (a closed or missing one is refused here, before any
    /// machine is chosen, as one that does not exist).
    func networkPlan(
        _ request: Farrier_V1_DeployMachineRequest,
        caller: Principal,
        project: String
    ) async throws -> (NetworkRequest, [String: Network]) {
        let asked = request.bonds.count + request.networks.count + request.mtus.count
        guard asked <= 64, (request.bonds + request.networks + request.mtus).allSatisfy({ $0.count <= 512 }) else {
            throw RPCError(
                code: .invalidArgument,
                message: "at most 64 bonds, networks and MTUs, of 512 characters each"
            )
        }
        let parsed: NetworkRequest
        switch NetworkRequest.parse(bonds: request.bonds, networks: request.networks, mtus: request.mtus) {
        case .success(let r): parsed = r
        case .failure(let p): throw RPCError(code: .invalidArgument, message: p.description)
        }
        var networks: [String: Network] = [:]
        for (i, a) in parsed.attachments.enumerated() where networks[a.network] == nil {
            guard let n = try await store.network(name: a.network), n.isOpen(to: project) else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "networks[\(i)].network: no network named '\(a.network)'"
                )
            }
            networks[n.name] = n
        }
        return (parsed, networks)
    }

    static func placement(_ c: Farrier_V1_Constraints) throws -> Placement {
        var p = Placement()
        if !c.architecture.isEmpty {
            guard let a = Architecture(rawValue: c.architecture) else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "unknown architecture '\(c.architecture)'; valid: x86_64, arm64, i386, arm32"
                )
            }
            p.architecture = a
        }
        if !c.firmware.isEmpty {
            guard let f = Firmware(rawValue: c.firmware), f != .unknown else {
                throw RPCError(code: .invalidArgument, message: "unknown firmware '\(c.firmware)'; valid: bios, uefi")
            }
            p.firmware = f
        }
        guard c.minCores >= 0, c.minMemoryBytes >= 0, c.minDiskBytes >= 0, c.minThreads >= 0, c.minGpus >= 0 else {
            throw RPCError(
                code: .invalidArgument,
                message: "minimum cores, threads, GPUs, memory and disk must not be negative"
            )
        }
        p.minThreads = Int(c.minThreads)
        p.minGPUs = Int(c.minGpus)
        p.minCores = Int(c.minCores)
        p.minMemoryBytes = c.minMemoryBytes
        p.minDiskBytes = c.minDiskBytes
        for (k, v) in c.tags {
            if let problem = Validation.tagProblem(key: k, value: v) {
                throw RPCError(code: .invalidArgument, message: problem)
            }
        }
        p.tags = c.tags
        p.zone = c.zone.isEmpty ? nil : c.zone
        return p
    }

    /// The image a deploy or an adoption names; an unknown one is NotFound, listing the known.
    func knownImage(_ name: String) async throws -> ImageInfo {
        guard let image = try await store.image(name: name) else {
            let known = try await store.images().map(\.name)
            throw RPCError(
                code: .notFound,
                message:
                    "no image named '\(name)'; known: \(known.isEmpty ? "none (farrier image add NAME FILE)" : known.joined(separator: ", "))"
            )
        }
        return image
    }

    /// A deployment's hostname and tags, and the project's required tags among them (a deploy
    /// and an adoption alike; `on` names which in the refusal).
    static func checkDeployment(hostname: String, tags: [String: String], project: Project, on: String) throws {
        if !hostname.isEmpty, let p = Machine.nameProblem(hostname) {
            throw RPCError(code: .invalidArgument, message: "hostname: \(p)")
        }
        for (k, v) in tags {
            if let p = Validation.tagProblem(key: k, value: v) { throw RPCError(code: .invalidArgument, message: p) }
        }
        let missing = project.requiredTags.filter { (tags[$0] ?? "").isEmpty }
        if !missing.isEmpty {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "project \(project.name) requires the tags \(missing.joined(separator: ", ")) on every \(on); add --tag \(missing[0])=VALUE"
            )
        }
    }

    static func describe(_ p: Placement) -> String {
        var parts: [String] = []
        if let a = p.architecture { parts.append("arch=\(a.rawValue)") }
        if let f = p.firmware { parts.append("firmware=\(f.rawValue)") }
        if p.minCores > 0 { parts.append("cores>=\(p.minCores)") }
        if p.minThreads > 0 { parts.append("threads>=\(p.minThreads)") }
        if p.minGPUs > 0 { parts.append("gpus>=\(p.minGPUs)") }
        if p.minMemoryBytes > 0 { parts.append("memory>=\(p.minMemoryBytes)") }
        if p.minDiskBytes > 0 { parts.append("disk>=\(p.minDiskBytes)") }
        if let z = p.zone { parts.append("zone=\(z)") }
        for (k, v) in p.tags.sorted(by: { $0.key < $1.key }) { parts.append("\(k)=\(v)") }
        return parts.isEmpty ? "(none)" : parts.joined(separator: " ")
    }

    public func releaseMachine(
        request: Farrier_V1_ReleaseMachineRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        let machine = try await visibleMachine(request.name)
        var policy = WipeMode.full
        if let p = machine.project, let project = try await store.project(name: p) { policy = project.wipePolicy }
        let mode = try Self.releaseWipe(requested: request.wipe, project: machine.project, policy: policy)
        return try await transition(.release, machine) { x in x.deployment?.wipe = mode }
    }

    /// The wipe a release runs: the project's policy unless the request names one. A quick
    /// wipe leaves the tenant's data for the next one, so only a project whose policy is quick
    /// may ask for it; full may always be asked for.
    static func releaseWipe(requested: String, project: String?, policy: WipeMode) throws -> WipeMode {
        if requested.isEmpty { return policy }
        guard let mode = WipeMode(rawValue: requested) else {
            throw RPCError(
                code: .invalidArgument,
                message:
                    "unknown wipe '\(requested)'; valid: full, quick (only where the project's wipe policy is quick)"
            )
        }
        if mode == .quick, policy != .quick {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "a quick wipe leaves this tenant's data on the disk for the next one; \(project.map { "project '\($0)'" } ?? "a machine in no project") has the full wipe policy (an admin can create a project with --wipe-policy quick, unsafe between tenants)"
            )
        }
        return mode
    }

    public func rescueMachine(request: Farrier_V1_MachineRef, context: ServerContext) async throws -> Farrier_V1_Machine
    {
        try await transition(.rescue, try await visibleMachine(request.name))
    }

    public func exitRescueMachine(
        request: Farrier_V1_MachineRef,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        try await transition(.exitRescue, try await visibleMachine(request.name))
    }

    public func retryMachine(request: Farrier_V1_MachineRef, context: ServerContext) async throws -> Farrier_V1_Machine
    {
        try await transition(.retry, try await visibleMachine(request.name))
    }

    public func abortMachine(request: Farrier_V1_MachineRef, context: ServerContext) async throws -> Farrier_V1_Machine
    {
        try await transition(.abort, try await visibleMachine(request.name))
    }

    public func restartMachine(
        request: Farrier_V1_MachineRef,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        let m = try await visibleMachine(request.name)
        // Restart is the lifecycle's power cycle: in maintenance, only an admin's `machine power`.
        if let hold = m.maintenance {
            throw RPCError(code: .failedPrecondition, message: Controller.inMaintenance(m.name, hold))
        }
        guard m.state == .deployed || m.state == .rescue else {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "machine \(m.name) is \(m.state.rawValue); restart is for deployed or rescue machines (use power for others)"
            )
        }
        let (_, bmc) = try await bmc(for: request.name)
        // A deployed OS reports in again once it is up, and `restart --wait` waits for that:
        // awaited from before the cycle, so a quick new boot's report is not missed. Put back
        // if the BMC fails (no new boot comes).
        let tracked = m.state == .deployed && m.deployment?.os != nil
        let before = m.deployment?.os
        if tracked { try await setAwaitingOS(m.id, true) }
        do {
            // A deployed machine boots its disk: make sure of it before cycling.
            if m.state == .deployed {
                try await bmc.setBootOverride(BootOverride(device: .disk, persistent: true, efi: m.firmware == .uefi))
            }
            if try await bmc.powerState() == .off { try await bmc.power(.on) } else { try await bmc.power(.cycle) }
        } catch {
            // Put back only what this restart changed: not a report another restart awaits, and
            // not once a new boot has reported in meanwhile.
            if tracked, before?.awaiting == false {
                try? await setAwaitingOS(m.id, false, unlessBootChangedFrom: before?.bootID)
            }
            throw Self.rpcError(error, machine: m.name)
        }
        let caller = try Caller.current()
        return Farrier_V1_Machine(
            try await controller.record("restarted by \(caller.tokenName)", machineID: m.id),
            timeline: []
        )
    }

    /// Marks a deployed machine's OS report as awaited (or not), without an event; with
    /// `unlessBootChangedFrom`, only while the last reported boot is still that one.
    func setAwaitingOS(_ id: String, _ awaiting: Bool, unlessBootChangedFrom boot: String?? = nil) async throws {
        _ = try await store.update(machineID: id, fence: nil) { x in
            guard x.state == .deployed, x.deployment?.os != nil else { return [] }
            if let boot, x.deployment?.os?.bootID != boot { return [] }
            x.deployment?.os?.awaiting = awaiting
            return []
        }
    }

    public func adoptMachine(
        request: Farrier_V1_AdoptMachineRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        let caller = try Caller.admin("adopting a machine")
        let m = try await visibleMachine(request.name)
        guard m.state == .enrolled else {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "machine \(m.name) is \(m.state.rawValue); only an enrolled machine (never commissioned: its disk untouched) can be adopted"
            )
        }
        if let hold = m.maintenance {
            throw RPCError(code: .failedPrecondition, message: Controller.inMaintenance(m.name, hold))
        }
        guard !request.project.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "a project is required (--project NAME)")
        }
        guard let project = try await store.project(name: request.project) else {
            throw RPCError(code: .notFound, message: "no project named '\(request.project)'")
        }
        guard !request.image.isEmpty else {
            throw RPCError(
                code: .invalidArgument,
                message: "an image is required (--image NAME): what the machine runs"
            )
        }
        let image = try await knownImage(request.image)
        try Self.checkDeployment(
            hostname: request.hostname,
            tags: request.tags,
            project: project,
            on: "machine it holds"
        )
        // Verified through the BMC before anything is recorded: it answers, the machine runs,
        // and from now on it boots its disk (also when the network offers it a script).
        let (_, bmc) = try await bmc(for: request.name)
        let power: PowerState
        do {
            power = try await bmc.powerState()
            if power == .on {
                try await bmc.setBootOverride(BootOverride(device: .disk, persistent: true, efi: m.firmware == .uefi))
            }
        } catch {
            throw Self.rpcError(error, machine: m.name)
        }
        guard power == .on else {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "machine \(m.name)'s BMC says its power is \(power.rawValue); adopt a running machine (farrier machine power \(m.name) on, once it boots its disk)"
            )
        }
        let now = Date()
        let adopted = try await controller.apply(.adopt, machineID: m.id, guardGeneration: m.generation) { x in
            x.project = project.name
            var d = Deployment(
                image: image.name,
                imageSHA256: image.sha256,
                sshKeys: [],
                userData: "",
                hostname: request.hostname.isEmpty ? x.name : request.hostname,
                requestedBy: caller.tokenName,
                tags: request.tags,
                wipe: project.wipePolicy
            )
            d.allocated = now
            // Nothing of Farrier's runs in an adopted OS: it never reports in.
            d.os = nil
            x.deployment = d
            x.power = PowerReading(state: .on, read: now)
        }
        logger.info(
            "machine adopted",
            metadata: ["machine": "\(m.name)", "project": "\(project.name)", "image": "\(image.name)"]
        )
        return Farrier_V1_Machine(adopted, timeline: [])
    }

    public func setRootDevice(
        request: Farrier_V1_SetRootDeviceRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        let caller = try Caller.admin("setting root device hints")
        let m = try await visibleMachine(request.name)
        let hints = try Self.rootDeviceHints(request.hints)
        let message =
            hints.map { "root device hints set to \($0.items.joined(separator: " ")) by \(caller.tokenName)" }
            ?? "root device hints cleared by \(caller.tokenName)"
        let updated = try await controller.record(message, machineID: m.id) { x in
            // Checked against the inventory in the write's own transaction (a commissioning may
            // have just ended); a refusal is FailedPrecondition and writes nothing.
            if let why = Self.rootDeviceProblem(x, hints: hints, image: nil) { throw ControlError(.conflict, why) }
            x.rootDevice = hints
        }
        return Farrier_V1_Machine(updated, timeline: [])
    }

    /// Root device hints from their text form; InvalidArgument names the first bad one. None: nil.
    static func rootDeviceHints(_ texts: [String]) throws -> RootDeviceHints? {
        guard !texts.isEmpty else { return nil }
        do {
            return try RootDeviceHints.parse(texts)
        } catch {
            throw RPCError(code: .invalidArgument, message: error.description)
        }
    }

    /// Why the machine's disks, as its inventory lists them, leave no disk for these hints (and
    /// a raw image's bytes); nil when one is left, without hints, or before any inventory.
    static func rootDeviceProblem(
        _ m: Machine,
        hints: RootDeviceHints?,
        image: ImageInfo?,
        detailed: Bool = true
    ) -> String? {
        guard let hints, !hints.isEmpty, let inventory = m.inventory else { return nil }
        let bytes = image.map { $0.format == .raw ? $0.size : 0 } ?? 0
        switch RootDeviceHints.choose(inventory.disks, hints: hints, imageBytes: bytes) {
        case .success: return nil
        case .failure(let why):
            // A member is told neither the disks nor the hints, nor which of them failed.
            return detailed
                ? "machine \(m.name): \(why.description)"
                : "machine \(m.name) has no disk for this deploy's root device hints"
        }
    }

    public func setMaintenance(
        request: Farrier_V1_SetMaintenanceRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        let caller = try Caller.admin("maintenance")
        let m = try await visibleMachine(request.name)
        var hold: Maintenance?
        if request.on {
            if let p = Maintenance.reasonProblem(request.reason) {
                throw RPCError(code: .invalidArgument, message: p)
            }
            // Changing only the reason keeps when it began.
            hold = Maintenance(reason: request.reason, since: m.maintenance?.since ?? Date(), by: caller.tokenName)
        } else if !request.reason.isEmpty {
            throw RPCError(code: .invalidArgument, message: "a reason is for turning maintenance on, not off")
        }
        return Farrier_V1_Machine(
            try await controller.setMaintenance(machineID: m.id, hold, by: caller.tokenName),
            timeline: []
        )
    }

    public func deleteMachine(
        request: Farrier_V1_MachineRef,
        context: ServerContext
    ) async throws -> Farrier_V1_DeleteMachineResponse {
        _ = try Caller.admin("deleting a machine")
        let m = try await visibleMachine(request.name)
        if let p = m.project {
            throw RPCError(
                code: .failedPrecondition,
                message: "machine \(m.name) is allocated to project \(p); release it first"
            )
        }
        if Lifecycle.steps.contains(m.state) {
            throw RPCError(
                code: .failedPrecondition,
                message: "machine \(m.name) is \(m.state.rawValue); wait for it, or abort it once failed"
            )
        }
        // Deleted and found again by DHCP, it would come back clean: a disk that may hold a
        // tenant's data is wiped first.
        if m.diskDirty {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "machine \(m.name) may still hold a tenant's data; commission it (which wipes it) before deleting it"
            )
        }
        try await controller.delete(machineID: m.id)
        logger.info("machine deleted", metadata: ["machine": "\(m.name)"])
        return Farrier_V1_DeleteMachineResponse()
    }

    public func watchEvents(
        request: Farrier_V1_WatchEventsRequest,
        response: RPCWriter<Farrier_V1_MachineEvent>,
        context: ServerContext
    ) async throws {
        let caller = try Caller.current()
        let machineID = request.name.isEmpty ? nil : try await visibleMachine(request.name).id
        guard request.afterID >= -1 else {
            throw RPCError(
                code: .invalidArgument,
                message: "after_id must be an event id, 0 (only new events) or -1 (every stored event first)"
            )
        }
        let (wakeups, cancel) = controller.hub.subscribe()
        defer { cancel() }
        // Event ids start at 1: -1 replays from the first.
        var last = request.afterID == 0 ? try await store.lastEventID(machineID: nil) : max(0, request.afterID)
        // Read what is stored after `last`, then sleep until the next commit; a wake-up that
        // races a read only causes one more (empty) read. Ends when the client cancels.
        var iterator = wakeups.makeAsyncIterator()
        try await withRPCCancellationHandler {
            while !Task.isCancelled {
                for _ in 0..<1000 {  // bounded catch-up per wake-up
                    let batch = try await store.events(after: last, machineID: machineID, limit: 500)
                    for e in batch where caller.isAdmin || (e.project != nil && e.project == caller.project) {
                        try await response.write(Farrier_V1_MachineEvent(e))
                    }
                    last = batch.last?.id ?? last
                    if batch.count < 500 { break }
                }
                guard await iterator.next() != nil else { return }
            }
        } onCancelRPC: {
            cancel()
        }
    }
}

extension Farrier_V1_MachineEvent {
    init(_ e: MachineEvent) {
        self.init()
        id = e.id
        time = Google_Protobuf_Timestamp(date: e.time)
        machine = e.machine
        kind = e.kind.rawValue
        state = e.state.rawValue
        phase = e.phase == .none ? "" : e.phase.rawValue
        message = e.message
        project = e.project ?? ""
        if let p = e.progress { progress = Farrier_V1_Progress(p) }
    }
}
