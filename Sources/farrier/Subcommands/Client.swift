import ArgumentParser
import FarrierAPI
import FarrierLab
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization
import SystemSupport
import Yams

/// `~/.config/farrier/config.yaml` (or `$XDG_CONFIG_HOME/farrier/config.yaml`):
///
/// ```yaml
/// server: farrier.example.net:7700
/// token: fa_…
/// tls: true
/// ca-file: /etc/farrier/ca.pem
/// current-context: eu
/// contexts:
///   eu: {server: "eu-a:7700,eu-b:7700", token-file: /home/ops/.farrier/eu.token, ca-file: /etc/farrier/eu-ca.pem}
/// ```
struct CLIConfig: Codable {
    var server: String?
    var token: String?
    var tls: Bool?
    var caFile: String?
    var currentContext: String?
    var contexts: [String: Context]?

    /// A named server (or replicas) and the token file to use with it (`farrier context`).
    struct Context: Codable {
        var server: String
        var tokenFile: String?
        var tls: Bool?
        var caFile: String?

        enum CodingKeys: String, CodingKey {
            case server, tls
            case tokenFile = "token-file"
            case caFile = "ca-file"
        }
    }

    enum CodingKeys: String, CodingKey {
        case server, token, tls, contexts
        case caFile = "ca-file"
        case currentContext = "current-context"
    }

    static var path: String {
        let env = ProcessInfo.processInfo.environment
        if let p = env["FARRIER_CONFIG_FILE"], !p.isEmpty { return p }
        let base = env["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.config")
        return base + "/farrier/config.yaml"
    }

    static func load() throws -> CLIConfig {
        guard FileManager.default.fileExists(atPath: path) else { return CLIConfig() }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw CLIError("cannot read \(path)")
        }
        do { return try YAMLDecoder().decode(CLIConfig.self, from: text) } catch {
            throw CLIError("\(path): \(error)")
        }
    }

    /// Writes the file whole (a new file renamed over the old), readable by its owner only: it
    /// may hold a token.
    func save() throws {
        let path = Self.path
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(
            atPath: dir,
            withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700]
        )
        let text = try YAMLEncoder().encode(self)
        do { try SecretFile.replace(path, Array(text.utf8), mode: 0o600) } catch { throw CLIError(error.description) }
    }

    /// The context `name` names, or (nil) the current one; nil when neither is set.
    func context(_ name: String?) throws -> (name: String, context: Context)? {
        guard let name = name ?? currentContext else { return nil }
        guard let c = contexts?[name] else {
            throw CLIError(
                "no context named '\(name)' in \(Self.path); the contexts are: \((contexts ?? [:]).keys.sorted().joined(separator: ", "))",
                status: ExitStatus.usage
            )
        }
        return (name, c)
    }
}

/// Where the CLI finds the server and its token.
///
/// A context (`farrier context`) is used whole: when one is named (`--context`,
/// FARRIER_CONTEXT), or is the config file's current one and no server is given otherwise
/// (`--server`, FARRIER_SERVER), its server, token file, TLS and CA apply, and only flags
/// (`--token`, `--tls`, `--ca-file`) override them; its token never goes to another server.
/// Without a context each setting comes from, in order: the flag, the environment
/// (FARRIER_SERVER, FARRIER_TOKEN, …), the config file's top level, a running lab, the
/// defaults (127.0.0.1:7700 and /var/lib/farrier/admin.token when readable).
struct ClientOptions: ParsableArguments {
    @Option(
        help:
            "Server gRPC address HOST:PORT, or several replicas' as A,B,… (tried in turn while one cannot be reached). [FARRIER_SERVER; the current context's; config 'server'; default: the running lab's, else 127.0.0.1:7700]"
    )
    var server: String?

    @Option(
        help:
            "API token. [the context's token file; FARRIER_TOKEN; config 'token'; default: the lab's or this host's admin token file]"
    )
    var token: String?

    @Option(
        help:
            "Use this named context (farrier context list): its server and token file, as a whole. [FARRIER_CONTEXT; config 'current-context' when no server is given]"
    )
    var context: String?

    @Flag(help: "Connect with TLS and verify the server's certificate. [FARRIER_TLS=1; the context's; config 'tls']")
    var tls = false

    @Option(
        help:
            "CA bundle (PEM) to verify the server with, instead of the system roots. Implies --tls. [FARRIER_CA_FILE; the context's; config 'ca-file']"
    )
    var caFile: String?

    var resolvedServer: String {
        (try? connection().server) ?? "127.0.0.1:7700"
    }

