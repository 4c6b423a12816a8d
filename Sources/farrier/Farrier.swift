import ArgumentParser
import Foundation

/// The version `--version` prints, and the one a site agent reports to its region.
let farrierVersion = "0.1.0"

@main
struct Farrier: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "farrier",
        abstract: "Bare-metal provisioning: network boot, BMC control, deploy, in one binary.",
        version: farrierVersion,
        subcommands: [
            ServerCommand.self, MachineCommand.self, ImageCommand.self, ProjectCommand.self, TokenCommand.self,
            BMCCommand.self, SiteCommand.self, NetworkCommand.self, TestScriptCommand.self,
            LabCommand.self, AgentCommand.self, SimCommand.self, CompletionCommand.self, ContextCommand.self,
            ExitCodesCommand.self,
        ]
    )

    /// The library's entry point, except that a `CLIError` ends the process with its own status
    /// (`farrier exit-codes`), not always 1.
    static func main() async {
        do {
            var command = try await asyncParseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as CLIError {
            FileHandle.standardError.write(Data("Error: \(error.description)\n".utf8))
            Foundation.exit(error.status)
        } catch {
            exit(withError: error)
        }
    }
}
