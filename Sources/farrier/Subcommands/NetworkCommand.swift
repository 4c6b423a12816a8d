import ArgumentParser
import FarrierAPI
import Foundation
import SwiftProtobuf

/// `farrier network`: networks for deployed machines (issue 18 point 4). Admins define them
/// (subnets, gateway, pools, DNS, VLAN, MTU, site, the projects that may use them); every token
/// lists and reads those open to its project.
struct NetworkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network",
        abstract: "Networks for deployed machines: static addresses, VLANs, MTU (admin: create, delete).",
        subcommands: [Create.self, List.self, Show.self, Delete.self]
    )

    struct NetworkView: Codable {
        struct Subnet: Codable {
            var cidr: String
            var gateway: String?
            var pool: [String]
            var poolSize: UInt64
            var allocated: UInt64
        }
        struct Allocation: Codable {
            var address: String
            var machine: String
        }
        var name: String
        var site: String?
        var vlan: Int32
        var mtu: Int32?
        var subnets: [Subnet]
        var dns: [String]
        var searchDomains: [String]
        var projects: [String]
        var description: String
        var created: Date
        var createdBy: String?
        var allocations: [Allocation]

        init(_ n: Farrier_V1_Network) {
            name = n.name
            site = n.site.isEmpty ? nil : n.site
            vlan = n.vlan
            mtu = n.mtu == 0 ? nil : n.mtu
            subnets = n.subnets.map {
                Subnet(
                    cidr: $0.cidr,
                    gateway: $0.gateway.isEmpty ? nil : $0.gateway,
                    pool: $0.pool,
                    poolSize: $0.poolSize,
                    allocated: $0.allocated
                )
            }
            dns = n.dns
            searchDomains = n.searchDomains
            projects = n.projects
            description = n.description_p
            created = n.created.date
            createdBy = n.createdBy.isEmpty ? nil : n.createdBy
            allocations = n.allocations.map { Allocation(address: $0.address, machine: $0.machine) }
        }

        /// `198.18.100.0/24 (gateway 198.18.100.1; 2 of 10 held)`.
        var subnetText: String {
            subnets.map { s in
                let size = s.poolSize == .max ? "2^64 or more" : "\(s.poolSize)"
                return "\(s.cidr) (\(s.gateway.map { "gateway \($0); " } ?? "")\(s.allocated) of \(size) held)"
            }.joined(separator: ", ")
        }
    }

    static let columns: [Column<NetworkView>] = [
        Column("NAME") { $0.name }, Column("SITE") { $0.site ?? "-" },
        Column("VLAN") { $0.vlan == 0 ? "untagged" : "\($0.vlan)" }, Column("MTU") { $0.mtu.map { "\($0)" } ?? "-" },
        Column("SUBNETS") { $0.subnetText }, Column("DNS") { $0.dns.isEmpty ? "-" : $0.dns.joined(separator: ",") },
        Column("PROJECTS") { $0.projects.isEmpty ? "all" : $0.projects.joined(separator: ",") },
    ]

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Define a network (admin).",
            discussion: """
                One IPv4 and/or one IPv6 subnet (--cidr twice), each with its pools: the static addresses \
                deploys are given, lowest free first. Farrier's own DHCP must not hand out the same \
                addresses: keep the pools out of its DHCP range.
                  farrier network create lab-vlan --cidr 198.18.100.0/24 --cidr fd98:18:100::/64 \\
                    --gateway 198.18.100.1 --pool 198.18.100.10-198.18.100.19 \\
                    --pool fd98:18:100::10-fd98:18:100::1f --dns 198.18.100.1 --vlan 100 --mtu 1400
                """
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Option(help: "A subnet in CIDR form, host bits clear (one per family).") var cidr: [String] = []
        @Option(help: "The subnet's gateway (one per family).") var gateway: [String] = []
        @Option(help: "Addresses to give out, FIRST-LAST or one address (repeatable).") var pool: [String] = []
        @Option(help: "A DNS server (repeatable).") var dns: [String] = []
        @Option(help: "A DNS search domain (repeatable).") var search: [String] = []
        @Option(help: "The 802.1Q VLAN ID (0: untagged).") var vlan: Int32 = 0
        @Option(help: "The MTU (68-9216; IPv6 needs 1280 or more).") var mtu: Int32?
        @Option(help: "The site whose boot network it is at (default: the region's own).") var site: String?
        @Option(help: "A project whose members may use it (repeatable; default: every project).") var project:
            [String] = []
        @Option(help: "Free text.") var description = ""
        @Argument(help: "The network's name (a-z, 0-9, '-').") var name: String

        func run() async throws {
            var req = Farrier_V1_CreateNetworkRequest()
            req.name = name
            req.cidrs = cidr
            req.gateways = gateway
            req.pools = pool
            req.dns = dns
            req.searchDomains = search
            req.vlan = vlan
            req.mtu = mtu ?? 0
            req.site = site ?? ""
            req.projects = project
            req.description_p = description
            let request = req
            let n = try await rpc(client) { try await $0.networks.createNetwork(request) }
            try output.printer(NetworkCommand.columns, name: \.name).row(NetworkView(n))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "List the networks you may deploy onto."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Option(help: "Only this site's ('-': the region's own).") var site: String?
        func run() async throws {
            var req = Farrier_V1_ListNetworksRequest()
            req.site = site ?? ""
            let request = req
            let printer = try output.printer(NetworkCommand.columns, name: \.name)
            try printer.list(
                try await rpc(client, idempotent: true) { try await $0.networks.listNetworks(request) }.networks.map(
                    NetworkView.init
                )
            )
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Show a network; admins also see which machine holds which address."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The network's name.") var name: String
        func run() async throws {
            var req = Farrier_V1_GetNetworkRequest()
            req.name = name
            let request = req
            let n = NetworkView(try await rpc(client, idempotent: true) { try await $0.networks.getNetwork(request) })
            try output.printer(NetworkCommand.columns, name: \.name).one(n) {
                var lines = [
                    "Name:        \(n.name)",
                    "Site:        \(n.site ?? "- (the region's own)")",
                    "VLAN:        \(n.vlan == 0 ? "untagged" : "\(n.vlan)")",
                    "MTU:         \(n.mtu.map { "\($0)" } ?? "-")",
                ]
                for s in n.subnets {
                    lines.append("Subnet:      \(s.cidr)\(s.gateway.map { " via \($0)" } ?? "")")
                    lines.append(
                        "  Pool:      \(s.pool.joined(separator: ", ")) (\(s.allocated) of \(s.poolSize) held)"
                    )
                }
                lines.append("DNS:         \(n.dns.isEmpty ? "-" : n.dns.joined(separator: ", "))")
                lines.append("Search:      \(n.searchDomains.isEmpty ? "-" : n.searchDomains.joined(separator: ", "))")
                lines.append("Projects:    \(n.projects.isEmpty ? "all" : n.projects.joined(separator: ", "))")
                if !n.description.isEmpty { lines.append("Description: \(n.description)") }
                lines.append("Created:     \(iso(n.created))\(n.createdBy.map { " by \($0)" } ?? "")")
                if !n.allocations.isEmpty {
                    lines.append("Held:")
                    lines += n.allocations.map { "  \($0.address)  \($0.machine)" }
                }
                return lines.joined(separator: "\n")
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "delete",
            abstract: "Remove a network (admin); refused while any machine holds an address on it."
        )
        @OptionGroup var client: ClientOptions
        @Argument(help: "The network's name.") var name: String
        func run() async throws {
            var req = Farrier_V1_GetNetworkRequest()
            req.name = name
            let request = req
            _ = try await rpc(client) { try await $0.networks.deleteNetwork(request) }
            print("network \(name) removed")
        }
    }
}
