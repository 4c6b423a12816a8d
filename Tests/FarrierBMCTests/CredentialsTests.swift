import FarrierBMC
import FarrierCore
import Foundation
import Testing

@Suite struct BMCReferenceTests {
    @Test func parsesTheThreeSchemes() throws {
        let i = try BMCReference(url: "ipmi://admin@198.18.0.11")
        #expect(i.driver == .ipmi && i.host == "198.18.0.11" && i.port == 623 && i.user == "admin")
        #expect(i.url == "ipmi://admin@198.18.0.11:623" && i.address == "198.18.0.11:623")
        let r = try BMCReference(url: "redfish://root@bmc1.example:8443/System.Embedded.1")
        #expect(r.driver == .redfish && r.tls && r.port == 8443 && r.system == "System.Embedded.1")
        #expect(r.address == "https://bmc1.example:8443")
        let h = try BMCReference(url: "redfish+http://u@[fd00::5]")
        #expect(!h.tls && h.host == "fd00::5" && h.port == 80 && h.url == "redfish+http://u@[fd00::5]:80")
    }

    static let bad: [(String, String)] = [
        ("198.18.0.11", "no scheme"),
        ("telnet://a@b", "unknown BMC scheme"),
        ("ipmi://198.18.0.11", "names no user"),
        ("ipmi://admin:secret@198.18.0.11", "must not contain a password"),
        ("ipmi://admin@198.18.0.11:99999", "bad port"),
        ("ipmi://admin@host/System.1", "takes no path"),
    ]

    @Test func refusesWithAPreciseMessage() {
        for (url, message) in Self.bad {
            #expect {
                _ = try BMCReference(url: url)
            } throws: { error in
                "\(error)".contains(message)
            }
        }
    }
}

@Suite struct CredentialVaultTests {
    func tempDir() throws -> String {
        let d = NSTemporaryDirectory() + "farrier-vault-\(UInt32.random(in: 0..<UInt32.max))"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    @Test func sealsToTheMachineAndHidesThePassword() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let vault = try CredentialVault.load(environment: [:], keyFile: nil, dataDir: dir)
        let sealed = try vault.seal("hunter2-very-secret", machineID: "m1")
        #expect(!String(decoding: sealed, as: UTF8.self).contains("hunter2"))
        #expect(try vault.open(sealed, machineID: "m1") == "hunter2-very-secret")
        // Bound to its machine: the same bytes do not open for another.
        #expect(throws: CredentialVault.KeyError.self) { try vault.open(sealed, machineID: "m2") }
        // The key file was made 0600, and the same key loads again.
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/bmc.key")[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let again = try CredentialVault.load(environment: [:], keyFile: nil, dataDir: dir)
        #expect(try again.open(sealed, machineID: "m1") == "hunter2-very-secret")
        // Another key (from the environment) cannot open it.
        let other = try CredentialVault.load(
            environment: ["FARRIER_BMC_KEY": Data((0..<32).map { UInt8($0) }).base64EncodedString()],
            keyFile: nil,
            dataDir: dir
        )
        #expect(throws: CredentialVault.KeyError.self) { try other.open(sealed, machineID: "m1") }
    }

    @Test func refusesAKeyOthersCanRead() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/key"
        try (Data((0..<32).map { UInt8($0) }).base64EncodedString() + "\n").write(
            toFile: path,
            atomically: true,
            encoding: .utf8
        )
        chmod(path, 0o644)
        #expect {
            _ = try CredentialVault.load(environment: [:], keyFile: path, dataDir: dir)
        } throws: { "\($0)".contains("chmod 600") }
        chmod(path, 0o600)
        _ = try CredentialVault.load(environment: [:], keyFile: path, dataDir: dir)
        #expect {
            _ = try CredentialVault.load(environment: ["FARRIER_BMC_KEY": "short"], keyFile: nil, dataDir: dir)
        } throws: { "\($0)".contains("not 32 bytes") }
    }
}
