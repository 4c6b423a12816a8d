import Foundation
@_exported import WireSupport

/// Firmware a machine boots with, as learned from DHCP option 93 or iPXE's `${platform}`.
public enum Firmware: String, Codable, Sendable, CaseIterable {
    case bios
    case uefi
    case unknown
}

/// CPU architecture, as iPXE names it (`${buildarch}`), learned from DHCP option 93.
public enum Architecture: String, Codable, Sendable, CaseIterable {
    case x86_64
    case i386
    case arm64
    case arm32
    case unknown
}

/// A lifecycle state (ARCHITECTURE.md: discovered ─enroll─▶ enrolled ─commission─▶ …). Later
/// issues add the rest; a MAC first seen by network boot is `discovered`, and a machine an
/// operator gave its BMC is `enrolled`, whether or not it has booted yet.
public enum MachineState: String, Codable, Sendable, CaseIterable {
    case discovered
    case enrolled
    case commissioning
    case ready
    case deploying
    case deployed
    case releasing
    case rescuing
    case rescue
    case exitingRescue = "exiting-rescue"
    case failed
}

/// A physical (or lab) machine known to Farrier.
public struct Machine: Codable, Sendable, Hashable {
    public var id: String
    public var name: String
    public var mac: MACAddress
    public var architecture: Architecture
    public var firmware: Firmware
    public var state: MachineState
    public var firstSeen: Date
    public var lastSeen: Date
    /// The BMC, once enrolled (its password lives apart, encrypted).
    public var bmc: BMCReference?
    /// For `failed`: the step that failed. For a step in progress, `nil`.
    public var failedStep: MachineState?
    /// Why the machine is in its state (the last transition's reason, shown to users).
    public var reason: String = ""
    /// The project the machine is allocated to (on deploy), or nil while in the pool.
    public var project: String?
    /// Free key=value tags, used for placement (`deploy --tag k=v`).
    public var tags: [String: String] = [:]
    /// Free key=value labels, for people and tools; never used for placement.
    public var labels: [String: String] = [:]
    public var zone: String = ""
    public var rack: String = ""
    /// The site whose boot network it is on (issue 16); nil: the region's own.
    public var site: String?
    /// What the agent found at commissioning.
    public var inventory: Inventory?
    /// What was asked at deploy: image, keys, user-data. Kept while deployed.
    public var deployment: Deployment?
    /// Where the reconciler is within the current step (see `StepPhase`).
    public var phase: StepPhase = .none
    /// Bumped at every transition into a step: the agent token is bound to it, so a token
    /// from an earlier step (or an earlier attempt) is worthless.
    public var generation: Int = 0
    /// When the current step began, for its timeout.
    public var stepStarted: Date?
    /// The agent's last progress report for the current step.
    public var progress: StepProgress?
    /// The disk may hold a tenant's data (see `Lifecycle`): set when a deploy begins, cleared
    /// only by a completed wipe.
    public var diskDirty: Bool = false
    /// After a quick wipe (a project's unsafe-between-tenants policy): the project whose data
    /// may remain. Such a machine is ready, still dirty, and goes only to that project until a
    /// full wipe (commissioning it) cleans it.
    public var dirtyFor: String?
    /// The project a completed release took the machine from, until it next changes state: that
    /// project's members can still read how their release ended (`machine show`, and so
    /// `release --wait`), and nothing more.
    public var releasedFrom: String?
    /// Bumped each time Farrier powers the machine on or cycles it for a step: each is a new
    /// boot, whose agent must say hello afresh. The agent token is bound to it.
    public var agentBoot: Int = 0
    /// SHA-256 (hex) of the nonce the first agent of this boot said hello with: that agent,
    /// and only it, holds the boot's token. Nil until then.
    public var agentNonce: String?
    /// Set while an admin holds the machine in maintenance: the reconciler and the power sync
    /// leave it alone, and it is not allocatable.
    public var maintenance: Maintenance?
    /// The power sync's last reading of the BMC (nil until the first).
    public var power: PowerReading?
    /// The named BMC credential its BMC password comes from (`bmc credential add`), if any:
    /// replacing that credential's password re-seals this machine's copy.
    public var bmcCredential: String?
    /// Its other NICs' MACs (bulk enrollment's `macs`, after the first, which it boots from).
    public var otherMACs: [String]?
    /// An admin's root device hints: which disk a deploy writes to (a deploy's own hints win).
    public var rootDevice: RootDeviceHints?
    /// The trace of its current (or last) step: every replica adds its part of the step to it.
    public var trace: StepTrace?
    /// Its last commissioning test run (burn-in): what was asked and what came back.
    public var burnIn: BurnIn?
    /// Seconds the current step's tests add to its configured time limit (a commissioning
    /// with tests: `TestPlan.allowance`); nil: none.
    public var testAllowance: Int?

