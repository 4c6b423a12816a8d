import Foundation

/// The JSON the agent (in the Farrier ramdisk) and the server exchange over HTTP.
///
/// The agent learns the server's HTTPS URL and the SHA-256 fingerprint of its certificate from
/// the kernel command line (`farrier.url=https://… farrier.cert=sha256:…`): nothing on it is a
/// credential. It pins that certificate, then:
/// 1. `POST /agent/v1/hello` with `AgentHello` (its nonce) → `AgentTask` (what to do, and the
///    token of this boot);
/// 2. `POST /agent/v1/progress` with `AgentProgress`, about once a second while it works;
/// 3. `POST /agent/v1/done` with `AgentResult`.
/// Every call is accepted only from the address Farrier's DHCP leased to the machine's MAC. The
/// token is issued once per boot, to the first hello's nonce; a hello with another nonce in the
/// same boot is refused. Calls after hello carry `Authorization: Bearer <token>`, as do image
/// downloads; the token stops working when the step ends or Farrier powers the machine again.
public enum AgentAPI {
    public static let hello = "/agent/v1/hello"
    public static let progress = "/agent/v1/progress"
    public static let done = "/agent/v1/done"
    /// The installed OS's report (`OSReady`), with the deployment's OS token.
    public static let osReady = "/os/v1/ready"
}

/// The installed OS reports in: cloud-init has finished and SSH answers on this boot.
public struct OSReady: Codable, Sendable {
    /// The kernel's boot ID (`/proc/sys/kernel/random/boot_id`): a repeat is a no-op.
    public var bootID: String
    public init(bootID: String) { self.bootID = bootID }
}

public struct AgentHello: Codable, Sendable {
    public var agentVersion: String
    public var inventory: Inventory?
    /// Random, made once per boot by the first agent and kept in the ramdisk's memory: an agent
    /// restarted within the boot (or retrying a hello whose answer was lost) says hello with the
    /// same nonce and gets the same token; any other nonce is refused.
    public var nonce: String
    public init(agentVersion: String, inventory: Inventory?, nonce: String) {
        self.agentVersion = agentVersion
        self.inventory = inventory
        self.nonce = nonce
    }
}

/// cloud-init NoCloud files for the deployed OS, which the agent writes to a `cidata` partition.
public struct NoCloudSeed: Codable, Sendable, Equatable {
    public var metaData: String
    public var userData: String
    public var vendorData: String
    /// cloud-init's network-config (version 2) for the deploy's network plan; nil: none (the
    /// OS configures its boot NIC by DHCP, as cloud-init does without one).
    public var networkConfig: String?
    public init(metaData: String, userData: String, vendorData: String, networkConfig: String? = nil) {
        self.metaData = metaData
        self.userData = userData
        self.vendorData = vendorData
        self.networkConfig = networkConfig
    }
}

public struct AgentTask: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case commission, deploy, wipe, rescue
    }
    public struct Image: Codable, Sendable, Equatable {
        /// Path on the server (`/images/<sha256>`), relative to the agent's server URL.
        public var path: String
        public var sha256: String
        public var size: Int64
        public var format: ImageInfo.Format
        public init(path: String, sha256: String, size: Int64, format: ImageInfo.Format) {
            self.path = path
            self.sha256 = sha256
            self.size = size
            self.format = format
        }
    }
    public var kind: Kind
    public var machine: String
    public var image: Image?
    public var wipe: WipeMode?
    public var sshKeys: [String]
    public var hostname: String?
    /// The installed OS's cloud-init data (deploy only), written to a config drive.
    public var seed: NoCloudSeed?
    /// This boot's agent token, for every later call.
    public var token: String
    /// Which disk a deploy writes to (nil: the default choice, `RootDeviceHints.choose`).
    public var rootDevice: RootDeviceHints?
    /// Commissioning: how long to listen for LLDP on the NICs with a link (nil: not at all).
    public var lldpSeconds: Int?
    /// Deploy: the installed OS's token for reporting in (nil: not tracked). The agent puts it,
    /// with the agent channel's URL and certificate, into the vendor-data (`OSReportScript`).
    public var osToken: String?
    /// The trace context of the server's answer to hello (W3C `traceparent`, `tracestate`):
    /// the agent echoes it in its result, and sends it with its image download.
    public var trace: [String: String]?
    /// Commissioning: the tests to run after the inventory, scripts with their content (nil or
    /// empty: none). An agent from before burn-in drops them; the server then fails the step.
    public var tests: [TestSpec]?

    public init(
        kind: Kind,
        machine: String,
        image: Image? = nil,
        wipe: WipeMode? = nil,
        sshKeys: [String] = [],
        hostname: String? = nil,
        seed: NoCloudSeed? = nil,
        token: String = ""
    ) {
        self.kind = kind
        self.machine = machine
        self.image = image
        self.wipe = wipe
        self.sshKeys = sshKeys
        self.hostname = hostname
        self.seed = seed
        self.token = token
    }
}

