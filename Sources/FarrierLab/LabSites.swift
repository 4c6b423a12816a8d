import Foundation

/// The lab's sites (`lab up --sites N`, issue 16). Site k is a namespace of its own with a
/// bridge on 198.18.k.0/24 (the site agent at .1, BMCs at .10+i, DHCP pool .100-.199), its VMs'
/// taps and their ipmi_sim BMCs. Two routed veths leave it:
///
/// - to the region's namespace (`frsite<k>` there at 198.19.(10+k).1/30, the site at .2): the
///   site link, and nothing else: the region has no route to the site's network, so it reaches
///   the BMCs only through the site. `lab partition site-k` takes this link down;
/// - to the host (`frlabs<k>` at 198.19.(20+k).1/30, the site at .2), with a host route to the
///   site's network through it: the CLI's `machine ssh` and the lab's ipmitool.
///
/// All of it is inside 198.18.0.0/15, blackholed in the root namespace while the lab is up.
extension Lab {
    static func siteNamespace(_ k: Int) -> String { "farrier-lab-site-\(k)" }
    static func siteNetwork(_ k: Int) -> String { "198.18.\(k).0/24" }
    static func siteIP(_ k: Int) -> String { "198.18.\(k).1" }
    static func regionLinkIP(_ k: Int) -> String { "198.19.\(10 + k).1" }
    static func siteLinkIP(_ k: Int) -> String { "198.19.\(10 + k).2" }
    static func siteRegionLink(_ k: Int) -> String { "frsite\(k)" }
    static func siteHostLink(_ k: Int) -> String { "frlabs\(k)" }
    static func hostLinkIP(_ k: Int) -> (host: String, site: String) { ("198.19.\(20 + k).1", "198.19.\(20 + k).2") }

    /// Makes site k's namespace, bridge and both links.
    func siteNetwork(_ k: Int, dir: String) throws -> LabState.Site {
        let ns = Self.siteNamespace(k)
        try Self.ip("netns", "add", ns)
        try Self.ip("-n", ns, "link", "set", "lo", "up")
        try Self.ip("-n", ns, "link", "add", "br0", "type", "bridge")
        try Self.ip("-n", ns, "addr", "add", "\(Self.siteIP(k))/24", "dev", "br0")
        try Self.ip("-n", ns, "addr", "add", "fd98:18:\(k)::1/64", "dev", "br0", "nodad")
        try Self.ip("-n", ns, "link", "set", "br0", "up")
        // The site routes between its VMs and the host's link (ssh from the host).
        try Spawn.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        // To the region: the site link only.
        let regionSide = Self.siteRegionLink(k)
        try Self.ip(
            "-n",
            Self.namespace,
            "link",
            "add",
            regionSide,
            "type",
            "veth",
            "peer",
            "name",
            "frregion",
            "netns",
            ns
        )
        try Self.ip("-n", Self.namespace, "addr", "add", "\(Self.regionLinkIP(k))/30", "dev", regionSide)
        try Self.ip("-n", Self.namespace, "link", "set", regionSide, "up")
        try Self.ip("-n", ns, "addr", "add", "\(Self.siteLinkIP(k))/30", "dev", "frregion")
        try Self.ip("-n", ns, "link", "set", "frregion", "up")
        // To the host.
        let hostSide = Self.siteHostLink(k)
        let (hostIP, siteIP) = Self.hostLinkIP(k)
        try Self.ip("link", "add", hostSide, "type", "veth", "peer", "name", "frhost", "netns", ns)
        try Self.ip("addr", "add", "\(hostIP)/30", "dev", hostSide)
        try Self.ip("link", "set", hostSide, "up")
        try Self.ip("-n", ns, "addr", "add", "\(siteIP)/30", "dev", "frhost")
        try Self.ip("-n", ns, "link", "set", "frhost", "up")
        try Self.ip("route", "replace", Self.siteNetwork(k), "via", siteIP, "dev", hostSide)
        return LabState.Site(
            name: "site-\(k)",
            namespace: ns,
            network: Self.siteNetwork(k),
            regionLink: regionSide,
            hostLink: hostSide,
            dataDir: dir + "/site-\(k)"
        )
    }

