import FarrierBMC
import FarrierControl
import FarrierCore
import FarrierSite
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOPosix
import SwiftASN1
import SwiftProtobuf
import Synchronization
import X509

/// `farrier.v1.SiteService` (issue 16): admin only, except JoinSite, whose one-time join token
/// is its credential (the interceptor lets it through without an API token).
public struct SiteAPI: Farrier_V1_SiteService.SimpleServiceProtocol {
    let store: any StateStore
    let authority: SiteAuthority
    let logger: Logger
    /// The clock, for tests of expiry.
    let now: @Sendable () -> Date

    public init(
        store: any StateStore,
        authority: SiteAuthority,
        logger: Logger = Logger(label: "farrier.api"),
        now: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.store = store
        self.authority = authority
        self.logger = logger
        self.now = now
    }

    static let maxJoinTTL: Int64 = 7 * 86400

    public func addSite(
        request: Farrier_V1_AddSiteRequest,
        context: ServerContext
    ) async throws
        -> Farrier_V1_AddSiteResponse
    {
        let caller = try Caller.admin("adding a site")
        guard SiteAuthority.validName(request.name) else {
            throw RPCError(
                code: .invalidArgument,
                message:
                    "'\(request.name.prefix(80))' is not a site name: 1 to 63 of a-z, 0-9 and '-', starting with a letter or digit"
            )
        }
        guard (0...Self.maxJoinTTL).contains(request.joinTtlSeconds) else {
            throw RPCError(
                code: .invalidArgument,
                message:
                    "the join token's lifetime is 1 to \(Self.maxJoinTTL) seconds (0: an hour), not \(request.joinTtlSeconds)"
            )
        }
        let ttl = request.joinTtlSeconds == 0 ? 3600 : request.joinTtlSeconds
        // The token carries the site CA's pin: the joining site checks the CA it is given.
        let secret = TokenSecret.generate()
        let token: String
        do { token = try authority.joinToken(secret: secret) } catch {
            throw RPCError(code: .internalError, message: "the site CA's certificate: \(error)")
        }
        let created = now()
        let site = Site(
            name: request.name,
            created: created,
            joinTokenSHA256: TokenSecret.hash(secret),
            joinExpires: created.addingTimeInterval(Double(ttl))
        )
        do { try await store.createSite(site) } catch let e as StoreError where e.code == .alreadyExists {
            throw RPCError(
                code: .alreadyExists,
                message: "site '\(site.name)' already exists; remove it first to make it join again"
            )
        }
        logger.info("site added", metadata: ["site": "\(site.name)", "by": "\(caller.tokenName)"])
        var r = Farrier_V1_AddSiteResponse()
        r.site = Farrier_V1_Site(site)
        r.joinToken = token
        return r
    }

    public func listSites(
        request: Farrier_V1_ListSitesRequest,
        context: ServerContext
    ) async throws
        -> Farrier_V1_ListSitesResponse
    {
        _ = try Caller.admin("listing sites")
        var r = Farrier_V1_ListSitesResponse()
        let at = now()
        r.sites = try await store.sites().map { Farrier_V1_Site($0, now: at) }
        return r
    }

