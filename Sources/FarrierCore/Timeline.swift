import Foundation

/// One step of a machine's boot, recorded as it happens so `farrier machine show` can tell where a
/// boot stopped and how long each stage took.
public struct TimelineEvent: Codable, Sendable, Hashable {
    public enum Stage: String, Codable, Sendable {
        case dhcp
        case proxyDHCP = "proxydhcp"
        case tftp
        case http
    }

    public var mac: MACAddress
    public var time: Date
    public var stage: Stage
    /// What happened, e.g. `DISCOVER`, `OFFER 198.18.0.100`, `RRQ undionly.kpxe`, `script`.
    public var event: String
    /// Free-form detail: boot file, client class, bytes and duration of a transfer, an error.
    public var detail: String

    public init(mac: MACAddress, time: Date, stage: Stage, event: String, detail: String = "") {
        self.mac = mac
        self.time = time
        self.stage = stage
        self.event = event
        self.detail = detail
    }
}