    public init(
        id: String = UUID().uuidString.lowercased(),
        name: String,
        mac: MACAddress,
        architecture: Architecture,
        firmware: Firmware,
        state: MachineState = .discovered,
        firstSeen: Date,
        lastSeen: Date,
        bmc: BMCReference? = nil
    ) {
        self.bmc = bmc
        self.id = id
        self.name = name
        self.mac = mac
        self.architecture = architecture
        self.firmware = firmware
        self.state = state
        self.firstSeen = firstSeen
        self.lastSeen = lastSeen
    }

    /// Names are DNS labels: lower-case letters, digits and '-', 1–63 characters, not starting or
    /// ending with '-'. Returns why a name is not valid, or nil.
    public static func nameProblem(_ name: String) -> String? {
        if name.isEmpty { return "a machine name is required" }
        if name.count > 63 { return "machine name '\(name)' is longer than 63 characters" }
        if name.hasPrefix("-") || name.hasSuffix("-") { return "machine name '\(name)' must not start or end with '-'" }
        if !name.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }) {
            return "machine name '\(name)' may only contain lower-case letters, digits and '-'"
        }
        return nil
    }

    /// The lifecycle view of the machine.
    public var status: Lifecycle.Status {
        get { Lifecycle.Status(state: state, failedStep: failedStep, reason: reason, diskDirty: diskDirty) }
        set {
            state = newValue.state
            failedStep = newValue.failedStep
            reason = newValue.reason
            diskDirty = newValue.diskDirty
        }
    }

    /// The name a discovered machine gets until an operator names it: `m-` and the MAC's hex digits.
    public static func defaultName(for mac: MACAddress) -> String {
        "m-" + mac.formatted(separator: "-").replacingOccurrences(of: "-", with: "")
    }
}

/// An admin's hold on a machine (`farrier machine maintenance on`).
public struct Maintenance: Codable, Sendable, Hashable {
    public var reason: String
    public var since: Date
    /// The token name of the admin who set it.
    public var by: String

    public init(reason: String, since: Date, by: String) {
        self.reason = reason
        self.since = since
        self.by = by
    }

    /// A reason is required, one line, at most 256 characters. Returns why not, or nil.
    public static func reasonProblem(_ reason: String) -> String? {
        if reason.trimmingCharacters(in: .whitespaces).isEmpty { return "maintenance needs a reason (--reason)" }
        if reason.count > 256 { return "a maintenance reason is at most 256 characters" }
        if reason.contains(where: { $0.isNewline }) { return "a maintenance reason is one line" }
        return nil
    }
}

/// What a BMC last said about a machine's power, as the power sync read it.
public struct PowerReading: Codable, Sendable, Hashable {
    public enum State: String, Codable, Sendable, CaseIterable {
        case on
        case off
        case unknown
    }
    /// The last state the BMC answered (unknown until it has answered once).
    public var state: State
    /// When the BMC last answered (nil: never).
    public var read: Date?
    /// The last attempt's error; nil when it answered.
    public var error: String?
    /// Since when the BMC has failed to answer; nil while it answers.
    public var failingSince: Date?
    /// What the machine's state expects, when the reading differs from it (drift).
    public var expected: State?

    public init(
        state: State,
        read: Date?,
        error: String? = nil,
        failingSince: Date? = nil,
        expected: State? = nil
    ) {
        self.state = state
        self.read = read
        self.error = error
        self.failingSince = failingSince
        self.expected = expected
    }

    /// The power a machine in `state` should have, if its state says: a deployed machine (or
    /// one in rescue) runs; a ready one, wiped and powered off by its last step, is off. Others
    /// (discovered, enrolled before Farrier touched it, failed, in a step) expect nothing.
    public static func expected(for state: MachineState) -> State? {
        switch state {
        case .deployed, .rescue: .on
        case .ready: .off
        default: nil
        }
    }
}

