import Foundation
import SystemSupport

/// `farrier lab`: a network namespace with a bridge, a `farrier server` serving it, and QEMU VMs
/// that network-boot from it, each with an OpenIPMI `ipmi_sim` BMC on the lab network.
///
/// Containment: lab addresses come from 198.18.0.0/15 (RFC 2544 benchmarking). While the lab is
/// up, a blackhole route for that range in the root namespace makes any lab-bound traffic from
/// the host fail locally instead of leaving the machine; only the /30 host link and the lab's
/// own /24 (through it) are reachable, both ending in the lab namespace.
public struct Lab {
    public struct Options {
        public var machines = 2
        public var firmware = "mixed"  // bios, uefi or mixed
        /// The VMs' disk controller: virtio, nvme, or mixed (odd VMs virtio, even VMs NVMe).
        public var diskBus = "virtio"
        /// NICs per VM on the lab's bridge, 1 or 2. The second (tap `frtap<i>b`, MAC
        /// 52:54:00:28:<site>:<i>) has no option ROM, so it never network-boots: it is there for
        /// bonds (issue 18 point 4).
        public var nics = 1
        public var dhcpMode = "full"  // full or proxy
        /// sqlite, or postgres: a PostgreSQL 15 the lab starts in its namespace (and removes).
        public var database = "sqlite"
        /// farrier servers on the lab's PostgreSQL (more than 1 needs database postgres).
        public var replicas = 1
        public var accelerator = "auto"  // auto, tcg or kvm
        /// Lab sites (0-4): each a namespace with its own bridge, site agent, VMs and BMCs; the
        /// region then serves no boot network itself. VMs go round-robin over the sites.
        public var sites = 0
        public var powerOn = true
        /// Boot the Farrier ramdisk to commission every VM (inventory, then `ready`).
        public var commission = true
        /// The commissioning's tests and their parameters (`machine commission --tests --param`).
        public var commissionTests: [String] = []
        public var commissionParameters: [String] = []
        /// The ramdisk (vmlinuz, initrd.img); built with scripts/build-ramdisk.sh when missing.
        public var ramdisk: String?
        /// The test image, added as `debian-12`; built with scripts/build-test-image.sh when missing
        /// (and, at the default path, when the script has changed since).
        public var image: String? = Options.defaultImage
        public static let defaultImage = "/var/cache/farrier/images/debian-12.raw.zst"
        public var farrierBinary: String
        public init(farrierBinary: String) { self.farrierBinary = farrierBinary }

        /// The source checkout the binary was built in (…/.build/debug/farrier), if any.
        var checkout: String? {
            var url = URL(fileURLWithPath: farrierBinary).resolvingSymlinksInPath().deletingLastPathComponent()
            for _ in 0..<5 {
                if FileManager.default.fileExists(atPath: url.path + "/scripts/build-ramdisk.sh") { return url.path }
                url.deleteLastPathComponent()
            }
            return nil
        }

        var ramdiskDirectory: String? { ramdisk ?? checkout.map { $0 + "/.build/ramdisk" } }
    }

    public static let namespace = "farrier-lab"
    public static let hostLink = ("frlab0", "frlab1")
    public static let labRange = "198.18.0.0/15"
    public static let network = "198.18.0.0/24"
    static let serverIP = "198.18.0.1"
    static let hostIP = "198.19.255.1", nsIP = "198.19.255.2"
    static let bmcUser = "admin"

    let log: (String) -> Void
    public init(log: @escaping (String) -> Void) { self.log = log }

    static func ip(_ args: String...) throws { try Spawn.run(["ip"] + args) }
    static func inNS(_ args: [String]) -> [String] { ["ip", "netns", "exec", namespace] + args }

    // MARK: up

