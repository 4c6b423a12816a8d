import CFarrierNet
import FarrierCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Listens for the switches' LLDP frames on the NICs with a link (AF_PACKET, EtherType 0x88cc),
/// until each has heard one or the time is up: which switch and port each NIC is cabled to. A
/// frame that does not decode is logged and counted, and listening goes on.
public struct LLDPListener {
    let log: @Sendable (String) -> Void

    public init(log: @escaping @Sendable (String) -> Void) { self.log = log }

    public struct Outcome {
        public var neighbours: [String: LLDPNeighbour] = [:]
        public var malformed = 0
    }

    public func listen(on nics: [Inventory.NIC], seconds: Int) -> Outcome {
        var out = Outcome()
        guard seconds > 0 else { return out }
        var sockets: [(name: String, fd: Int32)] = []
        for n in nics where n.link {
            let fd = farrier_lldp_open(n.name)
            if fd < 0 {
                log("lldp: cannot listen on \(n.name): \(String(cString: strerror(errno)))")
                continue
            }
            sockets.append((n.name, fd))
        }
        defer { for s in sockets { close(s.fd) } }
        guard !sockets.isEmpty else { return out }
        log("lldp: listening on \(sockets.map(\.name).joined(separator: ", ")) for at most \(seconds) s")
        let deadline = ContinuousClock.now + .seconds(seconds)
        var buffer = [UInt8](repeating: 0, count: 9216)
        // Bounded by the deadline: every pass waits at most until it.
        // Sockets given up on (an error or hang-up: polled again, they would spin until the deadline).
        var dead: Set<String> = []
        while out.neighbours.count + dead.count < sockets.count {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { break }
            let waiting = sockets.filter { out.neighbours[$0.name] == nil && !dead.contains($0.name) }
            var fds = waiting.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let ms =
                Int32(min(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000, 1000))
                + 1
            let ready = poll(&fds, nfds_t(fds.count), ms)
            if ready < 0 {
                if errno == EINTR { continue }
                log("lldp: poll failed: \(String(cString: strerror(errno)))")
                break
            }
            for (i, p) in fds.enumerated() where p.revents & Int16(POLLIN) == 0 && p.revents != 0 {
                log("lldp: stopped listening on \(waiting[i].name) (poll events 0x\(String(p.revents, radix: 16)))")
                dead.insert(waiting[i].name)
            }
            for (i, p) in fds.enumerated() where p.revents & Int16(POLLIN) != 0 {
                let n = recv(p.fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                guard n > 0 else { continue }
                do {
                    let neighbour = try LLDPNeighbour.decode(frame: Array(buffer[0..<n]))
                    out.neighbours[waiting[i].name] = neighbour
                    log(
                        "lldp: \(waiting[i].name) is on \(neighbour.systemName ?? neighbour.chassisID) port \(neighbour.portID)"
                    )
                } catch {
                    // Logged for the first few; a flood is only counted.
                    out.malformed += 1
                    if out.malformed <= 5 { log("lldp: dropped a frame on \(waiting[i].name): \(error.description)") }
                }
            }
        }
        for s in sockets where out.neighbours[s.name] == nil && !dead.contains(s.name) {
            log("lldp: nothing heard on \(s.name)")
        }
        if out.malformed > 5 { log("lldp: \(out.malformed) frames dropped in all") }
        return out
    }
}
