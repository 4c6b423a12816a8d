import Crypto
import Foundation
import SwiftASN1
import SystemSupport
import WireSupport
import X509

/// The region's certificate authority for its sites (issue 16).
///
/// A site proves who it is to the region with a certificate this authority signed, over mutual
/// TLS. A site joins with a one-time token an admin made (`farrier site add NAME`): it makes its
/// own P-256 key, which never leaves it, and sends a certificate signing request; the region
/// checks the token and signs. The certificate names the site twice: its subject's common name,
/// and a `farrier-site:NAME` URI in its subject alternative names, which is what `verify` reads.
///
/// The CA is made once, in DATA-DIR (`site-ca.crt`, and `site-ca.key` mode 0600); callers hold
/// the data directory's keys lock, so replicas sharing it make one. Revocation is the region's
/// sites table (each site's current serial), checked after `verify`.
public struct SiteAuthority: Sendable {
    public let certificate: Certificate
    let key: P256.Signing.PrivateKey

    public struct Failure: Error, CustomStringConvertible, Equatable {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// A site's identity as its certificate states it.
    public struct SiteIdentity: Sendable, Equatable {
        public let site: String
        /// Lowercase hex of the certificate's serial number.
        public let serial: String
        public let notAfter: Date
    }

    static let uriPrefix = "farrier-site:"

    /// A site name: 1 to 63 of a-z, 0-9 and '-', starting with a letter or digit (a DNS label).
    public static func validName(_ name: String) -> Bool {
        guard let first = name.utf8.first, name.utf8.count <= 63 else { return false }
        let ok = { (c: UInt8) in (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) }
        return ok(first) && name.utf8.allSatisfy { ok($0) || $0 == 0x2d }
    }

    /// The CA in `dataDir`, made there first if missing.
    public static func loadOrMake(dataDir: String, now: Date = Date()) throws -> SiteAuthority {
        let certPath = dataDir + "/site-ca.crt"
        let keyPath = dataDir + "/site-ca.key"
        let fm = FileManager.default
        let (haveCert, haveKey) = (fm.fileExists(atPath: certPath), fm.fileExists(atPath: keyPath))
        // One without the other (a partial restore) is an error, never a new CA: a new one
        // would silently disown every site that has joined.
        guard haveCert == haveKey else {
            throw Failure(
                "\(haveCert ? keyPath : certPath) is missing but \(haveCert ? certPath : keyPath) is there: restore both, or remove both to make a new site CA (every site must then join again)"
            )
        }
        if !haveCert {
            let made = try make(now: now)
            // The key first, created 0600, so no moment exists where it is readable by others.
            try SecretFile.replace(keyPath, Array((made.key.pemRepresentation + "\n").utf8), mode: 0o600)
            try SecretFile.replace(
                certPath,
                Array((try made.certificate.serializeAsPEM().pemString + "\n").utf8),
                mode: 0o644
            )
            return made
        }
        let key = try P256.Signing.PrivateKey(pemRepresentation: String(contentsOfFile: keyPath, encoding: .utf8))
        let certificate = try Certificate(pemEncoded: String(contentsOfFile: certPath, encoding: .utf8))
        guard certificate.publicKey == Certificate.PublicKey(key.publicKey) else {
            throw Failure("\(certPath) and \(keyPath) do not belong together")
        }
        return SiteAuthority(certificate: certificate, key: key)
    }

    static func make(now: Date) throws -> SiteAuthority {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName { CommonName("Farrier site CA") }
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(20 * 365 * 86400),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: .init(key)
        )
        return SiteAuthority(certificate: certificate, key: key)
    }