    public func up(_ o: Options) throws -> LabState {
        guard getuid() == 0 else {
            throw Spawn.Failure(description: "farrier lab needs root (network namespaces, taps, QEMU)")
        }
        guard (1...50).contains(o.machines) else { throw Spawn.Failure(description: "--machines must be 1 to 50") }
        guard ["sqlite", "postgres"].contains(o.database) else {
            throw Spawn.Failure(description: "--database must be sqlite or postgres")
        }
        guard (1...4).contains(o.replicas), o.replicas == 1 || o.database == "postgres" else {
            throw Spawn.Failure(
                description:
                    "--replicas must be 1 to 4, and more than 1 needs --database postgres (replicas share one database)"
            )
        }
        guard (0...4).contains(o.sites) else { throw Spawn.Failure(description: "--sites must be 0 to 4") }
        guard o.sites == 0 || o.dhcpMode == "full" else {
            throw Spawn.Failure(description: "--sites needs --dhcp-mode full (each site serves its own network)")
        }
        if let running = LabState.loadIfRunning() {
            log("lab is already up (server pid \(running.serverPID ?? 0)); `farrier lab down` first to change it")
            return running
        }
        try down()  // anything left from a lab that died half-way
        let dir = LabState.defaultDirectory
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var state = LabState(
            directory: dir,
            namespace: Self.namespace,
            bridge: "br0",
            dhcpMode: o.dhcpMode,
            accelerator: "tcg",
            network: Self.network,
            serverAddress: (0..<o.replicas).map { "\(Self.nsIP):\(7700 + $0)" }.joined(separator: ","),
            hostLink: Self.hostLink.0,
            blackholeRoute: Self.labRange,
            serverPID: nil,
            dnsmasqPID: nil,
            vms: [],
            database: o.database
        )
        // Save early: a failure from here on leaves something `lab down` can find and remove.
        try state.save()
        do {
            // Built before the lab's network exists: the builds fetch Debian packages, and the
            // blackhole route for the lab's range must not stand between them and the mirror
            // (or a resolver that sits in 198.18.0.0/15, as on some CI machines).
            let commission = try o.commission && prepareRamdisk(o, dir: dir)
            if let image = o.image { try buildImageIfOutdated(o, image: image) }
            try network()
            for k in stride(from: 1, through: o.sites, by: 1) {
                state.sites = (state.sites ?? []) + [try siteNetwork(k, dir: dir)]
                try state.save()
                state.sites?[k - 1].dnsmasqPID = try startDnsmasq(
                    "full",
                    dir: dir,
                    namespace: Self.siteNamespace(k),
                    tag: "-site-\(k)"
                )
                try state.save()
                state.sites?[k - 1].lldpdPID = try startLLDPD(
                    dir: dir,
                    machines: o.machines,
                    nics: o.nics,
                    namespace: Self.siteNamespace(k),
                    tag: "-site-\(k)"
                )
                try state.save()
            }
            state.accelerator = try chooseAccelerator(o.accelerator, dir: dir)
            log("accelerator: \(state.accelerator)\(state.accelerator == "tcg" ? " (software emulation)" : "")")
            let password = String((0..<16).map { _ in "abcdefghijkmnpqrstuvwxyz23456789".randomElement()! })
            try write(dir + "/bmc-password", mode: 0o600, password)
            state.dnsmasqPID = try startDnsmasq(o.dhcpMode, dir: dir)
            try state.save()
            state.lldpdPID = try startLLDPD(dir: dir, machines: o.machines, nics: o.nics)
            try state.save()
            if o.database == "postgres" {
                state.postgresPID = try startPostgres(dir: dir)
                try state.save()
            }
            state.serverPID = try startServer(o, dir: dir)
            try state.save()
            // The replicas share the data directory: the first makes its keys (the agent channel's
            // certificate, the BMC key, the admin token) before the others read them. Started
            // together, one read a half-written key and exited (failedToLoadPrivateKey).
            if o.replicas > 1 { try waitForServer(replicas: [0]) }
            for r in 1..<o.replicas {
                let pid = try startServer(o, dir: dir, replica: r)
                state.extraReplicas =
                    (state.extraReplicas ?? []) + [.init(address: "\(Self.nsIP):\(7700 + r)", pid: pid)]
                try state.save()
            }
            for i in 1...o.machines {
                let fw = o.firmware == "mixed" ? (i % 2 == 1 ? "bios" : "uefi") : o.firmware
                let bus = o.diskBus == "mixed" ? (i % 2 == 1 ? "virtio" : "nvme") : o.diskBus
                state.vms.append(
                    try makeVM(
                        i,
                        site: o.sites == 0 ? 0 : (i - 1) % o.sites + 1,
                        firmware: fw,
                        diskBus: bus,
                        nics: o.nics,
                        accelerator: state.accelerator,
                        password: password,
                        dir: dir
                    )
                )
                try state.save()
            }
            try waitForServer(replicas: Array(0..<o.replicas))
            // Each site joins the region with a one-time token, as an operator's would, and
            // starts serving its network.
            for k in stride(from: 1, through: o.sites, by: 1) {
                state.sites?[k - 1].agentPID = try startSite(k, o, server: state.serverAddress, dir: dir)
                try state.save()
            }
            // Each VM is enrolled with its BMC as an operator would, through the CLI and the API;
            // the server then drives the BMC itself.
            var commissioning: [String] = []
            if commission {
                commissioning = ["--commission"]
                for t in o.commissionTests { commissioning += ["--tests", t] }
                for p in o.commissionParameters { commissioning += ["--param", p] }
            }
            for vm in state.vms {
                let site: [String] = vm.site.map { ["--site", $0] } ?? []
                try Spawn.run(
                    [
                        o.farrierBinary, "machine", "enroll", vm.name, "--server", state.serverAddress, "--mac", vm.mac,
                        "--bmc", "ipmi://\(vm.bmcUser)@\(vm.bmcAddress):\(vm.bmcPort)", "--bmc-password-file",
                        dir + "/bmc-password",
                    ] + site + commissioning,
                    timeout: 30
                )
            }
            if let image = o.image { try addImage(o, image: image, server: state.serverAddress) }
            // Commissioning powers the VMs on itself (through their BMCs).
            if o.powerOn && !commission {
                for vm in state.vms {
                    try Spawn.run(
                        [o.farrierBinary, "machine", "power", vm.name, "on", "--server", state.serverAddress],
                        timeout: 60
                    )
                }
            }
        } catch {
            log("lab up failed: \(error)")
            // The logs go with the lab: show their ends first, or the error points at removed files.
            let siteLogs = (state.sites ?? []).map { "\($0.name).log" }
            for name in ["server.log", "server-2.log", "server-3.log", "server-4.log", "postgres.log"] + siteLogs {
                let path = dir + "/" + name
                guard let data = FileManager.default.contents(atPath: path) else { continue }
                let lines = String(decoding: data, as: UTF8.self).split(separator: "\n").suffix(30)
                log("--- the last lines of \(path):\n" + lines.joined(separator: "\n"))
            }
            log("removing what was made")
            try? down()
            throw error
        }
        return state
    }

