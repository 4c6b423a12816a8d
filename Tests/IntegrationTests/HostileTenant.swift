import Foundation
import TestSupport
import Testing

/// A tenant on the lab's boot network who knows every MAC (as anyone on a segment does): a
/// network namespace of its own, plugged into the lab's bridge with an address of its own
/// (198.18.0.250, outside the DHCP pool), from which it tries every unauthenticated path into
/// Farrier against a machine of another tenant. Each attempt must fail, and must change
/// nothing: the caller pauses the victim's VM (QMP `stop`, so its own agent is quiet) and
/// compares the machine's state, phase, reason, progress, boot timeline and lifecycle events,
/// and the machine list, before and after every attempt, and the VM's disk file around them.
struct HostileTenant {
    static let namespace = "farrier-hostile"
    static let address = "198.18.0.250"
    static let server = "198.18.0.1"
    let h: Harness
    let bin: String

    /// Plugs the namespace into the lab's bridge.
    init(_ h: Harness, bin: String) throws {
        self.h = h
        self.bin = bin
        let ns = Self.namespace
        let lab = "farrier-lab"
        _ = try? h.run(["ip", "netns", "del", ns], check: false)
        try h.run(["ip", "netns", "add", ns])
        try h.run(["ip", "link", "add", "fh-lab", "type", "veth", "peer", "name", "fh-tenant"])
        try h.run(["ip", "link", "set", "fh-lab", "netns", lab])
        try h.run(["ip", "-n", lab, "link", "set", "fh-lab", "master", "br0", "up"])
        try h.run(["ip", "link", "set", "fh-tenant", "netns", ns])
        try h.run(["ip", "-n", ns, "addr", "add", "\(Self.address)/24", "dev", "fh-tenant"])
        try h.run(["ip", "-n", ns, "link", "set", "fh-tenant", "up"])
        try h.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        // Reachable: the server's health check answers the tenant (it is on the network).
        try h.waitUntil("the tenant to reach the server", timeout: 20, interval: 0.5) {
            try self.inNS(["curl", "-s", "-m", "2", "http://\(Self.server):8080/healthz"]).stdout == "ok\n"
        }
    }

    /// Removes the namespace (and with it both ends of its link).
    func remove() {
        _ = try? h.run(["ip", "netns", "del", Self.namespace], check: false)
        _ = try? h.run(["ip", "-n", "farrier-lab", "link", "del", "fh-lab"], check: false)
    }

    func inNS(_ args: [String], timeout: Double = 30) throws -> Harness.Result {
        try h.run(["ip", "netns", "exec", Self.namespace] + args, timeout: timeout, check: false)
    }