    /// Adds site k at the region, joins it with its one-time token, and starts its agent in the
    /// site's namespace, serving boot on its bridge; returns once its link is up (30 s at most).
    func startSite(_ k: Int, _ o: Options, server: String, dir: String) throws -> Int32 {
        let name = "site-\(k)"
        let added = try Spawn.run(
            [o.farrierBinary, "site", "add", name, "-o", "json", "--server", server],
            timeout: 30
        )
        guard let object = try? JSONSerialization.jsonObject(with: Data(added.output.utf8)) as? [String: Any],
            let token = object["joinToken"] as? String
        else {
            throw Spawn.Failure(description: "site add \(name) gave no join token: \(added.output)")
        }
        let data = dir + "/" + name
        // (The token is spent by this join, a second after it was made.)
        try Spawn.run(
            [
                o.farrierBinary, "site", "join", "--join-token", token, "--name", name, "--data-dir", data,
                "--server", server.split(separator: ",").first.map(String.init) ?? server,
            ],
            timeout: 60
        )
        let regions = (0..<o.replicas).map { "\(Self.regionLinkIP(k)):\(7710 + $0)" }.joined(separator: ",")
        let logFile = dir + "/\(name).log"
        let pid = try Spawn.detached(
            [
                "ip", "netns", "exec", Self.siteNamespace(k), o.farrierBinary, "site", "run", "--region", regions,
                "--data-dir", data, "--interval", "2", "--boot", "--dhcp-interface", "br0", "--dhcp-subnet",
                "\(Self.siteNetwork(k)),pool=198.18.\(k).100-198.18.\(k).199,router=\(Self.siteIP(k)),dns=\(Self.siteIP(k)),lease=3600",
                "--http-listen", "0.0.0.0:8080", "--agent-listen", "0.0.0.0:8443", "--tftp-listen", "0.0.0.0:69",
            ],
            log: logFile
        )
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let text = (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
            guard Spawn.isAlive(pid) else {
                throw Spawn.Failure(description: "the agent of \(name) exited: \(text.suffix(2000))")
            }
            if text.contains("link up") {
                log("\(name) is up (pid \(pid)): \(Self.siteNetwork(k)), linked to the region at \(regions)")
                return pid
            }
            usleep(200_000)
        }
        throw Spawn.Failure(description: "\(name)'s link to the region did not come up in 30 s; see \(logFile)")
    }

    // MARK: partition

    /// Cuts (`cut`) or restores the link between a site and the region; the site keeps its
    /// network, VMs and BMCs, and the host keeps its own link to it.
    public func partition(_ site: String, cut: Bool) throws -> LabState.Site {
        guard getuid() == 0 else { throw Spawn.Failure(description: "farrier lab needs root") }
        guard let state = LabState.load() else { throw Spawn.Failure(description: "the lab is down") }
        guard let s = state.sites?.first(where: { $0.name == site }) else {
            let names = (state.sites ?? []).map(\.name)
            throw Spawn.Failure(
                description: names.isEmpty
                    ? "the lab has no sites (lab up --sites N)"
                    : "the lab has no site '\(site)' (it has \(names.joined(separator: ", ")))"
            )
        }
        try Self.ip("-n", state.namespace, "link", "set", s.regionLink, cut ? "down" : "up")
        return s
    }

    /// Whether a site's link to the region is cut (its region-side interface down).
    public static func isPartitioned(_ site: LabState.Site, namespace: String) -> Bool {
        guard let r = try? Spawn.run(["ip", "-n", namespace, "-o", "link", "show", site.regionLink], check: false)
        else { return false }
        return !r.output.contains(",UP")
    }
}