    public func removeSite(
        request: Farrier_V1_RemoveSiteRequest,
        context: ServerContext
    ) async throws
        -> Farrier_V1_RemoveSiteResponse
    {
        let caller = try Caller.admin("removing a site")
        // Its machines would be left on a boot network nobody serves: move or delete them first.
        // (The stores' foreign key holds this against a machine moved in meanwhile; this names them.)
        let machines = try await store.machines(MachineQuery(site: request.name, limit: 4))
        if !machines.isEmpty {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "site '\(request.name.prefix(80))' still has machines (\(machines.prefix(3).map(\.name).joined(separator: ", "))\(machines.count > 3 ? ", …" : "")): move them (farrier machine update NAME --site OTHER, or --site '' for the region's own) or delete them first"
            )
        }
        guard try await store.deleteSite(name: request.name) else {
            throw RPCError(code: .notFound, message: "no site named '\(request.name.prefix(80))'")
        }
        logger.info("site removed", metadata: ["site": "\(request.name)", "by": "\(caller.tokenName)"])
        return Farrier_V1_RemoveSiteResponse()
    }

    public func joinSite(
        request: Farrier_V1_JoinSiteRequest,
        context: ServerContext
    ) async throws
        -> Farrier_V1_JoinSiteResponse
    {
        // (The token's pin is the site's to check; the region checks its secret.)
        let hash = TokenSecret.hash(SiteAuthority.joinTokenSecret(request.joinToken))
        let refused = RPCError(
            code: .unauthenticated,
            message: "the join token is not valid: used already, never made, or its site was removed"
        )
        guard !request.joinToken.isEmpty, let site = try await store.site(joinTokenSHA256: hash) else { throw refused }
        let at = now()
        if let expires = site.joinExpires, at > expires {
            throw RPCError(
                code: .unauthenticated,
                message: "the join token expired at \(expires); make a new one (site remove, then site add)"
            )
        }
        func answer(_ certificatePEM: String) async throws -> Farrier_V1_JoinSiteResponse {
            var r = Farrier_V1_JoinSiteResponse()
            if let joined = try await store.site(name: site.name) { r.site = Farrier_V1_Site(joined) }
            r.certificatePem = certificatePEM
            r.caPem = try authority.certificate.serializeAsPEM().pemString + "\n"
            return r
        }
        /// The certificate `s` was given when this token was spent, if this request holds its key:
        /// a join sent again (its first answer lost, or sent to two replicas) gets the same one;
        /// any other key gets nothing.
        func givenBefore(_ s: Site) -> String? {
            guard s.spentTokenSHA256 == hash, let pem = s.certificatePEM,
                Self.sameKey(request.csrPem, issued: pem, serial: s.certificateSerial, site: s.name)
            else { return nil }
            return pem
        }
        guard site.joinTokenSHA256 == hash else {
            guard let pem = givenBefore(site) else { throw refused }
            logger.info(
                "site join sent again: answered with its certificate",
                metadata: ["site": "\(site.name)", "certificate.serial": "\(site.certificateSerial ?? "")"]
            )
            return try await answer(pem)
        }
        let certificate: Certificate
        do { certificate = try authority.issue(csrPEM: request.csrPem, site: site.name, now: at) } catch {
            throw RPCError(code: .invalidArgument, message: "certificate signing request: \(error)")
        }
        let serial = SiteAuthority.hex(certificate.serialNumber)
        let pem = try certificate.serializeAsPEM().pemString + "\n"
        // Spent here, once: of two joins racing with one token, the other finds it gone (and
        // is answered only if it holds the winner's key).
        guard
            try await store.completeJoin(
                name: site.name,
                joinTokenSHA256: hash,
                certificateSerial: serial,
                certificateNotAfter: certificate.notValidAfter,
                certificatePEM: pem,
                at: at
            )
        else {
            // Another join with this token won meanwhile.
            guard let now = try await store.site(name: site.name), let issued = givenBefore(now) else { throw refused }
            return try await answer(issued)
        }
        logger.info("site joined", metadata: ["site": "\(site.name)", "certificate.serial": "\(serial)"])
        return try await answer(pem)
    }

    /// Whether `csrPEM` is a request naming `site`, signed by the key certificate `issued` (the
    /// site's current one, `serial`) was given for.
    static func sameKey(_ csrPEM: String, issued: String, serial: String?, site: String) -> Bool {
        guard let csr = try? CertificateSigningRequest(pemEncoded: csrPEM),
            csr.publicKey.isValidSignature(csr.signature, for: csr),
            SiteAuthority.commonNames(csr.subject) == [site],
            let certificate = try? Certificate(pemEncoded: issued),
            SiteAuthority.hex(certificate.serialNumber) == serial
        else { return false }
        return csr.publicKey == certificate.publicKey
    }
}

