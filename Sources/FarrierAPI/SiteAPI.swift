import FarrierControl
import FarrierCore
import FarrierSite
import Foundation
import GRPCCore
import Logging
import SwiftASN1
import SwiftProtobuf
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
        let secret = TokenSecret.generate()
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
        r.joinToken = secret
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
        r.sites = try await store.sites().map(Farrier_V1_Site.init)
        return r
    }

    public func removeSite(
        request: Farrier_V1_RemoveSiteRequest,
        context: ServerContext
    ) async throws
        -> Farrier_V1_RemoveSiteResponse
    {
        let caller = try Caller.admin("removing a site")
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
        let hash = TokenSecret.hash(request.joinToken)
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
        let certificate: Certificate
        do { certificate = try authority.issue(csrPEM: request.csrPem, site: site.name, now: at) } catch {
            throw RPCError(code: .invalidArgument, message: "certificate signing request: \(error)")
        }
        let serial = SiteAuthority.hex(certificate.serialNumber)
        // Spent here, once: of two joins racing with one token, the other finds it gone.
        guard
            try await store.completeJoin(
                name: site.name,
                joinTokenSHA256: hash,
                certificateSerial: serial,
                certificateNotAfter: certificate.notValidAfter,
                at: at
            )
        else { throw refused }
        logger.info("site joined", metadata: ["site": "\(site.name)", "certificate.serial": "\(serial)"])
        var r = Farrier_V1_JoinSiteResponse()
        if let joined = try await store.site(name: site.name) { r.site = Farrier_V1_Site(joined) }
        r.certificatePem = try certificate.serializeAsPEM().pemString + "\n"
        r.caPem = try authority.certificate.serializeAsPEM().pemString + "\n"
        return r
    }
}

extension Farrier_V1_Site {
    init(_ s: Site) {
        self.init()
        name = s.name
        created = Google_Protobuf_Timestamp(date: s.created)
        status = s.certificateSerial == nil ? "waiting" : "joined"
        if let e = s.joinExpires { joinExpires = Google_Protobuf_Timestamp(date: e) }
        if let j = s.joined { joined = Google_Protobuf_Timestamp(date: j) }
        certificateSerial = s.certificateSerial ?? ""
        if let n = s.certificateNotAfter { certificateNotAfter = Google_Protobuf_Timestamp(date: n) }
    }
}
