import ArgumentParser
import FarrierAPI
import FarrierCore
import FarrierSim
import Foundation
import Synchronization
import SystemSupport
import UnixSignals
import WireSupport

struct SimCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sim",
        abstract: "Simulate a fleet of machines against a real Farrier server (a test and bench tool).",
        discussion: """
            Runs N simulated machines. Their BMCs are one simulated Redfish service (a ComputerSystem \\
            per machine, basic auth) on --redfish-listen: power and the boot override change as a real \\
            BMC's do, with the latency and faults asked for. A machine powered on boots from its \\
            override or its disk; booting from the network, it fetches its iPXE script from the server \\
            (--boot-url) from its own address (machine i uses --first-address + i; every 127.0.0.0/8 \\
            address is the loopback on Linux). When the script boots the Farrier ramdisk, a simulated \\
            agent speaks the real agent protocol on the pinned HTTPS channel the script names: hello \\
            with an inventory, progress, the image download (a share of it, or all), done.

            It writes, before serving: --write-enroll, the machines as a list for \\
            `farrier machine enroll --from`; --write-config, a server configuration file reserving each \\
            machine's address for its MAC (dhcp.reservations: the server then accepts its agents from \\
            there; set dhcp.mode off or give a subnet); --write-password, the BMCs' password (mode 0600).

            Counters are served at GET /sim/v1/stats on the Redfish port and printed as JSON on exit \\
            (SIGINT or SIGTERM).
            """
    )

    @Option(help: "Number of machines.") var machines = 100
    @Option(help: "HOST:PORT of the simulated Redfish service (loopback only).") var redfishListen = "127.0.0.1:8200"
    @Option(help: "The server's boot HTTP (where iPXE fetches /boot/<mac>.ipxe).") var bootURL = "http://127.0.0.1:8080"
    @Option(
        help: """
            A site the machines are spread over, round-robin, as NAME=http://HOST:PORT (its \
            `site run --boot` HTTP); repeat for more. The machines boot from their site's HTTP, \
            not --boot-url, and --write-enroll gives each its site.
            """
    )
    var site: [String] = []
    @Option(help: "The first machine's address (127.x.y.z).") var firstAddress = "127.16.0.1"
    @Option(help: "Machine names are PREFIX-00001, ….") var namePrefix = "sim"
    @Option(help: "Milliseconds every BMC answer takes.") var bmcLatencyMs = 2
    @Option(help: "Share of BMC requests answered 500.") var bmcErrorRate = 0.0
    @Option(help: "Share of BMC requests never answered (closed after 15 s).") var bmcTimeoutRate = 0.0
    @Option(help: "Every Nth machine's BMC refuses the password (0: none).") var wrongPasswordEvery = 0
    @Option(help: "Seconds from power on to the script fetch (±20 %).") var bootSeconds = 2.0
    @Option(help: "Seconds of agent work besides downloads (±20 %).") var agentSeconds = 2.0
    @Option(help: "Share of agent tasks that report failure.") var agentFailRate = 0.0
    @Option(help: "Seconds from a deployed OS's disk boot to its report (±20 %).") var osSeconds = 2.0
    @Option(help: "Share of each image a deploy downloads (0 to 1).") var imageShare = 1.0
    @Option(help: "Longest wait between script fetches in Farrier's wait loop, seconds.") var pollSeconds = 5.0
    @Option(help: "Write the machines for `farrier machine enroll --from` here.") var writeEnroll: String?
    @Option(help: "Write a server configuration file with the address reservations here.") var writeConfig: String?
    @Option(help: "Write the BMCs' password here (mode 0600).") var writePassword: String?
    @Flag(
        help:
            "Time `machine list` (a page of 100) and `machine show` on the server (--server, --token) every --probe-interval; p50/p99 go in the counters."
    )
    var probe = false
    @Flag(
        help:
            "Run no machines, only the probe (over the names --machines and --name-prefix give), in a process of its own: the fleet's work then does not delay the client. Its counters are printed on exit."
    )
    var probeOnly = false
    @Option(help: "Seconds between probes.") var probeInterval = 1.0
    @Option(help: "Read the probe's API token from this file once it exists (a server not yet started writes it).")
    var probeTokenFile: String?
    @OptionGroup var client: ClientOptions

    func validate() throws {
        if probeOnly, !probe {
            throw ValidationError("--probe-only needs --probe (and --server, --token or --probe-token-file)")
        }
        guard (1...60_000).contains(machines) else { throw ValidationError("--machines must be from 1 to 60000") }
        _ = try Self.sites(site)
        guard let first = IPv4Address(firstAddress), first.value >> 24 == 127, (first.value & 0x00ff_ffff) >= 2 else {
            throw ValidationError("--first-address must be a loopback address above 127.0.0.1 (127.x.y.z)")
        }
        guard (first.value & 0x00ff_ffff) + UInt32(machines) < 0x00ff_ffff else {
            throw ValidationError("--first-address leaves too few loopback addresses")
        }
        let (host, _) = try splitHostPort(redfishListen)
        guard host.hasPrefix("127.") || host == "::1" else {
            throw ValidationError("--redfish-listen must be a loopback address")
        }
        for (name, rate) in [
            ("--bmc-error-rate", bmcErrorRate), ("--bmc-timeout-rate", bmcTimeoutRate),
            ("--agent-fail-rate", agentFailRate), ("--image-share", imageShare),
        ] {
            guard (0...1).contains(rate) else { throw ValidationError("\(name) must be from 0 to 1") }
        }
    }

    /// The --site values: NAME=http://HOST:PORT each, names unique.
    static func sites(_ values: [String]) throws -> [SimSite] {
        var out: [SimSite] = []
        for v in values {
            guard let eq = v.firstIndex(of: "="), v[v.index(after: eq)...].hasPrefix("http://") else {
                throw ValidationError("--site '\(v)': NAME=http://HOST:PORT")
            }
            let name = String(v[..<eq])
            guard !name.isEmpty, !out.contains(where: { $0.name == name }) else {
                throw ValidationError("--site '\(v)': a name, once")
            }
            let url = v[v.index(after: eq)...].dropFirst(7).prefix { $0 != "/" }
            let (host, port) = try splitHostPort(String(url))
            out.append(SimSite(name: name, bootHost: host, bootPort: port))
        }
        return out
    }

    /// Times a page of `machine list` and a `machine show` every `interval` over one connection,
    /// failing over between the servers as the CLI does; runs until cancelled.
    static func probe(
        _ options: ClientOptions,
        tokenFile: String?,
        fleet: SimFleet,
        names: [String],
        interval: Double
    ) async {
        var client = options
        let calling = Mutex("list")
        for _ in 0..<1_000_000 where !Task.isCancelled {
            if let tokenFile {
                guard
                    let t = try? String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(
                        in: .whitespacesAndNewlines
                    ), !t.isEmpty
                else {
                    try? await Task.sleep(for: .seconds(1))
                    continue
                }
                client.token = t
            }
            do {
                try await rpc(client, idempotent: true) { c in
                    for _ in 0..<1_000_000 where !Task.isCancelled {
                        var list = Farrier_V1_ListMachinesRequest()
                        list.pageSize = 100
                        if let start = names.randomElement() { list.pageToken = Data(start.utf8).base64EncodedString() }
                        let request = list
                        let t0 = ContinuousClock.now
                        calling.withLock { $0 = "list" }
                        _ = try await c.machines.listMachines(request)
                        await fleet.recordProbe("list", milliseconds: (ContinuousClock.now - t0) / .milliseconds(1))
                        var show = Farrier_V1_GetMachineRequest()
                        show.nameOrMac = names.randomElement() ?? ""
                        let showRequest = show
                        let t1 = ContinuousClock.now
                        calling.withLock { $0 = "show" }
                        _ = try await c.machines.getMachine(showRequest)
                        await fleet.recordProbe("show", milliseconds: (ContinuousClock.now - t1) / .milliseconds(1))
                        try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
                    }
                }
            } catch {
                // A call cut short by the probe's own stop is not the server's failure.
                if Task.isCancelled { break }
                await fleet.recordProbe(calling.withLock { $0 }, milliseconds: nil)
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    func run() async throws {
        var c = SimConfiguration()
        c.machines = machines
        (c.redfishHost, c.redfishPort) = try splitHostPort(redfishListen)
        guard bootURL.hasPrefix("http://") else { throw ValidationError("--boot-url must be http://HOST:PORT") }
        (c.bootHost, c.bootPort) = try splitHostPort(String(bootURL.dropFirst(7).prefix { $0 != "/" }))
        c.sites = try Self.sites(site)
        c.firstAddress = IPv4Address(firstAddress) ?? c.firstAddress
        c.namePrefix = namePrefix
        c.bmcLatency = .milliseconds(bmcLatencyMs)
        c.bmcErrorRate = bmcErrorRate
        c.bmcTimeoutRate = bmcTimeoutRate
        c.wrongPasswordEvery = wrongPasswordEvery
        c.bootSeconds = bootSeconds
        c.agentSeconds = agentSeconds
        c.agentFailRate = agentFailRate
        c.osSeconds = osSeconds
        c.imageShare = imageShare
        c.pollSeconds = pollSeconds
        c.password = SecureRandom.bytes(16).hexString

        let fleet = SimFleet(c)
        if probeOnly {
            try await runProbeOnly(fleet)
            return
        }
        let port = try await fleet.start()
        let entries = await fleet.entries(port: port)
        if let writeConfig {
            let text = "dhcp:\n  reservations:\n" + entries.map { "    - \"\($0.mac)=\($0.address)\"\n" }.joined()
            try text.write(toFile: writeConfig, atomically: true, encoding: .utf8)
        }
        if let writePassword {
            try SecretFile.replace(writePassword, Array((c.password + "\n").utf8), mode: 0o600)
        }
        if let writeEnroll {
            let text = entries.map { e in
                "- name: \(e.name)\n  mac: \"\(e.mac)\"\n  bmc: \(e.bmcURL)\n"
                    + (e.site.map { "  site: \($0)\n" } ?? "")
            }.joined()
            try text.write(toFile: writeEnroll, atomically: true, encoding: .utf8)
        }
        FileHandle.standardOutput.write(
            Data(
                "sim: \(machines) machines; Redfish on \(c.redfishHost):\(port); booting from \(c.sites.isEmpty ? bootURL : "\(c.sites.count) sites")\n"
                    .utf8
            )
        )

        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await fleet.run() }
            group.addTask {
                for await _ in signals { return }
            }
            if probe {
                let names = await fleet.names()
                let client = self.client
                let interval = probeInterval
                let tokenFile = probeTokenFile
                group.addTask {
                    await Self.probe(client, tokenFile: tokenFile, fleet: fleet, names: names, interval: interval)
                }
            }
            _ = try await group.next()
            group.cancelAll()
        }
        try await printStats(fleet)
    }

    /// The probe alone, until SIGTERM or SIGINT; then its counters.
    func runProbeOnly(_ fleet: SimFleet) async throws {
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        let names = await fleet.names()
        let client = self.client
        let interval = probeInterval
        let tokenFile = probeTokenFile
        FileHandle.standardOutput.write(
            Data("sim: probing \(client.server ?? "the default server") every \(interval) s\n".utf8)
        )
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await Self.probe(client, tokenFile: tokenFile, fleet: fleet, names: names, interval: interval)
            }
            group.addTask {
                for await _ in signals { return }
            }
            _ = await group.next()
            group.cancelAll()
        }
        try await printStats(fleet)
    }

    func printStats(_ fleet: SimFleet) async throws {
        let stats = await fleet.snapshot()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(stats), as: UTF8.self))
    }
}