    func network() throws {
        let ns = Self.namespace
        try Self.ip("netns", "add", ns)
        try Self.ip("-n", ns, "link", "set", "lo", "up")
        try Self.ip("-n", ns, "link", "add", "br0", "type", "bridge")
        try Self.ip("-n", ns, "addr", "add", "\(Self.serverIP)/24", "dev", "br0")
        try Self.ip("-n", ns, "addr", "add", "fd98:18::1/64", "dev", "br0", "nodad")
        try Self.ip("-n", ns, "link", "set", "br0", "up")
        try Spawn.run(Self.inNS(["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        let (host, peer) = Self.hostLink
        try Self.ip("link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
        try Self.ip("addr", "add", "\(Self.hostIP)/30", "dev", host)
        try Self.ip("link", "set", host, "up")
        try Self.ip("-n", ns, "addr", "add", "\(Self.nsIP)/30", "dev", peer)
        try Self.ip("-n", ns, "link", "set", peer, "up")
        // Containment first, then the one specific route into the lab namespace.
        try Spawn.run(["ip", "route", "replace", "blackhole", Self.labRange])
        try Self.ip("route", "replace", Self.network, "via", Self.nsIP, "dev", host)
    }

    /// TCG unless a probe boot under KVM gets iPXE as far as DHCP (on these machines /dev/kvm is
    /// a paravirtual nested hypervisor that starts firmware and then hangs iPXE and Linux).
    func chooseAccelerator(_ wanted: String, dir: String) throws -> String {
        if wanted == "tcg" { return "tcg" }
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            if wanted == "kvm" { throw Spawn.Failure(description: "--accel kvm: /dev/kvm does not exist") }
            return "tcg"
        }
        let bootID = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)) ?? ""
        let cache = "/run/farrier-kvm-probe"
        if let cached = try? String(contentsOfFile: cache, encoding: .utf8), cached.hasPrefix(bootID) {
            let ok = cached.hasSuffix("ok")
            if wanted == "kvm" && !ok {
                throw Spawn.Failure(description: "--accel kvm: the KVM probe boot failed on this host")
            }
            return ok ? "kvm" : "tcg"
        }
        log("probing KVM with a short iPXE boot (up to 15 s)…")
        try Self.ip("-n", Self.namespace, "tuntap", "add", "dev", "frprobe", "mode", "tap")
        defer { _ = try? Spawn.run(["ip", "-n", Self.namespace, "link", "del", "frprobe"], check: false) }
        let serial = dir + "/kvm-probe.log"
        let pid = try Spawn.detached(
            Self.inNS([
                "qemu-system-x86_64", "-accel", "kvm", "-m", "128", "-nographic", "-monitor", "none", "-no-reboot",
                "-boot", "n", "-netdev", "tap,id=n0,ifname=frprobe,script=no,downscript=no",
                "-device", "e1000,netdev=n0,mac=52:54:00:18:ff:ff",
            ]),
            log: serial
        )
        var ok = false
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline, Spawn.isAlive(pid) {
            if let text = try? String(contentsOfFile: serial, encoding: .utf8), text.contains("Configuring (net0") {
                ok = true
                break
            }
            usleep(200_000)
        }
        Spawn.stop(pid, grace: 2)
        try? (bootID + (ok ? "ok" : "failed")).write(toFile: cache, atomically: true, encoding: .utf8)
        if wanted == "kvm" && !ok {
            throw Spawn.Failure(description: "--accel kvm: the KVM probe boot failed on this host")
        }
        return ok ? "kvm" : "tcg"
    }

    /// lldpd on the bridge side of the VMs' taps, as the switch they are cabled to: each VM's
    /// NIC hears, every second, the system name `farrier-lab-switch` (with the site's tag at a
    /// site) and its tap's name as the port ID, which commissioning records (`--commission-lldp-wait`).
    func startLLDPD(
        dir: String,
        machines: Int,
        nics: Int,
        namespace: String = Lab.namespace,
        tag: String = ""
    ) throws -> Int32 {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/lldpd") else {
            throw Spawn.Failure(
                description: "the lab needs lldpd (apt-get install lldpd; scripts/install-deps.sh does)"
            )
        }
        // lldpd drops its privileges into this directory (the Debian package's unit makes it).
        try FileManager.default.createDirectory(atPath: "/run/lldpd", withIntermediateDirectories: true)
        let socket = dir + "/lldpd\(tag).socket"
        let out = dir + "/lldpd\(tag).out"
        // Settings lldpd has lldpcli apply before it sends anything: set afterwards, a frame
        // with the host's name could reach a VM first.
        let name = "farrier-lab-switch\(tag)"
        let conf = dir + "/lldpd\(tag).conf"
        try write(
            conf,
            mode: 0o644,
            "configure system hostname \(name)\nconfigure lldp portidsubtype ifname\nconfigure lldp tx-interval 1\n"
        )
        let pid = try Spawn.detached(
            [
                "ip", "netns", "exec", namespace, "/usr/sbin/lldpd", "-d", "-u", socket, "-p", dir + "/lldpd\(tag).pid",
                "-O", conf,
                // Each tap by its exact name: lldpd passes over a tap a pattern matches.
                "-I",
                (1...max(1, machines)).flatMap { nics > 1 ? ["frtap\($0)", "frtap\($0)b"] : ["frtap\($0)"] }
                    .joined(separator: ","),
            ],
            log: out
        )
        // Up once it answers with its settings (at most 10 s).
        var ready = false
        for _ in 0..<100 where !ready {
            guard Spawn.isAlive(pid) else { break }
            let r = try? Spawn.run(
                ["ip", "netns", "exec", namespace, "lldpcli", "-u", socket, "show", "chassis"],
                timeout: 10,
                check: false
            )
            ready = r?.status == 0 && r?.output.contains(name) == true
            if !ready { usleep(100_000) }
        }
        guard ready, Spawn.isAlive(pid) else {
            Spawn.stop(pid)
            throw Spawn.Failure(
                description:
                    "lldpd did not start or take its settings: \((try? String(contentsOfFile: out, encoding: .utf8)) ?? "")"
            )
        }
        return pid
    }

