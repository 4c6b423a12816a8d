import FarrierAgent
import FarrierCore
import Foundation
import TestSupport
import Testing

/// The agent's LLDP listener against a real lldpd (Debian 12's 1.0.16): lldpd, in a network
/// namespace of the test's own, sends on one end of a veth pair, and the listener, on the other
/// end, records the switch's name and port. A NIC nobody sends LLDP to hears nothing, and the
/// listener ends at its deadline.
@Suite(
    .serialized,
    .enabled(
        if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/lldpd"),
        "needs root and lldpd (scripts/install-deps.sh)"
    )
)
struct LLDPListenerTests {
    @Test func hearsLLDPDOnAVethPeer() throws {
        let h = try Harness("lldp")
        defer { h.cleanup() }
        // The namespace's end of each pair goes with the namespace at cleanup, and this end with it.
        let ns = try h.namespace("l")
        let tag = String(h.id.prefix(6))
        let (here, there, quiet) = ("frl\(tag)a", "frl\(tag)b", "frl\(tag)q")
        try h.run(["ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", ns])
        try h.run(["ip", "link", "add", quiet, "type", "veth", "peer", "name", "q0", "netns", ns])
        for n in [here, quiet] { try h.run(["ip", "link", "set", n, "up"]) }
        for n in [there, "q0"] { try h.run(["ip", "-n", ns, "link", "set", n, "up"]) }
        try FileManager.default.createDirectory(atPath: "/run/lldpd", withIntermediateDirectories: true)
        // Its settings from a file lldpd has lldpcli apply before it sends anything (set later,
        // a frame with the default system name could come first).
        let conf = h.directory + "/lldpd.conf"
        try
            "configure system hostname farrier-test-switch\nconfigure lldp portidsubtype ifname\nconfigure lldp tx-interval 1\n"
            .write(toFile: conf, atomically: true, encoding: .utf8)
        try h.start(
            [
                "ip", "netns", "exec", ns, "/usr/sbin/lldpd", "-d", "-u", h.directory + "/lldpd.socket", "-p",
                h.directory + "/lldpd.pid", "-O", conf, "-I", there,
            ],
            log: "lldpd.log"
        )
        h.trackPIDFile(h.directory + "/lldpd.pid")

        let nics = [here, quiet].map { Inventory.NIC(name: $0, mac: "", driver: "veth", link: true) }
        let started = Date()
        let out = LLDPListener(log: { print("listener: \($0)") }).listen(on: nics, seconds: 8)
        let took = Date().timeIntervalSince(started)
        let heard = out.neighbours[here]
        #expect(heard?.systemName == "farrier-test-switch" && heard?.portID == there, "\(String(describing: heard))")
        #expect(heard?.chassisID.count == 17, "\(String(describing: heard))")
        // The quiet NIC heard nothing, so the listener waited out its time, and no longer.
        #expect(out.neighbours[quiet] == nil && out.malformed == 0)
        #expect(took >= 7.5 && took < 12, "listened \(took) s")
    }
}
