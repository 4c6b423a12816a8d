import CoreMetrics
import GRPCCore
import Metrics

/// Counts every RPC by service, method and status code, and times it from its start to its
/// status (a streaming RPC's producer included), under the names the gRPC ecosystem's
/// Prometheus middleware uses (`grpc_server_handled_total`, `grpc_server_handling_seconds`),
/// so existing dashboards read them. It runs outside the authentication interceptor: refused
/// calls are counted too.
public struct MetricsInterceptor: ServerInterceptor {
    public init() {}

    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let method = context.descriptor
        let began = ContinuousClock.now
        var response: StreamingServerResponse<Output>
        do {
            response = try await next(request, context)
        } catch {
            Self.record(method, Self.code(error), began)
            throw error
        }
        switch response.accepted {
        case .success(var contents):
            let producer = contents.producer
            contents.producer = { writer in
                do {
                    let trailers = try await producer(writer)
                    Self.record(method, "OK", began)
                    return trailers
                } catch {
                    Self.record(method, Self.code(error), began)
                    throw error
                }
            }
            response.accepted = .success(contents)
        case .failure(let error):
            Self.record(method, Self.name(error.code), began)
        }
        return response
    }

    static func record(_ method: MethodDescriptor, _ code: String, _ began: ContinuousClock.Instant) {
        let service = method.service.fullyQualifiedService
        CoreMetrics.Counter(
            label: "grpc_server_handled_total",
            dimensions: [("grpc_service", service), ("grpc_method", method.method), ("grpc_code", code)]
        ).increment()
        CoreMetrics.Timer(
            label: "grpc_server_handling_seconds",
            dimensions: [("grpc_service", service), ("grpc_method", method.method)]
        ).record(duration: ContinuousClock.now - began)
    }

    static func code(_ error: any Error) -> String {
        if let e = error as? RPCError { return name(e.code) }
        if let e = error as? any RPCErrorConvertible { return name(e.rpcErrorCode) }
        return error is CancellationError ? "Canceled" : "Unknown"
    }

    /// The status code's canonical name, as gRPC's other implementations print it.
    static func name(_ code: RPCError.Code) -> String {
        switch code {
        case .cancelled: "Canceled"
        case .unknown: "Unknown"
        case .invalidArgument: "InvalidArgument"
        case .deadlineExceeded: "DeadlineExceeded"
        case .notFound: "NotFound"
        case .alreadyExists: "AlreadyExists"
        case .permissionDenied: "PermissionDenied"
        case .resourceExhausted: "ResourceExhausted"
        case .failedPrecondition: "FailedPrecondition"
        case .aborted: "Aborted"
        case .outOfRange: "OutOfRange"
        case .unimplemented: "Unimplemented"
        case .internalError: "Internal"
        case .unavailable: "Unavailable"
        case .dataLoss: "DataLoss"
        case .unauthenticated: "Unauthenticated"
        default: "Unknown"
        }
    }
}
