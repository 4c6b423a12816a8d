import FarrierCore
import FarrierSite
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOPosix
import SwiftASN1
import Synchronization
import X509

#if canImport(Glibc)
import Glibc
#endif

/// The site's side of its link to the region (issue 16): the key, certificate and region CA that
/// `farrier site join` left in the site's data directory, and a mutual-TLS connection with them.
public struct SiteCredentials: Sendable {
    public let dataDir: String
    /// The site's name and its certificate's serial, as the region reads them.
    public let site: String
    public let serial: String
    public let notAfter: Date

    public var keyPath: String { dataDir + "/site.key" }
    public var certificatePath: String { dataDir + "/site.crt" }
    public var regionCAPath: String { dataDir + "/region-ca.crt" }

    /// Reads what joining left in `dataDir`; an error names what is missing or wrong.
    public init(dataDir: String) throws {
        self.dataDir = dataDir
        let fm = FileManager.default
        for path in [dataDir + "/site.key", dataDir + "/site.crt", dataDir + "/region-ca.crt"]
        where !fm.fileExists(atPath: path) {
            throw SiteAuthority.Failure("\(path) is missing: run `farrier site join` with this data directory first")
        }
        let pem: String
        do { pem = try String(contentsOfFile: dataDir + "/site.crt", encoding: .utf8) } catch {
            throw SiteAuthority.Failure("reading \(dataDir)/site.crt: \(error)")
        }
        let certificate: Certificate
        do { certificate = try Certificate(pemEncoded: pem) } catch {
            throw SiteAuthority.Failure("\(dataDir)/site.crt is not a PEM certificate (\(error))")
        }
        let sites = SiteAuthority.siteNames(certificate)
        guard sites.count == 1, let site = sites.first else {
            throw SiteAuthority.Failure("\(dataDir)/site.crt does not name one site (\(sites))")
        }
        self.site = site
        serial = SiteAuthority.hex(certificate.serialNumber)
        notAfter = certificate.notValidAfter
    }
}

/// The region links in `--region`: one address, or several replicas' `HOST:PORT,HOST:PORT`.
public func siteLinkRegions(_ region: String) -> [String] {
    region.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
}