extension MACAddress: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let mac = MACAddress(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "bad MAC \(text)")
            )
        }
        self = mac
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// What the machine's firmware told us at DHCP time: its architecture and firmware type.
public struct ClientPlatform: Hashable, Sendable {
    public var architecture: Architecture
    public var firmware: Firmware

    public init(architecture: Architecture, firmware: Firmware) {
        self.architecture = architecture
        self.firmware = firmware
    }

    /// Maps an RFC 4578 / IANA processor architecture type (DHCP option 93).
    public init(optionArchitecture value: UInt16) {
        switch value {
        // x86 BIOS; iPXE's undionly runs 32-bit but the CPU is not known.
        case 0: self.init(architecture: .x86_64, firmware: .bios)
        case 6, 15: self.init(architecture: .i386, firmware: .uefi)
        case 7, 9, 16: self.init(architecture: .x86_64, firmware: .uefi)
        case 10, 18: self.init(architecture: .arm32, firmware: .uefi)
        case 11, 19: self.init(architecture: .arm64, firmware: .uefi)
        default: self.init(architecture: .unknown, firmware: .unknown)
        }
    }

    /// Maps iPXE's `${platform}` and `${buildarch}`.
    public init(ipxePlatform: String?, buildArch: String?) {
        let firmware: Firmware =
            switch ipxePlatform {
            case "pcbios": .bios
            case "efi": .uefi
            default: .unknown
            }
        let arch: Architecture =
            switch buildArch {
            case "x86_64": .x86_64
            case "i386": .i386
            case "arm64": .arm64
            case "arm32": .arm32
            default: .unknown
            }
        self.init(architecture: arch, firmware: firmware)
    }
}

/// The reconciler's position inside a step. Each phase's action is idempotent and the phase is
/// committed before the action runs, so a restart repeats at most the one action in flight.
public enum StepPhase: String, Codable, Sendable, CaseIterable {
    /// Not in a step.
    case none
    /// Waiting for a slot: deploys and wipes run at most N at a time.
    case queued
    /// Set the next boot (BMC boot device) and power the machine on or cycle it.
    case boot
    /// Wait for the agent: it said hello and works; the agent's report ends the phase.
    case agent
    /// The agent finished; apply the final boot/power (disk and cycle, or power off).
    case finish
    /// The machine boots its disk; the step ends when the installed OS reports in (its
    /// cloud-init has run and SSH answers), or fails at the step's timeout.
    case os
}

/// What the reconciler's scan reads of a machine in a step: enough to time the step out, admit
/// it or start its worker, and no more. (At 10 000 machines in steps, decoding whole machines,
/// inventories and all, on every scan was most of a replica's CPU and its peak memory.) The
/// keys are `Machine`'s, so a store can decode it from the same JSON.
/// How many machines share a state, site, zone and project (`MachineStore.machineCounts`).
public struct MachineCount: Codable, Sendable, Hashable {
    public var state: MachineState
    public var site: String?
    public var zone: String
    public var project: String?
    public var count: Int

    public init(state: MachineState, site: String?, zone: String, project: String?, count: Int) {
        self.state = state
        self.site = site
        self.zone = zone
        self.project = project
        self.count = count
    }
}

public struct MachineStep: Codable, Sendable, Hashable {
    public var id: String
    public var name: String
    public var state: MachineState
    public var phase: StepPhase
    public var generation: Int
    public var stepStarted: Date?
    public var progress: StepProgress?
    /// Seconds its tests add to the step's limit (`Machine.testAllowance`).
    public var testAllowance: Int?

    public init(
        id: String,
        name: String,
        state: MachineState,
        phase: StepPhase,
        generation: Int,
        stepStarted: Date?,
        progress: StepProgress?,
        testAllowance: Int? = nil
    ) {
        self.id = id
        self.name = name
        self.state = state
        self.phase = phase
        self.generation = generation
        self.stepStarted = stepStarted
        self.progress = progress
        self.testAllowance = testAllowance
    }

    public init(_ m: Machine) {
        self.init(
            id: m.id,
            name: m.name,
            state: m.state,
            phase: m.phase,
            generation: m.generation,
            stepStarted: m.stepStarted,
            progress: m.progress,
            testAllowance: m.testAllowance
        )
    }
}

/// Agent progress within a step.
public struct StepProgress: Codable, Sendable, Hashable {
    /// What the agent is doing: inventory, download, write, verify, wipe, rescue.
    public var stage: String
    public var bytesDone: Int64
    public var bytesTotal: Int64
    public var updated: Date

