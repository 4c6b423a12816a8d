import FarrierAPI
import FarrierCore
import Foundation
import GRPCCore
import GRPCInProcessTransport
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import SwiftProtobuf

/// The API as the console calls it: in process, through the same interceptors as the network
/// listener, with the logged-in user's token on every call. Tenancy and every check are the
/// API's: the console decides nothing about who may see or do what.
public struct ConsoleAPI: Sendable {
    let client: GRPCClient<InProcessTransport.Client>

    public init(client: GRPCClient<InProcessTransport.Client>) { self.client = client }

    var machines: Farrier_V1_MachineService.Client<InProcessTransport.Client> { .init(wrapping: client) }
    var tokens: Farrier_V1_TokenService.Client<InProcessTransport.Client> { .init(wrapping: client) }
    var images: Farrier_V1_ImageService.Client<InProcessTransport.Client> { .init(wrapping: client) }

    static func auth(_ token: String) -> Metadata { ["authorization": "Bearer \(token)"] }
}

/// The web console (issue 17 point 5): log in with an API token, exchanged for a session
/// cookie (HttpOnly, SameSite=Strict, Secure over TLS; every POST also carries the session's
/// CSRF token and, when the browser sends one, an Origin that is the console's own); the fleet
/// as a grid of machines by site, zone and rack, coloured by state and updated live over
/// server-sent events; a machine's page with its boot timeline as an SVG waterfall, live
/// progress, events and actions behind a confirm; the failed machines with retry and abort.
public func makeConsoleApplication(
    listen: String,
    api: ConsoleAPI,
    tls: (certificate: String, key: String)?,
    logger: Logger
) throws -> some ApplicationProtocol {
    let (host, port) = try splitHostPort(listen)
    let console = Console(api: api, sessions: ConsoleSessions(), secure: tls != nil, logger: logger)
    let router = Router()
    console.routes(router)
    var server: HTTPServerBuilder = .http1()
    if let tls {
        var config = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(tls.certificate).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: tls.key, format: .pem))
        )
        config.minimumTLSVersion = .tlsv12
        server = try .tls(.http1(), tlsConfiguration: config)
    }
    return Application(
        router: router,
        server: server,
        configuration: .init(address: .hostname(host, port: port), serverName: "farrier-console"),
        logger: logger
    )
}

struct Console: Sendable {
    let api: ConsoleAPI
    let sessions: ConsoleSessions
    let secure: Bool
    let logger: Logger
    static let cookie = "farrier_session"

    static let securityHeaders: HTTPFields = [
        .contentSecurityPolicy:
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        HTTPField.Name("X-Frame-Options")!: "DENY", HTTPField.Name("X-Content-Type-Options")!: "nosniff",
        HTTPField.Name("Referrer-Policy")!: "same-origin", .cacheControl: "no-store",
    ]

