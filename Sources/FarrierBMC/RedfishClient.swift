import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization
import SystemSupport

/// Where and how to reach one Redfish service.
public struct RedfishEndpoint: Sendable, Hashable {
    /// `https://host[:port]` or `http://host[:port]`.
    public var baseURL: String
    public var user: String
    public var password: String
    /// The ComputerSystem to drive (`@odata.id` or its last path segment); nil: the service's only one.
    public var system: String?
    /// Verify the BMC's TLS certificate (default). Off only per BMC, for self-signed certificates.
    public var verifyTLS: Bool
    public var timeouts: BMCTimeouts

    public init(
        baseURL: String,
        user: String,
        password: String,
        system: String? = nil,
        verifyTLS: Bool = true,
        timeouts: BMCTimeouts = BMCTimeouts(attempt: .seconds(10), retries: 2, operation: .seconds(60))
    ) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.user = user
        self.password = password
        self.system = system
        self.verifyTLS = verifyTLS
        self.timeouts = timeouts
    }
}

/// A Redfish (DMTF DSP0266) BMC driver.
///
/// It discovers the service root and the Systems collection instead of assuming `/Systems/1`,
/// logs in with a session when the service has a SessionService (basic auth otherwise), logs
/// the session out at `close()`, sends `If-Match` with the ETag it read, and follows task
/// monitors when an action answers 202.
public final class RedfishClient: BMC, Sendable {
    public let endpoint: RedfishEndpoint
    let http: HTTPClient
    let logger: Logger
    let gate = SerialGate()
    struct Session {
        var token: String
        var location: String?
    }
    /// nil: not tried yet; .some(nil): the service has no sessions, use basic auth.
    let session = Mutex<Session??>(nil)
    let systemPath = Mutex<String?>(nil)

    /// The HTTP client every Redfish driver in the process shares: a connection pool per BMC
    /// address (and TLS configuration), and one TLS context per TLS configuration, where a
    /// client per driver held a pool, a state machine and, over https, a TLS context with the
    /// system's trust store for each of a fleet's machines (10 000 of them while a fleet
    /// commissions; README, Benchmarks). Idle connections close after 10 s: a machine uses its
    /// BMC at the start and end of a step, and BMCs have few connection slots. The per-host
    /// limit bounds what one address sees when it serves many systems (an aggregator, the
    /// simulator); each driver still runs one operation at a time. Never shut down.
    static let sharedHTTP: HTTPClient = {
        var config = HTTPClient.Configuration(redirectConfiguration: .disallow)
        config.connectionPool = .init(idleTimeout: .seconds(10), concurrentHTTP1ConnectionsPerHostSoftLimit: 16)
        // The BMC spans (bmc.*) cover these calls; AHC's own would make every power-sync read
        // a trace of its own.
        config.tracing.tracer = nil
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }()
    let tls: TLSConfiguration

    public init(_ endpoint: RedfishEndpoint, logger: Logger = Logger(label: "farrier.redfish")) {
        self.endpoint = endpoint
        var tls = TLSConfiguration.makeClientConfiguration()
        if !endpoint.verifyTLS { tls.certificateVerification = .none }
        self.tls = tls
        http = Self.sharedHTTP
        var l = logger
        l[metadataKey: "bmc"] = "\(endpoint.baseURL)"
        self.logger = l
    }

    public var address: String { endpoint.baseURL }

    // MARK: HTTP

    struct Reply: @unchecked Sendable {
        var status: HTTPResponseStatus
        var headers: HTTPHeaders
        var json: [String: Any]
        var bodyText: String
    }

    enum Auth { case none, current }

    /// A path or URL the BMC gave, as a URL on the BMC's own origin. Credentials go only to the
    /// BMC: an absolute URL (a `Location`, an `@odata.id`) on any other scheme, host or port is
    /// refused, so a BMC (or whoever answers for it) cannot send the password elsewhere.
    func url(_ path: String) throws -> String {
        guard path.lowercased().hasPrefix("http://") || path.lowercased().hasPrefix("https://") else {
            guard path.hasPrefix("/") else {
                throw BMCError(
                    .protocolError,
                    address: address,
                    "the BMC gave a relative reference '\(path.prefix(200))'"
                )
            }
            return endpoint.baseURL + path
        }
        guard Self.origin(path) == Self.origin(endpoint.baseURL) else {
            throw BMCError(
                .protocolError,
                address: address,
                "the BMC pointed to '\(path.prefix(200))', off its own origin; not followed (credentials stay on \(endpoint.baseURL))"
            )
        }
        return path
    }