/// The addresses `host` resolves to (getaddrinfo, on NIO's blocking pool), as `HOST:PORT`
/// links (IPv6 bracketed), in the resolver's order without repeats: its IPv4 addresses if it
/// has any (a dual-stack replica, with an A and an AAAA record, is one replica), else its IPv6
/// ones. A name that does not resolve is an error that names it.
public func resolveSiteLinkAddresses(host: String, port: Int) async throws -> [String] {
    try await NIOThreadPool.singleton.runIfActive {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &found)
        guard rc == 0 else {
            throw SiteAuthority.Failure("cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(found) }
        var links: [String] = []
        var next = found
        while let info = next {
            next = info.pointee.ai_next
            guard let address = info.pointee.ai_addr else { continue }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            let link: String?
            switch info.pointee.ai_family {
            case AF_INET:
                var a = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                link = inet_ntop(AF_INET, &a, &text, socklen_t(text.count)).map { "\(String(cString: $0)):\(port)" }
            case AF_INET6:
                var a = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                link = inet_ntop(AF_INET6, &a, &text, socklen_t(text.count)).map { "[\(String(cString: $0))]:\(port)" }
            default: link = nil
            }
            if let link, !links.contains(link) { links.append(link) }
        }
        let v4 = links.filter { !$0.hasPrefix("[") }
        return v4.isEmpty ? links : v4
    }
}

/// Connects to the region's site link (`site.listen`) as the site in `credentials`, and runs
/// `body` with a client. The region is verified against the CA the site got when it joined, and
/// by the host name or IP address in `region`.
///
/// `region` may name several replicas' links, `HOST:PORT,HOST:PORT` (IPv4 literals): calls then
/// go round-robin to those that are up, so a replica that dies costs the site at most the calls
/// it had in flight.
///
/// `authority`, when given, is the name TLS checks the region's certificate for and sends as the
/// server name, in place of the host in `region`: one address a name resolved to is reached
/// as that name.
public func withSiteLink<R: Sendable>(
    region: String,
    credentials: SiteCredentials,
    authority: String? = nil,
    _ body: @Sendable (Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>) async throws -> R
) async throws -> R {
    let regions = siteLinkRegions(region)
    let security = HTTP2ClientTransport.Posix.TransportSecurity.mTLS(
        certificateChain: [.file(path: credentials.certificatePath, format: .pem)],
        privateKey: .file(path: credentials.keyPath, format: .pem)
    ) { tls in
        tls.trustRoots = .certificates([.file(path: credentials.regionCAPath, format: .pem)])
    }
    let target: any ResolvableTarget
    var serviceConfig = ServiceConfig()
    if regions.count > 1 {
        let pairs = try regions.map { try splitHostPort($0) }
        guard pairs.allSatisfy({ IPv4Address($0.0) != nil }) else {
            throw SiteAuthority.Failure(
                "several region links are IPv4 HOST:PORT pairs (\(region)); a name that resolves to several addresses is given alone"
            )
        }
        target = .ipv4(pairs: pairs.map { (host: $0.0, port: $0.1) })
        serviceConfig.loadBalancingConfig = [.roundRobin]
    } else {
        let (host, port) = try splitHostPort(regions.first ?? region)
        // An IP literal connects as one, and TLS checks the link certificate's IP names for it.
        target =
            if IPv4Address(host) != nil {
                .ipv4(address: host, port: port)
            } else if host.contains(":") {
                .ipv6(address: host, port: port)
            } else {
                .dns(host: host, port: port)
            }
    }
    // Pings every 10 s: a region that stops answering (a partition leaves the TCP connection
    // open) is found within 20 s, and the connection made again.
    var config = HTTP2ClientTransport.Posix.Config.defaults
    config.connection.keepalive = .init(time: .seconds(10), timeout: .seconds(10), allowWithoutCalls: true)
    config.http2.authority = authority
    let transport = try HTTP2ClientTransport.Posix(
        target: target,
        transportSecurity: security,
        config: config,
        serviceConfig: serviceConfig
    )
    return try await withGRPCClient(transport: transport) { client in
        try await body(Farrier_V1_SiteLinkService.Client(wrapping: client))
    }
}

/// The region as a site cache's origin, over the site link: `FetchFile` streams the file (its
/// size first). Counts what it received: the bytes out of the region for the site.
public final class LinkOrigin: CacheOrigin {
    let link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>
    let received = Atomic<Int64>(0)
    let pulls = Atomic<Int>(0)

    public init(link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>) { self.link = link }

    public var bytesReceived: Int64 { received.load(ordering: .relaxed) }
    public var pullCount: Int { pulls.load(ordering: .relaxed) }

    public func fetch(_ digest: String, into sink: PullSink) async throws {
        var request = Farrier_V1_FetchFileRequest()
        request.sha256 = digest
        pulls.add(1, ordering: .relaxed)
        do {
            try await link.fetchFile(request) { response in
                var begun = false
                for try await chunk in response.messages {
                    if !begun {
                        try await sink.begin(size: chunk.size)
                        begun = true
                    }
                    guard !chunk.data.isEmpty else { continue }
                    self.received.add(Int64(chunk.data.count), ordering: .relaxed)
                    try chunk.data.withUnsafeBytes { try sink.write($0) }
                }
                if !begun { throw SiteCache.Failure.origin("FetchFile \(digest.prefix(12))…: no answer") }
            }
        } catch let e as RPCError where e.code == .notFound {
            throw SiteCache.Failure.notFound(digest)
        } catch let e as RPCError {
            throw SiteCache.Failure.origin("FetchFile \(digest.prefix(12))…: \(e.code): \(e.message)")
        }
    }
}
