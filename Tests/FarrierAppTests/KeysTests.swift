import Crypto
import FarrierBMC
import FarrierHTTP
import FarrierSite
import Foundation
import SwiftASN1
import Synchronization
import Testing
import X509

@testable import FarrierApp

/// Replicas that share a data directory and start at the same instant make its keys once: every
/// one of them gets the same BMC key and the same agent channel identity, whose private key is
/// the certificate's.
@Suite struct KeysTests {
    @Test func replicasStartingTogetherMakeOneSetOfKeys() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farrier-keys-\(UUID())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = {
            var c = ServerConfiguration()
            c.dataDir = dir
            return c
        }()
        let starts = 8
        let loaded = Mutex<[Result<(CredentialVault, String, String, String, Certificate), any Error>]>([])
        DispatchQueue.concurrentPerform(iterations: starts) { _ in
            let r = Result {
                let (vault, tls, sites) = try FarrierServer.loadKeys(c)
                return (vault, tls.fingerprint, tls.certificateChainPEM, tls.privateKeyPEM, sites.certificate)
            }
            loaded.withLock { $0.append(r) }
        }
        let results = try loaded.withLock { try $0.map { try $0.get() } }
        #expect(results.count == starts)
        #expect(Set(results.map(\.1)).count == 1, "fingerprints: \(Set(results.map(\.1)))")
        #expect(Set(results.map(\.4)).count == 1, "site CAs: \(Set(results.map(\.4)).count)")
        let sealed = try results[0].0.seal("bmc password", machineID: "m-1")
        for (vault, _, chain, keyPEM, _) in results {
            #expect(try vault.open(sealed, machineID: "m-1") == "bmc password")
            let key = try P256.Signing.PrivateKey(pemRepresentation: keyPEM)
            #expect(try Certificate(pemEncoded: chain).publicKey == Certificate.PublicKey(key.publicKey))
        }
        // Nothing half-made is left beside the keys; the lock file stays (removing it would let
        // two holders lock two files).
        let names = Set(try FileManager.default.contentsOfDirectory(atPath: dir))
        #expect(
            names == ["bmc.key", "agent-tls.crt", "agent-tls.key", "site-ca.crt", "site-ca.key", "keys.lock"],
            "\(names)"
        )
    }
}