    /// scheme://host:port of a URL, lower-cased, with the scheme's default port made explicit.
    static func origin(_ url: String) -> String? {
        guard let u = URLComponents(string: url), let scheme = u.scheme?.lowercased(), let host = u.host?.lowercased()
        else { return nil }
        let port = u.port ?? (scheme == "https" ? 443 : scheme == "http" ? 80 : -1)
        return "\(scheme)://\(host):\(port)"
    }

    /// One HTTP exchange; retries with backoff on connection errors and 5xx/503, within bounds.
    func send(
        _ method: HTTPMethod,
        _ path: String,
        body: [String: Any]? = nil,
        headers extra: [(String, String)] = [],
        auth: Auth = .current
    ) async throws -> Reply {
        var attempt = 0
        var delay: Duration = .milliseconds(250)
        while true {
            do {
                let reply = try await sendOnce(method, path, body: body, headers: extra, auth: auth)
                if reply.status == .serviceUnavailable, attempt < endpoint.timeouts.retries {
                    attempt += 1
                    try await Task.sleep(for: delay)
                    delay *= 2
                    continue
                }
                return reply
            } catch let e as BMCError {
                throw e
            } catch {
                if attempt >= endpoint.timeouts.retries {
                    throw BMCError.timeout(
                        address,
                        after: endpoint.timeouts.attempt * (endpoint.timeouts.retries + 1),
                        doing: "\(method) \(path) (\(error))"
                    )
                }
                attempt += 1
                try await Task.sleep(for: delay)
                delay *= 2
            }
        }
    }

    /// One request; a redirect is followed by hand (at most 3), and only on the BMC's origin.
    func sendOnce(
        _ method: HTTPMethod,
        _ path: String,
        body: [String: Any]?,
        headers extra: [(String, String)],
        auth: Auth
    ) async throws -> Reply {
        var target = try url(path)
        var method = method
        var body = body
        for _ in 0..<4 {
            let reply = try await sendOne(method, target, body: body, headers: extra, auth: auth)
            guard [301, 302, 303, 307, 308].contains(reply.status.code),
                let location = reply.headers.first(name: "Location")
            else {
                return reply
            }
            // Resolved against the request's URL (RFC 3986), then held to the BMC's origin.
            guard let resolved = URL(string: location, relativeTo: URL(string: target))?.absoluteString else {
                throw BMCError(
                    .protocolError,
                    address: address,
                    "the BMC redirected to '\(location.prefix(200))', which is not a URL"
                )
            }
            target = try url(resolved)  // off-origin: refused before anything is sent
            // 303, and 301/302 after a POST, turn into a GET without the body (RFC 9110 15.4).
            if reply.status.code == 303 || ([301, 302].contains(reply.status.code) && method == .POST) {
                method = .GET
                body = nil
            }
        }
        throw BMCError(.protocolError, address: address, "more than 3 redirects for \(method) \(path)")
    }

