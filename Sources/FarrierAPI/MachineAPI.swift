import FarrierCore
import Foundation
@_exported import GRPCCore
@_exported import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle
import SwiftProtobuf

/// `farrier.v1.MachineService` over the machine store.
public struct MachineAPI: Farrier_V1_MachineService.SimpleServiceProtocol {
    let store: any MachineStore

    public init(store: any MachineStore) { self.store = store }

    public func listMachines(
        request: Farrier_V1_ListMachinesRequest, context: ServerContext
    ) async throws -> Farrier_V1_ListMachinesResponse {
        let pageSize = Int(request.pageSize == 0 ? 100 : request.pageSize)
        guard (1...1000).contains(pageSize) else {
            throw RPCError(code: .invalidArgument, message: "page_size must be between 1 and 1000, got \(request.pageSize)")
        }
        if !request.state.isEmpty, MachineState(rawValue: request.state) == nil {
            throw RPCError(
                code: .invalidArgument,
                message: "unknown state '\(request.state)'; valid: \(MachineState.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        // The page token is the name of the last machine of the previous page (names are unique
        // and the list is ordered by name).
        var machines = try store.machines()
        if !request.state.isEmpty { machines = machines.filter { $0.state.rawValue == request.state } }
        if !request.pageToken.isEmpty {
            guard let after = String(data: Data(base64Encoded: request.pageToken) ?? Data(), encoding: .utf8) else {
                throw RPCError(code: .invalidArgument, message: "page_token is not one this server issued")
            }
            machines = machines.filter { $0.name > after }
        }
        var response = Farrier_V1_ListMachinesResponse()
        response.machines = machines.prefix(pageSize).map { Farrier_V1_Machine($0, timeline: []) }
        if machines.count > pageSize, let last = response.machines.last {
            response.nextPageToken = Data(last.name.utf8).base64EncodedString()
        }
        return response
    }

    public func getMachine(
        request: Farrier_V1_GetMachineRequest, context: ServerContext
    ) async throws -> Farrier_V1_Machine {
        guard !request.nameOrMac.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "name_or_mac is required")
        }
        let limit = Int(request.timelineLimit == 0 ? 100 : request.timelineLimit)
        guard (1...500).contains(limit) else {
            throw RPCError(code: .invalidArgument, message: "timeline_limit must be between 1 and 500, got \(request.timelineLimit)")
        }
        guard let machine = try store.machine(nameOrMAC: request.nameOrMac) else {
            throw RPCError(code: .notFound, message: "no machine named or with MAC '\(request.nameOrMac)'")
        }
        return Farrier_V1_Machine(machine, timeline: try store.timeline(mac: machine.mac, limit: limit))
    }
}

extension Farrier_V1_Machine {
    init(_ m: Machine, timeline: [TimelineEvent]) {
        self.init()
        id = m.id
        name = m.name
        mac = m.mac.description
        architecture = m.architecture.rawValue
        firmware = m.firmware.rawValue
        state = m.state.rawValue
        firstSeen = Google_Protobuf_Timestamp(date: m.firstSeen)
        lastSeen = Google_Protobuf_Timestamp(date: m.lastSeen)
        self.timeline = timeline.map { e in
            var t = Farrier_V1_TimelineEvent()
            t.time = Google_Protobuf_Timestamp(date: e.time)
            t.stage = e.stage.rawValue
            t.event = e.event
            t.detail = e.detail
            return t
        }
    }
}

/// Runs a gRPC server inside a ServiceGroup: graceful shutdown stops accepting RPCs and lets
/// those in flight finish.
public struct GRPCService: Service {
    let server: GRPCServer<HTTP2ServerTransport.Posix>
    let logger: Logger
    let listen: String

    public init(listen: String, services: [any RegistrableRPCService], logger: Logger) throws {
        let (host, port) = try splitHostPort(listen)
        server = GRPCServer(
            transport: .http2NIOPosix(address: .ipv4(host: host, port: port), transportSecurity: .plaintext),
            services: services)
        self.logger = logger
        self.listen = listen
    }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await server.serve() }
                if let address = try await server.listeningAddress {
                    logger.info("gRPC listening", metadata: ["grpc.listen": "\(address)"])
                }
            }
        } onGracefulShutdown: {
            server.beginGracefulShutdown()
        }
    }
}

/// Connects to a Farrier server and runs `body` with a machine client.
public func withMachineClient<R: Sendable>(
    server: String, _ body: @Sendable (Farrier_V1_MachineService.Client<HTTP2ClientTransport.Posix>) async throws -> R
) async throws -> R {
    let (host, port) = try splitHostPort(server)
    let transport = try HTTP2ClientTransport.Posix(
        target: .ipv4(address: host, port: port), transportSecurity: .plaintext)
    return try await withGRPCClient(transport: transport) { client in
        try await body(Farrier_V1_MachineService.Client(wrapping: client))
    }
}
