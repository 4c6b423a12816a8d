import ArgumentParser
import Foundation

/// Named contexts, like kubectl's: a server (or its replicas) and a token file under one name,
/// kept in the CLI's config file, for operators with several regions.
struct ContextCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "context",
        abstract: "Named servers and tokens (one per region, say): add, use, list, show, rm.",
        discussion: """
            Contexts live in the CLI's config file (FARRIER_CONFIG_FILE, else \
            $XDG_CONFIG_HOME/farrier/config.yaml, else ~/.config/farrier/config.yaml), which is \
            written readable by its owner only. A context names its token by file, which is read \
            at each call: the token itself is not copied. The current context applies when no \
            --server or --token flag (or FARRIER_SERVER, FARRIER_TOKEN) says otherwise; --context \
            NAME or FARRIER_CONTEXT picks another for one call.
            """,
        subcommands: [Add.self, Use.self, List.self, Show.self, Remove.self]
    )

    struct View: Codable {
        var name: String
        var current: Bool
        var server: String
        var tokenFile: String?
        var tls: Bool
        var caFile: String?

        init(_ name: String, _ c: CLIConfig.Context, current: Bool) {
            self.name = name
            self.current = current
            server = c.server
            tokenFile = c.tokenFile
            tls = c.tls ?? false || c.caFile != nil
            caFile = c.caFile
        }

        static let columns: [Column<View>] = [
            Column("CURRENT") { $0.current ? "*" : "" }, Column("NAME") { $0.name }, Column("SERVER") { $0.server },
            Column("TOKEN FILE") { $0.tokenFile ?? "-" }, Column("TLS") { $0.tls ? "yes" : "no" },
            Column("CA FILE", byDefault: false) { $0.caFile ?? "-" },
        ]
    }

    static func checkName(_ name: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
        guard !name.isEmpty, name.count <= 63, name.allSatisfy({ allowed.contains($0) }) else {
            throw ValidationError(
                "a context name is 1 to 63 lower-case letters, digits, '-', '_' or '.'; '\(name)' is not"
            )
        }
    }

    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add",
            abstract: "Add a context (or replace one of the same name).",
            discussion:
                "Example: farrier context add eu --server eu-a:7700,eu-b:7700 --token-file ~/.farrier/eu.token --use"
        )
        @Argument(help: "Context name.") var name: String
        @Option(help: "Server gRPC address HOST:PORT, or several replicas' as A,B,….") var server: String
        @Option(help: "File holding the API token (read at each call, never copied).") var tokenFile: String?
        @Flag(help: "Connect with TLS and verify the server's certificate.") var tls = false
        @Option(help: "CA bundle (PEM) to verify the server with. Implies --tls.") var caFile: String?
        @Flag(help: "Make it the current context.") var use = false

        func validate() throws {
            try ContextCommand.checkName(name)
            let servers = server.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard !servers.isEmpty, servers.allSatisfy({ !$0.isEmpty && $0.contains(":") }) else {
                throw ValidationError("--server is HOST:PORT, or several as A,B,…; '\(server)' is not")
            }
            if let tokenFile, ClientOptions.readToken(tokenFile) == nil {
                throw ValidationError("cannot read a token from \(tokenFile)")
            }
            if let caFile, !FileManager.default.isReadableFile(atPath: caFile) {
                throw ValidationError("cannot read the CA file \(caFile)")
            }
        }

        func run() throws {
            var config = try CLIConfig.load()
            var contexts = config.contexts ?? [:]
            contexts[name] = CLIConfig.Context(
                server: server,
                tokenFile: tokenFile.map(ContextCommand.absolute),
                tls: tls || caFile != nil ? true : nil,
                caFile: caFile.map(ContextCommand.absolute)
            )
            config.contexts = contexts
            if use { config.currentContext = name }
            try config.save()
            print("context \(name) added\(use ? "; it is the current context" : "") (\(CLIConfig.path))")
        }
    }

    struct Use: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "use", abstract: "Make a context the current one.")
        @Argument(help: "Context name.") var name: String

        func run() throws {
            var config = try CLIConfig.load()
            _ = try config.context(name)
            config.currentContext = name
            try config.save()
            print("the current context is \(name)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "List the contexts; * marks the current one."
        )
        @OptionGroup var output: OutputOptions

        func run() throws {
            let printer = try output.printer(View.columns, name: \.name)
            let config = try CLIConfig.load()
            try printer.list(
                (config.contexts ?? [:]).sorted { $0.key < $1.key }.map {
                    View($0.key, $0.value, current: $0.key == config.currentContext)
                }
            )
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Show a context (default: the current one)."
        )
        @OptionGroup var output: OutputOptions
        @Argument(help: "Context name.") var name: String?

        func run() throws {
            let printer = try output.printer(View.columns, name: \.name)
            let config = try CLIConfig.load()
            guard let found = try config.context(name) else {
                throw CLIError("no current context (farrier context use NAME)")
            }
            let view = View(found.name, found.context, current: found.name == config.currentContext)
            try printer.row(view)
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rm",
            abstract: "Remove a context (the token file stays)."
        )
        @Argument(help: "Context name.") var name: String

        func run() throws {
            var config = try CLIConfig.load()
            _ = try config.context(name)
            config.contexts?[name] = nil
            if config.currentContext == name { config.currentContext = nil }
            try config.save()
            print("context \(name) removed")
        }
    }
}
