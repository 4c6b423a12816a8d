import DHCPWire
import FarrierCore

/// What kind of network-boot client sent a DHCP message, and so what it must be handed.
///
/// Classification order (loop avoidance): a client that is already iPXE gets the HTTP URL of its
/// per-machine script, never an iPXE binary again; a UEFI HTTP-boot client gets an http:// URL of
/// an EFI binary; a PXE ROM gets the iPXE binary for its architecture over TFTP.
public enum BootClient: Hashable, Sendable {
    /// Not a network-boot client (an installed OS, perfdhcp): addresses only.
    case plain
    /// Running iPXE (user class `iPXE`, or iPXE's option 175).
    case ipxe(ClientPlatform, optionArch: UInt16?)
    /// A UEFI HTTP-boot client (vendor class `HTTPClient`).
    case httpBoot(ClientPlatform, optionArch: UInt16)
    /// A PXE ROM (vendor class `PXEClient`) with a known architecture.
    case pxe(ClientPlatform, optionArch: UInt16)
    /// Claims to be PXE but names no architecture we have a binary for: stay silent on boot options.
    case unsupportedPXE(optionArch: UInt16?)

    public init(_ message: DHCPMessage) {
        let vendor = message.options.vendorClassIdentifier ?? ""
        let arch =
            message.options.clientArchitectures?.first(where: {
                ClientPlatform(optionArchitecture: $0).firmware != .unknown
            })
            ?? message.options.clientArchitectures?.first
        let platform = arch.map { ClientPlatform(optionArchitecture: $0) }
        let isIPXE =
            message.options.userClasses.contains(Array("iPXE".utf8))
            || message.options[.ipxeEncapsulated] != nil
        if isIPXE {
            self = .ipxe(platform ?? ClientPlatform(architecture: .unknown, firmware: .unknown), optionArch: arch)
        } else if vendor.hasPrefix("HTTPClient") {
            if let arch, let platform, platform.firmware == .uefi {
                self = .httpBoot(platform, optionArch: arch)
            } else {
                self = .unsupportedPXE(optionArch: arch)
            }
        } else if vendor.hasPrefix("PXEClient") {
            if let arch, let platform, platform.firmware != .unknown {
                self = .pxe(platform, optionArch: arch)
            } else {
                self = .unsupportedPXE(optionArch: arch)
            }
        } else {
            self = .plain
        }
    }

    public var isNetworkBoot: Bool {
        if case .plain = self { return false }
        return true
    }

    public var platform: ClientPlatform? {
        switch self {
        case .ipxe(let p, _), .httpBoot(let p, _), .pxe(let p, _): p
        case .plain, .unsupportedPXE: nil
        }
    }

    public var label: String {
        switch self {
        case .plain: "plain"
        case .ipxe: "ipxe"
        case .httpBoot: "uefi-http"
        case .pxe(let p, _): "pxe-\(p.firmware.rawValue)"
        case .unsupportedPXE(let a): "pxe-unsupported-arch-\(a.map(String.init) ?? "none")"
        }
    }
}
