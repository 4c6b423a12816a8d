import ArgumentParser
import FarrierAPI
import Foundation
import GRPCCore
import SwiftProtobuf

extension BMCCommand {
    /// Named BMC credentials on the server: one user and password that many machines share.
    struct Credential: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "credential",
            abstract: "Named BMC credentials on the server, shared by many machines (admin).",
            discussion: """
                A credential is a BMC user and password, stored encrypted under its name; enroll machines \\
                with it (`machine enroll --bmc-credential NAME`, or bmc-credential in a fleet file). \\
                `add --replace` changes the user and password of the credential and of every machine \\
                using it, at once. A credential in use cannot be removed.
                """,
            subcommands: [Add.self, List.self, Remove.self]
        )

        struct View: Codable {
            var name: String
            var user: String
            var created: Date
            var machines: Int
            init(_ c: Farrier_V1_BMCCredential) {
                name = c.name
                user = c.user
                created = c.created.date
                machines = Int(c.machines)
            }
            static let columns: [Column<View>] = [
                Column("NAME") { $0.name }, Column("USER") { $0.user }, Column("MACHINES") { "\($0.machines)" },
                Column("CREATED") { iso($0.created) },
            ]
        }

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "add",
                abstract: "Add a named BMC credential (or replace one)."
            )
            @OptionGroup var client: ClientOptions
            @OptionGroup var output: OutputOptions
            @Argument(help: "Its name (lower-case letters, digits, '-').") var name: String
            @Option(help: "The BMC user.") var user: String
            @Option(help: "File holding the password ('-' for stdin).") var passwordFile: String
            @Flag(help: "Replace an existing credential's user and password, and every machine's using it.")
            var replace = false

            func run() async throws {
                let printer = try output.printer(View.columns, name: \.name)
                var req = Farrier_V1_AddBMCCredentialRequest()
                req.name = name
                req.user = user
                req.password = try readPasswordFile(passwordFile)
                req.replace = replace
                let request = req
                let c = try await rpc(client) { try await $0.machines.addBMCCredential(request) }
                try printer.one(View(c)) {
                    "BMC credential \(c.name) \(replace ? "replaced (\(c.machines) machine(s) updated)" : "added") for user \(c.user)"
                }
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "list",
                abstract: "List the named BMC credentials."
            )
            @OptionGroup var client: ClientOptions
            @OptionGroup var output: OutputOptions

            func run() async throws {
                let printer = try output.printer(View.columns, name: \.name)
                let all = try await rpc(client, idempotent: true) {
                    try await $0.machines.listBMCCredentials(Farrier_V1_ListBMCCredentialsRequest())
                }
                try printer.list(all.credentials.map(View.init))
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "remove",
                abstract: "Remove a named BMC credential no machine uses."
            )
            @OptionGroup var client: ClientOptions
            @Argument(help: "Its name.") var name: String

            func run() async throws {
                var req = Farrier_V1_RemoveBMCCredentialRequest()
                req.name = name
                let request = req
                _ = try await rpc(client) { try await $0.machines.removeBMCCredential(request) }
                print("BMC credential \(name) removed")
            }
        }
    }
}
