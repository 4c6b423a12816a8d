import FarrierCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The IPv4 address and network of a local interface, read with getifaddrs(3).
public struct InterfaceAddress: Sendable, Hashable {
    public var name: String
    public var address: IPv4Address
    public var network: IPv4Network

    public static func lookup(_ name: String) -> InterfaceAddress? {
        var head: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&head) == 0, let first = head else { return nil }
        defer { freeifaddrs(head) }
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let ifa = cursor {
            defer { cursor = ifa.pointee.ifa_next }
            guard String(cString: ifa.pointee.ifa_name) == name, let addr = ifa.pointee.ifa_addr,
                addr.pointee.sa_family == sa_family_t(AF_INET), let mask = ifa.pointee.ifa_netmask
            else { continue }
            let ip = addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.address }
            let m = mask.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.address.value }
            return InterfaceAddress(
                name: name,
                address: ip,
                network: IPv4Network(address: ip, prefixLength: m.nonzeroBitCount)
            )
        }
        return nil
    }
}

extension sockaddr_in {
    init(_ address: IPv4Address, port: Int) {
        self.init()
        sin_family = sa_family_t(AF_INET)
        sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
        sin_addr = in_addr(s_addr: address.value.bigEndian)
    }

    var address: IPv4Address { IPv4Address(UInt32(bigEndian: sin_addr.s_addr)) }
    var port: Int { Int(UInt16(bigEndian: sin_port)) }
}

public struct SocketError: Error, CustomStringConvertible {
    public var description: String
}

/// A UDP socket on 0.0.0.0:`port` that sees only traffic of `interface` (SO_BINDTODEVICE), can
/// broadcast, and shares the port with other interfaces' sockets. Receiving DHCP broadcasts needs
/// the wildcard address; SO_BINDTODEVICE keeps every other interface out. A blocked receive
/// returns EAGAIN after `receiveTimeout`, so the thread reading it can check for shutdown.
func makeInterfaceSocket(interface: String, port: Int, receiveTimeout: timeval) throws -> CInt {
    #if os(Linux)
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_DGRAM, 0)
    #endif
    guard fd >= 0 else { throw SocketError(description: "socket: \(String(cString: strerror(errno)))") }
    var one: CInt = 1
    func check(_ rc: CInt, _ what: String) throws {
        if rc != 0 {
            let e = String(cString: strerror(errno))
            close(fd)
            throw SocketError(description: "\(what) on \(interface):\(port): \(e)")
        }
    }
    try check(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size)), "SO_REUSEADDR")
    try check(setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, socklen_t(MemoryLayout<CInt>.size)), "SO_BROADCAST")
    // A deep receive queue absorbs bursts (a rack powering on at once) while a lease commit is
    // in flight. SO_RCVBUFFORCE passes net.core.rmem_max when we have CAP_NET_ADMIN; otherwise
    // SO_RCVBUF gets what the limit allows. Neither failing is fatal.
    var receiveBuffer: CInt = 4 << 20
    #if os(Linux)
    if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &receiveBuffer, socklen_t(MemoryLayout<CInt>.size)) != 0 {
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receiveBuffer, socklen_t(MemoryLayout<CInt>.size))
    }
    #else
    _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receiveBuffer, socklen_t(MemoryLayout<CInt>.size))
    #endif
    #if os(Linux)
    var name = Array(interface.utf8CString)
    try check(setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, &name, socklen_t(name.count)), "SO_BINDTODEVICE")
    #endif
    var timeout = receiveTimeout
    try check(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)), "SO_RCVTIMEO")
    var sin = sockaddr_in(.any, port: port)
    let rc = withUnsafePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    try check(rc, "bind")
    return fd
}
