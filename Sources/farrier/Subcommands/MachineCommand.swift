import ArgumentParser
import FarrierAPI
import FarrierCore
import FarrierLab
import Foundation
import GRPCCore
import SwiftProtobuf
import Yams

struct MachineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "machine",
        abstract: "Machines: enroll, deploy, login, restart, debug (rescue), release.",
        subcommands: [
            List.self, Show.self, Enroll.self, Commission.self, Deploy.self, Release.self, Rescue.self, ExitRescue.self,
            Restart.self, Power.self, Console.self, SSH.self, Retry.self, Abort.self, Update.self, Delete.self,
            Watch.self,
            Bootdev.self, MaintenanceCommand.self, Adopt.self, RootDevice.self,
        ]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List machines.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Option(help: "Only machines in this state.") var state: MachineState?
        @Option(help: "Only machines with this tag (KEY=VALUE); repeat for more.") var tag: [String] = []
        @Option(help: "Only machines of this project (admin).") var project: String?
        @Option(help: "Only machines in this zone.") var zone: String?
        @Option(help: "Only machines of this site.") var site: String?

        func run() async throws {
            let printer = try MachineView.printer(output)
            let state = self.state?.rawValue
            let project = self.project ?? ""
            let zone = self.zone ?? ""
            let site = self.site ?? ""
            let tags = try parseTags(tag)
            let machines = try await rpc(client, idempotent: true) { c in
                var all: [Farrier_V1_Machine] = []
                var token = ""
                for _ in 0..<10_000 {  // bounded: 10 million machines at 1000 a page
                    var req = Farrier_V1_ListMachinesRequest()
                    req.pageSize = 1000
                    req.pageToken = token
                    req.state = state ?? ""
                    req.tags = tags
                    req.project = project
                    req.zone = zone
                    req.site = site
                    let page = try await c.machines.listMachines(req)
                    all += page.machines
                    token = page.nextPageToken
                    if token.isEmpty { break }
                }
                return all
            }
            try printer.list(machines.map(MachineView.init))
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Show a machine and its boot timeline."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var machine: String
        @Option(help: "Print the output of this test of the last run, TEST or TEST:DISK (admins).")
        var testOutput: String?

        func run() async throws {
            let printer = try MachineView.printer(output)
            let key = machine
            let withOutput = testOutput != nil
            let m = try await rpc(client, idempotent: true) { c in
                var req = Farrier_V1_GetMachineRequest()
                req.nameOrMac = key
                req.timelineLimit = 200
                req.testOutput = withOutput
                return try await c.machines.getMachine(req)
            }
            let view = MachineView(m)
            var outputs: [MachineView.TestResultView] = []
            if let wanted = testOutput {
                let parts = wanted.split(separator: ":", maxSplits: 1).map(String.init)
                outputs = (view.burnIn?.results ?? []).filter {
                    $0.name == parts.first && (parts.count == 1 || $0.target == parts[1])
                }
                if outputs.isEmpty {
                    throw CLIError("no result of test '\(wanted)' in the last run", status: ExitStatus.of(.notFound))
                }
            }
            try printer.one(view) {
                var lines = [
                    "Name:          \(view.name)",
                    "MAC:           \(view.mac)",
                    "State:         \(view.stateLine)" + (view.failedStep.map { " (failed step: \($0))" } ?? ""),
                    "Reason:        \(view.reason ?? "-")",
                    "Maintenance:   \(view.maintenanceDetail ?? "off")",
                    "Power:         \(view.powerDetail ?? "- (not read yet)")",
                    "Next boot:     \(view.nextBoot)",
                    "Project:       \(view.project ?? "-")",
                    "Address:       \(view.address ?? "-")",
                    "Architecture:  \(view.architecture)",
                    "Firmware:      \(view.firmware)",
                    "Site:          \(view.site ?? "- (the region's own)")",
                    "Zone/rack:     \(view.zone ?? "-") / \(view.rack ?? "-")",
                    "Tags:          \(tagsLine(view.tags))",
                    "Labels:        \(tagsLine(view.labels))",
                    "First seen:    \(iso(view.firstSeen))",
                    "Last seen:     \(iso(view.lastSeen)) (\(ago(view.lastSeen)))",
                    "BMC:           \(view.bmc ?? "-")"
                        + (view.bmcCredential.map { " (credential \($0))" } ?? ""),
                ]
                if let other = view.otherMACs, !other.isEmpty {
                    lines.insert("Other MACs:    \(other.joined(separator: ", "))", at: 2)
                }
                if let d = view.deployment {
                    lines.append(
                        "Deployment:    image \(d.image), hostname \(d.hostname), \(d.sshKeys) SSH key(s), by \(d.requestedBy)"
                            + (d.rootDevice.map { ", root device \($0.joined(separator: " "))" } ?? "")
                    )
                    let os =
                        switch (d.osTracked, d.osAwaiting, d.osReported) {
                        case (false, _, _): "not tracked (Farrier does not wait for it to report in)"
                        case (true, true, nil): "waiting for it to report in"
                        case (true, true, let t?): "waiting for it to report in again (last reported \(iso(t)))"
                        case (true, false, let t): "up: reported in at \(t.map(iso) ?? "-")"
                        }
                    lines.append("OS:            \(os)")
                    for (k, i) in (d.interfaces ?? []).enumerated() {
                        lines.append((k == 0 ? "Network:       " : "               ") + i.line)
                    }
                }
                lines.append(
                    "Root device:   "
                        + (view.rootDevice.map { $0.joined(separator: " ") }
                            ?? "default (the smallest disk of at least 4 GiB that holds the image)")
                )
                if let p = view.progressLine { lines.append("Progress:      \(p)") }
                if let inv = view.inventory {
                    lines.append(
                        "Inventory:     \(inv.vendor) \(inv.product) (serial \(inv.serial.isEmpty ? "-" : inv.serial)), \(inv.firmware)"
                    )
                    lines.append(
                        "  CPU:         \(inv.cpuModel), \(inv.cores) cores\(inv.threads.map { ", \($0) threads" } ?? ""); memory \(bytes(inv.memoryBytes))\(inv.numaNodes.map { "; \($0) NUMA node(s)" } ?? "")"
                    )
                    if inv.biosVendor != nil || inv.boardSerial != nil {
                        lines.append(
                            "  BIOS:        \(inv.biosVendor ?? "-") \(inv.biosVersion ?? "-") (\(inv.biosDate ?? "-")); board serial \(inv.boardSerial ?? "-"), chassis serial \(inv.chassisSerial ?? "-")"
                        )
                    }
                    for d in inv.disks {
                        lines.append(
                            "  Disk:        \(d.name) \(bytes(d.sizeBytes)) \(d.model) serial \(d.serial.isEmpty ? "-" : d.serial)\(d.wwn.map { " wwn \($0)" } ?? "")\(d.rotational ? " (rotational)" : "")"
                        )
                    }
                    for n in inv.nics {
                        lines.append(
                            "  NIC:         \(n.name) \(n.mac) \(n.driver) link \(n.link ? "up" : "down")\(n.speedMbps.map { " \($0) Mb/s" } ?? "")\(n.pciAddress.map { " at \($0)" } ?? "")\(n.firmware.map { " firmware \($0)" } ?? "")"
                        )
                        if let l = n.lldp {
                            lines.append(
                                "    LLDP:      switch \(l.systemName ?? l.chassisID) port \(l.portID)\(l.portDescription.map { " (\($0))" } ?? "")\(l.vlan.map { " vlan \($0)" } ?? "")\(l.managementAddress.map { " mgmt \($0)" } ?? "")"
                            )
                        }
                    }
                    if !inv.pciDevices.isEmpty {
                        lines.append(
                            "  PCI:         \(inv.pciDevices.count) devices; GPUs: \(inv.gpus.isEmpty ? "none" : inv.gpus.joined(separator: ", "))"
                        )
                    }
                }
                if let run = view.burnIn {
                    let runLines = run.lines
                    lines.append("Tests:         " + runLines[0])
                    lines += runLines.dropFirst()
                }
                if testOutput != nil {
                    for r in outputs {
                        lines.append(
                            "\nOutput of \(r.name)\(r.target.map { " " + $0 } ?? "") (\(r.outputBytes ?? 0) bytes in all):"
                        )
                        lines.append(r.output ?? "(none)")
                    }
                }
                let boot = Waterfall.lastStep(
                    view.timeline,
                    time: \.time,
                    stage: \.stage,
                    event: \.event,
                    detail: \.detail
                )
                if boot.count > 1, let first = boot.first, let last = boot.last {
                    lines.append(
                        String(
                            format: "\nLast boot, %.3f s (a bar runs from each event to the next):",
                            last.time.timeIntervalSince(first.time)
                        )
                    )
                    lines += Waterfall.render(boot.map { (time: $0.time, label: "\($0.stage) \($0.event)") }).map {
                        "  " + $0
                    }
                }
                lines.append("\nBoot timeline (+ time since the previous event):")
                var previous: Date?
                let rows = view.timeline.map { e -> [String] in
                    defer { previous = e.time }
                    let delta = previous.map { String(format: "+%.3fs", e.time.timeIntervalSince($0)) } ?? ""
                    return [iso(e.time), delta, e.stage, e.event, e.detail]
                }
                lines.append(
                    rows.isEmpty ? "  (no events)" : table(["TIME", "DELTA", "STAGE", "EVENT", "DETAIL"], rows)
                )
                return lines.joined(separator: "\n")
            }
        }
    }
}

