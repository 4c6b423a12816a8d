import Crypto
import FarrierControl
import FarrierCore
import Foundation
import GRPCCore
import SystemSupport

/// The verified caller of the RPC being served.
public enum Caller {
    @TaskLocal public static var principal: Principal?

    /// The caller, or UNAUTHENTICATED (the interceptor always sets one; this guards wiring).
    static func current() throws -> Principal {
        guard let p = principal else { throw RPCError(code: .unauthenticated, message: "no verified caller") }
        return p
    }

    /// The caller, who must hold an admin token.
    static func admin(_ what: String) throws -> Principal {
        let p = try current()
        guard p.isAdmin else {
            throw RPCError(
                code: .permissionDenied,
                message:
                    "\(what) needs an admin token; token '\(p.tokenName)' is a member of project \(p.project ?? "-")"
            )
        }
        return p
    }
}

/// Verifies `authorization: Bearer <token>` on every RPC and runs the handler, including the
/// response producer of streaming RPCs, with `Caller.principal` set.
public struct AuthInterceptor: ServerInterceptor {
    let store: any TenancyStore

    public init(store: any TenancyStore) { self.store = store }

    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        // A joining site has no API token yet: its one-time join token, checked by the handler,
        // is its credential. Every other RPC needs a token.
        if context.descriptor == Farrier_V1_SiteService.Method.JoinSite.descriptor {
            return try await next(request, context)
        }
        guard let header = request.metadata[stringValues: "authorization"].first(where: { _ in true }) else {
            throw RPCError(
                code: .unauthenticated,
                message:
                    "no API token: pass --token or set FARRIER_TOKEN (the first admin token is in DATA-DIR/admin.token)"
            )
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            throw RPCError(code: .unauthenticated, message: "authorization must be 'Bearer <token>'")
        }
        guard let token = try await store.token(secretSHA256: TokenSecret.hash(String(parts[1]))) else {
            throw RPCError(code: .unauthenticated, message: "API token is not valid (revoked, or from another server)")
        }
        let principal = Principal(tokenID: token.id, tokenName: token.name, role: token.role, project: token.project)
        var response = try await Caller.$principal.withValue(principal) { try await next(request, context) }
        // Streaming producers run after the handler returned: bind the caller there too.
        if case .success(var contents) = response.accepted {
            let producer = contents.producer
            contents.producer = { writer in
                try await Caller.$principal.withValue(principal) { try await producer(writer) }
            }
            response.accepted = .success(contents)
        }
        return response
    }
}

/// Makes the first admin token when the server has none: printed once on stderr and saved to
/// `<dataDir>/admin.token` (0600), where the CLI on this host finds it.
public func bootstrapAdminToken(store: any TenancyStore, dataDir: String) async throws -> String? {
    // Where an admin's deploys go when they name no project. Replicas starting together on an
    // empty database race to make it; one does, and the others find it made.
    if try await store.project(name: "default") == nil {
        do {
            try await store.createProject(
                Project(name: "default", description: "admin deploys that name no project", created: Date())
            )
        } catch let e as StoreError where e.code == .alreadyExists {}
    }
    guard try await store.tokens().isEmpty else { return nil }
    let secret = TokenSecret.generate()
    // A pending file of this call's own (pid and a random part: calls in one process too).
    let path = dataDir + "/admin.token"
    let pending = path + ".new-\(getpid())-\(UUID().uuidString.prefix(8))"
    do { try SecretFile.create(pending, Array((secret + "\n").utf8), exclusive: true) } catch {
        unlink(pending)
        throw RPCError(code: .internalError, message: error.description)
    }
    do {
        // One id for the first admin token: of replicas starting together on an empty database
        // (sharing a data directory), exactly one creates it and puts its secret in the file.
        try await store.createToken(
            APIToken(
                id: "bootstrap-admin",
                name: "admin",
                role: .admin,
                project: nil,
                secretSHA256: TokenSecret.hash(secret),
                created: Date()
            )
        )
    } catch {
        unlink(pending)
        if let e = error as? StoreError, e.code == .alreadyExists { return nil }
        throw error
    }
    guard rename(pending, path) == 0 else {
        throw RPCError(code: .internalError, message: "cannot rename \(pending) to \(path)")
    }
    return secret
}