extension Farrier_V1_Site {
    init(_ s: Site, now: Date = Date()) {
        self.init()
        name = s.name
        created = Google_Protobuf_Timestamp(date: s.created)
        status = s.certificateSerial == nil ? "waiting" : "joined"
        // (A joined site's token expiry bounds only a join sent again: not shown.)
        if s.certificateSerial == nil, let e = s.joinExpires { joinExpires = Google_Protobuf_Timestamp(date: e) }
        if let j = s.joined { joined = Google_Protobuf_Timestamp(date: j) }
        certificateSerial = s.certificateSerial ?? ""
        if let n = s.certificateNotAfter { certificateNotAfter = Google_Protobuf_Timestamp(date: n) }
        link = s.link?.state(at: now) ?? "never"
        if let l = s.link {
            lastSeen = Google_Protobuf_Timestamp(date: l.lastSeen)
            linkAddress = l.address
            queueDepth = l.queueDepth
            cachedFiles = l.cachedFiles
            cachedBytes = l.cachedBytes
            version = l.version
            if let n = l.bmcChannels { bmcChannels = n }
        }
    }
}

/// `farrier.v1.SiteLinkService` (issue 16): served only on the site link's listener, where mutual
/// TLS has checked that the caller's certificate chains to the region's site CA. Each call then
/// names its site from that certificate and is answered only while it is the site's current one
/// (the sites table is the revocation list: `site remove` deletes the row, a new join replaces the
/// serial).
public struct SiteLinkAPI: Farrier_V1_SiteLinkService.SimpleServiceProtocol {
    let store: any StateStore
    let authority: SiteAuthority
    /// The region's images, named by their SHA-256 (FetchFile's files).
    let imageDirectory: String
    /// Agent calls and image access relayed by sites; nil refuses them (Unavailable).
    let controller: Controller?
    /// The region's boot root's ramdisk and iPXE binaries, which sites install; nil: none.
    let bootFiles: BootFileCatalog?
    /// Where BMC operations on sites' machines wait for their site's channel (BMCWork); nil
    /// refuses the channel (Unavailable).
    let bmcRelay: SiteBMCRelay?
    let logger: Logger
    let now: @Sendable () -> Date

    public init(
        store: any StateStore,
        authority: SiteAuthority,
        imageDirectory: String,
        bootFiles: BootFileCatalog? = nil,
        controller: Controller? = nil,
        bmcRelay: SiteBMCRelay? = nil,
        logger: Logger = Logger(label: "farrier.site-link"),
        now: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.bmcRelay = bmcRelay
        self.bootFiles = bootFiles
        self.controller = controller
        self.store = store
        self.authority = authority
        self.imageDirectory = imageDirectory
        self.logger = logger
        self.now = now
    }

    /// The calling site, answered only while its certificate is the site's current one.
    func authorize(_ context: ServerContext, at: Date) async throws -> SiteAuthority.SiteIdentity {
        let site = try identify(context, at: at)
        guard try await store.site(name: site.site)?.certificateSerial == site.serial else { throw Self.revoked(site) }
        return site
    }

