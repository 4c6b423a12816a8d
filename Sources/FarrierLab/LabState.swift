import Foundation

/// What a running lab is made of, saved as JSON in the lab directory so `lab status`, `lab down`
/// and the CLI find it. Every PID, namespace, interface and route recorded here was made by
/// `lab up`, and `lab down` removes exactly these.
public struct LabState: Codable, Sendable {
    public struct VM: Codable, Sendable {
        public var name: String
        public var mac: String
        /// The second NIC's MAC (`lab up --nics 2`).
        public var secondMAC: String?
        public var firmware: String
        public var bmcAddress: String
        public var bmcPort: Int
        public var bmcUser: String
        public var disk: String
        public var serialLog: String
        public var bmcPID: Int32?
        /// The site it belongs to (its tap and BMC are in the site's namespace), or nil: the
        /// region's own boot network.
        public var site: String?
    }

    /// A lab site (`lab up --sites N`): a namespace with its own bridge, network, site agent
    /// (`farrier site run --boot`) and VMs with their BMCs, linked to the region's namespace by
    /// a routed veth (`regionLink`, in the region's namespace, which `lab partition` takes down)
    /// and to the host by another (`hostLink`), for the CLI's ssh and ipmitool.
    public struct Site: Codable, Sendable {
        public var name: String
        public var namespace: String
        public var network: String
        public var regionLink: String
        public var hostLink: String
        public var dataDir: String
        public var agentPID: Int32?
        public var dnsmasqPID: Int32?
        public var lldpdPID: Int32?
    }

    /// A `farrier server` of the lab: the first serves the boot network (DHCP, TFTP, boot
    /// scripts, the agent channel); the others, on the same PostgreSQL, serve the API and share
    /// the reconciler's work.
    public struct Replica: Codable, Sendable {
        public var address: String
        public var pid: Int32?
    }

    public var directory: String
    public var namespace: String
    public var bridge: String
    public var dhcpMode: String
    public var accelerator: String
    public var network: String
    /// Every replica's API address, comma-separated (the CLI fails over between them).
    public var serverAddress: String
    public var hostLink: String
    public var blackholeRoute: String
    public var serverPID: Int32?
    public var dnsmasqPID: Int32?
    /// lldpd on the VMs' taps (their "switch"); nil in a state from an older binary.
    public var lldpdPID: Int32?
    public var vms: [VM]
    /// sqlite (the default) or postgres; nil in a state from an older binary.
    public var database: String?
    /// The lab's PostgreSQL server, with `database` postgres.
    public var postgresPID: Int32?
    /// The servers beyond the first (with `database` postgres).
    public var extraReplicas: [Replica]?
    /// The lab's sites, with `lab up --sites N` (nil or empty: none; the region serves the boot network).
    public var sites: [Site]?

    /// The lab's files live here while it is up: VM disks (8 GiB each, filled by deploys), the
    /// server's data directory with its images, logs. On disk, not in /run: /run is a tmpfs on
    /// most hosts, sized at a fifth of RAM, and the lab's disks outgrew it in CI.
    public static let defaultDirectory = "/var/lib/farrier-lab"
    /// What is up (pids, addresses) is runtime state, in /run: gone after a reboot, like the
    /// processes it names.
    public static let runDirectory = "/run/farrier-lab"
    public static var statePath: String { runDirectory + "/state.json" }

    public static func load(from path: String = statePath) -> LabState? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(LabState.self, from: data)
    }

    /// The state of a lab with a server process alive (any replica), if any.
    public static func loadIfRunning() -> LabState? {
        guard let s = load() else { return nil }
        let pids = [s.serverPID] + (s.extraReplicas ?? []).map(\.pid)
        guard pids.contains(where: { $0.map { Lab.isLabServer($0, directory: s.directory) } ?? false }) else {
            return nil
        }
        return s
    }

    /// Every process this state records: the servers, dnsmasq, lldpd, PostgreSQL, the BMCs, the
    /// sites' agents and peers, and each VM's QEMU (from the pidfile in its directory).
    public var recordedPIDs: [Int32] {
        var pids = [serverPID, dnsmasqPID, lldpdPID, postgresPID] + (extraReplicas ?? []).map(\.pid)
        pids += vms.map(\.bmcPID)
        for site in sites ?? [] { pids += [site.agentPID, site.dnsmasqPID, site.lldpdPID] }
        pids += vms.map { Self.pidFile(directory + "/" + $0.name + "/qemu.pid") }
        return pids.compactMap { $0 }
    }

    /// The recorded processes still alive as this lab's (`isOwn`).
    public var liveProcesses: [Int32] { recordedPIDs.filter(isOwn) }

    /// Whether `pid` is a live process of this lab: every program the lab starts names a file
    /// under the lab's directory on its command line (its data, configuration, pidfile or log).
    /// A pid that another program took after the lab died (a reboot, a killed session) is not
    /// the lab's, and `lab down` leaves it alone.
    public func isOwn(_ pid: Int32) -> Bool { Self.isOwn(pid, directory: directory) }

    /// Whether `pid` is a live process of the lab in `directory`.
    static func isOwn(_ pid: Int32, directory: String) -> Bool {
        commandLine(pid).contains { $0.contains(directory + "/") } && !Spawn.isZombie(pid)
    }

    /// The arguments of process `pid` (empty if there is none).
    static func commandLine(_ pid: Int32) -> [String] {
        guard pid > 1, let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return [] }
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    static func pidFile(_ path: String) -> Int32? {
        (try? String(contentsOfFile: path, encoding: .utf8)).flatMap {
            Int32($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    public func save(to path: String = statePath) throws {
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent,
            withIntermediateDirectories: true
        )
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try e.encode(self).write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}
