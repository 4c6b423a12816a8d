import ArgumentParser
import FarrierAPI
import FarrierBMC
import FarrierCore
import Foundation
import GRPCCore
import Yams

/// Reads a password from a file (first line, without its newline). "-" reads stdin.
func readPasswordFile(_ path: String) throws -> String {
    let data: Data
    if path == "-" {
        data = FileHandle.standardInput.readDataToEndOfFile()
    } else {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw CLIError("cannot read password file \(path)")
        }
        data = d
    }
    let text = String(decoding: data, as: UTF8.self)
    // ("\r\n" is one Character in Swift: split on both, or a CRLF file keeps its "\r".)
    let line =
        text.split(maxSplits: 1, omittingEmptySubsequences: false, whereSeparator: \.isNewline).first.map(String.init)
        ?? ""
    let password = line.hasSuffix("\r") ? String(line.dropLast()) : line
    guard !password.isEmpty else { throw CLIError("password file \(path) is empty") }
    return password
}

extension MachineCommand {
    struct Enroll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "enroll",
            abstract: "Enroll a machine with its BMC, or many from a fleet file.",
            discussion: """
                The BMC is a URL: ipmi://USER@HOST[:PORT], redfish://USER@HOST[:PORT][/SYSTEM-ID] (HTTPS, \
                certificate verified) or redfish+http://USER@HOST[:PORT]. The password comes from a file, or \
                from a named credential (`farrier bmc credential add`; the URL may then leave the user out), \
                and is stored encrypted; no command or API answer ever shows it. A machine already \
                discovered with this MAC takes the new name.

                -f FILE (also --from) enrolls every machine a fleet file names, in one transaction: all of \
                them or, if any entry is wrong, none, with every problem listed by line. YAML (or JSON) lists \
                the machines under `machines:`, each with name, mac (or macs: a list, the first the one it \
                boots from), bmc, bmc-password-file or bmc-credential (else --bmc-password-file's or \
                --bmc-credential's), and optionally bmc-insecure-tls, zone, rack, tags (a mapping) and site \
                (else --site's). A .csv file has the same keys as its header; there macs are separated by \
                spaces and tags are KEY=VALUE pairs separated by spaces. An entry's zone, rack, tags and \
                site replace the machine's, so enrolling a file again restores what it says.
                """
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name (lower-case letters, digits, '-').") var name: String?
        @Option(help: "MAC of the NIC the machine network-boots from.") var mac: String?
        @Option(help: "BMC URL, e.g. ipmi://admin@10.0.0.5 or redfish://root@bmc1/System.Embedded.1") var bmc: String?
        @Option(help: "File holding the BMC password ('-' for stdin).") var bmcPasswordFile: String?
        @Option(help: "A named BMC credential (farrier bmc credential add) instead of a password file.")
        var bmcCredential: String?
        @Flag(help: "Redfish over HTTPS: do not verify this BMC's certificate (self-signed).") var bmcInsecureTLS =
            false
        @Flag(help: "Commission right away: boot the ramdisk, take the inventory, end ready.") var commission = false
        @Option(help: "With --commission: tests to run (as `machine commission --tests`).") var tests: [String] = []
        @Option(name: .customLong("param"), help: "With --commission: a built-in test's parameter TEST.KEY=VALUE.")
        var parameters: [String] = []
        @Option(
            name: [.customShort("f"), .customLong("file"), .customLong("from")],
            help: "Enroll every machine this fleet file (YAML, JSON or CSV) names, all or none (see above)."
        )
        var file: String?
        @Option(help: "The site whose boot network the machine is on (default: the region's own).") var site: String?

        func validate() throws {
            if !commission, !tests.isEmpty || !parameters.isEmpty {
                throw ValidationError("--tests and --param need --commission")
            }
            if bmcPasswordFile != nil, bmcCredential != nil {
                throw ValidationError("give --bmc-password-file or --bmc-credential, not both")
            }
            if file != nil {
                guard name == nil, mac == nil, bmc == nil else {
                    throw ValidationError("-f takes no machine name, --mac or --bmc: the file names them")
                }
            } else {
                guard name != nil, mac != nil, bmc != nil, bmcPasswordFile != nil || bmcCredential != nil else {
                    throw ValidationError(
                        "enroll needs NAME, --mac, --bmc and --bmc-password-file or --bmc-credential (or -f FILE)"
                    )
                }
            }
        }