    /// Signs the certificate of site `site` from its CSR (PEM). The CSR must be signed by the
    /// key it carries (the site holds that key), be a P-256 key, and name the site as its
    /// common name. The certificate is valid from an hour ago for `validity` seconds, for
    /// client and server authentication (the site serves its machines with it too).
    public func issue(
        csrPEM: String,
        site: String,
        now: Date = Date(),
        validity: TimeInterval = 365 * 86400
    )
        throws -> Certificate
    {
        guard Self.validName(site) else { throw Failure("\(site.prefix(80)) is not a site name") }
        let csr: CertificateSigningRequest
        do { csr = try CertificateSigningRequest(pemEncoded: csrPEM) } catch {
            throw Failure("not a PEM certificate signing request (\(error))")
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw Failure("the signing request's signature does not match its key")
        }
        guard P256.Signing.PublicKey(csr.publicKey) != nil else {
            throw Failure("the signing request's key is not a P-256 key")
        }
        let names = Self.commonNames(csr.subject)
        guard names == [site] else {
            throw Failure("the signing request names \(names) as its common name, not \(site)")
        }
        return try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: csr.publicKey,
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(validity),
            issuer: certificate.subject,
            subject: try DistinguishedName { CommonName(site) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.clientAuth, .serverAuth])
                SubjectAlternativeNames([.uniformResourceIdentifier(Self.uriPrefix + site)])
            },
            issuerPrivateKey: .init(key)
        )
    }

    /// The region's side of the site link: a fresh key and a certificate for it, signed by this
    /// CA (the key as PEM), for server authentication under `names` (DNS names or IPv4/IPv6 literals), the names
    /// sites dial the region by. Sites trust it through the CA they got when they joined.
    public func issueLinkCertificate(
        names: [String],
        now: Date = Date(),
        validity: TimeInterval = 365 * 86400
    ) throws -> (certificate: Certificate, keyPEM: String) {
        guard !names.isEmpty else { throw Failure("the site link's certificate needs at least one name") }
        let sans: [GeneralName] = try names.map { name in
            if let bytes = Self.ipAddressBytes(name) { return .ipAddress(ASN1OctetString(contentBytes: bytes[...])) }
            guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") }) else {
                throw Failure("'\(name.prefix(80))' is neither a host name nor an IP address")
            }
            return .dnsName(name)
        }
        let key = P256.Signing.PrivateKey()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(validity),
            issuer: certificate.subject,
            subject: try DistinguishedName { CommonName("Farrier region (site link)") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(sans)
            },
            issuerPrivateKey: .init(self.key)
        )
        return (certificate, key.pemRepresentation)
    }

    /// The bytes of an IPv4 or IPv6 literal; nil for anything else.
    static func ipAddressBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    /// The site a certificate presented to the region belongs to: signed by this CA, within its
    /// validity at `now`, for client authentication, naming one site. Whether that site still
    /// exists with that serial (not removed, not re-joined since) is the caller's check.
    public func verify(_ leaf: Certificate, now: Date = Date()) throws -> SiteIdentity {
        guard leaf.issuer == certificate.subject,
            certificate.publicKey.isValidSignature(leaf.signature, for: leaf)
        else {
            throw Failure("the certificate was not issued by this region's site CA")
        }
        guard leaf.notValidBefore <= now, now <= leaf.notValidAfter else {
            throw Failure("the certificate is not valid now (\(leaf.notValidBefore) to \(leaf.notValidAfter))")
        }
        guard let eku = try? leaf.extensions.extendedKeyUsage, eku.contains(.clientAuth) else {
            throw Failure("the certificate is not for client authentication")
        }
        let sites = Self.siteNames(leaf)
        guard sites.count == 1, let site = sites.first, Self.validName(site) else {
            throw Failure("the certificate does not name one site (\(sites))")
        }
        return SiteIdentity(site: site, serial: Self.hex(leaf.serialNumber), notAfter: leaf.notValidAfter)
    }

    /// The site's check of what a join answered, besides the CA's pin: the certificate is
    /// signed by that CA, names `site` alone, and is for the site's own key (`keyPEM`). A
    /// certificate for another key means someone else joined with the token (it was read on
    /// the way): that identity is theirs, and the site must be removed at the region.
    public static func checkJoinAnswer(certificatePEM: String, caPEM: String, keyPEM: String, site: String) throws {
        let ca: Certificate
        let leaf: Certificate
        do {
            ca = try Certificate(pemEncoded: caPEM)
            leaf = try Certificate(pemEncoded: certificatePEM)
        } catch { throw Failure("the answer is not a PEM certificate and CA (\(error))") }
        guard leaf.issuer == ca.subject, ca.publicKey.isValidSignature(leaf.signature, for: leaf) else {
            throw Failure("the certificate was not issued by the pinned CA")
        }
        guard siteNames(leaf) == [site] else {
            throw Failure("the certificate names \(siteNames(leaf)), not \(site)")
        }
        let key: P256.Signing.PrivateKey
        do { key = try P256.Signing.PrivateKey(pemRepresentation: keyPEM) } catch {
            throw Failure("the site's key is not a P-256 private key in PEM (\(error))")
        }
        guard leaf.publicKey == Certificate.PublicKey(key.publicKey) else {
            throw Failure("the certificate is for another key than this site's")
        }
    }

    /// The sites a certificate names: its `farrier-site:NAME` subject alternative names.
    public static func siteNames(_ certificate: Certificate) -> [String] {
        (try? certificate.extensions.subjectAlternativeNames)?.compactMap { name -> String? in
            guard case .uniformResourceIdentifier(let uri) = name, uri.hasPrefix(uriPrefix) else { return nil }
            return String(uri.dropFirst(uriPrefix.count))
        } ?? []
    }

    /// The SHA-256 of this CA's certificate (DER), in lowercase hex: the pin a join token
    /// carries (`joinToken(secret:)`), so that a joining site tells the region's CA from one put
    /// in its way.
    public func pin() throws -> String { try Self.pin(pem: certificate.serializeAsPEM().pemString) }

    /// The pin of the certificate in `pem`.
    public static func pin(pem: String) throws -> String {
        let der = try PEMDocument(pemString: pem).derBytes
        return SHA256.hash(data: der).hexString
    }

    /// A join token as `site add` prints it: the secret, a '.', and this CA's pin (as kubeadm's
    /// token and CA certificate hash, in one string the operator copies).
    public func joinToken(secret: String) throws -> String { secret + "." + (try pin()) }

    /// A join token's secret: what the region keeps the SHA-256 of and checks (the token
    /// without its pin).
    public static func joinTokenSecret(_ token: String) -> String {
        guard joinTokenPin(token) != nil, let dot = token.lastIndex(of: ".") else { return token }
        return String(token[..<dot])
    }

    /// The region CA pin in a join token (after its last '.'), or nil if it carries none.
    public static func joinTokenPin(_ token: String) -> String? {
        guard let dot = token.lastIndex(of: ".") else { return nil }
        let pin = token[token.index(after: dot)...]
        guard pin.count == 64, pin.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else { return nil }
        return String(pin)
    }

    /// A certificate's serial as the sites table and `verify` name it: lowercase hex.
    public static func hex(_ serial: Certificate.SerialNumber) -> String {
        serial.bytes.hexString
    }

    public static func commonNames(_ name: DistinguishedName) -> [String] {
        name.flatMap { rdn in
            rdn.compactMap { $0.type == .RDNAttributeType.commonName ? String($0.value) : nil }
        }
    }

    /// The site's side of joining: a fresh P-256 key (PEM, to keep 0600) and a signing request
    /// for it naming `site`.
    public static func makeKeyAndRequest(site: String) throws -> (keyPEM: String, csrPEM: String) {
        let keyPEM = makeKey()
        return (keyPEM, try makeRequest(site: site, keyPEM: keyPEM))
    }

    /// Whether `keyPEM` is a P-256 private key.
    public static func validKey(_ keyPEM: String) -> Bool {
        (try? P256.Signing.PrivateKey(pemRepresentation: keyPEM)) != nil
    }

    /// A fresh P-256 key, PEM.
    public static func makeKey() -> String { P256.Signing.PrivateKey().pemRepresentation }

    /// A signing request naming `site` for the key in `keyPEM`.
    public static func makeRequest(site: String, keyPEM: String) throws -> String {
        guard validName(site) else { throw Failure("\(site.prefix(80)) is not a site name") }
        let key: P256.Signing.PrivateKey
        do { key = try P256.Signing.PrivateKey(pemRepresentation: keyPEM) } catch {
            throw Failure("not a P-256 private key in PEM (\(error))")
        }
        let csr = try CertificateSigningRequest(
            version: .v1,
            subject: try DistinguishedName { CommonName(site) },
            privateKey: .init(key),
            attributes: .init(),
            signatureAlgorithm: .ecdsaWithSHA256
        )
        return try csr.serializeAsPEM().pemString
    }
}
