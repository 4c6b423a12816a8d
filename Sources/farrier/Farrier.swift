import ArgumentParser

@main
struct Farrier: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "farrier",
        abstract: "Bare-metal provisioning: network boot, BMC control, deploy, in one binary.",
        version: "0.1.0",
        subcommands: [
            ServerCommand.self, MachineCommand.self, ImageCommand.self, ProjectCommand.self, TokenCommand.self,
            BMCCommand.self,
            LabCommand.self, AgentCommand.self, SimCommand.self, CompletionCommand.self,
        ]
    )
}