struct MachineView: Codable {
    struct Event: Codable {
        var time: Date
        var stage: String
        var event: String
        var detail: String
    }
    struct ProgressView: Codable {
        var stage: String
        var bytesDone: Int64
        var bytesTotal: Int64
        var updated: Date
        init(_ p: Farrier_V1_Progress) {
            stage = p.stage
            bytesDone = p.bytesDone
            bytesTotal = p.bytesTotal
            updated = p.updated.date
        }
    }
    struct DeploymentView: Codable {
        var image: String
        var hostname: String
        var sshKeys: Int
        var requestedBy: String
        /// The deploy's own root device hints, if it gave any.
        var rootDevice: [String]?
        /// Whether Farrier waits for the installed OS to report in.
        var osTracked: Bool
        /// When it last did (nil: not yet).
        var osReported: Date?
        /// A report is awaited (the deploy's first, or the one after a restart).
        var osAwaiting: Bool
        /// The network plan's interfaces (nil: the boot NIC's DHCP alone).
        var interfaces: [InterfaceView]?
    }
    struct InterfaceView: Codable {
        var name: String
        var kind: String
        var mac: String?
        var members: [String]?
        var mode: String?
        var parent: String?
        var vlan: Int32?
        var mtu: Int32?
        var addresses: [String]?
        var network: String?
        var dhcp4: Bool
        init(_ i: Farrier_V1_DeployedInterface) {
            name = i.name
            kind = i.kind
            mac = i.mac.isEmpty ? nil : i.mac
            members = i.members.isEmpty ? nil : i.members
            mode = i.mode.isEmpty ? nil : i.mode
            parent = i.parent.isEmpty ? nil : i.parent
            vlan = i.vlan == 0 ? nil : i.vlan
            mtu = i.mtu == 0 ? nil : i.mtu
            addresses = i.addresses.isEmpty ? nil : i.addresses
            network = i.network.isEmpty ? nil : i.network
            dhcp4 = i.dhcp4
        }
        /// `bond0.100 vlan 100 on bond0 mtu 1400 198.18.100.10/24 (lab-vlan)`.
        var line: String {
            var parts = [name]
            switch kind {
            case "bond": parts += [mode ?? "", (members ?? []).joined(separator: "+")]
            case "vlan": parts.append("vlan \(vlan ?? 0) on \(parent ?? "-")")
            default: if let mac { parts.append(mac) }
            }
            if let mtu { parts.append("mtu \(mtu)") }
            if dhcp4 { parts.append("dhcp4") }
            parts += addresses ?? []
            if let network { parts.append("(\(network))") }
            return parts.joined(separator: " ")
        }
    }
    struct InventoryView: Codable {
        struct Disk: Codable {
            var name: String
            var sizeBytes: Int64
            var model: String
            var serial: String
            var rotational: Bool
            var wwn: String?
        }
        struct NIC: Codable {
            var name: String
            var mac: String
            var driver: String
            var link: Bool
            var speedMbps: Int?
            var pciAddress: String?
            var firmware: String?
            var lldp: LLDPNeighbour?
        }
        struct PCI: Codable {
            var address: String
            var vendor: String
            var device: String
            var pciClass: String
            var driver: String?
        }
        var cpuModel: String
        var cores: Int
        var memoryBytes: Int64
        var disks: [Disk]
        var nics: [NIC]
        var vendor: String
        var product: String
        var serial: String
        var firmware: String
        var threads: Int?
        var numaNodes: Int?
        var gpus: [String]
        var pciDevices: [PCI]
        var biosVendor: String?
        var biosVersion: String?
        var biosDate: String?
        var boardSerial: String?
        var chassisSerial: String?
    }

