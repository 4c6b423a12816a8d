import GRPCCore
import Tracing

/// Makes every RPC a server span, the child of the caller's W3C `traceparent` when it sent one,
/// and runs the handler (and a streaming RPC's producer) in its context: a step the call begins
/// stores that context, so the whole step lands in the call's trace. It runs first, outside the
/// metrics and authentication interceptors: a refused call is traced too, with its status.
public struct TracingInterceptor: ServerInterceptor {
    public init() {}

    struct MetadataExtractor: Extractor {
        func extract(key: String, from carrier: Metadata) -> String? {
            carrier[stringValues: key].first(where: { _ in true })
        }
    }

    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        var parent = InstrumentationContext.current ?? .topLevel
        InstrumentationSystem.instrument.extract(request.metadata, into: &parent, using: MetadataExtractor())
        let method = context.descriptor
        let span = InstrumentationSystem.tracer.startSpan(method.fullyQualifiedMethod, context: parent, ofKind: .server)
        span.attributes["rpc.system"] = "grpc"
        span.attributes["rpc.service"] = method.service.fullyQualifiedService
        span.attributes["rpc.method"] = method.method
        let spanContext = span.context
        var response: StreamingServerResponse<Output>
        do {
            response = try await InstrumentationContext.$current.withValue(spanContext) {
                try await next(request, context)
            }
        } catch {
            Self.end(span, error)
            throw error
        }
        switch response.accepted {
        case .success(var contents):
            let producer = contents.producer
            contents.producer = { writer in
                do {
                    let trailers = try await InstrumentationContext.$current.withValue(spanContext) {
                        try await producer(writer)
                    }
                    Self.end(span, nil)
                    return trailers
                } catch {
                    Self.end(span, error)
                    throw error
                }
            }
            response.accepted = .success(contents)
        case .failure(let error):
            Self.end(span, error)
        }
        return response
    }

    static func end(_ span: any Span, _ error: (any Error)?) {
        let code: RPCError.Code? =
            switch error {
            case nil: nil
            case let e as RPCError: e.code
            case let e as any RPCErrorConvertible: e.rpcErrorCode
            case is CancellationError: .cancelled
            default: .unknown
            }
        span.attributes["rpc.grpc.status_code"] = code?.rawValue ?? 0
        if let code {
            span.setStatus(SpanStatus(code: .error, message: MetricsInterceptor.name(code)))
        }
        span.end()
    }
}