    func connection() throws -> ClientConnection {
        let env = ProcessInfo.processInfo.environment
        func nonEmpty(_ s: String?) -> String? { s.flatMap { $0.isEmpty ? nil : $0 } }
        let config = try CLIConfig.load()
        let namedContext = nonEmpty(context) ?? nonEmpty(env["FARRIER_CONTEXT"])
        if namedContext != nil, nonEmpty(server) != nil {
            throw CLIError(
                "--server and a context (--context or FARRIER_CONTEXT) each name a server: give one of them",
                status: ExitStatus.usage
            )
        }
        let givenServer = nonEmpty(server) ?? nonEmpty(env["FARRIER_SERVER"])
        // The current context applies only when nothing else names the server (a stale one then
        // fails the call, saying so); a named one always.
        let chosen = try namedContext.map { try config.context($0) } ?? (givenServer == nil ? config.context(nil) : nil)
        if let c = chosen?.context {
            var token = nonEmpty(token)
            if token == nil, let file = c.tokenFile {
                guard let t = Self.readToken(file) else {
                    throw CLIError("cannot read the token file \(file) of context \(chosen?.name ?? "")")
                }
                token = t
            }
            let ca = nonEmpty(caFile) ?? c.caFile
            return ClientConnection(
                server: c.server,
                token: token,
                tls: tls || ca != nil || (c.tls ?? false),
                caFile: ca
            )
        }
        let lab = LabState.loadIfRunning()
        let server = givenServer ?? nonEmpty(config.server) ?? lab?.serverAddress ?? "127.0.0.1:7700"
        var token = nonEmpty(token) ?? nonEmpty(env["FARRIER_TOKEN"]) ?? nonEmpty(config.token)
        if token == nil {
            let files = (lab.map { [$0.directory + "/data/admin.token"] } ?? []) + ["/var/lib/farrier/admin.token"]
            token = files.lazy.compactMap(Self.readToken).first
        }
        let ca = nonEmpty(caFile) ?? nonEmpty(env["FARRIER_CA_FILE"]) ?? nonEmpty(config.caFile)
        let useTLS = tls || ca != nil || env["FARRIER_TLS"] == "1" || (config.tls ?? false)
        return ClientConnection(server: server, token: token, tls: useTLS, caFile: ca)
    }

    /// A token file's first line, or nil when it cannot be read or is empty.
    static func readToken(_ path: String) -> String? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return t.isEmpty ? nil : t
    }
}

/// The API's clients over one connection.
struct Clients: Sendable {
    let machines: Farrier_V1_MachineService.Client<HTTP2ClientTransport.Posix>
    let images: Farrier_V1_ImageService.Client<HTTP2ClientTransport.Posix>
    let projects: Farrier_V1_ProjectService.Client<HTTP2ClientTransport.Posix>
    let tokens: Farrier_V1_TokenService.Client<HTTP2ClientTransport.Posix>
    let sites: Farrier_V1_SiteService.Client<HTTP2ClientTransport.Posix>
    let networks: Farrier_V1_NetworkService.Client<HTTP2ClientTransport.Posix>
    let testScripts: Farrier_V1_TestScriptService.Client<HTTP2ClientTransport.Posix>
}

/// The replica that answered last (an index into the server list): later calls of this process
/// start there, so a `--wait` that failed over does not knock on the dead one first every time.
let preferredReplica = Mutex(0)

/// Runs `body` against the server, turning gRPC errors into one-line messages. With several
/// servers (replicas of one control plane), a call that cannot reach one is made to the next:
/// only the transport's `unavailable` (no farrier-error metadata) moves on; an error a server
/// sent is that server's answer.
///
/// A call that changes something (`idempotent` false: a deploy, a power action, a token) is
/// made only to a replica that has just answered a `whoami` on the same connection, and is
/// never made twice: if that replica dies during the call, the call may have been done, so the
/// error is reported, not retried elsewhere. Reads (`idempotent`) move on whenever they fail.
func rpc<R: Sendable>(
    _ options: ClientOptions,
    idempotent: Bool = false,
    _ body: @Sendable (Clients) async throws -> R
) async throws -> R {
    let c = try options.connection()
    let servers = c.server.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    guard !servers.isEmpty else { throw CLIError("no server address (--server HOST:PORT)") }
    let first = preferredReplica.withLock { $0 } % servers.count
    var unreachable: [String] = []
    for k in 0..<servers.count {
        let index = (first + k) % servers.count
        var one = c
        one.server = servers[index]
        let sent = Mutex(false)
        do {
            let result = try await withFarrierClient(one) { client in
                let clients = Clients(
                    machines: .init(wrapping: client),
                    images: .init(wrapping: client),
                    projects: .init(wrapping: client),
                    tokens: .init(wrapping: client),
                    sites: .init(wrapping: client),
                    networks: .init(wrapping: client),
                    testScripts: .init(wrapping: client)
                )
                if !idempotent, servers.count > 1 { _ = try await clients.tokens.whoAmI(Farrier_V1_WhoAmIRequest()) }
                sent.withLock { $0 = true }
                return try await body(clients)
            }
            preferredReplica.withLock { $0 = index }
            return result
        } catch let error as RPCError {
            // An error the server sent (a BMC or the database unreachable, say) names its kind in
            // farrier-error metadata; without it, `unavailable` is the transport's: no server.
            if error.code == .unavailable,
                error.metadata[stringValues: farrierErrorMetadataKey].first(where: { _ in true }) == nil
            {
                unreachable.append("\(one.server) (\(error.message))")
                if idempotent || !sent.withLock({ $0 }) { continue }
                throw CLIError(
                    "the Farrier server at \(one.server) went away during the call, which may have been done: not retried on another replica; check with `farrier machine show` (\(error.message))",
                    code: .unavailable
                )
            }
            if error.code == .unauthenticated {
                throw CLIError("\(error.message)", code: error.code)
            }
            throw CLIError("\(error.code): \(error.message)", code: error.code)
        }
    }
    let tlsHint = c.tls ? " With TLS, also check --ca-file and that the server's certificate names the host." : ""
    throw CLIError(
        "cannot reach the Farrier server at \(unreachable.joined(separator: ", ")). Is `farrier server` running? Set --server or FARRIER_SERVER.\(tlsHint)",
        code: .unavailable
    )
}

/// A failure to report in one line, with the exit status it ends the process with (see
/// `ExitStatus`).
struct CLIError: Error, CustomStringConvertible {
    var description: String
    var status: Int32
    init(_ d: String, status: Int32 = ExitStatus.failed) {
        description = d
        self.status = status
    }
    init(_ d: String, code: RPCError.Code) {
        description = d
        status = ExitStatus.of(code)
    }
}
