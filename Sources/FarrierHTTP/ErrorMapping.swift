import FarrierControl
import FarrierCore
import HTTPTypes
import Hummingbird

// The HTTP edge's one mapping from Farrier's errors to statuses: a route throws the store's or
// the controller's error as it is, and Hummingbird answers with the status below and the
// error's message (as HTTPError would). Nothing here looks at message text.

extension StoreError: ResponseGenerator, HTTPResponseError {
    public var status: HTTPResponse.Status {
        switch code {
        case .alreadyExists, .inUse: .conflict
        case .notFound: .notFound
        case .unavailable: .serviceUnavailable
        case .corrupt: .internalServerError
        case .fenced: .conflict
        case .exhausted: .conflict
        }
    }
    public func response(from request: Request, context: some RequestContext) throws -> Response {
        try HTTPError(status, message: message + "\n").response(from: request, context: context)
    }
}

extension ControlError: ResponseGenerator, HTTPResponseError {
    public var status: HTTPResponse.Status {
        switch kind {
        case .permission: .forbidden
        case .notFound: .notFound
        case .invalid: .badRequest
        case .conflict: .conflict
        case .unavailable: .serviceUnavailable
        }
    }
    public func response(from request: Request, context: some RequestContext) throws -> Response {
        try HTTPError(status, message: description + "\n").response(from: request, context: context)
    }
}
