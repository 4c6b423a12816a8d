import ArgumentParser
import FarrierAPI
import FarrierLab
import Foundation
import Yams

/// `~/.config/farrier/config.yaml` (or `$XDG_CONFIG_HOME/farrier/config.yaml`):
///
/// ```yaml
/// server: farrier.example.net:7700
/// token: fa_…
/// tls: true
/// ca-file: /etc/farrier/ca.pem
/// ```
struct CLIConfig: Codable {
    var server: String?
    var token: String?
    var tls: Bool?
    var caFile: String?

    enum CodingKeys: String, CodingKey {
        case server, token, tls
        case caFile = "ca-file"
    }

    static var path: String {
        let env = ProcessInfo.processInfo.environment
        if let p = env["FARRIER_CONFIG_FILE"], !p.isEmpty { return p }
        let base = env["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.config")
        return base + "/farrier/config.yaml"
    }

    static func load() throws -> CLIConfig {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return CLIConfig() }
        do { return try YAMLDecoder().decode(CLIConfig.self, from: text) } catch {
            throw CLIError("\(path): \(error)")
        }
    }
}

/// Where the CLI finds the server and its token. Each comes from, in order: the flag, the
/// environment (FARRIER_SERVER, FARRIER_TOKEN), the config file, a running lab, the defaults
/// (127.0.0.1:7700 and /var/lib/farrier/admin.token when readable).
struct ClientOptions: ParsableArguments {
    @Option(help: "Server gRPC address HOST:PORT. [FARRIER_SERVER; config 'server'; default: the running lab's, else 127.0.0.1:7700]")
    var server: String?

    @Option(help: "API token. [FARRIER_TOKEN; config 'token'; default: the lab's or this host's admin token file]")
    var token: String?

    @Flag(help: "Connect with TLS and verify the server's certificate. [FARRIER_TLS=1; config 'tls']")
    var tls = false

    @Option(help: "CA bundle (PEM) to verify the server with, instead of the system roots. Implies --tls. [FARRIER_CA_FILE; config 'ca-file']")
    var caFile: String?

    var resolvedServer: String {
        (try? connection().server) ?? "127.0.0.1:7700"
    }

    func connection() throws -> ClientConnection {
        let env = ProcessInfo.processInfo.environment
        func nonEmpty(_ s: String?) -> String? { s.flatMap { $0.isEmpty ? nil : $0 } }
        let config = try CLIConfig.load()
        let lab = LabState.loadIfRunning()
        let server = nonEmpty(server) ?? nonEmpty(env["FARRIER_SERVER"]) ?? nonEmpty(config.server) ?? lab?.serverAddress ?? "127.0.0.1:7700"
        var token = nonEmpty(token) ?? nonEmpty(env["FARRIER_TOKEN"]) ?? nonEmpty(config.token)
        if token == nil {
            let files = (lab.map { [$0.directory + "/data/admin.token"] } ?? []) + ["/var/lib/farrier/admin.token"]
            for f in files {
                if let t = try? String(contentsOfFile: f, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !t.isEmpty {
                    token = t
                    break
                }
            }
        }
        let ca = nonEmpty(caFile) ?? nonEmpty(env["FARRIER_CA_FILE"]) ?? nonEmpty(config.caFile)
        let useTLS = tls || ca != nil || env["FARRIER_TLS"] == "1" || (config.tls ?? false)
        return ClientConnection(server: server, token: token, tls: useTLS, caFile: ca)
    }
}

/// The API's clients over one connection.
struct Clients: Sendable {
    let machines: Farrier_V1_MachineService.Client<HTTP2ClientTransport.Posix>
    let images: Farrier_V1_ImageService.Client<HTTP2ClientTransport.Posix>
    let projects: Farrier_V1_ProjectService.Client<HTTP2ClientTransport.Posix>
    let tokens: Farrier_V1_TokenService.Client<HTTP2ClientTransport.Posix>
}

/// Runs `body` against the server, turning gRPC errors into one-line messages.
func rpc<R: Sendable>(_ options: ClientOptions, _ body: @Sendable (Clients) async throws -> R) async throws -> R {
    let c = try options.connection()
    do {
        return try await withFarrierClient(c) { client in
            try await body(Clients(
                machines: .init(wrapping: client), images: .init(wrapping: client), projects: .init(wrapping: client),
                tokens: .init(wrapping: client)))
        }
    } catch let error as RPCError {
        // An error the server sent (a BMC or the database unreachable, say) names its kind in
        // farrier-error metadata; without it, `unavailable` is the transport's: no server.
        if error.code == .unavailable, error.metadata[stringValues: farrierErrorMetadataKey].first(where: { _ in true }) == nil {
            let tlsHint = c.tls ? " With TLS, also check --ca-file and that the server's certificate names \(c.server)." : ""
            throw CLIError(
                "cannot reach the Farrier server at \(c.server): \(error.message). Is `farrier server` running? Set --server or FARRIER_SERVER.\(tlsHint)")
        }
        if error.code == .unauthenticated {
            throw CLIError("\(error.message)")
        }
        throw CLIError("\(error.code): \(error.message)")
    }
}

struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
