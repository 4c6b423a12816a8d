import Crypto
import FarrierCore
import FarrierHTTP
import Foundation
import SwiftASN1
import SystemSupport
import WireSupport
import X509

/// The agent channel's TLS identity. Given as `agent.tls-cert` and `agent.tls-key` (PEM), or
/// made at first start: a self-signed P-256 certificate in DATA-DIR (`agent-tls.crt`, and
/// `agent-tls.key` mode 0600), kept across restarts so a ramdisk booted before a restart still
/// pins the right certificate. The agent pins the leaf's SHA-256, which the boot script carries.
enum AgentCertificate {
    static func load(
        certificate: String,
        key: String,
        dataDir: String,
        port: Int,
        now: Date = Date()
    ) throws -> AgentTLS {
        var certPath = certificate
        var keyPath = key
        if certPath.isEmpty {
            certPath = dataDir + "/agent-tls.crt"
            keyPath = dataDir + "/agent-tls.key"
            if !FileManager.default.fileExists(atPath: certPath) || !FileManager.default.fileExists(atPath: keyPath) {
                try make(certificatePath: certPath, keyPath: keyPath, now: now)
            }
        }
        let chain = try String(contentsOfFile: certPath, encoding: .utf8)
        let keyPEM = try String(contentsOfFile: keyPath, encoding: .utf8)
        // The leaf is the chain's first certificate.
        let first = chain.range(of: "-----END CERTIFICATE-----").map { String(chain[..<$0.upperBound]) } ?? chain
        let leaf: Certificate
        do { leaf = try Certificate(pemEncoded: first) } catch {
            throw ConfigurationError("agent TLS certificate \(certPath): not a PEM certificate (\(error))")
        }
        return AgentTLS(
            certificateChainPEM: chain,
            privateKeyPEM: keyPEM,
            fingerprint: try fingerprint(leaf),
            port: port
        )
    }

    /// SHA-256 of the certificate's DER encoding, lowercase hex (what `openssl x509 -fingerprint -sha256` shows).
    static func fingerprint(_ certificate: Certificate) throws -> String {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return SHA256.hash(data: serializer.serializedBytes).hexString
    }

    static func make(certificatePath: String, keyPath: String, now: Date) throws {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName { CommonName("Farrier agent channel") }
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
                Critical(BasicConstraints.notCertificateAuthority)
                SubjectAlternativeNames([.dnsName("farrier-agent-channel")])
            },
            issuerPrivateKey: .init(key)
        )
        // The key first, created 0600, so no moment exists where it is readable by others.
        try writeFile(keyPath, key.pemRepresentation + "\n", mode: 0o600)
        try writeFile(certificatePath, try certificate.serializeAsPEM().pemString + "\n", mode: 0o644)
    }

    static func writeFile(_ path: String, _ text: String, mode: mode_t) throws {
        do { try SecretFile.replace(path, Array(text.utf8), mode: mode) } catch {
            throw ConfigurationError(error.description)
        }
    }
}
