import ArgumentParser
import FarrierAgent
import Foundation

struct AgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "The deploy agent (runs in the Farrier ramdisk): inventory, deploy, wipe, rescue.",
        discussion: """
            Reads farrier.url= (the server's HTTPS agent channel) and farrier.cert= (sha256:HEX of its \
            certificate, which it pins) from the kernel command line (or --cmdline FILE, or --server and \
            --cert), says hello with this boot's nonce, gets its task and token, runs the task, reports \
            progress every second and the result. Exits 0 when the task succeeded.
            """
    )

    @Option(help: "File with the kernel command line.") var cmdline: String = "/proc/cmdline"
    @Option(help: "The agent channel's URL, https://HOST:PORT (overrides the command line).") var server: String?
    @Option(help: "sha256:HEX of the agent channel's certificate (overrides the command line).") var cert: String?
    @Option(help: "Where this boot's nonce is kept (tmpfs in the ramdisk).") var stateDir: String = "/run/farrier-agent"
    @Option(help: "Source address for connections to the server (a machine with several addresses).") var bind: String?
    @Option(help: "Deploy to and wipe this file or device instead of the machine's disks.") var device: String?
    @Option(help: "Prefix for /proc and /sys when reading the inventory.") var sysRoot: String = ""
    @Option(help: "Command that serves SSH in rescue.") var rescueCommand: String = "dropbear -F -R -E -p 22"
    @Option(help: "Where rescue writes root's authorized_keys.") var authorizedKeys: String =
        "/root/.ssh/authorized_keys"
    @Option(help: "Attempts (2 s apart) to reach the server.") var attempts: Int = 60
    @Option(
        help:
            "Also write the task the server gave, secrets included, to this file (mode 0600), for debugging; never on the console."
    )
    var taskFile: String?
    @Option(help: "Look for the commissioning tests' tools (stress-ng, memtester, smartctl) here first (tests).")
    var toolPath: String?

    func run() throws {
        var c: AgentConfiguration
        if let server, let cert {
            c = AgentConfiguration(serverURL: server, certificateSHA256: cert)
        } else {
            guard let text = try? String(contentsOfFile: cmdline, encoding: .utf8) else {
                throw ValidationError("cannot read \(cmdline)")
            }
            guard let parsed = AgentConfiguration.fromKernelCommandLine(text) else {
                throw ValidationError("\(cmdline) has no farrier.url= and farrier.cert=")
            }
            c = parsed
            if let server { c.serverURL = server }
            if let cert { c.certificateSHA256 = cert }
        }
        c.stateDirectory = stateDir
        c.sourceAddress = bind
        c.device = device
        c.sysRoot = sysRoot
        c.rescueCommand = rescueCommand.split(separator: " ").map(String.init)
        c.authorizedKeysPath = authorizedKeys
        c.attempts = attempts
        c.taskFile = taskFile
        c.toolPath = toolPath
        guard try Agent(c).run() else { throw ExitCode(1) }
    }
}
