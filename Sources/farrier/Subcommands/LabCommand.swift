import ArgumentParser
import FarrierLab
import Foundation
import Yams

struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "A virtual lab of QEMU VMs with virtual BMCs on this host (root only).",
        subcommands: [Up.self, Status.self, RestartServer.self, Partition.self, Heal.self, Down.self]
    )

    static func selfPath() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "up",
            abstract: "Start the lab: a namespace with a bridge, farrier server, VMs and their BMCs."
        )
        @Option(help: "Number of VMs (1-50).") var machines = 2
        @Option(help: "bios, uefi or mixed (odd VMs BIOS, even VMs UEFI).") var firmware = "mixed"
        @Option(help: "The VMs' disks: virtio, nvme or mixed (odd VMs virtio, even VMs NVMe).") var diskBus = "virtio"
        @Option(
            help: "NICs per VM on the lab's bridge (1 or 2): the second (MAC 52:54:00:28:…) never network-boots."
        )
        var nics = 1
        @Option(help: "full (Farrier hands out addresses) or proxy (dnsmasq does; Farrier answers PXE).") var dhcpMode =
            "full"
        @Option(help: "sqlite, or postgres: a PostgreSQL 15 the lab starts in its namespace and `lab down` removes.")
        var database = "sqlite"
        @Option(help: "farrier servers sharing the lab's PostgreSQL (1-4; more than 1 needs --database postgres).")
        var replicas = 1
        @Option(help: "auto (KVM only if a probe boot works), tcg or kvm.") var accel = "auto"
        @Option(
            help: """
                Lab sites (0-4): each a namespace with its own network, site agent, VMs and BMCs, linked \
                to the region (which then serves no boot network); the VMs go round-robin over them.
                """
        )
        var sites = 0
        @Flag(help: "Leave the VMs powered off (power them on through their BMCs).") var noPowerOn = false
        @Flag(help: "Enroll only: do not commission (no ramdisk boot).") var noCommission = false
        @Option(help: "Run these commissioning tests (as `machine commission --tests`); repeat for more.")
        var commissionTests: [String] = []
        @Option(help: "A commissioning test's parameter TEST.KEY=VALUE (as `machine commission --param`).")
        var commissionParam: [String] = []
        @Option(
            help:
                "Ramdisk directory (vmlinuz, initrd.img). [default: the checkout's .build/ramdisk, built when missing]"
        )
        var ramdisk: String?
        @Option(
            help:
                "Test image added as debian-12, built on first use (the default's again when its script changes). [default: /var/cache/farrier/images/debian-12.raw.zst]"
        )
        var image: String?
        @Flag(help: "Add no image.") var noImage = false

        func validate() throws {
            guard ["bios", "uefi", "mixed"].contains(firmware) else {
                throw ValidationError("--firmware must be bios, uefi or mixed")
            }
            guard ["virtio", "nvme", "mixed"].contains(diskBus) else {
                throw ValidationError("--disk-bus must be virtio, nvme or mixed")
            }
            guard (1...2).contains(nics) else { throw ValidationError("--nics must be 1 or 2") }
            if noCommission, !commissionTests.isEmpty || !commissionParam.isEmpty {
                throw ValidationError("--commission-tests and --commission-param need commissioning")
            }
            if commissionTests.isEmpty, !commissionParam.isEmpty {
                throw ValidationError("--commission-param needs --commission-tests")
            }
            guard ["full", "proxy"].contains(dhcpMode) else {
                throw ValidationError("--dhcp-mode must be full or proxy")
            }
            guard ["auto", "tcg", "kvm"].contains(accel) else {
                throw ValidationError("--accel must be auto, tcg or kvm")
            }
            guard ["sqlite", "postgres"].contains(database) else {
                throw ValidationError("--database must be sqlite or postgres")
            }
            guard (1...4).contains(replicas) else { throw ValidationError("--replicas must be 1 to 4") }
            guard replicas == 1 || database == "postgres" else {
                throw ValidationError("--replicas \(replicas) needs --database postgres: replicas share one database")
            }
            guard (0...4).contains(sites) else { throw ValidationError("--sites must be 0 to 4") }
            guard sites == 0 || dhcpMode == "full" else {
                throw ValidationError("--sites needs --dhcp-mode full: each site serves its own network")
            }
        }

        func run() throws {
            var o = Lab.Options(farrierBinary: LabCommand.selfPath())
            o.machines = machines
            o.firmware = firmware
            o.diskBus = diskBus
            o.nics = nics
            o.dhcpMode = dhcpMode
            o.database = database
            o.replicas = replicas
            o.accelerator = accel
            o.sites = sites
            o.powerOn = !noPowerOn
            o.commission = !noCommission
            o.commissionTests = commissionTests
            o.commissionParameters = commissionParam
            o.ramdisk = ramdisk
            if noImage { o.image = nil } else if let image { o.image = image }
            let state = try Lab(log: { print($0) }).up(o)
            print("lab is up: \(state.vms.count) VMs, DHCP \(state.dhcpMode), accelerator \(state.accelerator)")
            print(
                "server \(state.serverAddress) (the CLI finds it with no flags while the lab is up)\(state.database == "postgres" ? "; state in PostgreSQL" : "")"
            )
            for site in state.sites ?? [] {
                print(
                    "\(site.name): \(site.network), agent pid \(site.agentPID.map(String.init) ?? "-"), data \(site.dataDir)"
                )
            }
            print(LabCommand.table(state, power: nil))
            print("BMC password: \(state.directory)/bmc-password; serial consoles: \(state.directory)/lab-N/serial.log")
            let first = state.serverAddress.split(separator: ",").first.map(String.init) ?? ""
            print(
                "web console: \(StatusView.consoleURL(first)) (log in with \(state.directory)/data/admin.token); metrics: \(StatusView.metricsURL(first))"
            )
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status",
            abstract: "Show the lab's VMs, MACs, firmware and BMCs."
        )
        @OptionGroup var output: OutputOptions

        static let columns: [Column<StatusView.VM>] = [
            Column("NAME") { $0.name }, Column("MAC") { $0.mac }, Column("FIRMWARE") { $0.firmware },
            Column("BMC") { "\($0.bmcUser)@\($0.bmcAddress)" }, Column("SITE", byDefault: false) { $0.site ?? "-" },
            Column("POWER") { $0.power },
            Column("SERIAL LOG", byDefault: false) { $0.serialLog }, Column("DISK", byDefault: false) { $0.disk },
        ]

        func run() throws {
            // JSON and YAML: the whole status; a table shaped by --columns or --no-headers, and
            // -o name: the VMs.
            let printer = try output.printer(Self.columns, name: \.name)
            guard let state = LabState.load() else {
                switch output.output {
                case .json: print("{\"up\": false, \"vms\": [], \"sites\": []}")
                case .yaml: print("up: false\nvms: []")
                case .name: break
                case .table: if !printer.shaped { print("the lab is down") }
                }
                return
            }
            let running = LabState.loadIfRunning() != nil
            let power = Lab(log: { _ in }).powerStates(state)
            let view = StatusView(
                up: running,
                accelerator: state.accelerator,
                dhcpMode: state.dhcpMode,
                server: state.serverAddress,
                directory: state.directory,
                database: state.database ?? "sqlite",
                metricsURL: StatusView.metricsURL(
                    state.serverAddress.split(separator: ",").first.map(String.init) ?? ""
                ),
                consoleURL: StatusView.consoleURL(
                    state.serverAddress.split(separator: ",").first.map(String.init) ?? ""
                ),
                adminTokenFile: state.directory + "/data/admin.token",
                replicas: [
                    .init(
                        address: state.serverAddress.split(separator: ",").first.map(String.init) ?? "",
                        pid: state.serverPID,
                        up: state.serverPID.map { kill($0, 0) == 0 } ?? false,
                        role: "boot network, API, reconciler"
                    )
                ]
                    + (state.extraReplicas ?? []).map {
                        .init(
                            address: $0.address,
                            pid: $0.pid,
                            up: $0.pid.map { kill($0, 0) == 0 } ?? false,
                            role: "API, reconciler"
                        )
                    },
                vms: state.vms.map {
                    .init(
                        name: $0.name,
                        mac: $0.mac,
                        firmware: $0.firmware,
                        bmcAddress: "\($0.bmcAddress):\($0.bmcPort)",
                        bmcUser: $0.bmcUser,
                        power: power[$0.name] ?? "unknown",
                        serialLog: $0.serialLog,
                        disk: $0.disk,
                        site: $0.site
                    )
                },
                sites: (state.sites ?? []).map {
                    .init(
                        name: $0.name,
                        network: $0.network,
                        partitioned: Lab.isPartitioned($0, namespace: state.namespace),
                        agentPID: $0.agentPID,
                        agentUp: $0.agentPID.map { kill($0, 0) == 0 } ?? false,
                        dataDir: $0.dataDir
                    )
                }
            )
            switch output.output {
            case .json: print(try json(view))
            case .yaml: print(try YAMLEncoder().encode(view), terminator: "")
            case .name: try printer.list(view.vms)
            case .table where printer.shaped: try printer.list(view.vms)
            case .table:
                print(
                    "lab is \(running ? "up" : "DOWN (server not running)"): DHCP \(state.dhcpMode), accelerator \(state.accelerator), database \(view.database), server \(state.serverAddress)"
                )
                if view.replicas.count > 1 {
                    print(
                        farrier.table(
                            ["REPLICA", "PID", "UP", "SERVES"],
                            view.replicas.map {
                                [$0.address, $0.pid.map(String.init) ?? "-", $0.up ? "yes" : "no", $0.role]
                            }
                        )
                    )
                }
                if !view.sites.isEmpty {
                    print(
                        farrier.table(
                            ["SITE", "NETWORK", "LINK", "AGENT"],
                            view.sites.map {
                                [
                                    $0.name, $0.network, $0.partitioned ? "partitioned" : "up",
                                    $0.agentUp ? "pid \($0.agentPID ?? 0)" : "down",
                                ]
                            }
                        )
                    )
                }
                print(LabCommand.table(state, power: power))
            }
        }
    }

    struct Partition: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "partition",
            abstract: "Cut a lab site's link to the region; the site goes on serving its machines."
        )
        @Argument(help: "The site (site-1, site-2, …).") var site: String
        func run() throws {
            let s = try Lab(log: { print($0) }).partition(site, cut: true)
            print("\(s.name): its link to the region is cut (farrier lab heal \(s.name) restores it)")
        }
    }

    struct Heal: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "heal",
            abstract: "Restore a lab site's link to the region."
        )
        @Argument(help: "The site (site-1, site-2, …).") var site: String
        func run() throws {
            let s = try Lab(log: { print($0) }).partition(site, cut: false)
            print("\(s.name): its link to the region is back")
        }
    }

    struct RestartServer: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "restart-server",
            abstract:
                "Restart the lab's farrier server on the same data (after a rebuild or a crash); VMs keep running."
        )
        @Option(help: "Restart only this replica (1: the one on the boot network); the others are left as they are.")
        var replica: Int?

        func validate() throws {
            if let replica, !(1...4).contains(replica) { throw ValidationError("--replica must be 1 to 4") }
        }

        func run() throws {
            let state = try Lab(log: { print($0) }).restartServer(
                farrierBinary: LabCommand.selfPath(),
                only: replica.map { $0 - 1 }
            )
            print("server \(state.serverAddress) is up")
        }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "down",
            abstract: "Remove every process, namespace, interface and file the lab made."
        )
        @Flag(
            help: """
                Only remove what a lab that died left behind (after a reboot or a killed run); \
                fail, changing nothing, while any process of the lab is alive.
                """
        )
        var ifDead = false

        func run() throws {
            guard getuid() == 0 else { throw ValidationError("farrier lab needs root") }
            try Lab(log: { print($0) }).down(ifDead: ifDead)
            print("lab is down")
        }
    }

    struct StatusView: Codable {
        struct VM: Codable {
            var name, mac, firmware, bmcAddress, bmcUser, power, serialLog, disk: String
            var site: String?
        }
        struct Site: Codable {
            var name, network: String
            var partitioned: Bool
            var agentPID: Int32?
            var agentUp: Bool
            var dataDir: String
        }
        struct Replica: Codable {
            var address: String
            var pid: Int32?
            var up: Bool
            var role: String
            var metricsURL: String

            init(address: String, pid: Int32?, up: Bool, role: String) {
                self.address = address
                self.pid = pid
                self.up = up
                self.role = role
                metricsURL = StatusView.metricsURL(address)
            }

            enum CodingKeys: String, CodingKey {
                case address, pid, up, role
                case metricsURL = "metrics_url"
            }
        }
        var up: Bool
        var accelerator, dhcpMode, server, directory, database: String
        /// Replica A's Prometheus endpoint (each replica's is in `replicas`), and the admin token
        /// the lab's CLI uses: for a script that scrapes or calls a running lab.
        var metricsURL: String
        /// Replica A's web console (log in with the admin token).
        var consoleURL: String
        var adminTokenFile: String
        var replicas: [Replica]
        var vms: [VM]
        var sites: [Site]

        enum CodingKeys: String, CodingKey {
            case up, accelerator, dhcpMode, server, directory, database, replicas, vms, sites
            case metricsURL = "metrics_url"
            case consoleURL = "console_url"
            case adminTokenFile = "admin_token_file"
        }

        /// Replica A's console, from its gRPC address: port 7780 to gRPC's 7700.
        static func consoleURL(_ grpcAddress: String) -> String {
            guard let colon = grpcAddress.lastIndex(of: ":") else { return "" }
            return "http://\(grpcAddress[..<colon]):7780/"
        }

        /// A replica's /metrics, from its gRPC address: its metrics port is 7790+N to gRPC's 7700+N.
        static func metricsURL(_ grpcAddress: String) -> String {
            guard let colon = grpcAddress.lastIndex(of: ":"),
                let port = Int(grpcAddress[grpcAddress.index(after: colon)...])
            else { return "" }
            return "http://\(grpcAddress[..<colon]):\(port - 7700 + 7790)/metrics"
        }
    }

    static func table(_ s: LabState, power: [String: String]?) -> String {
        let sites = !(s.sites ?? []).isEmpty
        var header = ["NAME", "MAC", "FIRMWARE", "BMC"]
        if sites { header.append("SITE") }
        if power != nil { header.append("POWER") }
        return farrier.table(
            header,
            s.vms.map { vm in
                var row = [vm.name, vm.mac, vm.firmware, "\(vm.bmcUser)@\(vm.bmcAddress):\(vm.bmcPort)"]
                if sites { row.append(vm.site ?? "-") }
                if let power { row.append(power[vm.name] ?? "unknown") }
                return row
            }
        )
    }
}
