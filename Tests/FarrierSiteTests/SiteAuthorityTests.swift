import FarrierSite
import Foundation
import SwiftASN1
import TestSupport
import Testing
import X509

/// The sites' CA against OpenSSL: OpenSSL's signing requests are signed, and what the CA signs
/// OpenSSL verifies against the CA's certificate; requests that do not hold up, and
/// certificates the CA did not issue or that are out of date, are refused.
@Suite struct SiteAuthorityTests {
    func openssl(_ h: Harness, _ args: [String]) throws -> String {
        let r = try h.run(["openssl"] + args, check: false)
        return r.stdout + r.stderr
    }

    @Test func joinsWithOpenSSLAndItsOwnRequests() throws {
        let h = try Harness("site-ca")
        defer { h.cleanup() }
        let dir = h.directory
        let ca = try SiteAuthority.loadOrMake(dataDir: dir)
        // Made once: loaded again, the same CA; its key is 0600.
        #expect(try SiteAuthority.loadOrMake(dataDir: dir).certificate == ca.certificate)
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/site-ca.key")[.posixPermissions] as? Int
        #expect(mode == 0o600)

        // OpenSSL's request for site-1: signed, and OpenSSL verifies the result.
        _ = try openssl(
            h,
            [
                "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", dir + "/s1.key", "-out", dir + "/s1.csr", "-subj", "/CN=site-1",
            ]
        )
        let csr = try String(contentsOfFile: dir + "/s1.csr", encoding: .utf8)
        let cert = try ca.issue(csrPEM: csr, site: "site-1")
        try (try cert.serializeAsPEM().pemString + "\n").write(
            toFile: dir + "/s1.crt",
            atomically: true,
            encoding: .utf8
        )
        let verified = try openssl(
            h,
            ["verify", "-CAfile", dir + "/site-ca.crt", "-purpose", "sslclient", dir + "/s1.crt"]
        )
        #expect(verified.contains("s1.crt: OK"), "\(verified)")
        let text = try openssl(h, ["x509", "-in", dir + "/s1.crt", "-noout", "-text"])
        #expect(text.contains("URI:farrier-site:site-1"), "\(text)")
        #expect(text.contains("TLS Web Client Authentication"))
        // The certificate holds the key OpenSSL made (the key never left the site).
        let certKey = try openssl(h, ["x509", "-in", dir + "/s1.crt", "-noout", "-pubkey"])
        let siteKey = try openssl(h, ["pkey", "-in", dir + "/s1.key", "-pubout"])
        #expect(certKey == siteKey)
        let id = try ca.verify(cert)
        #expect(id.site == "site-1" && id.serial.count >= 2)

        // The site's own request (what `farrier site join` sends).
        let (keyPEM, csrPEM) = try SiteAuthority.makeKeyAndRequest(site: "site-2")
        #expect(keyPEM.contains("PRIVATE KEY"))
        try csrPEM.write(toFile: dir + "/s2.csr", atomically: true, encoding: .utf8)
        #expect(try openssl(h, ["req", "-in", dir + "/s2.csr", "-noout", "-verify"]).contains("verify OK"))
        let cert2 = try ca.issue(csrPEM: csrPEM, site: "site-2")
        #expect(try ca.verify(cert2).site == "site-2")
        #expect(try ca.verify(cert2).serial != id.serial)
    }