    public init(stage: String, bytesDone: Int64 = 0, bytesTotal: Int64 = 0, updated: Date) {
        self.stage = stage
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
        self.updated = updated
    }

    public var percent: Double? { bytesTotal > 0 ? min(100, Double(bytesDone) * 100 / Double(bytesTotal)) : nil }
}

/// A byte count as people read it: `512 B`, `1.5 KiB`, `496.3 MiB` (powers of 1024, one decimal).
public enum ByteCount {
    public static func text(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n)
        var u = 0
        while v >= 1024, u < units.count - 1 {
            v /= 1024
            u += 1
        }
        return u == 0 ? "\(n) B" : String(format: "%.1f ", v) + units[u]
    }
}

/// How a release wipes a machine's disks.
public enum WipeMode: String, Codable, Sendable, CaseIterable {
    /// Unsafe between tenants: discard where supported, then zero the first and last MiB of
    /// every disk (signatures, partition tables); the rest keeps the tenant's bytes. Only as a
    /// project's explicit policy.
    case quick
    /// The default: erase every byte (the device's secure erase where it has one, then
    /// write-zeroes or an overwrite), then read back random blocks to prove it.
    case full
}

/// What a user asked for at deploy time.
public struct Deployment: Codable, Sendable, Hashable {
    public var image: String
    public var imageSHA256: String
    public var sshKeys: [String]
    public var userData: String
    public var hostname: String
    public var requestedBy: String
    /// Deploy tags (checked against the project's required tags); dropped at release.
    public var tags: [String: String]
    /// How the release wipes the disks: quick or full.
    public var wipe: WipeMode
    /// cloud-init's instance-id for this deployment (new at every deploy).
    public var instanceID: String?
    /// When the machine was given to the project: its members see nothing from before.
    public var allocated: Date?
    /// The deploy's root device hints, over the machine's own (`Machine.rootDevice`).
    public var rootDevice: RootDeviceHints?
    /// Whether the installed OS has reported in, and for which boot; nil: not tracked (an
    /// adopted machine, or user-data that turns vendor-data off).
    public var os: OSReport?
    /// The deploy's network plan (bonds, VLANs, static addresses); nil: the boot NIC's DHCP
    /// alone, as cloud-init does without a network-config.
    public var networking: DeployedNetworking?

    public init(
        image: String,
        imageSHA256: String,
        sshKeys: [String],
        userData: String,
        hostname: String,
        requestedBy: String,
        tags: [String: String] = [:],
        wipe: WipeMode = .full
    ) {
        self.tags = tags
        self.wipe = wipe
        self.allocated = Date()
        self.instanceID = "i-" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(17)
        self.image = image
        self.imageSHA256 = imageSHA256
        self.sshKeys = sshKeys
        self.userData = userData
        self.hostname = hostname
        self.requestedBy = requestedBy
        // Tracked unless the user-data turns cloud-init's vendor-data (which carries the
        // reporter) off: then nothing would ever report in.
        self.os = OSReport.reporterRuns(userData: userData) ? OSReport() : nil
    }
}

/// The installed OS's reports: it calls in once cloud-init has finished and SSH answers, on
/// every boot (`OSReportScript`). "Deployed" waits for the first; a restart for a new boot's.
public struct OSReport: Codable, Sendable, Hashable {
    /// The kernel's boot ID of the last boot that reported in.
    public var bootID: String?
    /// When it did.
    public var reported: Date?
    /// A report is awaited: the deploy's first, or one from the boot after a restart.
    public var awaiting: Bool

    public init(bootID: String? = nil, reported: Date? = nil, awaiting: Bool = true) {
        self.bootID = bootID
        self.reported = reported
        self.awaiting = awaiting
    }

    /// Whether cloud-init will run the vendor-data reporter under this user-data: not when a
    /// cloud-config turns vendor-data off (a top-level `vendor_data:` key, as in
    /// `vendor_data: {enabled: false}`; any such key counts). User-data that turns it off
    /// another way (MIME parts, `#include`) is still waited for, and fails at the step timeout.
    public static func reporterRuns(userData: String) -> Bool {
        !userData.split(separator: "\n").contains { $0.hasPrefix("vendor_data:") }
    }
}

