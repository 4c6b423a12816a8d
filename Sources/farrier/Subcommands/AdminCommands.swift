import ArgumentParser
import Crypto
import FarrierAPI
import Foundation
import GRPCCore
import SwiftProtobuf
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

    static func show(_ images: [Farrier_V1_Image], _ output: OutputFormat) throws {
        let views = images.map(ImageView.init)
        switch output {
        case .json: print(try json(views.count == 1 ? AnyEncodable(views[0]) : AnyEncodable(views)))
        case .yaml: print(try YAMLEncoder().encode(views), terminator: "")
        case .table:
            print(
                table(
                    ["NAME", "OS", "ARCH", "FIRMWARE", "FORMAT", "SIZE", "SHA256"],
                    views.map {
                        [
                            $0.name, $0.os, $0.architecture, $0.firmware, $0.format, bytes($0.size),
                            String($0.sha256.prefix(16)),
                        ]
                    }
                )
            )
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Upload an image: raw, raw.gz, raw.zst or qcow2 (converted to raw by the server, once)."
        )
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        @Argument(help: "Image name.") var name: String
        @Argument(help: "Image file.") var file: String
        @Option(help: "raw, raw.gz, raw.zst or qcow2 (default: from the file name).") var format: String?
        @Option(help: "OS, e.g. debian-12 (default: the image name).") var os: String?
        @Option(help: "x86_64 or arm64.") var arch: String = "x86_64"
        @Option(help: "bios or uefi, when the image boots only one way.") var firmware: String?

        func run() async throws {
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
            let digest = hasher.finalize().map { String(format: "%02x", $0) }.joined()
            try handle.seek(toOffset: 0)
            var header = Farrier_V1_ImageHeader()
            header.name = name
            header.format = format
            header.os = os ?? ""
            header.architecture = arch
            header.firmware = firmware ?? ""
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
            try ImageCommand.show([image], output)
        }

        static func guessFormat(_ file: String) -> String {
            if file.hasSuffix(".gz") { return "raw.gz" }
            if file.hasSuffix(".zst") { return "raw.zst" }
            if file.hasSuffix(".qcow2") { return "qcow2" }
            return "raw"
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List images.")
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        func run() async throws {
            let r = try await rpc(client, idempotent: true) {
                try await $0.images.listImages(Farrier_V1_ListImagesRequest())
            }
            try ImageCommand.show(r.images, output)
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an image.")
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        @Argument(help: "Image name.") var name: String
        func run() async throws {
            var req = Farrier_V1_GetImageRequest()
            req.name = name
            let request = req
            try ImageCommand.show(
                [try await rpc(client, idempotent: true) { try await $0.images.getImage(request) }],
                output
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

    static func show(_ projects: [Farrier_V1_Project], _ output: OutputFormat, single: Bool = false) throws {
        let views = projects.map(ProjectView.init)
        switch output {
        case .json: print(try json(single && views.count == 1 ? AnyEncodable(views[0]) : AnyEncodable(views)))
        case .yaml: print(try YAMLEncoder().encode(views), terminator: "")
        case .table:
            print(
                table(
                    ["NAME", "MACHINES", "REQUIRED TAGS", "WIPE", "DESCRIPTION"],
                    views.map {
                        [
                            $0.name, "\($0.machines)",
                            $0.requiredTags.isEmpty ? "-" : $0.requiredTags.joined(separator: ","),
                            $0.wipePolicy == "quick" ? "quick (unsafe between tenants)" : $0.wipePolicy, $0.description,
                        ]
                    }
                )
            )
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a project.")
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        @Argument(help: "Project name.") var name: String
        @Option(help: "Description.") var description: String = ""
        @Option(help: "A tag key every deploy must carry; repeat for more.") var requireTag: [String] = []
        @Option(
            help:
                "How releases wipe: full (erase and verify every byte) or quick (first and last MiB only: UNSAFE between tenants, the next one can read this project's data)."
        )
        var wipePolicy: String = "full"
        func run() async throws {
            var req = Farrier_V1_CreateProjectRequest()
            req.name = name
            req.description_p = description
            req.requiredTags = requireTag
            req.wipePolicy = wipePolicy
            let request = req
            try ProjectCommand.show(
                [try await rpc(client) { try await $0.projects.createProject(request) }],
                output,
                single: true
            )
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List projects.")
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        func run() async throws {
            try ProjectCommand.show(
                try await rpc(client, idempotent: true) {
                    try await $0.projects.listProjects(Farrier_V1_ListProjectsRequest())
                }.projects,
                output
            )
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a project.")
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        @Argument(help: "Project name.") var name: String
        func run() async throws {
            var req = Farrier_V1_GetProjectRequest()
            req.name = name
            let request = req
            try ProjectCommand.show(
                [try await rpc(client, idempotent: true) { try await $0.projects.getProject(request) }],
                output,
                single: true
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

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token; prints its secret once.")
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table (the secret alone), json or yaml.") var output:
            OutputFormat = .table
        @Option(help: "member (one project) or admin (the fleet).") var role: String = "member"
        @Option(help: "The project of a member token.") var project: String?
        @Option(help: "A name to recognise it by.") var name: String?
        func run() async throws {
            var req = Farrier_V1_CreateTokenRequest()
            req.role = role
            req.project = project ?? ""
            req.name = name ?? ""
            let request = req
            let r = try await rpc(client) { try await $0.tokens.createToken(request) }
            struct Created: Codable {
                var token: TokenView
                var secret: String
            }
            switch output {
            case .table:
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
        static let configuration = CommandConfiguration(abstract: "List tokens (never their secrets).")
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        func run() async throws {
            let views = try await rpc(client, idempotent: true) {
                try await $0.tokens.listTokens(Farrier_V1_ListTokensRequest())
            }.tokens.map(TokenView.init)
            switch output {
            case .json: print(try json(views))
            case .yaml: print(try YAMLEncoder().encode(views), terminator: "")
            case .table:
                print(
                    table(
                        ["ID", "NAME", "ROLE", "PROJECT", "CREATED"],
                        views.map { [$0.id, $0.name, $0.role, $0.project ?? "-", iso($0.created)] }
                    )
                )
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token by id (or a unique prefix).")
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
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        func run() async throws {
            let t = TokenView(
                try await rpc(client, idempotent: true) { try await $0.tokens.whoAmI(Farrier_V1_WhoAmIRequest()) }
            )
            switch output {
            case .json: print(try json(t))
            case .yaml: print(try YAMLEncoder().encode(t), terminator: "")
            case .table: print("\(t.name) (\(t.role)\(t.project.map { ", project \($0)" } ?? ""), id \(t.id))")
            }
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

/// Lets `json` print either one object or a list.
struct AnyEncodable: Encodable {
    let value: any Encodable
    init(_ v: any Encodable) { value = v }
    func encode(to encoder: any Encoder) throws { try value.encode(to: encoder) }
}
