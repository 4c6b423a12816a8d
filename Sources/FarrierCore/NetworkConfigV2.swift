import Foundation
import WireSupport

/// Cloud-init's `network-config` (version 2, netplan's schema) for a deploy's network plan:
/// what the config drive carries beside `user-data` and `meta-data`. Pure and deterministic.
///
/// - There is no top-level `network:` key (NoCloud's `network-config` file is the v2 mapping
///   itself).
/// - Every string is double-quoted (a JSON string is a YAML scalar): YAML 1.1 reads an
///   unquoted `52:54:00:18:00:01` as a base-60 integer, and a bond named `on` as `true`.
/// - Each NIC is matched by MAC and named as its inventory named it (cloud-init renames it at
///   init-local, on every boot, before the network is up).
/// - Only the interfaces the plan touches are listed: the boot NIC, bond members, NICs given an
///   MTU or a network. The others stay down.
/// - Default routes are `0.0.0.0/0` and `::/0` (cloud-init 22.4 refuses `default`), on the
///   networks asked to carry them.
public struct NetworkConfigV2: Sendable, Hashable {
    public var plan: DeployedNetworking

    public init(_ plan: DeployedNetworking) { self.plan = plan }

    public var yaml: String {
        let bootInterface = plan.bootInterface
        let members = Set(plan.bonds.flatMap(\.members))
        var out = "version: 2\n"

        // Addresses, routes and DNS of the interface that holds an attachment's addresses.
        func layer3(_ interface: String, into lines: inout [String]) {
            let held = plan.attachments.filter { $0.interface == interface }
            let addresses = held.flatMap(\.cidrs).map(quote)
            if !addresses.isEmpty { lines.append("addresses: [\(addresses.joined(separator: ", "))]") }
            let routes = held.filter(\.defaultRoute).flatMap { a in
                a.gateways.map { g in "{to: \(quote(g.isIPv4 ? "0.0.0.0/0" : "::/0")), via: \(quote(g.description))}" }
            }
            if !routes.isEmpty { lines.append("routes: [\(routes.joined(separator: ", "))]") }
            let dns = held.flatMap(\.dns).map { quote($0.description) }
            let search = held.flatMap(\.searchDomains).map(quote)
            if !dns.isEmpty || !search.isEmpty {
                var parts: [String] = []
                if !dns.isEmpty { parts.append("addresses: [\(dns.joined(separator: ", "))]") }
                if !search.isEmpty { parts.append("search: [\(search.joined(separator: ", "))]") }
                lines.append("nameservers: {\(parts.joined(separator: ", "))}")
            }
        }
        // Another network carrying the IPv4 default route: the boot interface's DHCP must not
        // add one too (netplan honours this; cloud-init's ifupdown output does not).
        let staticDefault = plan.attachments.contains { $0.defaultRoute && $0.gateways.contains(where: \.isIPv4) }
        func dhcp(_ interface: String, into lines: inout [String]) {
            let dhcp4 = interface == bootInterface && plan.bootDHCP
            lines.append("dhcp4: \(dhcp4)")
            if dhcp4, staticDefault { lines.append("dhcp4-overrides: {use-routes: false}") }
            lines.append("dhcp6: false")
        }
        func section(_ title: String, _ entries: [(String, [String])]) {
            guard !entries.isEmpty else { return }
            out += "\(title):\n"
            for (name, lines) in entries {
                out += "  \(quote(name)):\n"
                for line in lines { out += "    \(line)\n" }
            }
        }

        section(
            "ethernets",
            plan.configuredNICs.map { n in
                var lines = [
                    "match: {macaddress: \(quote(n.mac.description))}",
                    "set-name: \(quote(n.name))",
                ]
                if let mtu = n.mtu { lines.append("mtu: \(mtu)") }
                if members.contains(n.name) {
                    lines += ["dhcp4: false", "dhcp6: false"]
                } else {
                    dhcp(n.name, into: &lines)
                    layer3(n.name, into: &lines)
                }
                return (n.name, lines)
            }
        )
        section(
            "bonds",
            plan.bonds.map { b in
                var parameters = ["mode: \(quote(b.mode.rawValue))"]
                switch b.mode {
                case .activeBackup:
                    if let p = b.primary { parameters.append("primary: \(quote(p))") }
                case .lacp:
                    parameters += ["lacp-rate: \(quote("fast"))", "transmit-hash-policy: \(quote("layer3+4"))"]
                }
                parameters.append("mii-monitor-interval: 100")
                var lines = [
                    "interfaces: [\(b.members.map(quote).joined(separator: ", "))]",
                    "macaddress: \(quote(b.mac.description))",
                ]
                if let mtu = b.mtu { lines.append("mtu: \(mtu)") }
                lines.append("parameters: {\(parameters.joined(separator: ", "))}")
                dhcp(b.name, into: &lines)
                layer3(b.name, into: &lines)
                return (b.name, lines)
            }
        )
        section(
            "vlans",
            plan.attachments.filter { $0.vlan > 0 }.map { a in
                var lines = ["id: \(a.vlan)", "link: \(quote(a.parent))"]
                if let mtu = a.mtu { lines.append("mtu: \(mtu)") }
                lines += ["dhcp4: false", "dhcp6: false"]
                layer3(a.interface, into: &lines)
                return (a.interface, lines)
            }
        )
        return out
    }

    /// A YAML double-quoted scalar (JSON's string syntax, which YAML reads the same).
    public func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                // Anything outside printable ASCII as an escape (YAML reads \u and \U as JSON
                // does), so no control or non-character can make cloud-init refuse the file.
                if scalar.value < 0x20 || scalar.value >= 0x7F {
                    out +=
                        scalar.value > 0xFFFF
                        ? String(format: "\\U%08x", scalar.value) : String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
