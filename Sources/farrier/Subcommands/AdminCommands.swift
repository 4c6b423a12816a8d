import ArgumentParser
import Crypto
import FarrierAPI
import FarrierCore
import Foundation
import GRPCCore
import SwiftProtobuf
import WireSupport
import Yams

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "OS images: add (upload), list, show, rm.",
        subcommands: [Add.self, List.self, Show.self, Remove.self]
    )

    struct ImageView: Codable {
        var name: String
        var sha256: String
        var size: Int64
        var format: String
        var os: String
        var architecture: String
        var firmware: String
        var created: Date
        init(_ i: Farrier_V1_Image) {
            name = i.name
            sha256 = i.sha256
            size = i.size
            format = i.format
            os = i.os
            architecture = i.architecture
            firmware = i.firmware.isEmpty ? "any" : i.firmware
            created = i.created.date
        }
    }

    static let columns: [Column<ImageView>] = [
        Column("NAME") { $0.name }, Column("OS") { $0.os }, Column("ARCH") { $0.architecture },
        Column("FIRMWARE") { $0.firmware }, Column("FORMAT") { $0.format }, Column("SIZE") { bytes($0.size) },
        Column("SHA256") { String($0.sha256.prefix(16)) }, Column("CREATED", byDefault: false) { iso($0.created) },
    ]

    static func printer(_ output: OutputOptions) throws -> Printer<ImageView> {
        try output.printer(columns, name: \.name)
    }

    /// One image, as a one-row table for people too.
    static func show(_ image: Farrier_V1_Image, _ printer: Printer<ImageView>) throws {
        let view = ImageView(image)
        try printer.row(view)
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add",
            abstract: "Upload an image: raw, raw.gz, raw.zst or qcow2 (converted to raw by the server, once)."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Image name.") var name: String
        @Argument(help: "Image file.") var file: String
        @Option(help: "raw, raw.gz, raw.zst or qcow2 (default: from the file name).") var format: String?
        @Option(help: "OS, e.g. debian-12 (default: the image name).") var os: String?
        @Option(help: "The architecture the image runs on.") var arch: Architecture = .x86_64
        @Option(help: "The firmware, when the image boots only one way.") var firmware: Firmware?

        func run() async throws {
            let printer = try ImageCommand.printer(output)
            let format = self.format ?? Self.guessFormat(file)
            guard let handle = FileHandle(forReadingAtPath: file) else { throw CLIError("cannot read \(file)") }
            defer { try? handle.close() }
            // Hash first, so the server checks the bytes end to end.
            var hasher = SHA256()
            var size: Int64 = 0
            while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
                hasher.update(data: chunk)
                size += Int64(chunk.count)
            }
            let digest = hasher.finalize().hexString
            try handle.seek(toOffset: 0)
            var header = Farrier_V1_ImageHeader()
            header.name = name
            header.format = format
            header.os = os ?? ""
            header.architecture = arch.rawValue
            header.firmware = firmware?.rawValue ?? ""
            header.sha256 = digest
            header.size = size
            let first = header
            let total = size
            let image = try await rpc(client) { c in
                let request = StreamingClientRequest<Farrier_V1_UploadImageRequest> { writer in
                    var m = Farrier_V1_UploadImageRequest()
                    m.header = first
                    try await writer.write(m)
                    var sent: Int64 = 0
                    var shown = Date()
                    while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
                        var part = Farrier_V1_UploadImageRequest()
                        part.chunk = chunk
                        try await writer.write(part)
                        sent += Int64(chunk.count)
                        if Date().timeIntervalSince(shown) > 1 {
                            FileHandle.standardError.write(Data("uploading \(bytes(sent)) / \(bytes(total))\n".utf8))
                            shown = Date()
                        }
                    }
                }
                return try await c.images.uploadImage(request: request) { try $0.message }
            }
            try ImageCommand.show(image, printer)
        }

        static func guessFormat(_ file: String) -> String {
            if file.hasSuffix(".gz") { return "raw.gz" }
            if file.hasSuffix(".zst") { return "raw.zst" }
            if file.hasSuffix(".qcow2") { return "qcow2" }
            return "raw"
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List images.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        func run() async throws {
            let printer = try ImageCommand.printer(output)
            let r = try await rpc(client, idempotent: true) {
                try await $0.images.listImages(Farrier_V1_ListImagesRequest())
            }
            try printer.list(r.images.map(ImageView.init))
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show an image.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Image name.") var name: String
        func run() async throws {
            let printer = try ImageCommand.printer(output)
            var req = Farrier_V1_GetImageRequest()
            req.name = name
            let request = req
            try ImageCommand.show(
                try await rpc(client, idempotent: true) { try await $0.images.getImage(request) },
                printer
            )
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rm",
            abstract: "Remove an image (not while deployed)."
        )
        @OptionGroup var client: ClientOptions
        @Argument(help: "Image name.") var name: String
        func run() async throws {
            var req = Farrier_V1_GetImageRequest()
            req.name = name
            let request = req
            _ = try await rpc(client) { try await $0.images.deleteImage(request) }
            print("image \(name) removed")
        }
    }
}