    @Test func refusesWhatDoesNotHoldUp() throws {
        let h = try Harness("site-ca-bad")
        defer { h.cleanup() }
        let dir = h.directory
        let ca = try SiteAuthority.loadOrMake(dataDir: dir)
        let (_, csr) = try SiteAuthority.makeKeyAndRequest(site: "site-1")
        // A request for site-1 does not get site-2's certificate.
        #expect(throws: SiteAuthority.Failure.self) { try ca.issue(csrPEM: csr, site: "site-2") }
        #expect(throws: SiteAuthority.Failure.self) { try ca.issue(csrPEM: csr, site: "Site_1") }
        #expect(throws: SiteAuthority.Failure.self) { try ca.issue(csrPEM: "not a request", site: "site-1") }
        #expect(throws: (any Error).self) { try SiteAuthority.makeKeyAndRequest(site: "-x") }
        // A request whose signature is not its key's: OpenSSL's request with its key swapped
        // for another's (DER edited: the public key bytes replaced).
        _ = try openssl(
            h,
            [
                "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", dir + "/a.key", "-out", dir + "/a.csr", "-subj", "/CN=site-1", "-outform", "DER",
            ]
        )
        _ = try openssl(h, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", dir + "/b.key"])
        _ = try openssl(h, ["ec", "-in", dir + "/b.key", "-pubout", "-outform", "DER", "-out", dir + "/b.pub"])
        _ = try openssl(h, ["ec", "-in", dir + "/a.key", "-pubout", "-outform", "DER", "-out", dir + "/a.pub"])
        let aPub = try Data(contentsOf: URL(fileURLWithPath: dir + "/a.pub")).suffix(65)
        let bPub = try Data(contentsOf: URL(fileURLWithPath: dir + "/b.pub")).suffix(65)
        var der = try Data(contentsOf: URL(fileURLWithPath: dir + "/a.csr"))
        let at = try #require(der.range(of: aPub))
        der.replaceSubrange(at, with: bPub)
        let swapped =
            "-----BEGIN CERTIFICATE REQUEST-----\n" + der.base64EncodedString(options: .lineLength64Characters)
            + "\n-----END CERTIFICATE REQUEST-----\n"
        #expect {
            try ca.issue(csrPEM: swapped, site: "site-1")
        } throws: { "\($0)".contains("signature") }

        // Certificates the CA did not sign: OpenSSL's self-signed one, and another region's.
        _ = try openssl(
            h,
            [
                "req", "-x509", "-new", "-key", dir + "/a.key", "-subj", "/CN=site-1", "-days", "1",
                "-addext", "subjectAltName=URI:farrier-site:site-1", "-addext", "extendedKeyUsage=clientAuth",
                "-out", dir + "/self.crt",
            ]
        )
        let selfSigned = try Certificate(pemEncoded: String(contentsOfFile: dir + "/self.crt", encoding: .utf8))
        #expect(throws: SiteAuthority.Failure.self) { try ca.verify(selfSigned) }
        try FileManager.default.createDirectory(atPath: dir + "/other", withIntermediateDirectories: true)
        let other = try SiteAuthority.loadOrMake(dataDir: dir + "/other")
        #expect(throws: SiteAuthority.Failure.self) { try ca.verify(try other.issue(csrPEM: csr, site: "site-1")) }
        // Out of date: valid for a day, presented two days on.
        let now = Date()
        let short = try ca.issue(csrPEM: csr, site: "site-1", now: now, validity: 86400)
        #expect(try ca.verify(short, now: now).site == "site-1")
        #expect(throws: SiteAuthority.Failure.self) { try ca.verify(short, now: now.addingTimeInterval(2 * 86400)) }
        // Half a CA (a partial restore) is refused, not replaced by a new one.
        try FileManager.default.moveItem(atPath: dir + "/site-ca.key", toPath: dir + "/site-ca.key.away")
        #expect(throws: SiteAuthority.Failure.self) { try SiteAuthority.loadOrMake(dataDir: dir) }
        #expect(!FileManager.default.fileExists(atPath: dir + "/site-ca.key"))
        try FileManager.default.moveItem(atPath: dir + "/site-ca.key.away", toPath: dir + "/site-ca.key")
        #expect(try SiteAuthority.loadOrMake(dataDir: dir).certificate == ca.certificate)
        // A CA key that is not its certificate's is refused at load.
        try FileManager.default.removeItem(atPath: dir + "/site-ca.key")
        try FileManager.default.copyItem(atPath: dir + "/other/site-ca.key", toPath: dir + "/site-ca.key")
        #expect(throws: (any Error).self) { try SiteAuthority.loadOrMake(dataDir: dir) }
    }

