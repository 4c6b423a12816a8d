import ArgumentParser
import FarrierAPI
import FarrierCore
import Foundation
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
            abstract: "Enroll a machine with its BMC.",
            discussion: """
                The BMC is a URL: ipmi://USER@HOST[:PORT], redfish://USER@HOST[:PORT][/SYSTEM-ID] (HTTPS, \
                certificate verified) or redfish+http://USER@HOST[:PORT]. The password comes from a file and \
                is stored encrypted; no command or API answer ever shows it. A machine already discovered \
                with this MAC takes the new name.
                """)
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        @Argument(help: "Machine name (lower-case letters, digits, '-').") var name: String
        @Option(help: "MAC of the NIC the machine network-boots from.") var mac: String
        @Option(help: "BMC URL, e.g. ipmi://admin@10.0.0.5 or redfish://root@bmc1/System.Embedded.1") var bmc: String
        @Option(help: "File holding the BMC password ('-' for stdin).") var bmcPasswordFile: String
        @Flag(help: "Redfish over HTTPS: do not verify this BMC's certificate (self-signed).") var bmcInsecureTLS = false
        @Flag(help: "Commission right away: boot the ramdisk, take the inventory, end ready.") var commission = false

        func run() async throws {
            var req = Farrier_V1_EnrollMachineRequest()
            req.name = name
            req.mac = mac
            req.bmcURL = bmc
            req.bmcPassword = try readPasswordFile(bmcPasswordFile)
            req.bmcInsecureTls = bmcInsecureTLS
            req.commission = commission
            let request = req
            let m = try await rpc(client) { try await $0.machines.enrollMachine(request) }
            let view = MachineView(m)
            switch output {
            case .json: print(try json(view))
            case .yaml: print(try YAMLEncoder().encode(view), terminator: "")
            case .table: print("machine \(view.name) enrolled (\(view.mac), BMC \(view.bmc ?? "-"))")
            }
        }
    }

    struct Power: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Power status or action through the machine's BMC.")
        @OptionGroup var client: ClientOptions
        @Argument(help: "Machine name or MAC.") var name: String
        @Argument(help: "status, on, off, cycle, reset or soft-off.") var action: String = "status"

        func run() async throws {
            var req = Farrier_V1_PowerRequest()
            req.name = name
            req.action = action
            let request = req
            let r = try await rpc(client) { try await $0.machines.power(request) }
            print(action == "status" ? "power \(r.powerState)" : "\(action): ok, power \(r.powerState)")
        }
    }

    struct Bootdev: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set the boot device through the machine's BMC.")
        @OptionGroup var client: ClientOptions
        @Argument(help: "Machine name or MAC.") var name: String
        @Argument(help: "pxe or disk.") var device: String
        @Flag(help: "Every boot, not only the next one.") var persistent = false
        @Flag(help: "UEFI boot (default: legacy BIOS).") var efi = false

        func run() async throws {
            var req = Farrier_V1_SetBootDeviceRequest()
            req.name = name
            req.device = device
            req.persistent = persistent
            req.efi = efi
            let request = req
            _ = try await rpc(client) { try await $0.machines.setBootDevice(request) }
            print("boot device \(device)\(persistent ? " (persistent)" : " (next boot)")\(efi ? ", UEFI" : "")")
        }
    }

    struct Console: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Attach to the machine's serial console (IPMI SOL, through the server). ~. detaches.")
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
