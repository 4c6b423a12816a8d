import ArgumentParser
import FarrierAPI
import Foundation
import GRPCCore
import SwiftProtobuf

/// Commissioning test scripts on the server (issue 18 point 7): admins' own tests, run in the
/// ramdisk beside the built-in ones.
struct TestScriptCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test-script",
        abstract: "Commissioning test scripts: admins' own hardware tests, stored and versioned (admin).",
        discussion: """
            A script runs in the ramdisk as root with busybox /bin/sh, when a commissioning asks for it \
            (`machine commission --tests NAME` or NAME@VERSION), with FARRIER_MACHINE, FARRIER_TEST, \
            FARRIER_DISKS (the disks' /dev paths), FARRIER_SCRATCH (an empty directory) and \
            FARRIER_RESULT (a file: its KEY=NUMBER lines, up to 16, become the result's numbers). Exit \
            0 passes, 77 skips, anything else fails; past its timeout it is killed and fails. Adding \
            a name again stores a new version; every version is kept until the script is removed. \
            Scripts never run on a machine whose disks hold a tenant's data.
            """,
        subcommands: [Add.self, List.self, Show.self, Remove.self]
    )

    struct View: Codable {
        var name: String
        var version: Int?
        var builtin: Bool
        var sha256: String?
        var size: Int64?
        var timeoutSeconds: Int
        var description: String
        var created: Date?
        var createdBy: String?
        var parameters: [String]?
        var content: String?

        init(_ s: Farrier_V1_TestScript) {
            name = s.name
            builtin = s.builtin
            version = s.builtin ? nil : Int(s.version)
            sha256 = s.builtin ? nil : s.sha256
            size = s.builtin ? nil : s.size
            timeoutSeconds = Int(s.timeoutSeconds)
            description = s.description_p
            created = s.builtin ? nil : s.created.date
            createdBy = s.builtin ? nil : s.createdBy
            parameters = s.parameters.isEmpty ? nil : s.parameters
            content = s.content.isEmpty ? nil : String(decoding: s.content, as: UTF8.self)
        }

        static let columns: [Column<View>] = [
            Column("NAME") { $0.name }, Column("VERSION") { $0.version.map(String.init) ?? "built-in" },
            Column("TIMEOUT") { "\($0.timeoutSeconds)s" },
            Column("SHA256") { $0.sha256.map { String($0.prefix(12)) } ?? "-" },
            Column("DESCRIPTION") { $0.description },
        ]
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add",
            abstract: "Add a script, or a new version of one."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Its name (lower-case letters, digits, '-'; not a built-in test's).") var name: String
        @Argument(help: "The script file ('-' for stdin).") var file: String
        @Option(help: "Seconds it may run before it is killed and fails (1-86400).") var timeout: Int
        @Option(help: "One line saying what it checks.") var description: String = ""

        func run() async throws {
            let printer = try output.printer(View.columns, name: \.name)
            let data: Data
            if file == "-" {
                data = FileHandle.standardInput.readDataToEndOfFile()
            } else {
                guard let d = FileManager.default.contents(atPath: file) else { throw CLIError("cannot read \(file)") }
                data = d
            }
            var req = Farrier_V1_AddTestScriptRequest()
            req.name = name
            req.content = data
            req.timeoutSeconds = Int32(clamping: timeout)
            req.description_p = description
            let request = req
            let s = try await rpc(client) { try await $0.testScripts.addTestScript(request) }
            try printer.one(View(s)) { "\(s.name) version \(s.version) sha256 \(s.sha256)" }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "List the built-in tests and the scripts (each script's newest version)."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Flag(help: "Every version of each script.") var allVersions = false

        func run() async throws {
            let printer = try output.printer(View.columns, name: \.name)
            var req = Farrier_V1_ListTestScriptsRequest()
            req.allVersions = allVersions
            let request = req
            let all = try await rpc(client, idempotent: true) { try await $0.testScripts.listTestScripts(request) }
            try printer.list(all.scripts.map(View.init))
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Show a test: a script's version, or a built-in."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Its name.") var name: String
        @Option(help: "The version (default: the newest).") var version: Int?
        @Flag(help: "Print the script itself (admins).") var content = false

        func run() async throws {
            let printer = try output.printer(View.columns, name: \.name)
            var req = Farrier_V1_GetTestScriptRequest()
            req.name = name
            req.version = Int32(clamping: version ?? 0)
            req.content = content
            let request = req
            let s = try await rpc(client, idempotent: true) { try await $0.testScripts.getTestScript(request) }
            let view = View(s)
            try printer.one(view) {
                var lines = [
                    "Name:          \(view.name)" + (view.version.map { " (version \($0))" } ?? " (built-in)"),
                    "Description:   \(view.description.isEmpty ? "-" : view.description)",
                    "Timeout:       \(view.timeoutSeconds) s" + (view.builtin ? " (with its defaults)" : ""),
                ]
                if let p = view.parameters { lines.append("Parameters:    \(p.joined(separator: ", "))") }
                if let sha = view.sha256 { lines.append("SHA-256:       \(sha) (\(view.size ?? 0) bytes)") }
                if let by = view.createdBy, let at = view.created { lines.append("Added:         \(iso(at)) by \(by)") }
                if let text = view.content { lines.append("\n" + text) }
                return lines.joined(separator: "\n")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove",
            abstract: "Remove a script, every version (refused while a commissioning needs it)."
        )
        @OptionGroup var client: ClientOptions
        @Argument(help: "Its name.") var name: String

        func run() async throws {
            var req = Farrier_V1_RemoveTestScriptRequest()
            req.name = name
            let request = req
            let r = try await rpc(client) { try await $0.testScripts.removeTestScript(request) }
            print("test script \(name) removed (\(r.versionsRemoved) version\(r.versionsRemoved == 1 ? "" : "s"))")
        }
    }
}
