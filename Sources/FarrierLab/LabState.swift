import Foundation

/// What a running lab is made of, saved as JSON in the lab directory so `lab status`, `lab down`
/// and the CLI find it. Every PID, namespace, interface and route recorded here was made by
/// `lab up`, and `lab down` removes exactly these.
public struct LabState: Codable, Sendable {
    public struct VM: Codable, Sendable {
        public var name: String
        public var mac: String
        public var firmware: String
        public var bmcAddress: String
        public var bmcPort: Int
        public var bmcUser: String
        public var disk: String
        public var serialLog: String
        public var bmcPID: Int32?
    }

    public var directory: String
    public var namespace: String
    public var bridge: String
    public var dhcpMode: String
    public var accelerator: String
    public var network: String
    public var serverAddress: String
    public var hostLink: String
    public var blackholeRoute: String
    public var serverPID: Int32?
    public var dnsmasqPID: Int32?
    public var vms: [VM]

    /// The lab lives here while it is up.
    public static let defaultDirectory = "/run/farrier-lab"
    public static var statePath: String { defaultDirectory + "/state.json" }

    public static func load(from path: String = statePath) -> LabState? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(LabState.self, from: data)
    }

    /// The state of a lab whose server process is alive, if any.
    public static func loadIfRunning() -> LabState? {
        guard let s = load(), let pid = s.serverPID, kill(pid, 0) == 0 else { return nil }
        return s
    }

    public func save(to path: String = statePath) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try e.encode(self).write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}