public struct AgentProgress: Codable, Sendable {
    public var stage: String
    public var bytesDone: Int64
    public var bytesTotal: Int64
    public init(stage: String, bytesDone: Int64, bytesTotal: Int64) {
        self.stage = stage
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
    }
}

/// What kind of failure an agent reports, where the server acts on the kind (counts it, warns):
/// a string on the wire, so a newer agent's kind reads as one this server does not know.
public struct AgentFailureCode: RawRepresentable, Codable, Hashable, Sendable {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    /// A disk read back a non-zero byte after its erase: it is not wiped.
    public static let wipeNotVerified = AgentFailureCode(rawValue: "wipe-not-verified")
}

public struct AgentResult: Codable, Sendable {
    public var ok: Bool
    /// Why it failed, for the user.
    public var error: String?
    /// The kind of failure, when it is one the server acts on.
    public var failure: AgentFailureCode?
    /// Commissioning: the inventory.
    public var inventory: Inventory?
    /// The agent's peak resident memory during the task (bytes), for the record and the bench.
    public var peakRSSBytes: Int64?
    /// How long the task's data phase took (download and write, or wipe), in seconds.
    public var seconds: Double?
    /// Deploy: the config drive's vendor-data carries the OS's report-in script (the task had
    /// an OS token). Nil or false: Farrier does not wait for the OS (an agent from before the
    /// report existed, or no config drive), and the deploy ends once the disk boots.
    public var osReporter: Bool?
    /// Deploy: the config drive carries the task's network-config. A deploy with a network
    /// plan fails without it (a ramdisk from before network-config would drop the plan).
    public var networkConfig: Bool?
    /// The task's trace context, as the task gave it (`AgentTask.trace`).
    public var trace: [String: String]?
    /// What the task's time went to, for its trace.
    public var phases: [AgentPhase]?
    /// Commissioning: every test's result, when the task had tests.
    public var tests: [TestResult]?
    public init(
        ok: Bool,
        error: String? = nil,
        inventory: Inventory? = nil,
        peakRSSBytes: Int64? = nil,
        seconds: Double? = nil,
        failure: AgentFailureCode? = nil
    ) {
        self.ok = ok
        self.error = error
        self.failure = failure
        self.inventory = inventory
        self.peakRSSBytes = peakRSSBytes
        self.seconds = seconds
    }
}

/// One part of an agent's task, in seconds after the task began, on the ramdisk's monotonic
/// clock (its wall clock may not be set). Parts may overlap: a deploy downloads and writes at once.
public struct AgentPhase: Codable, Sendable, Hashable {
    /// download, write, verify, configure, wipe, inventory, lldp, tests or rescue.
    public var name: String
    public var start: Double
    public var end: Double
    /// Bytes the phase moved, if it moved any.
    public var bytes: Int64?
    /// Time spent inside the phase's own calls (reading the network, writing the disk): with
    /// phases that overlap, which side was the slow one.
    public var busySeconds: Double?

    public init(name: String, start: Double, end: Double, bytes: Int64? = nil, busySeconds: Double? = nil) {
        self.name = name
        self.start = start
        self.end = end
        self.bytes = bytes
        self.busySeconds = busySeconds
    }

    /// The names a server records; anything else an agent sends is dropped.
    public static let names: Set<String> = [
        "download", "write", "verify", "configure", "wipe", "inventory", "lldp", "tests", "rescue",
    ]
}

/// Named crash points for the kill -9 tests: `FARRIER_FAILPOINTS=reconciler.boot.after-action,…`
/// makes the process SIGKILL itself when it reaches one. Unset (always, outside tests) it costs
/// one dictionary lookup at start.
public enum Failpoint {
    static let armed: Set<String> = Set(
        (ProcessInfo.processInfo.environment["FARRIER_FAILPOINTS"] ?? "").split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespaces)
        }
    )

    public static func hit(_ name: String) {
        guard !armed.isEmpty, armed.contains(name) else { return }
        FileHandle.standardError.write(Data("failpoint \(name): killing the process\n".utf8))
        kill(getpid(), SIGKILL)
    }
}