    var name: String
    var mac: String
    var state: String
    var phase: String?
    var reason: String?
    var failedStep: String?
    var nextBoot: String
    var project: String?
    var address: String?
    var architecture: String
    var firmware: String
    var site: String?
    var zone: String?
    var rack: String?
    var tags: [String: String]
    var labels: [String: String]
    var firstSeen: Date
    var lastSeen: Date
    /// The BMC URL (never with a password).
    var bmc: String?
    var deployment: DeploymentView?
    var progress: ProgressView?
    var inventory: InventoryView?
    var maintenance: MaintenanceView?
    var power: PowerView?
    /// The named BMC credential its password comes from (admins only).
    var bmcCredential: String?
    /// Its other NICs' MACs.
    var otherMACs: [String]?
    /// Its root device hints (`machine root-device`); nil: the default choice.
    var rootDevice: [String]?
    /// Its last commissioning test run.
    var burnIn: BurnInView?
    var timeline: [Event]

    struct BurnInView: Codable {
        var runID: String
        var tests: [String]
        var requestedBy: String
        var requested: Date
        var finished: Date?
        var results: [TestResultView]

        init(_ r: Farrier_V1_BurnInRun) {
            runID = r.runID
            tests = r.tests
            requestedBy = r.requestedBy
            requested = r.requested.date
            finished = r.hasFinished ? r.finished.date : nil
            results = r.results.map(TestResultView.init)
        }