    /// curl from the tenant: (HTTP status, body).
    func curl(_ args: [String]) throws -> (Int, String) {
        let out = try inNS(["curl", "-s", "-k", "-m", "10", "-w", "\n%{http_code}"] + args).stdout
        let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    /// What the attacks must not change about the victim, and the machine list.
    func snapshot(_ name: String) throws -> String {
        let show = try h.run([bin, "machine", "show", name, "-o", "json"], timeout: 30).stdout
        let m = (try JSONSerialization.jsonObject(with: Data(show.utf8)) as? [String: Any]) ?? [:]
        let timeline = (m["timeline"] as? [[String: Any]]) ?? []
        let events = try h.run(
            ["timeout", "3", bin, "machine", "watch", name, "--after", "0"],
            timeout: 20,
            check: false
        ).stdout.split(separator: "\n").count
        let machines =
            (try JSONSerialization.jsonObject(
                with: Data(try h.run([bin, "machine", "list", "-o", "json"]).stdout.utf8)
            )
            as? [[String: Any]])?.count ?? -1
        let progress =
            (m["progress"] as? [String: Any]).flatMap {
                try? JSONSerialization.data(withJSONObject: $0, options: .sortedKeys)
            }
            .map { String(decoding: $0, as: UTF8.self) } ?? "-"
        return "state=\(m["state"] ?? "") phase=\(m["phase"] ?? "") reason=\(m["reason"] ?? "") progress=\(progress) "
            + "timeline=\(timeline.count) last=\(timeline.last.map { "\($0["event"] ?? "")@\($0["time"] ?? "")" } ?? "-") "
            + "events=\(events) machines=\(machines)"
    }

    /// Every attack, each followed by the check that nothing changed. `mac` and `id` are the
    /// victim's (the id too, as if it had leaked), `image` an image's SHA-256.
    func attack(
        victim name: String,
        mac: String,
        id: String,
        generation: Int,
        instance: String,
        image: String,
        phase: String
    ) throws {
        let dashed = mac.replacingOccurrences(of: ":", with: "-")
        let http = "http://\(Self.server):8080"
        let agent = "https://\(Self.server):8443"
        let forged = "\(id).\(generation).\(Int.random(in: 0..<4)).\(String(repeating: "A", count: 43))"
        let before = try snapshot(name)
        func unchanged(_ what: String) throws {
            let now = try snapshot(name)
            #expect(now == before, "\(phase): \(what) changed the machine:\n  before \(before)\n  after  \(now)")
        }

        // The victim's boot script: no name, no state, no ramdisk, no credential.
        let (s1, script) = try curl(["\(http)/boot/\(dashed).ipxe?platform=pcbios&buildarch=x86_64"])
        #expect(s1 == 200 && script.contains("not known to Farrier"), "\(phase): \(s1) \(script)")
        for secret in [name, "farrier.", "token", "deploying", "releasing", "rescue", "kernel"] {
            #expect(
                !script.contains(secret),
                "\(phase): the victim's script shows '\(secret)' to the tenant: \(script)"
            )
        }
        try unchanged("fetching the victim's boot script")
        // A random MAC's script creates no machine.
        let random = (0..<6).map { i in String(format: "%02x", Int.random(in: 0..<256) & (i == 0 ? 0xfe : 0xff)) }
            .joined(separator: "-")
        _ = try curl(["\(http)/boot/\(random).ipxe?platform=efi&buildarch=x86_64"])
        try unchanged("a random MAC's boot script")

        // The agent channel: hello for the victim from the tenant's address; progress and a
        // successful `done` with a forged token (the victim's id and generation, a made-up MAC).
        let (s2, b2) = try curl([
            "-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
            #"{"agentVersion":"x","nonce":"0123456789abcdef0123456789abcdef"}"#, "\(agent)/agent/v1/hello",
        ])
        #expect(s2 == 403, "\(phase): hello from the tenant: \(s2) \(b2)")
        try unchanged("hello from the tenant")
        for (path, body) in [
            ("progress", #"{"stage":"wipe","bytesDone":1,"bytesTotal":1}"#), ("done", #"{"ok":true}"#),
        ] {
            let (s, b) = try curl([
                "-X", "POST", "-H", "Content-Type: application/json", "-H", "Authorization: Bearer \(forged)",
                "--data-binary", body, "\(agent)/agent/v1/\(path)",
            ])
            #expect(s == 403, "\(phase): \(path) with a forged token: \(s) \(b)")
            try unchanged("\(path) with a forged token")
            let (plain, _) = try curl([
                "-X", "POST", "-H", "Authorization: Bearer \(forged)", "--data-binary", body,
                "\(http)/agent/v1/\(path)",
            ])
            #expect(plain == 404, "\(phase): the agent API answers on plain HTTP: \(plain)")
        }
        // The OS's report-in (which ends a deploy or exit-rescue waiting for it): without a
        // token, and with a forged OS token for the victim (its id and deployment's instance ID,
        // leaked, and a made-up MAC: refused by the MAC's check, and by the address).
        for (token, status) in [
            (nil, 401), ("\(id).\(instance).\(String(repeating: "A", count: 43))", 403),
        ] {
            let (s, b) = try curl(
                ["-X", "POST", "-H", "Content-Type: application/json"]
                    + (token.map { ["-H", "Authorization: Bearer \($0)"] } ?? [])
                    + ["--data-binary", #"{"bootID":"tenant"}"#, "\(agent)/os/v1/ready"]
            )
            // (A forged token is refused by its own check, before the address's.)
            #expect(
                s == status && (token == nil || b.contains("OS token is not valid")),
                "\(phase): OS report-in with token \(token ?? "none"): \(s) \(b)"
            )
            try unchanged("an OS report-in from the tenant")
        }
        // Image bytes: without a token (however the path is spelled), with a forged one; and
        // never on plain HTTP.
        #expect(try curl(["-o", "/dev/null", "\(agent)/images/\(image)"]).0 == 401, "\(phase): image without a token")
        #expect(
            try curl(["-o", "/dev/null", "--path-as-is", "\(agent)/%69mages/\(image)"]).0 == 401,
            "\(phase): image by another spelling"
        )
        #expect(
            try curl(["-o", "/dev/null", "-H", "Authorization: Bearer \(forged)", "\(agent)/images/\(image)"]).0 == 403,
            "\(phase): image with a forged token"
        )
        #expect(try curl(["-o", "/dev/null", "\(http)/images/\(image)"]).0 == 404, "\(phase): image over plain HTTP")
        // No metadata service to ask.
        #expect(try curl(["\(http)/metadata/\(id).x/meta-data"]).0 == 404)
        #expect(try curl(["\(agent)/metadata/\(id).x/meta-data"]).0 == 404)
        try unchanged("image and metadata requests")