    public func fetchFile(
        request: Farrier_V1_FetchFileRequest,
        response: RPCWriter<Farrier_V1_FileChunk>,
        context: ServerContext
    ) async throws {
        let site = try await authorize(context, at: now())
        let digest = request.sha256
        guard SiteCache.isDigest(digest) else {
            throw RPCError(code: .invalidArgument, message: "a file is named by its SHA-256 (64 lowercase hex digits)")
        }
        // Only what the image table names (the directory may hold uploads not yet committed),
        // or a boot file as the boot root has it now.
        let path: String
        if try await store.images().contains(where: { $0.sha256 == digest }) {
            path = imageDirectory + "/" + digest
        } else if let bootFiles, let file = try await bootFiles.files().first(where: { $0.sha256 == digest }) {
            path = bootFiles.root + "/" + file.path
        } else {
            throw RPCError(code: .notFound, message: "the region has no image or boot file \(digest.prefix(12))…")
        }
        // Opens and reads run on NIO's blocking pool: a slow disk holds one of its threads, not
        // one of the few the async code shares.
        let pool = NIOThreadPool.singleton
        let (fd, size) = try await pool.runIfActive { () throws -> (CInt, Int64) in
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                throw RPCError(code: .notFound, message: "file \(digest.prefix(12))… is not on this replica")
            }
            let size = Int64(lseek(fd, 0, SEEK_END))
            guard size >= 0 else {
                close(fd)
                throw RPCError(code: .internalError, message: "seeking \(digest.prefix(12))…")
            }
            return (fd, size)
        }
        defer { close(fd) }
        var first = Farrier_V1_FileChunk()
        first.size = size
        try await response.write(first)
        // 256 KiB a message (gRPC's default limit is 4 MiB).
        var offset: Int64 = 0
        while offset < size {
            let at = offset
            let data = try await pool.runIfActive { () throws -> Data in
                var buffer = Data(count: Int(min(256 * 1024, size - at)))
                let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(at)) }
                if n < 0 {
                    throw RPCError(
                        code: .internalError,
                        message: "reading \(digest.prefix(12))… at \(at): errno \(errno)"
                    )
                }
                if n == 0 {
                    throw RPCError(
                        code: .internalError,
                        message: "image \(digest.prefix(12))… shrank while it was sent"
                    )
                }
                return buffer.prefix(n)
            }
            var chunk = Farrier_V1_FileChunk()
            chunk.data = data
            try await response.write(chunk)
            offset += Int64(data.count)
        }
        logger.info(
            "file sent to site",
            metadata: ["site": "\(site.site)", "sha256": "\(digest)", "bytes": "\(offset)"]
        )
    }

    /// The site link's listener: mutual TLS with the site CA on both sides. The region's
    /// certificate is made at each start for `names`; a client must present a certificate
    /// chaining to the site CA, and each call then checks it is its site's current one.
    public static func listener(
        listen: String,
        names: [String],
        authority: SiteAuthority,
        store: any StateStore,
        imageDirectory: String,
        bootRoot: String? = nil,
        controller: Controller?,
        bmcRelay: SiteBMCRelay? = nil,
        logger: Logger
    ) throws -> GRPCService {
        let (certificate, keyPEM) = try authority.issueLinkCertificate(names: names)
        let caPEM = try authority.certificate.serializeAsPEM().pemString
        let security = HTTP2ServerTransport.Posix.TransportSecurity.mTLS(
            certificateChain: [.bytes(Array(try certificate.serializeAsPEM().pemString.utf8), format: .pem)],
            privateKey: .bytes(Array(keyPEM.utf8), format: .pem)
        ) { tls in
            tls.trustRoots = .certificates([.bytes(Array(caPEM.utf8), format: .pem)])
            tls.clientCertificateVerification = .noHostnameVerification
        }
        logger.info("site link", metadata: ["site.listen": "\(listen)", "site.link-names": "\(names)"])
        return try GRPCService(
            listen: listen,
            services: [
                SiteLinkAPI(
                    store: store,
                    authority: authority,
                    imageDirectory: imageDirectory,
                    bootFiles: bootRoot.map { BootFileCatalog(root: $0) },
                    controller: controller,
                    bmcRelay: bmcRelay,
                    logger: logger
                )
            ],
            security: security,
            // A site that stops answering (a partition leaves its TCP connection open) is found
            // within 20 s, and its BMC channel closed: its machines' BMC actions then wait.
            keepalive: .init(
                time: .seconds(10),
                timeout: .seconds(10),
                clientBehavior: .init(minPingIntervalWithoutCalls: .seconds(5), allowWithoutCalls: true)
            ),
            name: "site link",
            logger: logger
        )
    }

    /// The site's machine with this MAC, for a relayed call: a site vouches only for its own.
    func relayed(_ macText: String, site: SiteAuthority.SiteIdentity) async throws -> (Controller, MACAddress) {
        guard let controller else { throw RPCError(code: .unavailable, message: "this region relays no agent calls") }
        guard let mac = MACAddress(macText) else {
            throw RPCError(code: .invalidArgument, message: "'\(macText)' is not a MAC address")
        }
        guard let m = try await store.machine(mac: mac), m.site == site.site else {
            logger.warning(
                "a site relayed a call for a machine that is not its own",
                metadata: ["site": "\(site.site)", "mac": "\(mac)"]
            )
            throw RPCError(code: .permissionDenied, message: "no machine of site \(site.site) has MAC \(mac)")
        }
        return (controller, mac)
    }

    public func agentCall(
        request: Farrier_V1_AgentCallRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_AgentCallResponse {
        let site = try await authorize(context, at: now())
        let (controller, mac) = try await relayed(request.mac, site: site)
        func decode<T: Decodable>(_ type: T.Type) throws -> T {
            do { return try JSONDecoder().decode(T.self, from: request.body) } catch {
                throw RPCError(code: .invalidArgument, message: "bad JSON: \(error)")
            }
        }
        struct Empty: Encodable {}
        let answer: any Encodable
        switch request.call {
        case "hello": answer = try await controller.agentHello(peer: mac, hello: try decode(AgentHello.self))
        case "progress":
            try await controller.agentProgress(token: request.token, peer: mac, report: try decode(AgentProgress.self))
            answer = Empty()
        case "done":
            try await controller.agentDone(token: request.token, peer: mac, result: try decode(AgentResult.self))
            answer = Empty()
        case "os-ready":
            try await controller.osReady(token: request.token, peer: mac, report: try decode(OSReady.self))
            answer = Empty()
        default: throw RPCError(code: .invalidArgument, message: "unknown agent call '\(request.call)'")
        }
        var r = Farrier_V1_AgentCallResponse()
        r.body = try JSONEncoder().encode(answer)
        return r
    }

    public func imageAccess(
        request: Farrier_V1_ImageAccessRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_ImageAccessResponse {
        let site = try await authorize(context, at: now())
        let (controller, mac) = try await relayed(request.mac, site: site)
        var r = Farrier_V1_ImageAccessResponse()
        // Only an agent's token: an admin token has no business on a site's boot network.
        let agent = (try? await controller.agentMachine(token: request.token, peer: mac)) != nil
        r.allowed =
            agent ? await controller.imageAccess(sha256: request.sha256, bearer: request.token, peer: mac) : false
        return r
    }

    public func reportEvents(
        request: Farrier_V1_ReportEventsRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_ReportEventsResponse {
        let site = try identify(context, at: now())
        guard request.events.count <= 1000 else {
            throw RPCError(code: .invalidArgument, message: "at most 1000 events a call, not \(request.events.count)")
        }
        guard request.events.allSatisfy({ $0.id > 0 }) else {
            throw RPCError(code: .invalidArgument, message: "event numbers start at 1")
        }
        // An event the region cannot read (a MAC or stage it does not know: a newer site) is
        // dropped but counted, so the site's queue moves on; text is cut to a bounded size.
        var events: [SiteEvent] = []
        for e in request.events {
            guard let mac = MACAddress(e.mac), let stage = TimelineEvent.Stage(rawValue: e.stage) else {
                logger.debug("site event dropped", metadata: ["site": "\(site.site)", "event.id": "\(e.id)"])
                continue
            }
            let detail = String(e.detail.prefix(SiteEvent.maxDetail))
            events.append(
                SiteEvent(
                    id: e.id,
                    event: TimelineEvent(
                        mac: mac,
                        time: e.time.date,
                        stage: stage,
                        event: String(e.event.prefix(SiteEvent.maxEvent)),
                        detail: detail.isEmpty ? "site=\(site.site)" : "\(detail) site=\(site.site)"
                    )
                )
            )
        }
        guard
            let mark = try await store.appendSiteEvents(
                name: site.site,
                certificateSerial: site.serial,
                after: request.after,
                events: events,
                through: request.events.map(\.id).max() ?? 0
            )
        else { throw Self.revoked(site) }
        var r = Farrier_V1_ReportEventsResponse()
        r.mark = mark
        return r
    }

    public func reportLeases(
        request: Farrier_V1_ReportLeasesRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_ReportLeasesResponse {
        let site = try identify(context, at: now())
        guard request.leases.count <= 100_000 else {
            throw RPCError(code: .invalidArgument, message: "at most 100000 leases a call, not \(request.leases.count)")
        }
        // A lease the region cannot read (a newer site's form) is dropped, not the report.
        var leases: [Lease] = []
        for l in request.leases {
            guard let mac = MACAddress(l.mac), let address = IPv4Address(l.address) else { continue }
            let hostname = String(l.hostname.prefix(253))
            leases.append(
                Lease(mac: mac, address: address, expires: l.expires.date, hostname: hostname.isEmpty ? nil : hostname)
            )
        }
        if leases.count < request.leases.count {
            logger.warning(
                "site leases dropped: unreadable",
                metadata: ["site": "\(site.site)", "dropped": "\(request.leases.count - leases.count)"]
            )
        }
        guard
            let kept = try await store.recordSiteLeases(name: site.site, certificateSerial: site.serial, leases: leases)
        else { throw Self.revoked(site) }
        var r = Farrier_V1_ReportLeasesResponse()
        r.kept = Int64(kept)
        return r
    }

    public func heartbeat(
        request: Farrier_V1_HeartbeatRequest,
        context: ServerContext
    ) async throws
        -> Farrier_V1_HeartbeatResponse
    {
        let at = now()
        let site = try identify(context, at: at)
        let link = SiteLink(
            lastSeen: at,
            address: String(context.remotePeer.prefix(200)),
            queueDepth: max(0, request.queueDepth),
            cachedFiles: max(0, request.cachedFiles),
            cachedBytes: max(0, request.cachedBytes),
            version: String(request.version.prefix(64)),
            bmcChannels: request.hasBmcChannels ? max(0, request.bmcChannels) : nil
        )
        guard try await store.recordSiteLink(name: site.site, certificateSerial: site.serial, link: link) else {
            logger.warning(
                "site refused: its certificate is not its current one",
                metadata: ["site": "\(site.site)", "certificate.serial": "\(site.serial)", "peer": "\(link.address)"]
            )
            throw Self.revoked(site)
        }
        var r = Farrier_V1_HeartbeatResponse()
        r.site = site.site
        r.regionTime = Google_Protobuf_Timestamp(date: at)
        return r
    }

    public func siteMachines(
        request: Farrier_V1_SiteMachinesRequest,
        context: ServerContext
    ) async throws
        -> Farrier_V1_SiteMachinesResponse
    {
        let at = now()
        let site = try await authorize(context, at: at)
        var r = Farrier_V1_SiteMachinesResponse()
        r.images = try await store.images().map { i in
            var v = Farrier_V1_SiteImage()
            v.name = i.name
            v.sha256 = i.sha256
            v.size = i.size
            return v
        }
        // A page at a time, bounded: a site of a million machines is 1000 pages.
        var query = MachineQuery(site: site.site, limit: 1000)
        for pages in 0... {
            // One answer (gRPC's 4 MiB limit, about 30,000 machines): more is refused, not cut.
            guard pages < 25 else {
                throw RPCError(
                    code: .resourceExhausted,
                    message: "site \(site.site) has more than 25,000 machines: more than one answer holds"
                )
            }
            let page = try await store.machines(query)
            r.machines += page.map(Self.siteMachine)
            guard page.count == query.limit, let last = page.last else { break }
            query.after = last.name
        }
        r.bootFiles =
            try await bootFiles?.files().map { f in
                var v = Farrier_V1_SiteBootFile()
                v.path = f.path
                v.sha256 = f.sha256
                v.size = f.size
                return v
            } ?? []
        r.asOf = Google_Protobuf_Timestamp(date: at)
        return r
    }

    static func siteMachine(_ m: Machine) -> Farrier_V1_SiteMachine {
        var v = Farrier_V1_SiteMachine()
        v.name = m.name
        v.mac = m.mac.description
        v.state = m.state.rawValue
        v.nextBoot = Lifecycle.nextBoot(m.state, phase: m.phase).rawValue
        v.firmware = m.firmware.rawValue
        v.imageSha256 = m.deployment?.imageSHA256 ?? ""
        return v
    }

    public func siteMachineBoot(
        request: Farrier_V1_SiteMachineBootRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_SiteMachine {
        let site = try await authorize(context, at: now())
        guard let mac = MACAddress(request.mac) else {
            throw RPCError(code: .invalidArgument, message: "'\(request.mac.prefix(40))' is not a MAC address")
        }
        // Another site's machine, or none: the same answer, so nothing leaks.
        guard let m = try await store.machine(mac: mac), m.site == site.site else {
            throw RPCError(code: .notFound, message: "no machine of site \(site.site) has MAC \(mac)")
        }
        return Self.siteMachine(m)
    }

    public func bmcWork(
        request: RPCAsyncSequence<Farrier_V1_SiteBMCResult, any Error>,
        response: RPCWriter<Farrier_V1_SiteBMCJob>,
        context: ServerContext
    ) async throws {
        let site = try await authorize(context, at: now())
        let relay = try relay()
        let (channel, jobs) = await relay.open(site: site.site)
        logger.info("site BMC channel open", metadata: ["site": "\(site.site)"])
        let heard = LastHeard()
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                // The site's answers, by job number; number 0 says only that it is there.
                group.addTask {
                    for try await result in request {
                        heard.now()
                        guard result.id != 0 else { continue }
                        await relay.answer(result.id, from: channel, SiteBMCWire.outcome(result))
                    }
                }
                // A site silent for 15 s (it says it is there every 5) is taken for cut off: a
                // partition leaves the stream open, and jobs sent down it would go nowhere.
                group.addTask {
                    while true {
                        try await Task.sleep(for: .seconds(5))
                        let silent = heard.since()
                        if silent > .seconds(15) {
                            throw RPCError(code: .unavailable, message: "site \(site.site) silent for \(silent)")
                        }
                    }
                }
                // The jobs still awaited, each only while the site's certificate is still its
                // current one and valid.
                group.addTask {
                    for await job in jobs where await relay.isPending(job.id) {
                        _ = try await authorize(context, at: now())
                        try await response.write(SiteBMCWire.message(job))
                    }
                }
                // Either side ending ends the channel: closed in the relay at once (no job goes
                // to it from then on), then its tasks are ended.
                defer { group.cancelAll() }
                var ending: (any Error)?
                do { try await group.next() } catch { ending = error }
                await relay.close(channel)
                if let ending { throw ending }
            }
        } catch {
            logger.info("site BMC channel closed", metadata: ["site": "\(site.site)", "error": "\(error)"])
            throw error
        }
        logger.info("site BMC channel closed", metadata: ["site": "\(site.site)"])
    }

    public func bmcConsole(
        request: RPCAsyncSequence<Farrier_V1_SiteConsoleFrame, any Error>,
        response: RPCWriter<Farrier_V1_SiteConsoleFrame>,
        context: ServerContext
    ) async throws {
        let site = try await authorize(context, at: now())
        let relay = try relay()
        let frames = InputBox(request.makeAsyncIterator())
        guard let first = try await frames.next() else { return }
        guard let console = await relay.attachConsole(first.session, site: site.site) else {
            throw RPCError(code: .notFound, message: "no console \(first.session) waits for site \(site.site)")
        }
        defer { console.end() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            // The machine's output, from the site, to the user.
            group.addTask {
                if !first.data.isEmpty { console.deliver(Array(first.data)) }
                while let frame = try await frames.next() {
                    if !frame.data.isEmpty { console.deliver(Array(frame.data)) }
                }
            }
            // What the user types, to the site.
            group.addTask {
                for await bytes in console.toSite {
                    var frame = Farrier_V1_SiteConsoleFrame()
                    frame.data = Data(bytes)
                    try await response.write(frame)
                }
            }
            // Either side ending ends the console.
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    /// The relay BMC channels and consoles go through; without one, they are refused.
    func relay() throws -> SiteBMCRelay {
        guard let bmcRelay else { throw RPCError(code: .unavailable, message: "this region relays no BMC operations") }
        return bmcRelay
    }

    /// When a channel last heard from its site.
    final class LastHeard: Sendable {
        let at = Mutex(ContinuousClock.now)
        func now() { at.withLock { $0 = .now } }
        func since() -> Duration { ContinuousClock.now - at.withLock { $0 } }
    }

    static func revoked(_ site: SiteAuthority.SiteIdentity) -> RPCError {
        RPCError(
            code: .permissionDenied,
            message:
                "site \(site.site)'s certificate (serial \(site.serial)) is not its current one: the site was removed, or joined again with another key"
        )
    }

    /// The calling site, from the client certificate it presented. The TLS layer has checked its
    /// chain already; this checks it again (issuer, signature, validity, use) and reads the site's
    /// name, so that a listener set up without mutual TLS cannot let anything through.
    func identify(_ context: ServerContext, at: Date) throws -> SiteAuthority.SiteIdentity {
        guard let tls = context.transportSpecific as? HTTP2ServerTransport.Posix.Context,
            let leaf = tls.peerCertificate
        else {
            throw RPCError(code: .unauthenticated, message: "the site link needs a site certificate (mutual TLS)")
        }
        do { return try authority.verify(leaf, now: at) } catch {
            throw RPCError(code: .unauthenticated, message: "site certificate refused: \(error)")
        }
    }
}