    /// The region's link certificate: OpenSSL verifies it against the CA for a server, under the
    /// names and addresses given and no other; it is not one a site could present as a client.
    /// A join token is its secret, a '.', and the CA certificate's SHA-256 (of its DER, as
    /// OpenSSL computes it): the site finds the pin, the region the secret.
    @Test func joinTokensCarryTheCAsPin() throws {
        let h = try Harness("join-pin")
        defer { h.cleanup() }
        let dir = h.directory
        let ca = try SiteAuthority.loadOrMake(dataDir: dir)
        let token = try ca.joinToken(secret: "fa_secret-part_1")
        let pin = try #require(SiteAuthority.joinTokenPin(token))
        #expect(token == "fa_secret-part_1." + pin)
        #expect(SiteAuthority.joinTokenSecret(token) == "fa_secret-part_1")
        let fingerprint = try openssl(h, ["x509", "-in", dir + "/site-ca.crt", "-noout", "-fingerprint", "-sha256"])
        #expect(
            fingerprint.split(separator: "=").last?.replacingOccurrences(of: ":", with: "").lowercased()
                .trimmingCharacters(in: .whitespacesAndNewlines) == pin
        )
        // No pin: none found, and the whole token is the secret.
        for unpinned in ["fa_abc", "fa_abc.", "fa_abc." + pin.dropLast(), "fa_abc." + pin.uppercased()] {
            #expect(SiteAuthority.joinTokenPin(unpinned) == nil, "\(unpinned)")
            #expect(SiteAuthority.joinTokenSecret(unpinned) == unpinned)
        }
    }

    /// The site's check of a join's answer: a certificate from the pinned CA, for this site,
    /// for the site's own key; a certificate someone else got with the token (their key) is
    /// refused, as is another CA's or another site's.
    @Test func aJoinAnswerMustBeForTheSitesOwnKey() throws {
        let h = try Harness("join-answer")
        defer { h.cleanup() }
        try FileManager.default.createDirectory(atPath: h.directory + "/a", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: h.directory + "/b", withIntermediateDirectories: true)
        let ca = try SiteAuthority.loadOrMake(dataDir: h.directory + "/a")
        let other = try SiteAuthority.loadOrMake(dataDir: h.directory + "/b")
        let caPEM = try ca.certificate.serializeAsPEM().pemString
        let mine = SiteAuthority.makeKey()
        let theirs = SiteAuthority.makeKey()
        func issued(_ key: String, site: String = "site-1", by authority: SiteAuthority? = nil) throws -> String {
            let csr = try SiteAuthority.makeRequest(site: site, keyPEM: key)
            return try (authority ?? ca).issue(csrPEM: csr, site: site).serializeAsPEM().pemString
        }
        try SiteAuthority.checkJoinAnswer(certificatePEM: try issued(mine), caPEM: caPEM, keyPEM: mine, site: "site-1")
        for (certificate, why) in [
            (try issued(theirs), "another key"), (try issued(mine, site: "site-2"), "site-2"),
            (try issued(mine, by: other), "not issued"),
        ] {
            #expect(throws: SiteAuthority.Failure.self, "\(why)") {
                try SiteAuthority.checkJoinAnswer(
                    certificatePEM: certificate,
                    caPEM: caPEM,
                    keyPEM: mine,
                    site: "site-1"
                )
            }
        }
        #expect(!SiteAuthority.validKey("not a key") && SiteAuthority.validKey(mine))
    }

    @Test func linkCertificateForTheRegionsNames() throws {
        let h = try Harness("site-link-cert")
        defer { h.cleanup() }
        let dir = h.directory
        let ca = try SiteAuthority.loadOrMake(dataDir: dir)
        let (cert, _) = try ca.issueLinkCertificate(names: ["region.example.net", "10.1.2.3", "fd00::7"])
        try (try cert.serializeAsPEM().pemString + "\n").write(
            toFile: dir + "/link.crt",
            atomically: true,
            encoding: .utf8
        )
        let base = ["verify", "-CAfile", dir + "/site-ca.crt", "-purpose", "sslserver"]
        #expect(try openssl(h, base + ["-verify_hostname", "region.example.net", dir + "/link.crt"]).contains("OK"))
        #expect(try openssl(h, base + ["-verify_ip", "10.1.2.3", dir + "/link.crt"]).contains("link.crt: OK"))
        #expect(try openssl(h, base + ["-verify_ip", "fd00::7", dir + "/link.crt"]).contains("link.crt: OK"))
        #expect(!(try openssl(h, base + ["-verify_ip", "10.1.2.4", dir + "/link.crt"]).contains("link.crt: OK")))
        #expect(
            !(try openssl(h, base + ["-verify_hostname", "other.example.net", dir + "/link.crt"]).contains(": OK"))
        )
        // Not a client certificate, and it names no site: `verify` refuses it.
        #expect(throws: SiteAuthority.Failure.self) { try ca.verify(cert) }
        #expect(throws: SiteAuthority.Failure.self) { try ca.issueLinkCertificate(names: []) }
        #expect(throws: SiteAuthority.Failure.self) { try ca.issueLinkCertificate(names: ["a b"]) }
    }
}