    func sendOne(
        _ method: HTTPMethod,
        _ path: String,
        body: [String: Any]?,
        headers extra: [(String, String)],
        auth: Auth
    ) async throws -> Reply {
        var request = HTTPClientRequest(url: try url(path))
        request.tlsConfiguration = tls
        request.method = method
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "OData-Version", value: "4.0")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
        }
        if auth == .current {
            switch session.withLock({ $0 }) {
            case .some(.some(let s)):
                request.headers.add(name: "X-Auth-Token", value: s.token)
            default:
                let basic = Data("\(endpoint.user):\(endpoint.password)".utf8).base64EncodedString()
                request.headers.add(name: "Authorization", value: "Basic \(basic)")
            }
        }
        for (k, v) in extra { request.headers.add(name: k, value: v) }
        let response = try await http.execute(
            request,
            timeout: .nanoseconds(endpoint.timeouts.attempt.nanosecondsClamped)
        )
        let data = try await response.body.collect(upTo: 4 << 20)
        let text = String(buffer: data)
        let json = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
        return Reply(status: response.status, headers: response.headers, json: json, bodyText: text)
    }

    /// Sends with the current credentials; on 401 with a session token, logs in again once.
    func authorized(
        _ method: HTTPMethod,
        _ path: String,
        body: [String: Any]? = nil,
        headers: [(String, String)] = []
    ) async throws -> Reply {
        try await login()
        var reply = try await send(method, path, body: body, headers: headers)
        if reply.status == .unauthorized, case .some(.some) = session.withLock({ $0 }) {
            session.withLock { $0 = nil }
            try await login()
            reply = try await send(method, path, body: body, headers: headers)
        }
        if reply.status == .unauthorized || reply.status == .forbidden {
            throw BMCError.authenticationFailed(address)
        }
        return reply
    }

    func failure(_ reply: Reply, doing what: String) -> BMCError {
        var message = "HTTP \(reply.status.code)"
        if let error = reply.json["error"] as? [String: Any] {
            let extended =
                (error["@Message.ExtendedInfo"] as? [[String: Any]])?.compactMap { $0["Message"] as? String } ?? []
            message += ": " + ([error["message"] as? String].compactMap { $0 } + extended).joined(separator: "; ")
        }
        if reply.status == .notImplemented || reply.status == .methodNotAllowed {
            return BMCError.unsupported(address, operation: what, detail: message)
        }
        return BMCError(.rejected, address: address, "BMC \(address) refused \(what): \(message)")
    }

    // MARK: Discovery and sessions

    /// Logs in once per client when the service offers sessions.
    func login() async throws {
        if session.withLock({ $0 }) != nil { return }
        let root = try await send(.GET, "/redfish/v1/", auth: .none)
        guard root.status == .ok else { throw failure(root, doing: "reading the service root") }
        let links = root.json["Links"] as? [String: Any]
        let sessionsPath = ((links?["Sessions"] as? [String: Any])?["@odata.id"] as? String)
        guard let sessionsPath else {
            session.withLock { $0 = .some(nil) }
            return
        }
        let reply = try await send(
            .POST,
            sessionsPath,
            body: ["UserName": endpoint.user, "Password": endpoint.password],
            auth: .none
        )
        if reply.status == .unauthorized || reply.status == .forbidden || reply.status == .badRequest {
            throw BMCError.authenticationFailed(address)
        }
        guard reply.status == .created || reply.status == .ok, let token = reply.headers.first(name: "X-Auth-Token")
        else {
            // A SessionService that does not work: fall back to basic auth.
            logger.debug(
                "Redfish session login failed; using basic auth",
                metadata: ["http.status": "\(reply.status.code)"]
            )
            session.withLock { $0 = .some(nil) }
            return
        }
        let location = reply.headers.first(name: "Location") ?? (reply.json["@odata.id"] as? String)
        session.withLock { $0 = .some(Session(token: token, location: location)) }
    }

    /// The ComputerSystem path: the one named in the endpoint, or the only member.
    func system() async throws -> String {
        if let s = systemPath.withLock({ $0 }) { return s }
        let root = try await send(.GET, "/redfish/v1/", auth: .none)
        let systemsPath = (root.json["Systems"] as? [String: Any])?["@odata.id"] as? String ?? "/redfish/v1/Systems"
        // A named system is read directly first: a service with thousands of systems (a
        // chassis manager, a simulator) would otherwise send its whole collection to each client.
        if let wanted = endpoint.system, !wanted.isEmpty {
            let direct = wanted.hasPrefix("/") ? wanted : systemsPath + "/" + wanted
            do {
                let probe = try await authorized(.GET, direct)
                if probe.status == .ok, let id = probe.json["@odata.id"] as? String,
                    id == direct || id.hasPrefix(systemsPath + "/")
                {
                    systemPath.withLock { $0 = id }
                    return id
                }
            } catch let e as BMCError where e.kind == .authenticationFailed {
                throw e
            } catch {
                // Anything else (a service that does not answer names this way): the collection decides.
                logger.debug(
                    "Redfish system read directly failed; listing the systems",
                    metadata: ["system": "\(direct)", "error": "\(error)"]
                )
            }
        }
        let collection = try await authorized(.GET, systemsPath)
        guard collection.status == .ok else { throw failure(collection, doing: "listing systems") }
        let members = (collection.json["Members"] as? [[String: Any]] ?? []).compactMap { $0["@odata.id"] as? String }
        let chosen: String
        if let wanted = endpoint.system {
            guard
                let match = members.first(where: {
                    $0 == wanted || $0.split(separator: "/").last.map(String.init) == wanted
                })
            else {
                // Some services redirect name paths to UUID paths: try it directly.
                let direct = wanted.hasPrefix("/") ? wanted : systemsPath + "/" + wanted
                let probe = try await authorized(.GET, direct)
                guard probe.status == .ok, let id = probe.json["@odata.id"] as? String else {
                    throw BMCError(
                        .rejected,
                        address: address,
                        "BMC \(address) has no system \(wanted); it has \(members.joined(separator: ", "))"
                    )
                }
                systemPath.withLock { $0 = id }
                return id
            }
            chosen = match
        } else {
            guard members.count == 1 else {
                throw BMCError(
                    .rejected,
                    address: address,
                    members.isEmpty
                        ? "BMC \(address) lists no systems"
                        : "BMC \(address) manages \(members.count) systems (\(members.joined(separator: ", "))); name one with ?system=ID in the BMC URL"
                )
            }
            chosen = members[0]
        }
        systemPath.withLock { $0 = chosen }
        return chosen
    }

    // MARK: BMC

    public func info() async throws -> BMCInfo {
        try await gate.run {
            let path = try await self.system()
            let s = try await self.authorized(.GET, path)
            guard s.status == .ok else { throw self.failure(s, doing: "reading \(path)") }
            return BMCInfo(
                driver: "redfish",
                address: self.address,
                manufacturer: s.json["Manufacturer"] as? String ?? "",
                model: s.json["Model"] as? String ?? "",
                firmware: s.json["BiosVersion"] as? String ?? "",
                details: [
                    "system": path, "uuid": s.json["UUID"] as? String ?? "",
                    "power_state": s.json["PowerState"] as? String ?? "",
                ]
            )
        }
    }

    public func powerState() async throws -> PowerState {
        try await gate.run {
            let path = try await self.system()
            let s = try await self.authorized(.GET, path)
            guard s.status == .ok else { throw self.failure(s, doing: "reading \(path)") }
            switch s.json["PowerState"] as? String {
            case "On", "PoweringOff": return .on
            case "Off", "PoweringOn": return .off
            default: return .unknown
            }
        }
    }

    /// The ResetTypes in order of preference for each action.
    static func resetTypes(for action: PowerAction) -> [String] {
        switch action {
        case .on: ["On", "ForceOn"]
        case .off: ["ForceOff"]
        case .cycle: ["PowerCycle", "FullPowerCycle", "ForceRestart"]
        case .reset: ["ForceRestart", "GracefulRestart"]
        case .softOff: ["GracefulShutdown"]
        }
    }

    public func power(_ action: PowerAction) async throws {
        try await gate.run {
            let path = try await self.system()
            let s = try await self.authorized(.GET, path)
            guard s.status == .ok else { throw self.failure(s, doing: "reading \(path)") }
            guard let reset = (s.json["Actions"] as? [String: Any])?["#ComputerSystem.Reset"] as? [String: Any],
                let target = reset["target"] as? String
            else {
                throw BMCError.unsupported(
                    self.address,
                    operation: "power \(action.rawValue)",
                    detail: "\(path) has no ComputerSystem.Reset action"
                )
            }
            var allowed = reset["ResetType@Redfish.AllowableValues"] as? [String]
            if allowed == nil, let infoPath = reset["@Redfish.ActionInfo"] as? String {
                let info = try await self.authorized(.GET, infoPath)
                let parameters = info.json["Parameters"] as? [[String: Any]] ?? []
                allowed = parameters.first { $0["Name"] as? String == "ResetType" }?["AllowableValues"] as? [String]
            }
            let candidates = Self.resetTypes(for: action)
            // Without a list, try the first candidate and let the BMC say no.
            guard let resetType = allowed.map({ list in candidates.first { list.contains($0) } }) ?? candidates.first
            else {
                throw BMCError.unsupported(
                    self.address,
                    operation: "power \(action.rawValue)",
                    detail: "it allows ResetType \((allowed ?? []).joined(separator: ", "))"
                )
            }
            let reply = try await self.authorized(.POST, target, body: ["ResetType": resetType])
            try await self.finish(reply, doing: "power \(action.rawValue) (ResetType \(resetType))")
        }
    }

    /// Accepts 200/204, and follows a 202 task monitor to its end, within the operation bound.
    func finish(_ reply: Reply, doing what: String) async throws {
        switch reply.status.code {
        case 200, 201, 204:
            return
        case 202:
            guard let monitor = reply.headers.first(name: "Location") else { return }
            let deadline = ContinuousClock.now + endpoint.timeouts.operation
            while ContinuousClock.now < deadline {
                let wait = Int(reply.headers.first(name: "Retry-After") ?? "") ?? 1
                try await Task.sleep(for: .seconds(max(1, min(wait, 10))))
                let poll = try await authorized(.GET, monitor)
                if poll.status.code == 202 { continue }
                if poll.status == .notFound { return }  // monitor gone: done
                let state = poll.json["TaskState"] as? String
                if let state, ["Exception", "Killed", "Cancelled"].contains(state) {
                    let messages = (poll.json["Messages"] as? [[String: Any]] ?? []).compactMap {
                        $0["Message"] as? String
                    }
                    throw BMCError(
                        .rejected,
                        address: address,
                        "BMC \(address) task for \(what) ended \(state): \(messages.joined(separator: "; "))"
                    )
                }
                if let state, state != "Completed" { continue }
                guard poll.status.code < 300 else { throw failure(poll, doing: what) }
                return
            }
            throw BMCError.timeout(address, after: endpoint.timeouts.operation, doing: what)
        default:
            throw failure(reply, doing: what)
        }
    }

    public func setBootOverride(_ override: BootOverride) async throws {
        try await gate.run {
            let path = try await self.system()
            let body: [String: Any] = [
                "Boot": [
                    "BootSourceOverrideTarget": override.device == .pxe ? "Pxe" : "Hdd",
                    "BootSourceOverrideEnabled": override.persistent ? "Continuous" : "Once",
                    "BootSourceOverrideMode": override.efi ? "UEFI" : "Legacy",
                ]
            ]
            let what = "boot device \(override.device.rawValue)"
            var current = try await self.authorized(.GET, path)
            guard current.status == .ok else { throw self.failure(current, doing: "reading \(path)") }
            if let boot = current.json["Boot"] as? [String: Any],
                let targets = boot["BootSourceOverrideTarget@Redfish.AllowableValues"] as? [String],
                !targets.contains(override.device == .pxe ? "Pxe" : "Hdd")
            {
                throw BMCError.unsupported(
                    self.address,
                    operation: what,
                    detail: "it allows \(targets.joined(separator: ", "))"
                )
            }
            for attempt in 0..<2 {
                var headers: [(String, String)] = []
                if let etag = current.headers.first(name: "ETag") ?? current.json["@odata.etag"] as? String {
                    headers.append(("If-Match", etag))
                }
                let reply = try await self.authorized(.PATCH, path, body: body, headers: headers)
                // 412: our ETag is stale; 428: the service wants If-Match. Read again, once.
                if reply.status.code == 412 || reply.status.code == 428, attempt == 0 {
                    current = try await self.authorized(.GET, path)
                    continue
                }
                try await self.finish(reply, doing: what)
                return
            }
        }
    }

    public func bootOverride() async throws -> BootOverride? {
        try await gate.run {
            let path = try await self.system()
            let s = try await self.authorized(.GET, path)
            guard s.status == .ok, let boot = s.json["Boot"] as? [String: Any] else {
                throw self.failure(s, doing: "reading \(path)")
            }
            let device: BootDevice
            switch boot["BootSourceOverrideTarget"] as? String {
            case "Pxe": device = .pxe
            case "Hdd": device = .disk
            default: return nil
            }
            if boot["BootSourceOverrideEnabled"] as? String == "Disabled" { return nil }
            return BootOverride(
                device: device,
                persistent: boot["BootSourceOverrideEnabled"] as? String == "Continuous",
                efi: boot["BootSourceOverrideMode"] as? String == "UEFI"
            )
        }
    }

    public func openConsole() async throws -> any ConsoleSession {
        throw BMCError.unsupported(
            address,
            operation: "serial console",
            detail: "Redfish has no standard serial console; enroll the machine with ipmi:// for SOL"
        )
    }

    /// Logs the session out (BMCs cap sessions; a leaked one locks users out).
    public func close() async {
        let s = session.withLock { s -> Session? in
            defer { s = nil }
            if case .some(.some(let session)) = s { return session }
            return nil
        }
        if let s, let location = s.location, let target = try? url(location) {
            var request = HTTPClientRequest(url: target)
            request.tlsConfiguration = tls
            request.method = .DELETE
            request.headers.add(name: "X-Auth-Token", value: s.token)
            _ = try? await http.execute(request, timeout: .seconds(5))
        }
    }
}
