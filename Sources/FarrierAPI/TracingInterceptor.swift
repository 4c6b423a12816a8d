import FarrierCore
import GRPCCore
import Synchronization
import Tracing

/// Makes every RPC a server span, the child of the caller's W3C `traceparent` when it sent one,
/// and runs the handler (and a streaming RPC's producer) in its context: a step the call begins
/// stores that context, so the whole step lands in the call's trace. It runs first, outside the
/// metrics and authentication interceptors: a refused call is traced too, with its status.
public struct TracingInterceptor: ServerInterceptor {
    public init() {}

    struct CarrierExtractor: Extractor {
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    }

    /// Only the W3C fields, checked (`StepTrace.sanitized`): the rest of the metadata, the
    /// caller's token among it, never reaches the tracer (which may quote what it cannot read).
    static func carrier(_ metadata: Metadata) -> [String: String]? {
        var c: [String: String] = [:]
        for key in ["traceparent", "tracestate"] {
            if let v = metadata[stringValues: key].first(where: { _ in true }) { c[key] = v }
        }
        return StepTrace.sanitized(c)
    }

    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        var parent = InstrumentationContext.current ?? .topLevel
        if let carrier = Self.carrier(request.metadata) {
            InstrumentationSystem.instrument.extract(carrier, into: &parent, using: CarrierExtractor())
        }
        let method = context.descriptor
        let span = SpanBox(
            InstrumentationSystem.tracer.startSpan(method.fullyQualifiedMethod, context: parent, ofKind: .server)
        )
        span.span.attributes["rpc.system"] = "grpc"
        span.span.attributes["rpc.service"] = method.service.fullyQualifiedService
        span.span.attributes["rpc.method"] = method.method
        let spanContext = span.span.context
        var response: StreamingServerResponse<Output>
        do {
            response = try await InstrumentationContext.$current.withValue(spanContext) {
                try await next(request, context)
            }
        } catch {
            span.end(error)
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
                    span.end(nil)
                    return trailers
                } catch {
                    span.end(error)
                    throw error
                }
            }
            response.accepted = .success(contents)
        case .failure(let error):
            span.end(error)
        }
        return response
    }

    /// A call's span, ended once: with the call's status, or, when the transport dropped the
    /// response before its producer ran (the client reset the stream), as cancelled once the
    /// last reference goes.
    final class SpanBox: Sendable {
        let span: any Span
        let ended = Atomic<Bool>(false)

        init(_ span: any Span) { self.span = span }

        func end(_ error: (any Error)?) {
            guard !ended.exchange(true, ordering: .acquiringAndReleasing) else { return }
            TracingInterceptor.end(span, error)
        }

        deinit { end(CancellationError()) }
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
