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
    let line = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
    let password = line.hasSuffix("\r") ? String(line.dropLast()) : line
    guard !password.isEmpty else { throw CLIError("password file \(path) is empty") }
    return password
}

extension MachineCommand {
    struct Enroll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Enroll a machine with its BMC, or many from a file.",
            discussion: """
                The BMC is a URL: ipmi://USER@HOST[:PORT], redfish://USER@HOST[:PORT][/SYSTEM-ID] (HTTPS, \
                certificate verified) or redfish+http://USER@HOST[:PORT]. The password comes from a file and \
                is stored encrypted; no command or API answer ever shows it. A machine already discovered \
                with this MAC takes the new name.

                --from FILE enrolls every machine a YAML or JSON list names, 16 at a time: each entry has \
                name, mac and bmc, and optionally bmc-password-file (else --bmc-password-file's), \
                bmc-insecure-tls and site (else --site's). Enrolling a machine again with the same name and MAC keeps it as it is \
                (its BMC password is stored again), so a file can be enrolled again after a failure; with \
                --commission, machines already ready are commissioned again. The failures are listed and \
                the exit status is 1.
                """
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name (lower-case letters, digits, '-').") var name: String?
        @Option(help: "MAC of the NIC the machine network-boots from.") var mac: String?
        @Option(help: "BMC URL, e.g. ipmi://admin@10.0.0.5 or redfish://root@bmc1/System.Embedded.1") var bmc: String?
        @Option(help: "File holding the BMC password ('-' for stdin).") var bmcPasswordFile: String?
        @Flag(help: "Redfish over HTTPS: do not verify this BMC's certificate (self-signed).") var bmcInsecureTLS =
            false
        @Flag(help: "Commission right away: boot the ramdisk, take the inventory, end ready.") var commission = false
        @Option(help: "Enroll every machine this YAML or JSON list names (see above).") var from: String?
        @Option(help: "The site whose boot network the machine is on (default: the region's own).") var site: String?

        func validate() throws {
            if from != nil {
                guard name == nil, mac == nil, bmc == nil else {
                    throw ValidationError("--from takes no machine name, --mac or --bmc: the file names them")
                }
            } else {
                guard name != nil, mac != nil, bmc != nil, bmcPasswordFile != nil else {
                    throw ValidationError("enroll needs NAME, --mac, --bmc and --bmc-password-file (or --from FILE)")
                }
            }
        }

        func run() async throws {
            let printer = try MachineView.printer(output)
            if let from { return try await enrollAll(from, output) }
            var req = Farrier_V1_EnrollMachineRequest()
            req.name = name ?? ""
            req.mac = mac ?? ""
            req.bmcURL = bmc ?? ""
            req.bmcPassword = try readPasswordFile(bmcPasswordFile ?? "-")
            req.bmcInsecureTls = bmcInsecureTLS
            req.commission = commission
            req.site = site ?? ""
            let request = req
            let m = try await rpc(client) { try await $0.machines.enrollMachine(request) }
            let view = MachineView(m)
            try printer.one(view) { "machine \(view.name) enrolled (\(view.mac), BMC \(view.bmc ?? "-"))" }
        }

        struct FileEntry: Decodable {
            var name: String
            var mac: String
            var bmc: String
            var bmcPasswordFile: String?
            var bmcInsecureTLS: Bool?
            var site: String?
            enum CodingKeys: String, CodingKey {
                case name, mac, bmc, site
                case bmcPasswordFile = "bmc-password-file"
                case bmcInsecureTLS = "bmc-insecure-tls"
            }
        }

        /// What `enroll --from` did, for -o json|yaml|name.
        struct Summary: Codable {
            var file: String
            var enrolled: [String]
            var failed: [String: String]
            static let columns: [Column<Summary>] = [
                Column("FILE") { $0.file }, Column("ENROLLED") { "\($0.enrolled.count)" },
                Column("FAILED") { "\($0.failed.count)" },
            ]
        }

        func enrollAll(_ path: String, _ output: OutputOptions) async throws {
            let printer = try output.printer(Summary.columns, name: { $0.enrolled.joined(separator: "\n") })
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw CLIError("cannot read \(path)")
            }
            let entries: [FileEntry]
            do { entries = try YAMLDecoder().decode([FileEntry].self, from: text) } catch {
                throw CLIError(
                    "\(path): expected a list of {name, mac, bmc[, bmc-password-file, bmc-insecure-tls, site]}: \(error)"
                )
            }
            var passwords: [String: String] = [:]
            var requests: [Farrier_V1_EnrollMachineRequest] = []
            for (n, e) in entries.enumerated() {
                guard let file = e.bmcPasswordFile ?? bmcPasswordFile else {
                    throw CLIError(
                        "\(path): entry \(n + 1) (\(e.name)) has no bmc-password-file, and --bmc-password-file is not given"
                    )
                }
                if passwords[file] == nil { passwords[file] = try readPasswordFile(file) }
                var req = Farrier_V1_EnrollMachineRequest()
                req.name = e.name
                req.mac = e.mac
                req.bmcURL = e.bmc
                req.bmcPassword = passwords[file] ?? ""
                req.bmcInsecureTls = e.bmcInsecureTLS ?? bmcInsecureTLS
                req.commission = commission
                req.site = e.site ?? site ?? ""
                requests.append(req)
            }
            let all = requests
            // Re-enrolling the same name and MAC keeps the machine, so the batch may be retried on
            // another replica; commissioning is not, so with --commission it is sent once.
            let failures = try await rpc(client, idempotent: !commission) { clients in
                try await withThrowingTaskGroup(of: (String, String?).self) { group in
                    var failures: [String: String] = [:]
                    var next = 0
                    func add() {
                        guard next < all.count else { return }
                        let req = all[next]
                        next += 1
                        group.addTask {
                            do {
                                _ = try await clients.machines.enrollMachine(req)
                                return (req.name, nil)
                            } catch let e as RPCError where e.code != .unavailable {
                                return (req.name, "\(e.code): \(e.message)")
                            }
                        }
                    }
                    for _ in 0..<16 { add() }
                    while let (name, failure) = try await group.next() {
                        if let failure { failures[name] = failure }
                        add()
                    }
                    return failures
                }
            }
            for (name, f) in failures.sorted(by: { $0.key < $1.key }) {
                FileHandle.standardError.write(Data("enroll failed: \(name): \(f)\n".utf8))
            }
            let summary = Summary(
                file: path,
                enrolled: entries.map(\.name).filter { failures[$0] == nil },
                failed: failures
            )
            try printer.one(summary) {
                "enrolled \(entries.count - failures.count) of \(entries.count) machines from \(path)"
            }
            if !failures.isEmpty { throw ExitCode(1) }
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
        static let configuration = CommandConfiguration(abstract: "Power status or action through the machine's BMC.")
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
        static let configuration = CommandConfiguration(abstract: "Set the boot device through the machine's BMC.")
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