    /// dnsmasq sends IPv6 router advertisements (iPXE otherwise waits ~13 s for IPv6 after its
    /// DHCPv4 ACK); in proxy mode it also plays the site's existing DHCP server.
    func startDnsmasq(_ mode: String, dir: String, namespace: String = Lab.namespace, tag: String = "") throws -> Int32
    {
        var args = [
            "dnsmasq", "--keep-in-foreground", "--port=0", "--interface=br0", "--bind-interfaces", "--no-resolv",
            "--enable-ra", "--dhcp-range=::,constructor:br0,ra-only,64,1h", "--log-facility=\(dir)/dnsmasq\(tag).log",
            "--dhcp-leasefile=\(dir)/dnsmasq\(tag).leases", "--pid-file=",
        ]
        if mode == "proxy" {
            args += [
                "--dhcp-range=198.18.0.100,198.18.0.199,255.255.255.0,1h", "--no-ping", "--dhcp-authoritative",
                "--log-dhcp",
            ]
        }
        let out = dir + "/dnsmasq\(tag).out"
        let pid = try Spawn.detached(["ip", "netns", "exec", namespace] + args, log: out)
        usleep(300_000)
        guard Spawn.isAlive(pid) else {
            throw Spawn.Failure(
                description: "dnsmasq exited: \((try? String(contentsOfFile: out, encoding: .utf8)) ?? "")"
            )
        }
        return pid
    }

    /// Puts the Farrier ramdisk into the lab server's boot root, building it first when the
    /// checkout has the script and no ramdisk yet. Returns whether there is one.
    func prepareRamdisk(_ o: Options, dir: String) throws -> Bool {
        guard let source = o.ramdiskDirectory else {
            log("no ramdisk (run from a checkout, or give --ramdisk DIR): machines stay enrolled")
            return false
        }
        let fm = FileManager.default
        if let checkout = o.checkout {
            log("ramdisk: bash scripts/build-ramdisk.sh \(source) (cached when up to date)")
            try Spawn.run(
                ["env", "FARRIER_BIN=\(o.farrierBinary)", "bash", checkout + "/scripts/build-ramdisk.sh", source],
                timeout: 1800
            )
        }
        guard fm.fileExists(atPath: source + "/vmlinuz"), fm.fileExists(atPath: source + "/initrd.img") else {
            log("no ramdisk in \(source): machines stay enrolled")
            return false
        }
        let target = dir + "/data/boot/ramdisk"
        try fm.createDirectory(atPath: target, withIntermediateDirectories: true)
        for f in ["vmlinuz", "initrd.img", "burnin.img"] {
            try? fm.removeItem(atPath: target + "/" + f)
            // The tests' tools are optional: a ramdisk built without them runs no built-in test.
            if f == "burnin.img", !fm.fileExists(atPath: source + "/" + f) { continue }
            try fm.copyItem(atPath: source + "/" + f, toPath: target + "/" + f)
        }
        return true
    }

    /// Makes the test image available as `debian-12`, with scripts/build-test-image.sh when
    /// the file is missing, or when it is the cached copy at the default path: the script keeps
    /// that copy while the script is unchanged (its hash is the copy's key) and builds it anew
    /// (several minutes) when another version of the script made it. An image file given with
    /// --image is never overwritten; without a checkout, a file already there is used as it is.
    func buildImageIfOutdated(_ o: Options, image: String) throws {
        guard let checkout = o.checkout else { return }
        let script = checkout + "/scripts/build-test-image.sh"
        let exists = FileManager.default.fileExists(atPath: image)
        guard !exists || image == Options.defaultImage else { return }
        log("image: \(image) from scripts/build-test-image.sh (built only when missing or out of date)")
        try Spawn.run(["bash", script, image], timeout: 3600)
    }

    func addImage(_ o: Options, image: String, server: String) throws {
        guard FileManager.default.fileExists(atPath: image) else {
            log("no test image at \(image): add one with farrier image add")
            return
        }
        log("image: adding debian-12 from \(image)")
        try Spawn.run(
            [o.farrierBinary, "image", "add", "debian-12", image, "--os", "debian-12", "--server", server],
            timeout: 900
        )
    }

