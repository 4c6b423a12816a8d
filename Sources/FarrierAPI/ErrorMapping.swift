import FarrierControl
import FarrierCore
import GRPCCore

// The gRPC edge's one mapping from Farrier's errors to status codes: a handler throws the
// store's or the controller's error as it is, and grpc-swift ends the call with the code below
// and the error's message. Nothing here looks at message text.
//
// Every such error also carries `farrier-error` metadata naming what failed, so a client tells
// an error the server sent from one its transport made (both may be `unavailable`: a database
// or a BMC that cannot be reached, or the server itself) without reading the message.

/// The metadata key of the server's errors; its value is the failure's kind.
public let farrierErrorMetadataKey = "farrier-error"

extension StoreError: RPCErrorConvertible {
    public var rpcErrorCode: RPCError.Code {
        switch code {
        case .alreadyExists: .alreadyExists
        case .inUse: .failedPrecondition
        case .notFound: .notFound
        case .unavailable: .unavailable
        case .corrupt: .internalError
        case .fenced: .aborted
        case .exhausted: .resourceExhausted
        }
    }
    public var rpcErrorMessage: String { message }
    public var rpcErrorMetadata: Metadata { [farrierErrorMetadataKey: "store-\(code.rawValue)"] }
}

extension ControlError: RPCErrorConvertible {
    public var rpcErrorCode: RPCError.Code {
        switch kind {
        case .notFound: .notFound
        case .invalid: .invalidArgument
        case .conflict: .failedPrecondition
        case .permission: .permissionDenied
        case .unavailable: .unavailable
        }
    }
    public var rpcErrorMessage: String { description }
    public var rpcErrorMetadata: Metadata { [farrierErrorMetadataKey: "control-\(kind)"] }
}
