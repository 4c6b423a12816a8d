import ArgumentParser
import FarrierAPI
import FarrierCore
import Foundation
import GRPCCore
import SwiftProtobuf
import Yams

/// `--tag KEY=VALUE` options, checked by the same rules as the server's (`Validation`).
func parseTags(_ items: [String]) throws -> [String: String] {
    switch Validation.parseTags(items) {
    case .success(let tags): return tags
    case .failure(let problem): throw ValidationError(problem.description)
    }
}

/// `--wait`, `--timeout`: follow a machine until its step ends.
struct WaitOptions: ParsableArguments {
    @Flag(help: "Follow the machine until the step ends; exit 1 if it ends failed.") var wait = false
    @Option(help: "With --wait: give up after this many seconds (exit 2).") var timeout: Int = 3600
}

/// Makes `n` changing calls (call i of `call`) one after another over one connection, printing
/// each machine as `verb`; a failure stops them, saying how many were `done`. Returns how many.
func oneAfterAnother(
    _ client: ClientOptions,
    _ n: Int,
    printer: Printer<MachineView>,
    verb: String,
    done: String,
    _ call: @escaping @Sendable (Clients, Int) async throws -> Farrier_V1_Machine
) async throws -> Int {
    // A line a machine as each is done; JSON, YAML and a shaped table print one list (of
    // those done) at the end, also when a failure stopped the batch.
    let streams = printer.format == .name || (printer.format == .table && !printer.shaped)
    return try await rpc(client) { c in
        var finished: [MachineView] = []
        do {
            for i in 0..<n {
                let m = try await call(c, i)
                if streams { try printMachine(m, printer, verb: verb) }
                finished.append(MachineView(m))
            }
        } catch {
            if !streams, !finished.isEmpty { try printer.list(finished) }
            throw CLIError("\(done) \(finished.count) of \(n) machines, then: \(error)")
        }
        if !streams { try printer.list(finished) }
        return finished.count
    }
}

func printMachine(_ m: Farrier_V1_Machine, _ printer: Printer<MachineView>, verb: String) throws {
    let view = MachineView(m)
    try printer.one(view) { "machine \(view.name) \(verb): \(view.stateLine)\(view.reason.map { " (\($0))" } ?? "")" }
}