/// Hardware inventory, as the agent reports it at commissioning.
public struct Inventory: Codable, Sendable, Hashable {
    public struct Disk: Codable, Sendable, Hashable {
        public var name: String
        public var sizeBytes: Int64
        public var model: String
        public var serial: String
        public var rotational: Bool
        /// The World Wide Name (or the kernel's `wwid`), when the device reports one.
        public var wwn: String?
        public init(
            name: String,
            sizeBytes: Int64,
            model: String,
            serial: String,
            rotational: Bool,
            wwn: String? = nil
        ) {
            self.name = name
            self.sizeBytes = sizeBytes
            self.model = model
            self.serial = serial
            self.rotational = rotational
            self.wwn = wwn
        }
    }
    public struct NIC: Codable, Sendable, Hashable {
        public var name: String
        public var mac: String
        public var driver: String
        public var link: Bool
        /// Link speed in Mb/s, when the link is up and the driver says.
        public var speedMbps: Int?
        /// The PCI device behind it (`0000:00:03.0`), if it is one.
        public var pciAddress: String?
        /// Its firmware version, as the driver reports it to ethtool (nil: none reported).
        public var firmware: String?
        /// The switch port it is cabled to, from the LLDP frame it heard at commissioning
        /// (nil: none heard, or listening was off: `commission.lldp-wait`).
        public var lldp: LLDPNeighbour?
        public init(
            name: String,
            mac: String,
            driver: String,
            link: Bool,
            speedMbps: Int? = nil,
            pciAddress: String? = nil
        ) {
            self.name = name
            self.mac = mac
            self.driver = driver
            self.link = link
            self.speedMbps = speedMbps
            self.pciAddress = pciAddress
        }
    }
    /// A PCI function, as sysfs lists it.
    public struct PCIDevice: Codable, Sendable, Hashable {
        /// `0000:00:02.0`.
        public var address: String
        /// Vendor and device IDs, `10de` and `2330`.
        public var vendor: String
        public var device: String
        /// The class code, `030200` (a 3D controller).
        public var pciClass: String
        /// The kernel driver bound to it, if any.
        public var driver: String?
        public init(address: String, vendor: String, device: String, pciClass: String, driver: String? = nil) {
            self.address = address
            self.vendor = vendor
            self.device = device
            self.pciClass = pciClass
            self.driver = driver
        }

        /// A GPU or compute accelerator: a 3D controller (class 0302) or a processing accelerator
        /// (12xx) from anyone; a display controller (03xx) from NVIDIA or AMD; Intel's "other
        /// display controller" (0380, its data-centre GPUs). A server's BMC VGA and a VM's
        /// emulated display are not GPUs.
        public var isGPU: Bool {
            pciClass.hasPrefix("0302") || pciClass.hasPrefix("12")
                || (pciClass.hasPrefix("03") && ["10de", "1002"].contains(vendor))
                || (pciClass.hasPrefix("0380") && vendor == "8086")
        }

        /// `NVIDIA 10de:2330`: the vendor's name where known, and the IDs.
        public var name: String {
            let vendors = ["10de": "NVIDIA", "1002": "AMD", "8086": "Intel", "1af4": "Red Hat", "1234": "QEMU"]
            return (vendors[vendor].map { $0 + " " } ?? "") + "\(vendor):\(device)"
        }
    }
    public var cpuModel: String
    public var cores: Int
    public var memoryBytes: Int64
    public var disks: [Disk]
    public var nics: [NIC]
    public var vendor: String
    public var product: String
    public var serial: String
    public var firmware: Firmware
    /// Hardware threads (logical CPUs); `cores` counts physical cores. Nil in inventories taken
    /// before both were counted, whose `cores` counted threads.
    public var threads: Int?
    public var numaNodes: Int?
    public var pciDevices: [PCIDevice]?
    public var biosVendor: String?
    public var biosVersion: String?
    public var biosDate: String?
    public var boardSerial: String?
    public var chassisSerial: String?

    /// The GPUs among the PCI devices.
    public var gpus: [PCIDevice] { (pciDevices ?? []).filter(\.isGPU) }

    public init(
        cpuModel: String,
        cores: Int,
        memoryBytes: Int64,
        disks: [Disk],
        nics: [NIC],
        vendor: String,
        product: String,
        serial: String,
        firmware: Firmware
    ) {
        self.cpuModel = cpuModel
        self.cores = cores
        self.memoryBytes = memoryBytes
        self.disks = disks
        self.nics = nics
        self.vendor = vendor
        self.product = product
        self.serial = serial
        self.firmware = firmware
    }
}