    /// Starts replica `replica` (0: the one on the boot network, with DHCP and TFTP; others:
    /// the API and the reconciler only, on ports 7700+N, 8080+N and 8443+N; metrics on 7790+N).
    func startServer(_ o: Options, dir: String, replica: Int = 0) throws -> Int32 {
        var args = [
            o.farrierBinary, "server", "--data-dir", dir + "/data", "--http-listen", "0.0.0.0:\(8080 + replica)",
            "--agent-listen", "0.0.0.0:\(8443 + replica)", "--grpc-listen", "0.0.0.0:\(7700 + replica)",
            // The metrics (and replica A's web console) only on the host link, not on the boot network.
            "--metrics-listen", "\(Self.nsIP):\(7790 + replica)",
            // The CLI on the host reaches the API over the lab's host link; the lab is one
            // host's demo, so its API goes without TLS, as asked for here.
            "--api-insecure",
            // lldpd on the taps sends every second: commissioning hears it at once.
            "--commission-lldp-wait", "10",
        ]
        if replica == 0 { args += ["--console-listen", "\(Self.nsIP):7780"] }
        if o.sites > 0 {
            // The sites serve the boot networks; the region serves them the site link, on the
            // region's end of each site's routed link.
            args += ["--tftp-listen", "", "--dhcp-mode", "off", "--site-listen", "0.0.0.0:\(7710 + replica)"]
            for k in 1...o.sites { args += ["--site-link-name", Self.regionLinkIP(k)] }
        } else if replica == 0 {
            args += ["--tftp-listen", "0.0.0.0:69", "--dhcp-interface", "br0", "--dhcp-mode", o.dhcpMode]
            if o.dhcpMode == "full" {
                args += [
                    "--dhcp-subnet",
                    "\(Self.network),pool=198.18.0.100-198.18.0.199,router=\(Self.serverIP),dns=\(Self.serverIP),lease=3600",
                ]
            }
        } else {
            args += ["--tftp-listen", "", "--dhcp-mode", "off"]
        }
        if o.database == "postgres" { args += ["--database", Self.postgresURL] }
        return try Spawn.detached(
            Self.inNS(args),
            log: dir + (replica == 0 ? "/server.log" : "/server-\(replica + 1).log")
        )
    }

    static let postgresBin = "/usr/lib/postgresql/15/bin"
    static let postgresURL = "postgres://farrier@127.0.0.1:5432/farrier?sslmode=disable"