/// Follows the machine until it leaves its step, showing state, phase and progress as they
/// change (one rewritten line on a terminal, a line per change otherwise). It follows the
/// machine's event stream (`WatchEvents`): each event committed for it wakes one read of the
/// machine, so a step's end shows as soon as it is committed. The stream is opened again if it
/// ends (a replica went away), at most 20 times, and the machine is read every 5 s besides, so a
/// lost stream costs seconds, not the wait. Bounded by `timeout`. Exits non-zero when the
/// machine ends `failed`.
func follow(_ name: String, client: ClientOptions, timeout: Int) async throws -> Farrier_V1_Machine {
    let steps: Set<String> = ["commissioning", "deploying", "releasing", "rescuing", "exiting-rescue"]
    let tty = isatty(STDOUT_FILENO) == 1
    let started = Date()
    var last = ""
    let deadline = started.addingTimeInterval(Double(timeout))
    let (wakeups, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    var watch = Farrier_V1_WatchEventsRequest()
    watch.name = name
    let request = watch
    let watcher = Task {
        for _ in 0..<20 where !Task.isCancelled {
            _ = try? await rpc(client, idempotent: true) { c in
                try await c.machines.watchEvents(request) { response in
                    for try await _ in response.messages { wake.yield() }
                }
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }
    let ticker = Task {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(5))
            wake.yield()
        }
    }
    defer {
        watcher.cancel()
        ticker.cancel()
        wake.finish()
    }
    var woken = wakeups.makeAsyncIterator()
    while Date() < deadline {
        var req = Farrier_V1_GetMachineRequest()
        req.nameOrMac = name
        req.timelineLimit = 1
        let get = req
        let m = try await rpc(client, idempotent: true) { try await $0.machines.getMachine(get) }
        let view = MachineView(m)
        let line = [
            String(format: "[%5.1fs]", Date().timeIntervalSince(started)), view.name, view.stateLine,
            view.progressLine ?? "",
        ].filter { !$0.isEmpty }.joined(separator: "  ")
        let key = [view.stateLine, view.progressLine ?? ""].joined(separator: "|")
        if key != last {
            if tty { print("\r\u{1b}[2K" + line, terminator: "") } else { print(line) }
            fflush(nil)
            last = key
        }
        if !steps.contains(m.state) {
            if tty { print("") }
            if m.state == "failed" {
                throw CLIError(
                    "machine \(m.name) failed in \(m.failedStep): \(m.reason)\n  retry: farrier machine retry \(m.name)   abort: farrier machine abort \(m.name)"
                )
            }
            return m
        }
        guard await woken.next() != nil else { break }
    }
    if tty { print("") }
    throw ExitCode(2)
}

/// The shape shared by release, rescue, exit-rescue, retry, abort: one machine, an
/// RPC, optionally --wait.
protocol MachineVerb: AsyncParsableCommand, Sendable {
    var client: ClientOptions { get }
    var output: OutputOptions { get }
    var waitOptions: WaitOptions { get }
    var name: String { get }
    static var verb: String { get }
    func call(_ c: Clients, _ ref: Farrier_V1_MachineRef) async throws -> Farrier_V1_Machine
}

extension MachineVerb {
    func run() async throws {
        let printer = try MachineView.printer(output)
        var ref = Farrier_V1_MachineRef()
        ref.name = name
        let request = ref
        let m = try await rpc(client) { c in try await self.call(c, request) }
        if waitOptions.wait {
            try printMachine(
                try await follow(m.name, client: client, timeout: waitOptions.timeout),
                printer,
                verb: Self.verb
            )
        } else {
            try printMachine(m, printer, verb: Self.verb)
        }
    }
}

extension MachineCommand {
    struct Deploy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "deploy",
            abstract: "Deploy an image onto a machine (create).",
            discussion: """
                Names a machine, or lets Farrier pick a ready one that meets the constraints (--arch, \
                --firmware, --min-cores (physical), --min-threads, --gpu N, --min-memory-gib, --min-disk-gib, \
                --match-tag, --root-device). The machine is \
                allocated to the project (a member token's own; admins give --project). --count N picks N \
                machines that way, one after another over one connection, and prints each (a failure \
                stops it, saying how many were deployed).
                """
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var waitOptions: WaitOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC; omit to pick by constraints.") var name: String?
        @Option(help: "Image name (farrier image list).") var image: String
        @Option(help: "SSH public key file; repeat for more.") var sshKey: [String] = []
        @Option(help: "cloud-init user-data file.") var userData: String?
        @Option(help: "Host name (default: the machine name).") var hostname: String?
        @Option(help: "Project (admin tokens).") var project: String?
        @Option(help: "Deploy tag KEY=VALUE (a project may require some); repeat for more.") var tag: [String] = []
        @Option(help: "Constraint: architecture.") var arch: Architecture?
        @Option(help: "Constraint: firmware.") var firmware: Firmware?
        @Option(help: "Constraint: at least this many physical cores.") var minCores: Int?
        @Option(help: "Constraint: at least this many hardware threads (logical CPUs).") var minThreads: Int?
        @Option(name: .customLong("gpu"), help: "Constraint: at least this many GPUs.") var minGPUs: Int?
        @Option(help: "Constraint: at least this much memory, GiB.") var minMemoryGib: Int?
        @Option(help: "Constraint: a disk of at least this size, GiB.") var minDiskGib: Int?
        @Option(help: "Constraint: the machine carries tag KEY=VALUE; repeat for more.") var matchTag: [String] = []
        @Option(help: "Constraint: zone.") var zone: String?
        @Option(
            help:
                "Root device hint KEY=VALUE (name, model, serial, wwn, rotational, size>=GIB): the disk to write; over the machine's own hints; repeat for more. See `machine root-device --help`."
        ) var rootDevice: [String] = []
        @Option(help: "Deploy this many machines picked by the constraints (no machine name).") var count: Int = 1
        @Option(
            help:
                "A bond: NAME,mode=active-backup|802.3ad,nics=eth0+eth1[,primary=eth0][,mtu=N] (or nics=2@link, 2@speed>=25000, 2@driver=ice); repeat for more."
        ) var bond: [String] = []
        @Option(
            help:
                "A network (farrier network list) on the machine: NAME[,on=NIC-OR-BOND][,address=IP]...[,default-route][,mtu=N]; on a VLAN it gets a sub-interface; repeat for more."
        ) var network: [String] = []
        @Option(help: "A NIC's MTU, NIC=N (bonds take mtu= in --bond); repeat for more.") var mtu: [String] = []

        func validate() throws {
            guard (1...10_000).contains(count) else { throw ValidationError("--count must be from 1 to 10000") }
            do { _ = try RootDeviceHints.parse(rootDevice) } catch { throw ValidationError(error.description) }
            switch NetworkRequest.parse(bonds: bond, networks: network, mtus: mtu) {
            case .success(let r):
                if count > 1, r.attachments.contains(where: { !$0.addresses.isEmpty }) {
                    throw ValidationError("--count deploys several machines; a fixed address= would go to them all")
                }
            case .failure(let p): throw ValidationError(p.description)
            }
            if count > 1 {
                guard name == nil else {
                    throw ValidationError("--count picks machines by constraints; give no machine name")
                }
                guard hostname == nil else {
                    throw ValidationError("--count deploys several machines; --hostname would name them all alike")
                }
                guard !waitOptions.wait else {
                    throw ValidationError("--count does not wait; follow the machines with `farrier machine list`")
                }
            }
        }

        func run() async throws {
            let printer = try MachineView.printer(output)
            var req = Farrier_V1_DeployMachineRequest()
            req.name = name ?? ""
            req.image = image
            req.project = project ?? ""
            req.hostname = hostname ?? ""
            req.tags = try parseTags(tag)
            req.rootDevice = rootDevice
            req.bonds = bond
            req.networks = network
            req.mtus = mtu
            for path in sshKey {
                guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                    throw CLIError("cannot read SSH key file \(path)")
                }
                req.sshKeys += text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter {
                    !$0.isEmpty && !$0.hasPrefix("#")
                }
            }
            if let userData {
                guard let text = try? String(contentsOfFile: userData, encoding: .utf8) else {
                    throw CLIError("cannot read user-data file \(userData)")
                }
                req.userData = text
            }
            var c = Farrier_V1_Constraints()
            c.architecture = arch?.rawValue ?? ""
            c.firmware = firmware?.rawValue ?? ""
            c.minCores = Int32(minCores ?? 0)
            c.minThreads = Int32(minThreads ?? 0)
            c.minGpus = Int32(minGPUs ?? 0)
            c.minMemoryBytes = Int64(minMemoryGib ?? 0) << 30
            c.minDiskBytes = Int64(minDiskGib ?? 0) << 30
            c.tags = try parseTags(matchTag)
            c.zone = zone ?? ""
            req.constraints = c
            let request = req
            if count > 1 {
                let deployed = try await oneAfterAnother(
                    client,
                    count,
                    printer: printer,
                    verb: "deploying",
                    done: "deployed"
                ) { c, _ in
                    try await c.machines.deployMachine(request)
                }
                if output.output == .table, !printer.shaped { print("\(deployed) machines deploying") }
                return
            }
            let m = try await rpc(client) { try await $0.machines.deployMachine(request) }
            if waitOptions.wait {
                try printMachine(
                    try await follow(m.name, client: client, timeout: waitOptions.timeout),
                    printer,
                    verb: "deployed"
                )
            } else {
                try printMachine(m, printer, verb: "deploying")
            }
        }
    }

    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "release",
            abstract: "Wipe a machine and return it to the pool (destroy)."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var waitOptions: WaitOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine names or MACs (several: released one after another over one connection, no --wait).")
        var names: [String]
        @Option(
            help:
                "full (erase and verify every byte) or quick (first and last MiB; only where the project's wipe policy is quick). Default: the project's policy."
        )
        var wipe: WipeMode?

        func validate() throws {
            guard !names.isEmpty else { throw ValidationError("name the machine to release") }
            guard names.count == 1 || !waitOptions.wait else {
                throw ValidationError("--wait follows one machine; release several without it")
            }
        }

        func run() async throws {
            let printer = try MachineView.printer(output)
            var req = Farrier_V1_ReleaseMachineRequest()
            req.wipe = wipe?.rawValue ?? ""
            if names.count > 1 {
                let all = names
                let template = req
                _ = try await oneAfterAnother(client, all.count, printer: printer, verb: "releasing", done: "released")
                {
                    c,
                    i in
                    var r = template
                    r.name = all[i]
                    let m = try await c.machines.releaseMachine(r)
                    try? FileManager.default.removeItem(atPath: knownHostsDirectory + "/" + m.id)
                    return m
                }
                return
            }
            req.name = names[0]
            let request = req
            let m = try await rpc(client) { try await $0.machines.releaseMachine(request) }
            try? FileManager.default.removeItem(atPath: knownHostsDirectory + "/" + m.id)
            if waitOptions.wait {
                try printMachine(
                    try await follow(m.name, client: client, timeout: waitOptions.timeout),
                    printer,
                    verb: "released"
                )
            } else {
                try printMachine(m, printer, verb: "releasing")
            }
        }
    }

    struct Commission: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "commission",
            abstract: "Commission a machine: inventory in the ramdisk, then the tests asked for, then ready.",
            discussion: """
                --tests runs hardware tests in the ramdisk after the inventory, one after another: the \
                built-ins cpu-stress, memory-stress, memtester, smart and disk-read (aliases: cpu, memory, \
                disk), and admins' scripts (`farrier test-script add`), as NAME or NAME@VERSION. A test \
                that fails or runs past its limit leaves the machine failed, naming the test; `machine \
                show` lists every result. --param sets a built-in's parameter, TEST.KEY=VALUE (see \
                `farrier test-script list`), e.g. --param cpu-stress.seconds=60.
                """
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var waitOptions: WaitOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var name: String
        @Option(help: "Tests to run, comma-separated; repeat for more.") var tests: [String] = []
        @Option(name: .customLong("param"), help: "A built-in test's parameter TEST.KEY=VALUE; repeat for more.")
        var parameters: [String] = []

        func validate() throws {
            if tests.isEmpty, !parameters.isEmpty { throw ValidationError("--param needs --tests") }
        }

        func run() async throws {
            let printer = try MachineView.printer(output)
            var req = Farrier_V1_CommissionMachineRequest()
            req.name = name
            req.tests = tests
            req.parameters = parameters
            let request = req
            let m = try await rpc(client) { try await $0.machines.commissionMachine(request) }
            if waitOptions.wait {
                try printMachine(
                    try await follow(m.name, client: client, timeout: waitOptions.timeout),
                    printer,
                    verb: "commissioning"
                )
            } else {
                try printMachine(m, printer, verb: "commissioning")
            }
        }
    }

    struct Rescue: MachineVerb {
        static let configuration = CommandConfiguration(
            commandName: "rescue",
            abstract: "Boot a deployed machine into the rescue ramdisk (debug)."
        )
        static let verb = "rescue"
        @OptionGroup var client: ClientOptions
        @OptionGroup var waitOptions: WaitOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var name: String
        func call(_ c: Clients, _ r: Farrier_V1_MachineRef) async throws -> Farrier_V1_Machine {
            try await c.machines.rescueMachine(r)
        }
    }

    struct ExitRescue: MachineVerb {
        static let configuration = CommandConfiguration(
            commandName: "exit-rescue",
            abstract: "Boot a machine in rescue back into its deployed system."
        )
        static let verb = "exit-rescue"
        @OptionGroup var client: ClientOptions
        @OptionGroup var waitOptions: WaitOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var name: String
        func call(_ c: Clients, _ r: Farrier_V1_MachineRef) async throws -> Farrier_V1_Machine {
            try await c.machines.exitRescueMachine(r)
        }
    }

    struct Adopt: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "adopt",
            abstract:
                "Record an enrolled machine already running an OS as deployed, without touching its disk (admin).",
            discussion: """
                For machines installed before Farrier, or by hand: the machine becomes deployed in the \
                project, with the image recorded as what it runs (its bytes are not written). The BMC \
                must answer and find the machine on; its next boot is set to disk, persistently. Its \
                disk counts as holding the project's data: releasing it wipes it, like any deployed \
                machine.
                """
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC (enrolled).") var name: String
        @Option(help: "The image it runs (farrier image list).") var image: String
        @Option(help: "The project it belongs to.") var project: String
        @Option(help: "Its hostname (default: the machine name).") var hostname: String?
        @Option(help: "A deploy tag (KEY=VALUE), as the project requires; repeat for more.") var tag: [String] = []

        func run() async throws {
            let printer = try MachineView.printer(output)
            var req = Farrier_V1_AdoptMachineRequest()
            req.name = name
            req.image = image
            req.project = project
            req.hostname = hostname ?? ""
            req.tags = try parseTags(tag)
            let request = req
            let m = try await rpc(client) { c in try await c.machines.adoptMachine(request) }
            try printMachine(m, printer, verb: "adopted")
        }
    }

    struct MaintenanceCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "maintenance",
            abstract: "Put a machine in maintenance, or take it out (admin).",
            discussion: """
                In maintenance nothing is done to the machine: no lifecycle step starts on it, the power \
                sync does not read its BMC, it is not allocatable, and tenants' restarts and power actions \
                are refused (an admin's `machine power` still works). list and show show the reason. It \
                starts only between steps: wait for a running step to end, or to fail.
                """
        )
        enum Mode: String, ExpressibleByArgument, CaseIterable { case on, off }
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "on or off.") var mode: Mode
        @Argument(help: "Machine name or MAC.") var name: String
        @Option(help: "Why (required with on; one line, at most 256 characters).") var reason: String?

        func validate() throws {
            if mode == .on, let p = Maintenance.reasonProblem(reason ?? "") { throw ValidationError(p) }
            if mode == .off, reason != nil { throw ValidationError("--reason is for maintenance on") }
        }

        func run() async throws {
            let printer = try MachineView.printer(output)
            var req = Farrier_V1_SetMaintenanceRequest()
            req.name = name
            req.on = mode == .on
            req.reason = reason ?? ""
            let request = req
            let m = try await rpc(client) { c in try await c.machines.setMaintenance(request) }
            let view = MachineView(m)
            try printer.one(view) {
                "machine \(view.name) maintenance \(mode.rawValue)\(view.maintenance.map { ": \($0.reason)" } ?? "")"
            }
        }
    }

    struct RootDevice: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "root-device",
            abstract: "Set which disk deploys write to: root device hints (admin).",
            discussion: """
                Each HINT is KEY=VALUE, all must match: name (the kernel's name: sda, nvme0n1), model, \
                serial, wwn (with or without 0x), rotational (true or false), or size in GiB with =, \
                >=, <=, > or < (size>=100). Model and serial match whole, ignoring case. Of the disks \
                that match, a deploy takes the smallest that holds the image and, unless the hints pin a \
                disk (name, serial, wwn, or a size only a smaller disk meets), is at least 4 GiB. Without \
                hints (--clear) it takes the smallest disk of at least 4 GiB that holds the image. Hints are checked against the \
                machine's inventory when it has one; a deploy's own --root-device hints win over these. \
                Quote size hints in a shell: 'size>=100'.
                """
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var name: String
        @Argument(help: "Hints, KEY=VALUE (e.g. serial=S3Z1NB0K 'size>=100').") var hints: [String] = []
        @Flag(help: "Remove the hints: back to the default choice.") var clear = false

        func validate() throws {
            if clear == !hints.isEmpty {
                throw ValidationError(clear ? "--clear takes no hints" : "give hints (KEY=VALUE), or --clear")
            }
            do { _ = try RootDeviceHints.parse(hints) } catch { throw ValidationError(error.description) }
        }

        func run() async throws {
            let printer = try MachineView.printer(output)
            var req = Farrier_V1_SetRootDeviceRequest()
            req.name = name
            req.hints = hints
            let request = req
            let m = try await rpc(client) { c in try await c.machines.setRootDevice(request) }
            let view = MachineView(m)
            try printer.one(view) {
                "machine \(view.name) root device: \(view.rootDevice.map { $0.joined(separator: " ") } ?? "default")"
            }
        }
    }

    struct Retry: MachineVerb {
        static let configuration = CommandConfiguration(
            commandName: "retry",
            abstract: "Run the failed step of a failed machine again."
        )
        static let verb = "retry"
        @OptionGroup var client: ClientOptions
        @OptionGroup var waitOptions: WaitOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var name: String
        func call(_ c: Clients, _ r: Farrier_V1_MachineRef) async throws -> Farrier_V1_Machine {
            try await c.machines.retryMachine(r)
        }
    }

    struct Abort: MachineVerb {
        static let configuration = CommandConfiguration(
            commandName: "abort",
            abstract: "Take a failed machine back to the safe state before its failed step."
        )
        static let verb = "aborted"
        @OptionGroup var client: ClientOptions
        @OptionGroup var waitOptions: WaitOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var name: String
        func call(_ c: Clients, _ r: Farrier_V1_MachineRef) async throws -> Farrier_V1_Machine {
            try await c.machines.abortMachine(r)
        }
    }

    struct Restart: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "restart",
            abstract:
                "Restart a deployed or rescued machine through its BMC (it boots its disk, or the rescue ramdisk).",
            discussion: """
                A deployed machine is first asked to shut down (the ACPI power button, through the BMC), so \
                its OS writes out what it has not yet; if it is still on after --shutdown-timeout seconds, \
                or with --hard, it is power-cycled. A hard cycle can lose the last seconds of the OS's writes.
                """
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var waitOptions: WaitOptions
        @Flag(help: "Power-cycle at once, without asking the OS to shut down first.") var hard = false
        @Option(help: "Seconds to wait for the OS to shut down before power-cycling it.") var shutdownTimeout: Int = 120
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var name: String

        func run() async throws {
            let printer = try MachineView.printer(output)
            var ref = Farrier_V1_MachineRef()
            ref.name = name
            let request = ref
            var p = Farrier_V1_PowerRequest()
            p.name = name
            p.action = "status"
            let status = p
            var g = Farrier_V1_GetMachineRequest()
            g.nameOrMac = name
            g.timelineLimit = 1
            let get = g
            if !hard,
                try await rpc(client, idempotent: true, { try await $0.machines.getMachine(get) }).state == "deployed",
                try await rpc(client, { try await $0.machines.power(status) }).powerState == "on"
            {
                var soft = status
                soft.action = "soft-off"
                let softOff = soft
                _ = try await rpc(client) { try await $0.machines.power(softOff) }
                let deadline = Date().addingTimeInterval(Double(max(0, shutdownTimeout)))
                var off = false
                while !off, Date() < deadline {
                    try await Task.sleep(for: .seconds(1))
                    off = try await rpc(client, { try await $0.machines.power(status) }).powerState == "off"
                }
                if !off {
                    FileHandle.standardError.write(
                        Data("machine \(name) did not shut down within \(shutdownTimeout) s; power-cycling it\n".utf8)
                    )
                }
            }
            // Powers on a machine that is off, cycles one that is on; a deployed one boots its disk.
            let m = try await rpc(client) { try await $0.machines.restartMachine(request) }
            var shown = m
            if waitOptions.wait {
                // A deployed OS that reports in is restarted once it has (SSH answers); else,
                // once the BMC says it is on again.
                let deadline = Date().addingTimeInterval(Double(waitOptions.timeout))
                var done = false
                while !done, Date() < deadline {
                    if m.state == "deployed", m.deployment.osTracked {
                        shown = try await rpc(client, idempotent: true) { try await $0.machines.getMachine(get) }
                        guard shown.state == "deployed" else {
                            throw CLIError("machine \(name) was restarted, then became \(shown.state)")
                        }
                        done = !shown.deployment.osAwaiting
                    } else {
                        done = try await rpc(client, { try await $0.machines.power(status) }).powerState == "on"
                    }
                    if !done { try await Task.sleep(for: .milliseconds(500)) }
                }
                if !done {
                    FileHandle.standardError.write(
                        Data("machine \(name) was restarted, but is not back within \(waitOptions.timeout) s\n".utf8)
                    )
                    throw ExitCode(2)
                }
            }
            try printMachine(shown, printer, verb: "restarted")
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "delete",
            abstract: "Forget a machine (admin; not while allocated or in a step)."
        )
        @OptionGroup var client: ClientOptions
        @Argument(help: "Machine name or MAC.") var name: String

        func run() async throws {
            var ref = Farrier_V1_MachineRef()
            ref.name = name
            let request = ref
            _ = try await rpc(client) { try await $0.machines.deleteMachine(request) }
            print("machine \(name) deleted")
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "update",
            abstract: "Set or remove labels; tags, zone, rack and name (admin).",
            discussion: "Examples: farrier machine update lab-1 --tag rack-row=a --label owner=ops --remove-tag old"
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC.") var name: String
        @Option(help: "Set tag KEY=VALUE; repeat for more.") var tag: [String] = []
        @Option(help: "Remove tag KEY; repeat for more.") var removeTag: [String] = []
        @Option(help: "Set label KEY=VALUE; repeat for more.") var label: [String] = []
        @Option(help: "Remove label KEY; repeat for more.") var removeLabel: [String] = []
        @Option(help: "Zone.") var zone: String?
        @Option(help: "Rack.") var rack: String?
        @Option(help: "Site (one `farrier site add` made; '' for the region's own boot network).") var site: String?
        @Option(help: "New name.") var rename: String?

        func run() async throws {
            let printer = try MachineView.printer(output)
            var req = Farrier_V1_UpdateMachineRequest()
            req.name = name
            req.setTags = try parseTags(tag)
            req.removeTags = removeTag
            req.setLabels = try parseTags(label)
            req.removeLabels = removeLabel
            if let zone { req.zone = zone }
            if let rack { req.rack = rack }
            if let site { req.site = site }
            req.newName = rename ?? ""
            let request = req
            try printMachine(
                try await rpc(client) { try await $0.machines.updateMachine(request) },
                printer,
                verb: "updated"
            )
        }
    }

    struct Watch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "watch",
            abstract: "Stream lifecycle events: transitions, progress, BMC actions."
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Machine name or MAC; omit for all you may see.") var name: String?
        @Option(
            help:
                "Replay the stored events with an id above this one first (0, the default: only new events; -1: every stored event)."
        )
        var after: Int64 = 0

        func run() async throws {
            // Streamed: JSON is one object a line, YAML one document an event, a table one row
            // (tab-separated) an event.
            let printer = try output.printer(EventView.columns, name: \.machine)
            var req = Farrier_V1_WatchEventsRequest()
            req.name = name ?? ""
            req.afterID = after
            let request = req
            try await rpc(client) { c in
                try await c.machines.watchEvents(request) { response in
                    var first = true
                    for try await e in response.messages {
                        let view = EventView(e)
                        try printer.streamed(view, first: first) {
                            "\(iso(view.time))  #\(view.id)  \(view.machine)  \(EventView.stateLine(view))  \(view.kind): \(EventView.messageLine(view))"
                        }
                        first = false
                    }
                }
            }
        }
    }

    /// One event, with every field the API sends (as `machine show`'s JSON names them).
    struct EventView: Codable {
        var id: Int64
        var time: Date
        var machine: String
        var kind: String
        var state: String
        var phase: String?
        var message: String
        var progress: MachineView.ProgressView?
        var failedStep: String?
        var project: String?

        init(_ e: Farrier_V1_MachineEvent) {
            id = e.id
            time = e.time.date
            machine = e.machine
            kind = e.kind
            state = e.state
            phase = e.phase.isEmpty ? nil : e.phase
            message = e.message
            progress = e.hasProgress ? MachineView.ProgressView(e.progress) : nil
            failedStep = e.failedStep.isEmpty ? nil : e.failedStep
            project = e.project.isEmpty ? nil : e.project
        }

        static func stateLine(_ e: EventView) -> String { e.state + (e.phase.map { "/" + $0 } ?? "") }

        static func messageLine(_ e: EventView) -> String {
            guard let p = e.progress, p.bytesTotal > 0 else { return e.message }
            return e.message + " \(bytes(p.bytesDone))/\(bytes(p.bytesTotal))"
        }

        static let columns: [Column<EventView>] = [
            Column("TIME") { iso($0.time) }, Column("ID") { "\($0.id)" }, Column("MACHINE") { $0.machine },
            Column("STATE", stateLine), Column("KIND") { $0.kind }, Column("MESSAGE", messageLine),
        ]
    }

    struct SSH: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ssh",
            abstract: "SSH to a deployed or rescued machine (login).",
            discussion: "Example: farrier machine ssh lab-1 -- hostname"
        )
        @OptionGroup var client: ClientOptions
        @Argument(help: "Machine name or MAC.") var name: String
        @Option(name: .short, help: "Private key file.") var identity: String?
        @Option(name: .shortAndLong, help: "Remote user.") var user: String = "root"
        @Argument(parsing: .postTerminator, help: "Command to run (after --).") var command: [String] = []

        func run() async throws {
            var req = Farrier_V1_GetMachineRequest()
            req.nameOrMac = name
            req.timelineLimit = 1
            let request = req
            let m = try await rpc(client, idempotent: true) { try await $0.machines.getMachine(request) }
            guard m.state == "deployed" || m.state == "rescue" else {
                throw CLIError("machine \(m.name) is \(m.state); ssh works when it is deployed or in rescue")
            }
            guard !m.address.isEmpty else {
                throw CLIError("machine \(m.name) has no known address (no DHCP lease from Farrier)")
            }
            // Host keys are remembered per machine and per system (deployed OS, rescue ramdisk),
            // and forgotten at release, so a redeployed machine is not a key mismatch.
            let dir = knownHostsDirectory + "/" + m.id
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var args = [
                "ssh", "-o", "StrictHostKeyChecking=accept-new", "-o", "UserKnownHostsFile=\(dir)/\(m.state)",
                "-o", "ConnectTimeout=10", "-o", "BatchMode=\(command.isEmpty ? "no" : "yes")",
            ]
            if let identity { args += ["-i", identity] }
            args.append("\(user)@\(m.address)")
            args += command
            let argv = args.map { strdup($0) } + [nil]
            execvp("ssh", argv)
            throw CLIError("cannot run ssh: \(String(cString: strerror(errno))) (install openssh-client)")
        }
    }
}

var knownHostsDirectory: String {
    (CLIConfig.path as NSString).deletingLastPathComponent + "/known_hosts"
}