        /// `run 3f2a1b0c by admin at …, 14m10s: 5 passed, 1 failed`, then one line a result.
        var lines: [String] {
            var counts: [String: Int] = [:]
            for r in results { counts[r.status, default: 0] += 1 }
            let order = ["passed", "failed", "timed-out", "skipped", "error"]
            let tally = (order + counts.keys.filter { !order.contains($0) }.sorted()).compactMap { status in
                counts[status].map { "\($0) \(status)" }
            }
            let took = finished.map { ", " + duration($0.timeIntervalSince(requested)) } ?? ""
            var out = [
                "run \(runID.prefix(8)) by \(requestedBy) at \(iso(requested))\(took): "
                    + (finished == nil
                        ? "running \(tests.joined(separator: ", "))"
                        : tally.isEmpty ? "no results" : tally.joined(separator: ", "))
            ]
            for r in results {
                let name = [r.version.map { "\(r.name)@\($0)" } ?? r.name, r.target].compactMap { $0 }.joined(
                    separator: " "
                )
                let numbers = r.metrics.sorted { $0.key < $1.key }.map { "\($0.key)=\(TestPlan.format($0.value))" }
                var line =
                    name.padding(toLength: max(18, name.count), withPad: " ", startingAt: 0) + " "
                    + r.status.padding(toLength: 10, withPad: " ", startingAt: 0)
                    + String(format: "%8.1f s", r.seconds)
                if !numbers.isEmpty { line += "  " + numbers.joined(separator: " ") }
                if !r.summary.isEmpty { line += "  (\(r.summary))" }
                out.append("  " + line)
            }
            return out
        }

        func duration(_ seconds: TimeInterval) -> String {
            let s = Int(seconds.rounded())
            return s >= 3600 ? "\(s / 3600)h\(s % 3600 / 60)m" : s >= 60 ? "\(s / 60)m\(s % 60)s" : "\(s)s"
        }
    }

    struct TestResultView: Codable {
        var name: String
        var version: Int?
        var target: String?
        var status: String
        var seconds: Double
        var exitCode: Int?
        var metrics: [String: Double]
        var summary: String
        /// Admins, with `show --test-output`.
        var output: String?
        var outputBytes: Int64?

        init(_ r: Farrier_V1_TestResult) {
            name = r.name
            version = r.version > 0 ? Int(r.version) : nil
            target = r.target.isEmpty ? nil : r.target
            status = r.status
            seconds = r.seconds
            exitCode = r.exitCode >= 0 ? Int(r.exitCode) : nil
            metrics = r.metrics
            summary = r.summary
            output = r.output.isEmpty ? nil : r.output
            outputBytes = r.outputBytes > 0 ? r.outputBytes : nil
        }
    }

    struct MaintenanceView: Codable {
        var reason: String
        var since: Date
        /// The admin token that set it (admins only).
        var by: String?
    }
    struct PowerView: Codable {
        /// on, off or unknown.
        var state: String
        /// When the BMC last answered.
        var read: Date?
        /// The last attempt's error (admins only).
        var error: String?
        var failingSince: Date?
        /// What the machine's state expects, when the reading differs.
        var expected: String?
    }