    /// A PostgreSQL 15 in the lab's namespace (127.0.0.1:5432 there), its files in the lab's
    /// directory, run as nobody (it refuses root); trust on its loopback, which nothing outside
    /// the namespace reaches.
    func startPostgres(dir: String) throws -> Int32 {
        guard FileManager.default.isExecutableFile(atPath: Self.postgresBin + "/postgres") else {
            throw Spawn.Failure(
                description:
                    "--database postgres needs PostgreSQL 15 (apt-get install postgresql-15; scripts/install-deps.sh does)"
            )
        }
        let data = dir + "/postgres"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        chmod(dir, 0o755)
        try Spawn.run(["chown", "nobody:nogroup", data])
        chmod(data, 0o700)
        let asNobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
        try Spawn.run(
            asNobody + [Self.postgresBin + "/initdb", "-D", data, "-U", "farrier", "-A", "trust", "-E", "UTF8"],
            timeout: 120
        )
        let pid = try Spawn.detached(
            Self.inNS(
                asNobody + [
                    Self.postgresBin + "/postgres", "-D", data, "-k", data, "-p", "5432", "-c",
                    "listen_addresses=127.0.0.1",
                ]
            ),
            log: dir + "/postgres.log"
        )
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if let r = try? Spawn.run(
                Self.inNS([
                    Self.postgresBin + "/pg_isready", "-h", "127.0.0.1", "-p", "5432", "-U", "farrier", "-d",
                    "postgres",
                ]),
                timeout: 5,
                check: false
            ),
                r.status == 0
            {
                try Spawn.run(
                    Self.inNS([
                        "psql", "-h", "127.0.0.1", "-p", "5432", "-U", "farrier", "-d", "postgres", "-c",
                        "CREATE DATABASE farrier",
                    ])
                )
                log("PostgreSQL up (pid \(pid)), \(Self.postgresURL)")
                return pid
            }
            usleep(200_000)
        }
        throw Spawn.Failure(description: "the lab's PostgreSQL did not come up; see \(dir)/postgres.log")
    }

    /// Waits until every replica answers its health check: the first serves the boot network,
    /// and a caller may use any of them (the lab's state names them all) as soon as this returns.
    func waitForServer(replicas: [Int] = [0]) throws {
        let deadline = Date().addingTimeInterval(30)
        for replica in replicas {
            while true {
                // Its HTTP health check, and its gRPC port taking connections (the API the CLI uses).
                if let r = try? Spawn.run(
                    Self.inNS(["curl", "-sf", "http://127.0.0.1:\(8080 + replica)/healthz"]),
                    timeout: 5,
                    check: false
                ), r.output == "ok\n",
                    let g = try? Spawn.run(
                        Self.inNS(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/\(7700 + replica)"]),
                        timeout: 5,
                        check: false
                    ), g.status == 0
                {
                    break
                }
                guard Date() < deadline else {
                    let log = replica == 0 ? "server.log" : "server-\(replica + 1).log"
                    throw Spawn.Failure(
                        description:
                            "the lab's farrier server (replica \(replica + 1)) did not come up; see \(LabState.defaultDirectory)/\(log)"
                    )
                }
                usleep(200_000)
            }
        }
    }

    func makeVM(
        _ i: Int,
        site k: Int,
        firmware: String,
        diskBus: String,
        nics: Int,
        accelerator: String,
        password: String,
        dir: String
    ) throws -> LabState.VM {
        let name = "lab-\(i)"
        let vmDir = dir + "/" + name
        try FileManager.default.createDirectory(atPath: vmDir, withIntermediateDirectories: true)
        // At site k (0: the region's network), in its namespace and network 198.18.k.0/24.
        let ns = k == 0 ? Self.namespace : Self.siteNamespace(k)
        let mac = String(format: "52:54:00:18:%02x:%02x", k, i)
        let bmcIP = "198.18.\(k).\(10 + i)"
        let solPort = 9000 + i
        let tap = "frtap\(i)"
        try Self.ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
        try Self.ip("-n", ns, "link", "set", tap, "master", "br0", "up")
        try Self.ip("-n", ns, "addr", "add", "\(bmcIP)/24", "dev", "br0")
        // A second NIC on the same bridge, after the first on the PCI bus (so the guest names it
        // eth1), without a ROM: the firmware never network-boots from it. br0 does not filter
        // VLANs, so tagged frames between VMs pass.
        let secondMAC = nics > 1 ? String(format: "52:54:00:28:%02x:%02x", k, i) : nil
        var secondNIC = ""
        if let secondMAC {
            let tap2 = tap + "b"
            try Self.ip("-n", ns, "tuntap", "add", "dev", tap2, "mode", "tap")
            try Self.ip("-n", ns, "link", "set", tap2, "master", "br0", "up")
            secondNIC =
                " \\\n  -netdev tap,id=n1,ifname=\(tap2),script=no,downscript=no -device e1000,netdev=n1,mac=\(secondMAC),romfile="
        }
        try Spawn.run(["qemu-img", "create", "-q", "-f", "qcow2", vmDir + "/disk.qcow2", "8G"])
        // A second, smaller disk (a spare or boot-media disk, as servers have) on the other bus,
        // so that the root device choice is tested: its kernel name sorts before the 8 GiB one's
        // on a virtio VM (nvme0n1 < vda), yet a deploy takes the 8 GiB disk (too small for the
        // default's 4 GiB floor).
        try Spawn.run(["qemu-img", "create", "-q", "-f", "qcow2", vmDir + "/spare.qcow2", "1G"])
        let bios = firmware == "uefi" ? " -bios /usr/share/ovmf/OVMF.fd" : ""
        let accel = accelerator == "kvm" ? "kvm" : "tcg"
        // Under TCG, a CPU with SSE4.1 (Nehalem: SSSE3, SSE4.1/4.2, POPCNT; no AES-NI, no AVX, as
        // real servers have had for 15 years): BoringSSL's ChaCha20-Poly1305 then runs its own
        // assembly instead of the debug build's unoptimized C. TLS through NIOSSL in qemu-x86_64:
        // 3.4 MB/s on qemu64 (QEMU's default, which has neither), 10.1 on Nehalem, 7.9 on `max`
        // (AVX2 is slow under TCG); a deploy's download of 519 MB: 255 s on qemu64, 207 s here.
        let cpu = accel == "tcg" ? " -cpu Nehalem" : ""
        // No floppy drive (QEMU gives a `pc` machine an empty one by default; servers have none):
        // the guest's probes and reads of it failed with I/O errors for about 6 s each boot.
        let noFloppy = " -global isa-fdc.fdtypeA=none"
        // NVMe: the ramdisk's release wipe then formats it with a secure erase (NVMe Format NVM).
        let disk = diskBus == "nvme" ? "nvme,serial=farrier-\(name)" : "virtio-blk-pci,serial=farrier-\(name)"
        let spare = diskBus == "nvme" ? "virtio-blk-pci" : "nvme"
        try write(
            vmDir + "/start-vm.sh",
            mode: 0o755,
            """
            #!/bin/sh
            # Started by vmctl.sh when the BMC powers \(name) on. exec: the pidfile names QEMU itself.
            D=\(vmDir)
            # The BMC's boot device as boot order. bootindex, not -boot: OVMF ignores -boot and
            # would boot a bootable disk when the BMC said PXE (SeaBIOS honours both).
            case "$(cat $D/bootdev 2>/dev/null)" in disk|default) DI=0 NI=1;; *) DI=1 NI=0;; esac
            exec qemu-system-x86_64 -name \(name) -accel \(accel)\(cpu)\(noFloppy) -m 1024 -nographic -monitor none\(bios) \\
              -drive file=$D/disk.qcow2,if=none,id=d0,format=qcow2 -device \(disk),drive=d0,bootindex=$DI \\
              -drive file=$D/spare.qcow2,if=none,id=d1,format=qcow2 -device \(spare),drive=d1,serial=farrier-spare-\(name) \\
              -netdev tap,id=n0,ifname=\(tap),script=no,downscript=no -device e1000,netdev=n0,mac=\(mac),bootindex=$NI\(secondNIC) \\
              -chardev socket,id=ser0,host=127.0.0.1,port=\(solPort),server=on,wait=off,logfile=$D/serial.log,logappend=on \\
              -serial chardev:ser0 -qmp unix:$D/qmp.sock,server=on,wait=off -pidfile $D/qemu.pid

            """
        )
        try write(
            vmDir + "/vmctl.sh",
            mode: 0o755,
            """
            #!/bin/sh
            # ipmi_sim chassis_control program for \(name): <mc> get power|boot | <mc> set power 0|1, reset 1, shutdown 1, boot DEV
            D=\(vmDir)
            echo "$(date +%T.%N) $*" >> $D/vmctl.log
            alive() { p=$(cat $D/qemu.pid 2>/dev/null); [ -n "$p" ] && [ -e /proc/$p ] && ! grep -q '^State:.*zombie' /proc/$p/status 2>/dev/null; }
            # Power off returns only once QEMU is gone (SIGTERM, then SIGKILL, each waited on for at
            # most 5 s): a power on right after must not race the old QEMU for the disk's lock and tap.
            off() { if alive; then kill "$p"; i=0; while alive && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
                      if alive; then kill -9 "$p"; i=0; while alive && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; fi; fi
                    rm -f $D/qemu.pid; }
            qmp() { python3 -c 'import socket,sys,json
            s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f=s.makefile("rw"); f.readline()
            f.write(json.dumps({"execute":"qmp_capabilities"})+"\\n"); f.flush(); f.readline()
            f.write(json.dumps({"execute":sys.argv[2]})+"\\n"); f.flush(); f.readline()' $D/qmp.sock "$1"; }
            dev=$1; op=$2; shift 2
            case $op in
             get) while [ -n "$1" ]; do case $1 in
                    power) if alive; then echo power:1; else echo power:0; fi;;
                    boot) echo "boot:$(cat $D/bootdev 2>/dev/null || echo default)";;
                    *) echo "Invalid parameter: $1"; exit 1;; esac; shift; done;;
             set) while [ -n "$1" ]; do p=$1; v=$2; shift 2; case $p in
                    power) if [ "$v" = 1 ]; then alive || setsid $D/start-vm.sh </dev/null >>$D/qemu.log 2>&1 &
                           else off; fi;;
                    reset) alive && qmp system_reset;;
                    shutdown) alive && qmp system_powerdown;;
                    boot) echo "$v" > $D/bootdev;;
                    identify) shift;;
                    *) echo "Invalid parameter: $p"; exit 1;; esac; done;;
             check) exit 0;;
             *) echo "Unknown operation: $op"; exit 1;;
            esac
            exit 0

            """
        )
        try write(
            vmDir + "/bmc.emu",
            mode: 0o644,
            """
            mc_setbmc 0x20
            mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
            sel_enable 0x20 1000 0x0a
            mc_enable 0x20

            """
        )
        let guid = String(format: "%08x", i) + "a18b4c5d6e7f8091a2b3c4d5"
        try write(
            vmDir + "/lan.conf",
            mode: 0o600,
            """
            name "\(name)"
            set_working_mc 0x20
              startlan 1
                addr \(bmcIP) 623
                priv_limit admin
                allowed_auths_callback none md2 md5 straight
                allowed_auths_user none md2 md5 straight
                allowed_auths_operator none md2 md5 straight
                allowed_auths_admin none md2 md5 straight
                guid \(guid)
              endlan
              chassis_control "\(vmDir)/vmctl.sh 0x20"
              sol "telnet:127.0.0.1:\(solPort)" 115200
              user 2 true "\(Self.bmcUser)" "\(password)" admin 10 none md2 md5 straight

            """
        )
        try FileManager.default.createDirectory(atPath: vmDir + "/bmc-state", withIntermediateDirectories: true)
        let bmcPID = try Spawn.detached(
            [
                "ip", "netns", "exec", ns, "ipmi_sim", "-c", vmDir + "/lan.conf", "-f", vmDir + "/bmc.emu", "-s",
                vmDir + "/bmc-state", "-n",
            ],
            log: vmDir + "/bmc.log"
        )
        let vm = LabState.VM(
            name: name,
            mac: mac,
            secondMAC: secondMAC,
            firmware: firmware,
            bmcAddress: bmcIP,
            bmcPort: 623,
            bmcUser: Self.bmcUser,
            disk: vmDir + "/disk.qcow2",
            serialLog: vmDir + "/serial.log",
            bmcPID: bmcPID,
            site: k == 0 ? nil : "site-\(k)"
        )
        // The BMC answers once its LAN channel is up.
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            guard Spawn.isAlive(bmcPID) else {
                throw Spawn.Failure(
                    description:
                        "ipmi_sim for \(name) exited: \((try? String(contentsOfFile: vmDir + "/bmc.log", encoding: .utf8)) ?? "")"
                )
            }
            if let r = try? Spawn.run(ipmitool(vm) + ["chassis", "power", "status"], timeout: 10, check: false),
                r.status == 0
            {
                return vm
            }
            usleep(200_000)
        }
        throw Spawn.Failure(description: "the BMC of \(name) did not answer ipmitool within 15 s")
    }

    /// ipmitool arguments for a VM's BMC; the password is passed through a file, never argv.
    public func ipmitool(_ vm: LabState.VM) -> [String] {
        [
            "ipmitool", "-I", "lanplus", "-C", "3", "-H", vm.bmcAddress, "-p", String(vm.bmcPort), "-U", vm.bmcUser,
            "-f", LabState.defaultDirectory + "/bmc-password",
        ]
    }

    /// Writes a lab file with its mode from the start (passwords are in some).
    func write(_ path: String, mode: mode_t, _ text: String) throws {
        do { try SecretFile.replace(path, Array(text.utf8), mode: mode) } catch {
            throw Spawn.Failure(description: error.description)
        }
    }

    // MARK: restart-server

    /// Stops the lab's server (if it still runs) and starts it again on the same data: after an
    /// upgrade of the binary, or after a crash. The lab's network, VMs and BMCs are untouched.
    /// `only`: that replica alone (0: the one on the boot network), the others left as they are,
    /// running or not.
    public func restartServer(farrierBinary: String, only: Int? = nil) throws -> LabState {
        guard getuid() == 0 else { throw Spawn.Failure(description: "farrier lab needs root") }
        guard var state = LabState.load() else {
            throw Spawn.Failure(description: "the lab is down; `farrier lab up` first")
        }
        let count = 1 + (state.extraReplicas?.count ?? 0)
        if let only, !(0..<count).contains(only) {
            throw Spawn.Failure(description: "the lab runs \(count) replica(s); there is no replica \(only + 1)")
        }
        var o = Options(farrierBinary: farrierBinary)
        o.dhcpMode = state.dhcpMode
        o.database = state.database ?? "sqlite"
        o.sites = state.sites?.count ?? 0
        var started: [String] = []
        for replica in 0..<count where only == nil || only == replica {
            let old = replica == 0 ? state.serverPID : state.extraReplicas?[replica - 1].pid
            if let pid = old, Self.isLabServer(pid, directory: state.directory) {
                log("stopping the lab's server replica \(replica + 1) (pid \(pid))")
                Spawn.stop(pid, grace: 15)
            }
            let pid = try startServer(o, dir: state.directory, replica: replica)
            if replica == 0 { state.serverPID = pid } else { state.extraReplicas?[replica - 1].pid = pid }
            try state.save()
            started.append("replica \(replica + 1) pid \(pid)")
        }
        try waitForServer(replicas: only.map { [$0] } ?? Array(0..<count))
        log("server started (\(started.joined(separator: ", ")))")
        return state
    }

    /// Whether `pid` is still a farrier server of this lab (and not a process that reused its pid).
    /// `directory` is the lab's, from its state: a lab started by an older binary may live elsewhere.
    static func isLabServer(_ pid: Int32, directory: String) -> Bool {
        let args = LabState.commandLine(pid)
        return args.contains("server") && args.contains(directory + "/data") && !Spawn.isZombie(pid)
    }

    // MARK: down

    /// Removes every process, namespace, interface, route and file the lab made. Safe with
    /// nothing up. A recorded pid is ended only while it is still the lab's process
    /// (`LabState.isOwn`): after a reboot or a killed session another program may hold it.
    /// `ifDead`: remove only the state of a lab none of whose processes is alive, and fail,
    /// changing nothing, while one is.
    public func down(ifDead: Bool = false) throws {
        let state = LabState.load()
        if ifDead, let live = state?.liveProcesses, !live.isEmpty {
            throw Spawn.Failure(
                description:
                    "the lab is not dead: its processes \(live.map(String.init).joined(separator: ", ")) are alive; `farrier lab down` ends them"
            )
        }
        // The lab's own directory, from its state (one made by an older binary lived in /run);
        // both are searched for QEMUs below.
        let home = state?.directory ?? LabState.defaultDirectory
        let directories = Array(Set([home, LabState.defaultDirectory]))
        func stop(_ pid: Int32?, in directory: String = home, grace: Double = 5) {
            guard let pid, LabState.isOwn(pid, directory: directory) else { return }
            Spawn.stop(pid, grace: grace)
        }
        for vm in state?.vms ?? [] {
            stop(LabState.pidFile(home + "/" + vm.name + "/qemu.pid"))
            stop(vm.bmcPID)
        }
        for site in state?.sites ?? [] {
            stop(site.agentPID, grace: 15)
            stop(site.dnsmasqPID)
            stop(site.lldpdPID)
        }
        stop(state?.serverPID, grace: 15)
        for r in state?.extraReplicas ?? [] { stop(r.pid, grace: 15) }
        // After the servers, so no client holds it open: a clean shutdown.
        stop(state?.postgresPID, grace: 15)
        stop(state?.dnsmasqPID)
        stop(state?.lldpdPID)
        // QEMUs started by a BMC that died before recording a pid: find them by their lab pidfiles.
        for directory in directories {
            for n in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where n.hasPrefix("lab-") {
                stop(LabState.pidFile(directory + "/\(n)/qemu.pid"), in: directory)
            }
        }
        _ = try? Spawn.run(["ip", "netns", "del", Self.namespace], check: false)
        // Every site the lab can make, recorded or not (a lab that died half-way).
        for k in 1...4 {
            _ = try? Spawn.run(["ip", "netns", "del", Self.siteNamespace(k)], check: false)
            _ = try? Spawn.run(["ip", "link", "del", Self.siteHostLink(k)], check: false)
            _ = try? Spawn.run(["ip", "route", "del", Self.siteNetwork(k)], check: false)
        }
        _ = try? Spawn.run(["ip", "link", "del", Self.hostLink.0], check: false)
        _ = try? Spawn.run(["ip", "route", "del", Self.network], check: false)
        _ = try? Spawn.run(["ip", "route", "del", "blackhole", Self.labRange], check: false)
        for directory in directories { try? FileManager.default.removeItem(atPath: directory) }
        try? FileManager.default.removeItem(atPath: LabState.runDirectory)
    }

    // MARK: status

    /// Power state of each VM, read from its BMC.
    public func powerStates(_ state: LabState) -> [String: String] {
        var out: [String: String] = [:]
        for vm in state.vms {
            let r = try? Spawn.run(ipmitool(vm) + ["chassis", "power", "status"], timeout: 10, check: false)
            out[vm.name] =
                r.map { $0.output.contains("is on") ? "on" : $0.output.contains("is off") ? "off" : "unknown" }
                ?? "unknown"
        }
        return out
    }
}