        func run() async throws {
            let printer = try MachineView.printer(output)
            if let file { return try await enrollAll(file, output) }
            var req = Farrier_V1_EnrollMachineRequest()
            req.name = name ?? ""
            req.mac = mac ?? ""
            req.bmcURL = bmc ?? ""
            if let bmcCredential {
                req.bmcCredential = bmcCredential
            } else {
                req.bmcPassword = try readPasswordFile(bmcPasswordFile ?? "-")
            }
            req.bmcInsecureTls = bmcInsecureTLS
            req.commission = commission
            req.commissionTests = tests
            req.commissionParameters = parameters
            req.site = site ?? ""
            let request = req
            let m = try await rpc(client) { try await $0.machines.enrollMachine(request) }
            let view = MachineView(m)
            try printer.one(view) { "machine \(view.name) enrolled (\(view.mac), BMC \(view.bmc ?? "-"))" }
        }

        /// What `enroll -f` did, for -o json|yaml|name.
        struct Summary: Codable {
            var file: String
            var enrolled: [String]
            var commissioning: [String]
            static let columns: [Column<Summary>] = [
                Column("FILE") { $0.file }, Column("ENROLLED") { "\($0.enrolled.count)" },
                Column("COMMISSIONING") { "\($0.commissioning.count)" },
            ]
        }

