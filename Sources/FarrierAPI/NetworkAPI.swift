import FarrierCore
import Foundation
import GRPCCore
import SwiftProtobuf

/// `farrier.v1.NetworkService` (issue 18 point 4): admins define and remove networks; every
/// token may list and read the networks open to its project, and only admins see who holds
/// which address. A network closed to a member's project is answered as one that does not
/// exist.
public struct NetworkAPI: Farrier_V1_NetworkService.SimpleServiceProtocol {
    let store: any StateStore
    /// What this server's DHCP hands out: networks on its boot segment must keep clear of it.
    let dhcp: DHCPAddressSpace

    public init(store: any StateStore, dhcp: DHCPAddressSpace = .init()) {
        self.store = store
        self.dhcp = dhcp
    }

    public func createNetwork(
        request: Farrier_V1_CreateNetworkRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Network {
        let caller = try Caller.admin("defining a network")
        guard request.description_p.count <= 1024 else {
            throw RPCError(code: .invalidArgument, message: "description: longer than 1024 characters")
        }
        let lists = [
            request.cidrs, request.gateways, request.pools, request.dns, request.searchDomains, request.projects,
        ]
        guard lists.allSatisfy({ $0.count <= 64 && $0.allSatisfy { $0.count <= 256 } }) else {
            throw RPCError(
                code: .invalidArgument,
                message: "at most 64 values per field, of at most 256 characters each"
            )
        }
        let made = Network.make(
            name: request.name,
            cidrs: request.cidrs,
            gateways: request.gateways,
            pools: request.pools,
            dns: request.dns,
            searchDomains: request.searchDomains,
            vlan: Int(request.vlan),
            mtu: request.mtu == 0 ? nil : Int(request.mtu),
            site: request.site.isEmpty ? nil : request.site,
            projects: request.projects,
            description: request.description_p,
            createdBy: caller.tokenName,
            created: Date()
        )
        let network: Network
        switch made {
        case .success(let n): network = n
        case .failure(let p): throw RPCError(code: .invalidArgument, message: p.description)
        }
        for project in network.projects where try await store.project(name: project) == nil {
            throw RPCError(code: .invalidArgument, message: "project: no project named '\(project)'")
        }
        // Another network on the same segment (site and VLAN) must not hand out the same
        // addresses. Checked here for a precise refusal; the store checks again in its write,
        // so two creates at once cannot both pass.
        if let clash = network.overlap(with: try await store.networks()) ?? network.clash(with: dhcp) {
            throw RPCError(code: .invalidArgument, message: clash)
        }
        try await store.createNetwork(network)
        return try await view(network, for: caller)
    }

    public func listNetworks(
        request: Farrier_V1_ListNetworksRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_ListNetworksResponse {
        let caller = try Caller.current()
        var r = Farrier_V1_ListNetworksResponse()
        for n in try await store.networks() where Self.visible(n, to: caller) {
            if !request.site.isEmpty, (n.site ?? "-") != request.site { continue }
            r.networks.append(try await view(n, for: caller))
        }
        return r
    }

    public func getNetwork(
        request: Farrier_V1_GetNetworkRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_Network {
        let caller = try Caller.current()
        guard let n = try await store.network(name: request.name), Self.visible(n, to: caller) else {
            throw RPCError(code: .notFound, message: "no network named '\(request.name)'")
        }
        return try await view(n, for: caller)
    }

    public func deleteNetwork(
        request: Farrier_V1_GetNetworkRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_DeleteNetworkResponse {
        _ = try Caller.admin("removing a network")
        try await store.deleteNetwork(name: request.name)
        return Farrier_V1_DeleteNetworkResponse()
    }

    /// Admins see every network; a member those open to its project.
    static func visible(_ n: Network, to caller: Principal) -> Bool {
        caller.isAdmin || caller.project.map { n.isOpen(to: $0) } == true
    }

    /// The API's view. A member sees how many addresses are held, not by whom, and of the
    /// projects it is open to only its own (other projects' names are not a member's to read).
    func view(_ n: Network, for caller: Principal) async throws -> Farrier_V1_Network {
        let admin = caller.isAdmin
        let held = try await store.networkAddresses(network: n.name)
        var v = Farrier_V1_Network()
        v.name = n.name
        v.site = n.site ?? ""
        v.vlan = Int32(n.vlan)
        v.mtu = Int32(n.mtu ?? 0)
        v.subnets = n.subnets.map { s in
            var o = Farrier_V1_NetworkSubnet()
            o.cidr = s.cidr.description
            o.gateway = s.gateway?.description ?? ""
            o.pool = s.pool.map(\.description)
            o.poolSize = s.poolSize
            o.allocated = UInt64(held.filter { s.cidr.contains($0.address) }.count)
            return o
        }
        v.dns = n.dns.map(\.description)
        v.searchDomains = n.searchDomains
        v.projects = admin ? n.projects : n.projects.filter { $0 == caller.project }
        v.description_p = n.description
        v.created = Google_Protobuf_Timestamp(date: n.created)
        v.createdBy = admin ? n.createdBy : ""
        v.allocations = (admin ? held : []).map { h in
            var a = Farrier_V1_NetworkAllocation()
            a.address = h.address.description
            a.machine = h.machine
            return a
        }
        return v
    }
}