    init(_ m: Farrier_V1_Machine) {
        func opt(_ s: String) -> String? { s.isEmpty ? nil : s }
        name = m.name
        mac = m.mac
        state = m.state
        phase = opt(m.phase)
        reason = opt(m.reason)
        failedStep = opt(m.failedStep)
        nextBoot = m.nextBoot
        project = opt(m.project)
        address = opt(m.address)
        architecture = m.architecture
        firmware = m.firmware
        site = opt(m.site)
        zone = opt(m.zone)
        rack = opt(m.rack)
        tags = m.tags
        labels = m.labels
        firstSeen = m.firstSeen.date
        lastSeen = m.lastSeen.date
        bmc = m.hasBmc ? m.bmc.url : nil
        burnIn = m.hasBurnIn ? BurnInView(m.burnIn) : nil
        deployment =
            m.hasDeployment
            ? DeploymentView(
                image: m.deployment.image,
                hostname: m.deployment.hostname,
                sshKeys: Int(m.deployment.sshKeyCount),
                requestedBy: m.deployment.requestedBy,
                rootDevice: m.deployment.rootDevice.isEmpty ? nil : m.deployment.rootDevice,
                osTracked: m.deployment.osTracked,
                osReported: m.deployment.hasOsReported ? m.deployment.osReported.date : nil,
                osAwaiting: m.deployment.osAwaiting,
                interfaces: m.deployment.interfaces.isEmpty ? nil : m.deployment.interfaces.map(InterfaceView.init)
            ) : nil
        progress = m.hasProgress ? ProgressView(m.progress) : nil
        inventory =
            m.hasInventory
            ? InventoryView(
                cpuModel: m.inventory.cpuModel,
                cores: Int(m.inventory.cores),
                memoryBytes: m.inventory.memoryBytes,
                disks: m.inventory.disks.map {
                    .init(
                        name: $0.name,
                        sizeBytes: $0.sizeBytes,
                        model: $0.model,
                        serial: $0.serial,
                        rotational: $0.rotational,
                        wwn: opt($0.wwn)
                    )
                },
                nics: m.inventory.nics.map {
                    .init(
                        name: $0.name,
                        mac: $0.mac,
                        driver: $0.driver,
                        link: $0.link,
                        speedMbps: $0.speedMbps > 0 ? Int($0.speedMbps) : nil,
                        pciAddress: opt($0.pciAddress),
                        firmware: opt($0.firmware),
                        lldp: $0.hasLldp
                            ? LLDPNeighbour(
                                chassisID: $0.lldp.chassisID,
                                portID: $0.lldp.portID,
                                systemName: opt($0.lldp.systemName),
                                portDescription: opt($0.lldp.portDescription),
                                systemDescription: opt($0.lldp.systemDescription),
                                vlan: $0.lldp.vlan > 0 ? Int($0.lldp.vlan) : nil,
                                managementAddress: opt($0.lldp.managementAddress)
                            ) : nil
                    )
                },
                vendor: m.inventory.vendor,
                product: m.inventory.product,
                serial: m.inventory.serial,
                firmware: m.inventory.firmware,
                threads: m.inventory.threads > 0 ? Int(m.inventory.threads) : nil,
                numaNodes: m.inventory.numaNodes > 0 ? Int(m.inventory.numaNodes) : nil,
                gpus: m.inventory.gpus,
                pciDevices: m.inventory.pciDevices.map {
                    .init(
                        address: $0.address,
                        vendor: $0.vendor,
                        device: $0.device,
                        pciClass: $0.classCode,
                        driver: opt($0.driver)
                    )
                },
                biosVendor: opt(m.inventory.biosVendor),
                biosVersion: opt(m.inventory.biosVersion),
                biosDate: opt(m.inventory.biosDate),
                boardSerial: opt(m.inventory.boardSerial),
                chassisSerial: opt(m.inventory.chassisSerial)
            ) : nil
        bmcCredential = opt(m.bmcCredential)
        otherMACs = m.otherMacs.isEmpty ? nil : m.otherMacs
        rootDevice = m.rootDevice.isEmpty ? nil : m.rootDevice
        maintenance =
            m.hasMaintenance
            ? MaintenanceView(
                reason: m.maintenance.reason,
                since: m.maintenance.since.date,
                by: opt(m.maintenance.by)
            ) : nil
        power =
            m.hasPower
            ? PowerView(
                state: m.power.state,
                read: m.power.hasRead ? m.power.read.date : nil,
                error: opt(m.power.error),
                failingSince: m.power.hasFailingSince ? m.power.failingSince.date : nil,
                expected: opt(m.power.expected)
            ) : nil
        timeline = m.timeline.map { Event(time: $0.time.date, stage: $0.stage, event: $0.event, detail: $0.detail) }
    }