struct ProjectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "project",
        abstract: "Projects (admin): create, list, show, rm.",
        subcommands: [Create.self, List.self, Show.self, Remove.self]
    )

    struct ProjectView: Codable {
        var name: String
        var description: String
        var requiredTags: [String]
        var machines: Int
        var wipePolicy: String
        var created: Date
        init(_ p: Farrier_V1_Project) {
            name = p.name
            description = p.description_p
            requiredTags = p.requiredTags
            wipePolicy = p.wipePolicy
            machines = Int(p.machineCount)
            created = p.created.date
        }
    }

    static let columns: [Column<ProjectView>] = [
        Column("NAME") { $0.name }, Column("MACHINES") { "\($0.machines)" },
        Column("REQUIRED TAGS") { $0.requiredTags.isEmpty ? "-" : $0.requiredTags.joined(separator: ",") },
        Column("WIPE") { $0.wipePolicy == "quick" ? "quick (unsafe between tenants)" : $0.wipePolicy },
        Column("DESCRIPTION") { $0.description }, Column("CREATED", byDefault: false) { iso($0.created) },
    ]

    static func printer(_ output: OutputOptions) throws -> Printer<ProjectView> {
        try output.printer(columns, name: \.name)
    }

    /// One project, as a one-row table for people too.
    static func show(_ project: Farrier_V1_Project, _ printer: Printer<ProjectView>) throws {
        let view = ProjectView(project)
        try printer.row(view)
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a project.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Project name.") var name: String
        @Option(help: "Description.") var description: String = ""
        @Option(help: "A tag key every deploy must carry; repeat for more.") var requireTag: [String] = []
        @Option(
            help:
                "How releases wipe: full (erase and verify every byte) or quick (first and last MiB only: UNSAFE between tenants, the next one can read this project's data)."
        )
        var wipePolicy: WipeMode = .full
        func run() async throws {
            let printer = try ProjectCommand.printer(output)
            var req = Farrier_V1_CreateProjectRequest()
            req.name = name
            req.description_p = description
            req.requiredTags = requireTag
            req.wipePolicy = wipePolicy.rawValue
            let request = req
            try ProjectCommand.show(try await rpc(client) { try await $0.projects.createProject(request) }, printer)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List projects.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        func run() async throws {
            let printer = try ProjectCommand.printer(output)
            try printer.list(
                try await rpc(client, idempotent: true) {
                    try await $0.projects.listProjects(Farrier_V1_ListProjectsRequest())
                }.projects.map(ProjectView.init)
            )
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show a project.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Project name.") var name: String
        func run() async throws {
            let printer = try ProjectCommand.printer(output)
            var req = Farrier_V1_GetProjectRequest()
            req.name = name
            let request = req
            try ProjectCommand.show(
                try await rpc(client, idempotent: true) { try await $0.projects.getProject(request) },
                printer
            )
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rm",
            abstract: "Remove a project (no machines, no tokens left)."
        )
        @OptionGroup var client: ClientOptions
        @Argument(help: "Project name.") var name: String
        func run() async throws {
            var req = Farrier_V1_GetProjectRequest()
            req.name = name
            let request = req
            _ = try await rpc(client) { try await $0.projects.deleteProject(request) }
            print("project \(name) removed")
        }
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "API tokens (admin): create (shown once), list, revoke; whoami.",
        subcommands: [Create.self, List.self, Revoke.self, WhoAmI.self]
    )

    struct TokenView: Codable {
        var id: String
        var name: String
        var role: String
        var project: String?
        var created: Date
        init(_ t: Farrier_V1_Token) {
            id = t.id
            name = t.name
            role = t.role
            project = t.project.isEmpty ? nil : t.project
            created = t.created.date
        }
    }

    static let columns: [Column<TokenView>] = [
        Column("ID") { $0.id }, Column("NAME") { $0.name }, Column("ROLE") { $0.role },
        Column("PROJECT") { $0.project ?? "-" }, Column("CREATED") { iso($0.created) },
    ]

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Create a token; prints its secret once.",
            discussion: "The table output (the default) and -o name print the secret alone, on stdout."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Option(help: "member (one project) or admin (the fleet).") var role: Role = .member
        @Option(help: "The project of a member token.") var project: String?
        @Option(help: "A name to recognise it by.") var name: String?
        func validate() throws {
            if output.columns != nil || output.noHeaders {
                throw ValidationError("token create prints the secret once, alone or in JSON or YAML: no columns")
            }
        }

        func run() async throws {
            var req = Farrier_V1_CreateTokenRequest()
            req.role = role.rawValue
            req.project = project ?? ""
            req.name = name ?? ""
            let request = req
            let r = try await rpc(client) { try await $0.tokens.createToken(request) }
            struct Created: Codable {
                var token: TokenView
                var secret: String
            }
            switch output.output {
            case .table, .name:
                FileHandle.standardError.write(
                    Data(
                        "token \(r.token.id) (\(r.token.role)\(r.token.project.isEmpty ? "" : ", project " + r.token.project)); the secret is shown once:\n"
                            .utf8
                    )
                )
                print(r.secret)
            case .json: print(try json(Created(token: TokenView(r.token), secret: r.secret)))
            case .yaml:
                print(try YAMLEncoder().encode(Created(token: TokenView(r.token), secret: r.secret)), terminator: "")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "List tokens (never their secrets)."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        func run() async throws {
            let printer = try output.printer(TokenCommand.columns, name: \.id)
            try printer.list(
                try await rpc(client, idempotent: true) {
                    try await $0.tokens.listTokens(Farrier_V1_ListTokensRequest())
                }.tokens.map(TokenView.init)
            )
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "revoke",
            abstract: "Revoke a token by id (or a unique prefix)."
        )
        @OptionGroup var client: ClientOptions
        @Argument(help: "Token id.") var id: String
        func run() async throws {
            var req = Farrier_V1_RevokeTokenRequest()
            req.id = id
            let request = req
            _ = try await rpc(client) { try await $0.tokens.revokeToken(request) }
            print("token \(id) revoked")
        }
    }

    struct WhoAmI: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "whoami", abstract: "Show the token in use.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        func run() async throws {
            let printer = try output.printer(TokenCommand.columns, name: \.name)
            let t = TokenView(
                try await rpc(client, idempotent: true) { try await $0.tokens.whoAmI(Farrier_V1_WhoAmIRequest()) }
            )
            try printer.one(t) { "\(t.name) (\(t.role)\(t.project.map { ", project \($0)" } ?? ""), id \(t.id))" }
        }
    }
}

struct CompletionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "completion",
        abstract: "Print a shell completion script.",
        discussion:
            "bash: source <(farrier completion bash)   zsh: farrier completion zsh > \"${fpath[1]}/_farrier\"   fish: farrier completion fish > ~/.config/fish/completions/farrier.fish"
    )
    @Argument(help: "bash, zsh or fish.") var shell: String

    func run() throws {
        guard let kind = CompletionShell(rawValue: shell) else {
            throw ValidationError("unknown shell '\(shell)'; valid: bash, zsh, fish")
        }
        print(Farrier.completionScript(for: kind))
    }
}