        func enrollAll(_ path: String, _ output: OutputOptions) async throws {
            let printer = try output.printer(Summary.columns, name: { $0.enrolled.joined(separator: "\n") })
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw CLIError("cannot read \(path)")
            }
            let fleet = FleetFile.parse(text, path: path)
            var problems = fleet.problems
            var passwords: [String: String] = [:]
            var entries: [Farrier_V1_EnrollMachinesEntry] = []
            for e in fleet.entries {
                var r = Farrier_V1_EnrollMachinesEntry()
                r.name = e.name
                r.macs = e.macs
                r.bmcURL = e.bmc
                r.bmcInsecureTls = e.bmcInsecureTLS || bmcInsecureTLS
                r.zone = e.zone
                r.rack = e.rack
                r.tags = e.tags
                r.site = e.site ?? site ?? ""
                r.source = "\(path) line \(e.line)"
                r.commission = commission
                if entries.isEmpty {
                    r.commissionTests = tests
                    r.commissionParameters = parameters
                }
                // The entry's own password file or credential, else the command line's.
                let passwordFile = e.bmcPasswordFile ?? (e.bmcCredential == nil ? bmcPasswordFile : nil)
                if let passwordFile {
                    if passwords[passwordFile] == nil {
                        do { passwords[passwordFile] = try readPasswordFile(passwordFile) } catch {
                            problems.append("\(r.source) (\(e.name)): \(error)")
                        }
                    }
                    r.bmcPassword = passwords[passwordFile] ?? ""
                    if e.bmcCredential != nil {
                        problems.append("\(r.source) (\(e.name)): give bmc-password-file or bmc-credential, not both")
                    }
                } else if let c = e.bmcCredential ?? bmcCredential {
                    r.bmcCredential = c
                }
                entries.append(r)
            }
            if fleet.entries.isEmpty, problems.isEmpty { problems.append("\(path): no machines") }
            guard problems.isEmpty else {
                throw CLIError(
                    "nothing was enrolled: \(problems.count) problem\(problems.count == 1 ? "" : "s") in \(path)\n"
                        + problems.joined(separator: "\n"),
                    status: ExitStatus.usage
                )
            }
            let all = entries
            // One transaction on the server: sent again (another replica), it enrolls the same
            // machines the same way; commissioning is not, so with --commission it is sent once.
            let response = try await rpc(client, idempotent: !commission) { c in
                let request = StreamingClientRequest<Farrier_V1_EnrollMachinesEntry> { writer in
                    for r in all { try await writer.write(r) }
                }
                return try await c.machines.enrollMachines(request: request) { try $0.message }
            }
            let summary = Summary(
                file: path,
                enrolled: response.machines.map(\.name),
                commissioning: response.machines.filter { $0.state == "commissioning" }.map(\.name)
            )
            try printer.one(summary) {
                "enrolled \(summary.enrolled.count) of \(entries.count) machines from \(path)"
                    + (commission ? " (\(summary.commissioning.count) commissioning)" : "")
            }
            // Machines already further along (deployed) are not commissioned, and say so; one
            // the server could not start is a failure.
            let notStarted = response.machines.filter { $0.reason.hasPrefix("enrolled, not commissioned") }
            for m in notStarted { FileHandle.standardError.write(Data("\(m.name): \(m.reason)\n".utf8)) }
            if commission, !notStarted.isEmpty { throw ExitCode(ExitStatus.failed) }
        }
    }

    struct PowerView: Codable {
        var machine: String
        var action: String
        var power: String
        static let columns: [Column<PowerView>] = [
            Column("MACHINE") { $0.machine }, Column("ACTION") { $0.action }, Column("POWER") { $0.power },
        ]
    }

    struct Power: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "power",
            abstract: "Power status or action through the machine's BMC."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var name: String
        @Argument(help: "The power reading (status) or an action.") var action: PowerVerb = .status

        func run() async throws {
            let printer = try output.printer(PowerView.columns, name: \.machine)
            var req = Farrier_V1_PowerRequest()
            req.name = name
            req.action = action.rawValue
            let request = req
            let r = try await rpc(client) { try await $0.machines.power(request) }
            let view = PowerView(machine: name, action: action.rawValue, power: r.powerState)
            try printer.one(view) {
                action == .status ? "power \(r.powerState)" : "\(action.rawValue): ok, power \(r.powerState)"
            }
        }
    }

    struct BootDeviceView: Codable {
        var machine: String
        var device: String
        var persistent: Bool
        var efi: Bool
        static let columns: [Column<BootDeviceView>] = [
            Column("MACHINE") { $0.machine }, Column("DEVICE") { $0.device },
            Column("PERSISTENT") { $0.persistent ? "yes" : "no" }, Column("EFI") { $0.efi ? "yes" : "no" },
        ]
    }

    struct Bootdev: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bootdev",
            abstract: "Set the boot device through the machine's BMC."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var name: String
        @Argument(help: "The device to boot from.") var device: BootDevice
        @Flag(help: "Every boot, not only the next one.") var persistent = false
        @Flag(help: "UEFI boot (default: legacy BIOS).") var efi = false

        func run() async throws {
            let printer = try output.printer(BootDeviceView.columns, name: \.machine)
            var req = Farrier_V1_SetBootDeviceRequest()
            req.name = name
            req.device = device.rawValue
            req.persistent = persistent
            req.efi = efi
            let request = req
            _ = try await rpc(client) { try await $0.machines.setBootDevice(request) }
            let view = BootDeviceView(machine: name, device: device.rawValue, persistent: persistent, efi: efi)
            try printer.one(view) {
                "boot device \(device.rawValue)\(persistent ? " (persistent)" : " (next boot)")\(efi ? ", UEFI" : "")"
            }
        }
    }

    struct Console: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "console",
            abstract: "Attach to the machine's serial console (IPMI SOL, through the server). ~. detaches."
        )
        @OptionGroup var client: ClientOptions
        @Argument(help: "Machine name or MAC.") var name: String

        func run() async throws {
            let terminal = TerminalConsole()
            defer { terminal.restore() }
            terminal.note("[console of \(name); ~. detaches]")
            let name = self.name
            do {
                try await rpc(client) { c in
                    let request = StreamingClientRequest<Farrier_V1_ConsoleInput> { writer in
                        var first = Farrier_V1_ConsoleInput()
                        first.name = name
                        try await writer.write(first)
                        for await chunk in terminal.input {
                            var m = Farrier_V1_ConsoleInput()
                            m.data = Data(chunk)
                            try await writer.write(m)
                        }
                    }
                    try await c.machines.console(request: request) { response in
                        for try await message in response.messages { terminal.show(Array(message.data)) }
                    }
                }
            } catch {
                terminal.restore()
                throw error
            }
            terminal.note("[detached]")
        }
    }
}
