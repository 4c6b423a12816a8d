import Foundation

/// A DHCP lease that was acknowledged, as it is kept on disk.
public struct Lease: Codable, Sendable, Hashable {
    public var mac: MACAddress
    public var address: IPv4Address
    public var expires: Date
    public var hostname: String?

    public init(mac: MACAddress, address: IPv4Address, expires: Date, hostname: String? = nil) {
        self.mac = mac
        self.address = address
        self.expires = expires
        self.hostname = hostname
    }
}

extension IPv4Address: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let ip = IPv4Address(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "bad IPv4 \(text)")
            )
        }
        self = ip
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}