    static func html(_ text: String, status: HTTPResponse.Status = .ok, extra: HTTPFields = [:]) -> Response {
        var headers = securityHeaders
        headers[.contentType] = "text/html; charset=utf-8"
        headers.append(contentsOf: extra)
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func asset(_ text: String, type: String) -> Response {
        var headers = securityHeaders
        headers[.contentType] = type
        headers[.cacheControl] = "max-age=300"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func redirect(_ location: String, extra: HTTPFields = [:]) -> Response {
        var headers = securityHeaders
        headers[.location] = location
        headers.append(contentsOf: extra)
        return Response(status: .seeOther, headers: headers)
    }

    func routes(_ router: Router<BasicRequestContext>) {
        router.get("/static/console.css") { _, _ in Self.asset(ConsoleAssets.css, type: "text/css; charset=utf-8") }
        router.get("/static/console.js") { _, _ in
            Self.asset(ConsoleAssets.js, type: "text/javascript; charset=utf-8")
        }
        router.get("/healthz") { _, _ in "ok\n" }
        router.get("/login") { _, _ in Self.html(Pages.login(error: nil)) }
        router.post("/login") { request, _ in try await login(request) }
        router.post("/logout") { request, _ in
            let (id, s) = try await signedIn(request)
            guard let s, let id else { return Self.redirect("/login") }
            let form = try await Self.form(request)
            guard checkPost(request, form, s) else { return forbidden() }
            await sessions.close(id)
            return Self.redirect("/login", extra: [.setCookie: cookie("", maxAge: 0)])
        }
        router.get("/") { request, _ in
            try await page(request) { s in
                let q = Self.urlencoded(request.uri.query ?? "")["q"] ?? ""
                do {
                    let machines = try await list(s, filter: q)
                    return Self.html(Pages.fleet(machines, filter: q, error: nil, session: s))
                } catch let e as FilterError {
                    return Self.html(Pages.fleet([], filter: q, error: e.message, session: s), status: .badRequest)
                }
            }
        }
        router.get("/failed") { request, _ in
            try await page(request) { s in
                var req = Farrier_V1_ListMachinesRequest()
                req.state = "failed"
                return Self.html(Pages.failed(try await all(s, req), session: s))
            }
        }
        router.get("/machines/:name") { request, context in
            let name = try context.parameters.require("name")
            return try await page(request) { s in
                var get = Farrier_V1_GetMachineRequest()
                get.nameOrMac = name
                get.timelineLimit = 200
                let m = try await api.machines.getMachine(get, metadata: ConsoleAPI.auth(s.token))
                let images =
                    m.state == "ready"
                    ? (try? await api.images.listImages(
                        Farrier_V1_ListImagesRequest(),
                        metadata: ConsoleAPI.auth(s.token)
                    ).images.map(\.name)) ?? [] : []
                let done = request.uri.queryParameters["done"].map(String.init).flatMap { Self.notices[$0] }
                return Self.html(Pages.machine(m, images: images, notice: done, error: nil, session: s))
            }
        }
        router.post("/machines/:name/actions") { request, context in
            let name = try context.parameters.require("name")
            let (id, signed) = try await signedIn(request)
            guard let s = signed else { return Self.redirect("/login") }
            let form = try await Self.form(request)
            guard checkPost(request, form, s) else { return forbidden() }
            let action = form["action"] ?? ""
            guard Self.notices[action] != nil else {
                return Self.html(
                    Pages.layout(
                        title: "Unknown action",
                        who: Pages.who(s),
                        csrf: s.csrf,
                        body: "<p class=\"error\" id=\"error\">unknown action '\(Pages.h(action))'</p>"
                    ),
                    status: .badRequest
                )
            }
            do {
                try await act(action, on: name, form: form, s)
            } catch let e as RPCError {
                return await errorPage(e, s, session: id)
            }
            return Self.redirect("/machines/\(Pages.path(name))?done=\(action)")
        }
        router.get("/events") { request, _ in
            let (_, signed) = try await signedIn(request)
            guard let s = signed else { return Response(status: .unauthorized) }
            var watch = Farrier_V1_WatchEventsRequest()
            if let name = request.uri.queryParameters["machine"], !name.isEmpty {
                watch.name = String(name)
                // A machine's page replays its stored events first (all of them: -1), then follows.
                watch.afterID = -1
            }
            // A browser that reconnects goes on after the last event it had.
            if let last = request.headers[HTTPField.Name("Last-Event-ID")!].flatMap({ Int64($0) }), last > 0 {
                watch.afterID = last
            }
            let watchRequest = watch
            let token = s.token
            let machines = api.machines
            let inbound = request.body
            var headers = Self.securityHeaders
            headers[.contentType] = "text/event-stream; charset=utf-8"
            return Response(
                status: .ok,
                headers: headers,
                body: ResponseBody { writer in
                    // The call runs beside the writer. The browser going away (the connection's
                    // inbound side closes) or the server shutting down ends the stream, the call
                    // with it; a comment every 15 s keeps proxies from closing a quiet one.
                    let (chunks, sink) = AsyncStream<String>.makeStream(bufferingPolicy: .bufferingNewest(1000))
                    let call = Task {
                        do {
                            try await machines.watchEvents(watchRequest, metadata: ConsoleAPI.auth(token)) { response in
                                for try await e in response.messages {
                                    sink.yield("id: \(e.id)\ndata: \(Self.eventJSON(e))\n\n")
                                }
                            }
                        } catch let e as RPCError {
                            sink.yield("event: refused\ndata: \(Self.jsonString(e.message))\n\n")
                        } catch {}
                        sink.finish()
                    }
                    let ping = Task {
                        while !Task.isCancelled {
                            try? await Task.sleep(for: .seconds(15))
                            sink.yield(": ping\n\n")
                        }
                    }
                    defer {
                        call.cancel()
                        ping.cancel()
                    }
                    try await withGracefulShutdownHandler {
                        try await inbound.consumeWithInboundCloseHandler { _ in
                            for await chunk in chunks { try await writer.write(ByteBuffer(string: chunk)) }
                        } onInboundClosed: {
                            sink.finish()
                        }
                    } onGracefulShutdown: {
                        sink.finish()
                    }
                    try? await writer.finish(nil)
                }
            )
        }
    }

    /// What an action that was accepted says on the machine's page.
    static let notices: [String: String] = [
        "power-on": "Power on sent.", "power-off": "Power off sent.", "power-cycle": "Power cycle sent.",
        "deploy": "Deploy started.", "release": "Release started: the disks are wiped, then it goes back to the pool.",
        "rescue": "Rescue started.", "exit-rescue": "Leaving rescue.", "restart": "Restart sent.",
        "retry": "The failed step runs again.", "abort": "The failed step was aborted.",
    ]

    func act(_ action: String, on name: String, form: [String: String], _ s: ConsoleSessions.Session) async throws {
        let auth = ConsoleAPI.auth(s.token)
        var ref = Farrier_V1_MachineRef()
        ref.name = name
        let machine = ref
        switch action {
        case "power-on", "power-off", "power-cycle":
            var p = Farrier_V1_PowerRequest()
            p.name = name
            p.action = String(action.dropFirst("power-".count))
            _ = try await api.machines.power(p, metadata: auth)
        case "deploy":
            var d = Farrier_V1_DeployMachineRequest()
            d.name = name
            d.image = form["image"] ?? ""
            d.project = form["project"] ?? ""
            _ = try await api.machines.deployMachine(d, metadata: auth)
        case "release":
            var r = Farrier_V1_ReleaseMachineRequest()
            r.name = name
            _ = try await api.machines.releaseMachine(r, metadata: auth)
        case "rescue": _ = try await api.machines.rescueMachine(machine, metadata: auth)
        case "exit-rescue": _ = try await api.machines.exitRescueMachine(machine, metadata: auth)
        case "restart": _ = try await api.machines.restartMachine(machine, metadata: auth)
        case "retry": _ = try await api.machines.retryMachine(machine, metadata: auth)
        case "abort": _ = try await api.machines.abortMachine(machine, metadata: auth)
        default: break
        }
    }

    func login(_ request: Request) async throws -> Response {
        let form = try await Self.form(request)
        guard sameOrigin(request) else { return forbidden() }
        let token = (form["token"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else { return Self.html(Pages.login(error: "give an API token"), status: .badRequest) }
        let who: Farrier_V1_Token
        do {
            who = try await api.tokens.whoAmI(Farrier_V1_WhoAmIRequest(), metadata: ConsoleAPI.auth(token))
        } catch let e as RPCError {
            logger.info("console login refused", metadata: ["error": "\(e.code)"])
            return Self.html(Pages.login(error: "that token was refused: \(e.message)"), status: .unauthorized)
        }
        let (id, _) = await sessions.open(
            token: token,
            name: who.name,
            admin: who.role == "admin",
            project: who.project.isEmpty ? nil : who.project
        )
        logger.info("console login", metadata: ["token.name": "\(who.name)", "role": "\(who.role)"])
        return Self.redirect("/", extra: [.setCookie: cookie(id, maxAge: Int(sessions.lifetime))])
    }

    func cookie(_ value: String, maxAge: Int) -> String {
        "\(Self.cookie)=\(value); Path=/; Max-Age=\(maxAge); HttpOnly; SameSite=Strict\(secure ? "; Secure" : "")"
    }

    func signedIn(_ request: Request) async throws -> (String?, ConsoleSessions.Session?) {
        guard let id = request.cookies[Self.cookie]?.value, !id.isEmpty else { return (nil, nil) }
        return (id, await sessions.session(id))
    }

    /// A page for a signed-in user, else the login page; the API's refusals as pages of their own.
    func page(_ request: Request, _ body: (ConsoleSessions.Session) async throws -> Response) async throws -> Response {
        let (id, signed) = try await signedIn(request)
        guard let s = signed, let id else { return Self.redirect("/login") }
        do { return try await body(s) } catch let e as RPCError { return await errorPage(e, s, session: id) }
    }

    /// The API's refusal as a page. A token it no longer accepts (revoked) ends the session.
    func errorPage(_ e: RPCError, _ s: ConsoleSessions.Session, session id: String?) async -> Response {
        if e.code == .unauthenticated {
            if let id { await sessions.close(id) }
            return Self.redirect("/login", extra: [.setCookie: cookie("", maxAge: 0)])
        }
        let status: HTTPResponse.Status =
            switch e.code {
            case .notFound: .notFound
            case .permissionDenied: .forbidden
            case .invalidArgument: .badRequest
            case .failedPrecondition, .alreadyExists, .aborted, .resourceExhausted: .conflict
            case .unavailable: .serviceUnavailable
            default: .internalServerError
            }
        return Self.html(
            Pages.layout(
                title: "Refused",
                who: Pages.who(s),
                csrf: s.csrf,
                body:
                    "<h1>Refused</h1><p class=\"error\" id=\"error\">\(Pages.h(e.message))</p><p><a href=\"/\">Back to the fleet</a></p>"
            ),
            status: status
        )
    }

    func forbidden() -> Response {
        Self.html(
            Pages.layout(
                title: "Refused",
                who: nil,
                csrf: nil,
                body:
                    "<p class=\"error\" id=\"error\">This form did not come from this console (CSRF token or origin mismatch).</p>"
            ),
            status: .forbidden
        )
    }

    /// A POST from a signed-in page: its session's CSRF token, and its own origin if the
    /// browser names one.
    func checkPost(_ request: Request, _ form: [String: String], _ s: ConsoleSessions.Session) -> Bool {
        guard sameOrigin(request), let given = form["csrf"] else { return false }
        return ConstantTime.equal(given, s.csrf)
    }

    func sameOrigin(_ request: Request) -> Bool {
        guard let origin = request.headers[.origin] else { return true }
        guard let authority = request.head.authority else { return false }
        return origin == "\(secure ? "https" : "http")://\(authority)"
    }

    struct FilterError: Error { var message: String }

    /// The machines a filter box selects: `state=`, `zone=`, `site=`, `project=` and
    /// `tag=KEY=VALUE`, as `machine list` takes them, and any other word a part of the name.
    func list(_ s: ConsoleSessions.Session, filter: String) async throws -> [Farrier_V1_Machine] {
        var req = Farrier_V1_ListMachinesRequest()
        var words: [String] = []
        for token in filter.split(whereSeparator: \.isWhitespace).map(String.init) {
            guard let eq = token.firstIndex(of: "=") else {
                words.append(token)
                continue
            }
            let key = String(token[..<eq])
            let value = String(token[token.index(after: eq)...])
            switch key {
            case "state":
                guard Pages.states.contains(value) else {
                    throw FilterError(message: "state '\(value)' is not one of \(Pages.states.joined(separator: ", "))")
                }
                req.state = value
            case "zone": req.zone = value
            case "site": req.site = value
            case "project": req.project = value
            case "tag":
                guard let e2 = value.firstIndex(of: "="), e2 != value.startIndex else {
                    throw FilterError(message: "tag wants KEY=VALUE, as tag=rack=r1")
                }
                req.tags[String(value[..<e2])] = String(value[value.index(after: e2)...])
            default:
                throw FilterError(
                    message:
                        "unknown filter '\(key)': use state=, zone=, site=, project=, tag=KEY=VALUE, or a part of a name"
                )
            }
        }
        let machines = try await all(s, req)
        return words.isEmpty ? machines : machines.filter { m in words.allSatisfy { m.name.contains($0) } }
    }

    /// Every page of a listing (at most 50 000 machines).
    func all(
        _ s: ConsoleSessions.Session,
        _ request: Farrier_V1_ListMachinesRequest
    ) async throws
        -> [Farrier_V1_Machine]
    {
        var req = request
        req.pageSize = 1000
        var out: [Farrier_V1_Machine] = []
        for _ in 0..<50 {
            let page = try await api.machines.listMachines(req, metadata: ConsoleAPI.auth(s.token))
            out += page.machines
            guard !page.nextPageToken.isEmpty else { break }
            req.pageToken = page.nextPageToken
        }
        return out
    }

    /// An application/x-www-form-urlencoded body (at most 64 KiB).
    static func form(_ request: Request) async throws -> [String: String] {
        var request = request
        let body = try await request.collectBody(upTo: 65536)
        return urlencoded(String(buffer: body))
    }

    /// Fields of application/x-www-form-urlencoded text (a form's body, or a query: `+` is a space).
    static func urlencoded(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ s: Substring) -> String {
                s.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? ""
            }
            out[decode(kv[0])] = kv.count > 1 ? decode(kv[1]) : ""
        }
        return out
    }

    static func jsonString(_ s: String) -> String {
        (try? String(decoding: JSONEncoder().encode(s), as: UTF8.self)) ?? "\"\""
    }

    /// An event as the page's script reads it.
    static func eventJSON(_ e: Farrier_V1_MachineEvent) -> String {
        struct Event: Encodable {
            var id: Int64
            var time: String
            var machine, kind, state, phase, message: String
            var stage: String?
            var bytesDone, bytesTotal: Int64?
        }
        let p = e.hasProgress ? e.progress : nil
        let event = Event(
            id: e.id,
            time: e.time.date.formatted(.iso8601),
            machine: e.machine,
            kind: e.kind,
            state: e.state,
            phase: e.phase,
            message: e.message,
            stage: p?.stage,
            bytesDone: p?.bytesDone,
            bytesTotal: p?.bytesTotal
        )
        return (try? String(decoding: JSONEncoder().encode(event), as: UTF8.self)) ?? "{}"
    }
}
