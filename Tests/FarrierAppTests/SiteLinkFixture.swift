import FarrierAPI
import FarrierBMC
import FarrierCore
import FarrierSite
import FarrierStore
import Foundation
import Logging
import SwiftASN1
import X509

/// A region's store and site CA in a temporary directory, and a site's directory that `join`
/// fills as `farrier site join` does: what the in-process site link tests start from.
struct SiteLinkFixture {
    let dir: String
    let siteDir: String
    let store: SQLiteStore
    let authority: SiteAuthority
    let t = Date()

    init(_ name: String) throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("farrier-\(name)-\(UUID())").path
        siteDir = dir + "/site"
        try FileManager.default.createDirectory(atPath: siteDir, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/region", withIntermediateDirectories: true)
        store = try SQLiteStore(path: dir + "/region.sqlite")
        authority = try SiteAuthority.loadOrMake(dataDir: dir + "/region")
    }

    func remove() { try? FileManager.default.removeItem(atPath: dir) }

    /// Adds `site` and joins it with a new key: the key, certificate and CA are left in
    /// `siteDir` as `farrier site join` leaves them.
    func join(_ token: String, site: String = "site-1") async throws {
        try await store.createSite(Site(name: site, created: t, joinTokenSHA256: token))
        let (keyPEM, csrPEM) = try SiteAuthority.makeKeyAndRequest(site: site)
        let certificate = try authority.issue(csrPEM: csrPEM, site: site, now: t)
        let joined = try await store.completeJoin(
            name: site,
            joinTokenSHA256: token,
            certificateSerial: SiteAuthority.hex(certificate.serialNumber),
            certificateNotAfter: certificate.notValidAfter,
            certificatePEM: try certificate.serializeAsPEM().pemString,
            at: t
        )
        guard joined else { throw SiteAuthority.Failure("joining \(site) with token \(token) failed") }
        try keyPEM.write(toFile: siteDir + "/site.key", atomically: true, encoding: .utf8)
        try certificate.serializeAsPEM().pemString.write(
            toFile: siteDir + "/site.crt",
            atomically: true,
            encoding: .utf8
        )
        try authority.certificate.serializeAsPEM().pemString.write(
            toFile: siteDir + "/region-ca.crt",
            atomically: true,
            encoding: .utf8
        )
    }

    /// Puts a machine at `site` (nil: at none).
    func place(_ machineID: String, at site: String?) async throws {
        _ = try await store.update(machineID: machineID, fence: nil) { m in
            m.site = site
            return []
        }
    }

    /// The region's site link listener on `host`:`port`, as `farrier server` runs it, its
    /// certificate for `names` (default: `host`).
    func listener(
        port: Int,
        host: String = "127.0.0.1",
        names: [String]? = nil,
        bootRoot: String? = nil,
        bmcRelay: SiteBMCRelay? = nil
    ) throws -> GRPCService {
        try SiteLinkAPI.listener(
            listen: "\(host):\(port)",
            names: names ?? [host],
            authority: authority,
            store: store,
            imageDirectory: dir + "/images",
            bootRoot: bootRoot,
            controller: nil,
            bmcRelay: bmcRelay,
            logger: Logger(label: "test")
        )
    }
}