    /// `machine list`'s table; the ones not shown by default are for `--columns`.
    static let columns: [Column<MachineView>] = [
        Column("NAME") { $0.name }, Column("MAC") { $0.mac }, Column("STATE") { $0.stateLine },
        Column("PROJECT") { $0.project ?? "-" }, Column("ADDRESS") { $0.address ?? "-" },
        Column("ARCH") { $0.architecture }, Column("FIRMWARE") { $0.firmware }, Column("TAGS") { tagsLine($0.tags) },
        Column("POWER") { $0.powerLine }, Column("OS") { $0.osLine },
        Column("MAINTENANCE") { $0.maintenance?.reason ?? "-" },
        Column("LAST SEEN") { ago($0.lastSeen) }, Column("REASON", byDefault: false) { $0.reason ?? "-" },
        Column("SITE", byDefault: false) { $0.site ?? "-" }, Column("ZONE", byDefault: false) { $0.zone ?? "-" },
        Column("RACK", byDefault: false) { $0.rack ?? "-" },
        Column("LABELS", byDefault: false) { tagsLine($0.labels) }, Column("BMC", byDefault: false) { $0.bmc ?? "-" },
        Column("NEXT BOOT", byDefault: false) { $0.nextBoot },
        Column("PROGRESS", byDefault: false) { $0.progressLine ?? "-" },
        Column("IMAGE", byDefault: false) { $0.deployment?.image ?? "-" },
    ]

    static func printer(_ output: OutputOptions) throws -> Printer<MachineView> {
        try output.printer(columns, name: \.name)
    }

    /// Whether the installed OS has reported in: `up (2m ago)`, `waiting`, `not tracked`; `-`
    /// without a deployment.
    var osLine: String {
        guard let d = deployment else { return "-" }
        guard d.osTracked else { return "not tracked" }
        if d.osAwaiting { return d.osReported.map { "waiting (last up \(ago($0)))" } ?? "waiting" }
        return d.osReported.map { "up (\(ago($0)))" } ?? "waiting"
    }

    /// `on (2m ago)`, `off, expected on (10s ago)`, `unknown, BMC failing 5m`; `-` until read.
    var powerLine: String {
        guard let p = power else { return "-" }
        var line = p.state
        if let e = p.expected { line += ", expected \(e)" }
        if let f = p.failingSince { line += ", BMC failing since \(ago(f))" }
        if let r = p.read { line += " (\(ago(r)))" }
        return line
    }

    var powerDetail: String? {
        guard let p = power else { return nil }
        var line = p.state
        if let e = p.expected { line += " (DRIFT: its state expects \(e))" }
        if let r = p.read { line += ", read \(iso(r)) (\(ago(r)))" }
        if let f = p.failingSince {
            line += "; the BMC has not answered since \(iso(f))" + (p.error.map { ": \($0)" } ?? "")
        }
        return line
    }

    var maintenanceDetail: String? {
        guard let h = maintenance else { return nil }
        return "on since \(iso(h.since))\(h.by.map { " by \($0)" } ?? ""): \(h.reason)"
    }

    /// State with its phase, e.g. `deploying/agent`.
    var stateLine: String { phase.map { "\(state)/\($0)" } ?? state }

    var progressLine: String? {
        guard let p = progress else { return nil }
        if p.bytesTotal > 0 {
            let pct = Double(p.bytesDone) * 100 / Double(p.bytesTotal)
            return "\(p.stage) \(bytes(p.bytesDone)) / \(bytes(p.bytesTotal)) (\(String(format: "%.0f", pct))%)"
        }
        return p.stage
    }
}

func bytes(_ n: Int64) -> String { ByteCount.text(n) }

func tagsLine(_ t: [String: String]) -> String {
    t.isEmpty ? "-" : t.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
}

func iso(_ d: Date) -> String {
    d.formatted(
        .iso8601.year().month().day().dateSeparator(.dash).time(includingFractionalSeconds: true).timeSeparator(.colon)
    )
}

func ago(_ d: Date) -> String {
    let s = Int(Date().timeIntervalSince(d))
    if s < 60 { return "\(max(s, 0))s ago" }
    if s < 3600 { return "\(s / 60)m ago" }
    if s < 86400 { return "\(s / 3600)h ago" }
    return "\(s / 86400)d ago"
}