        // The API (listening on the lab's network) with made-up tokens. (Without one, the CLI
        // would read the lab's admin token file on this host, which the tenant has not got.)
        for token in ["fa_0123456789abcdef0123456789abcdef", "garbage"] {
            let r = try inNS(
                [bin, "machine", "show", name, "--server", "\(Self.server):7700", "--token", token],
                timeout: 30
            )
            #expect(r.status != 0 && !r.stdout.contains(mac), "\(phase): the API answered the tenant: \(r.stdout)")
        }
        try unchanged("API calls")

        // TFTP: a read request asking for a 255 s timeout gets no such timeout (a slot held 25 min).
        let probe = """
            import socket, sys
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
            s.sendto(b"\\x00\\x01ipxe/undionly.kpxe\\x00octet\\x00timeout\\x00255\\x00", (sys.argv[1], 69))
            data, _ = s.recvfrom(1024)
            print(data[:2].hex(), data[2:].replace(b"\\x00", b" ").decode(errors="replace"))
            """
        let tftp = try inNS(["python3", "-c", probe, Self.server]).stdout
        #expect(
            !tftp.isEmpty && !(tftp.hasPrefix("0006") && tftp.contains("timeout 255")),
            "\(phase): TFTP granted 255 s: \(tftp)"
        )
        try unchanged("a TFTP request with a long timeout")
    }
}

/// Pauses and resumes a lab VM through its QMP socket.
enum LabVM {
    static func qmp(_ h: Harness, _ name: String, _ command: String) throws {
        let script = """
            import json, socket, sys
            s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
            f = s.makefile("rw")
            f.readline()
            for cmd in ("qmp_capabilities", sys.argv[2]):
                f.write(json.dumps({"execute": cmd}) + "\\n"); f.flush()
                while True:
                    r = json.loads(f.readline())
                    if "return" in r: break
                    if "error" in r: sys.exit(r["error"]["desc"])
            """
        try h.run(["python3", "-c", script, "/var/lib/farrier-lab/\(name)/qmp.sock", command], timeout: 20)
    }

    /// SHA-256 of the VM's disk file (the VM paused: nothing writes it meanwhile).
    static func diskDigest(_ h: Harness, _ name: String) throws -> String {
        String(try h.run(["sha256sum", "/var/lib/farrier-lab/\(name)/disk.qcow2"], timeout: 300).stdout.prefix(64))
    }
}
