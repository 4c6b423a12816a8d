import Crypto
import FarrierCore
import Foundation
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// Encrypts BMC passwords at rest with AES-256-GCM. The key comes from `FARRIER_BMC_KEY`
/// (base64), from a key file named by configuration, or from `bmc.key` in the data directory,
/// made (0600) on first start. Each sealed password is bound to its machine: the machine ID is
/// the additional authenticated data, so a sealed value copied to another row does not open.
public struct CredentialVault: Sendable {
    let key: SymmetricKey

    public struct KeyError: Error, CustomStringConvertible {
        public var description: String
    }

    public init(key: SymmetricKey) { self.key = key }

    /// Loads the key: environment first, then `keyFile` if given, else `<dataDir>/bmc.key`
    /// (created with a fresh random key when missing).
    public static func load(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        keyFile: String?,
        dataDir: String
    ) throws -> CredentialVault {
        if let text = environment["FARRIER_BMC_KEY"], !text.isEmpty {
            return CredentialVault(key: try decode(text, from: "FARRIER_BMC_KEY"))
        }
        let path = keyFile.flatMap { $0.isEmpty ? nil : $0 } ?? dataDir + "/bmc.key"
        if FileManager.default.fileExists(atPath: path) {
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            if let mode = attributes[.posixPermissions] as? Int, mode & 0o077 != 0 {
                throw KeyError(
                    description:
                        "BMC key file \(path) is readable by others (mode \(String(mode, radix: 8))); chmod 600 it"
                )
            }
            let text = try String(contentsOfFile: path, encoding: .utf8)
            return CredentialVault(key: try decode(text, from: path))
        }
        guard keyFile == nil || keyFile == "" else {
            throw KeyError(description: "BMC key file \(path) does not exist")
        }
        let key = SymmetricKey(size: .bits256)
        let encoded = key.withUnsafeBytes { Data($0).base64EncodedString() } + "\n"
        try FileManager.default.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
        // Created 0600 from the start: never a moment when the key is readable by others.
        do { try SecretFile.create(path, Array(encoded.utf8), exclusive: true) } catch {
            throw KeyError(description: "BMC key file: \(error)")
        }
        return CredentialVault(key: key)
    }

    static func decode(_ text: String, from source: String) throws -> SymmetricKey {
        guard let data = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)), data.count == 32
        else {
            throw KeyError(description: "BMC key from \(source) is not 32 bytes of base64")
        }
        return SymmetricKey(data: data)
    }

    /// A key for another purpose (agent tokens), derived from this one with HKDF, so the
    /// server keeps one secret at rest.
    public func derivedKey(purpose: String) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Data("farrier:\(purpose)".utf8), outputByteCount: 32)
    }

    public func seal(_ password: String, machineID: String) throws -> [UInt8] {
        let box = try AES.GCM.seal(Data(password.utf8), using: key, authenticating: Data(machineID.utf8))
        guard let combined = box.combined else { throw KeyError(description: "AES-GCM produced no combined form") }
        return Array(combined)
    }

    public func open(_ sealed: [UInt8], machineID: String) throws -> String {
        do {
            let box = try AES.GCM.SealedBox(combined: sealed)
            let plain = try AES.GCM.open(box, using: key, authenticating: Data(machineID.utf8))
            return String(decoding: plain, as: UTF8.self)
        } catch {
            throw KeyError(
                description:
                    "the stored BMC password of machine \(machineID) does not decrypt with this key (was the BMC key changed?)"
            )
        }
    }
}

/// Where the control plane gets a machine's BMC driver. `BMCPool` builds the real IPMI and
/// Redfish drivers; tests inject fakes, and a fleet simulator simulated BMCs.
public protocol BMCProvider: Sendable {
    /// The driver for this machine's BMC, opened with its sealed password. `site` is the
    /// machine's site, if it has one: its BMC may be reachable only from there.
    func bmc(
        machineID: String,
        reference: BMCReference,
        sealedPassword: [UInt8],
        site: String?
    ) async throws
        -> any BMC
    /// Drops (and closes) the cached driver of a machine, after it is deleted.
    func forget(machineID: String) async
}

/// Builds a driver for a BMC reference and caches one per machine, so the per-BMC limits (one
/// operation at a time, at most 2 sessions) hold across all API calls.
public actor BMCPool: BMCProvider {
    struct Entry {
        var reference: BMCReference
        /// The sealed password it was opened with, or (`bmc(machineID:reference:password:)`)
        /// the SHA-256 of the password it was given.
        var sealed: [UInt8]
        var bmc: any BMC
        var lastUsed: ContinuousClock.Instant
    }
    var entries: [String: Entry] = [:]
    let vault: CredentialVault?
    /// A driver not handed out for this long is closed (its Redfish session logged out, its
    /// HTTP client shut down) once the pool holds more than `keepIdle`: a fleet's machines use
    /// their BMCs at the start and end of a step, and 10 000 idle clients would hold memory
    /// and sessions for nothing. Far longer than a BMC action takes (each attempt is bounded by
    /// the driver's timeouts, a minute or two); a driver closed under a late user fails that
    /// attempt, which the reconciler retries with a new one.
    let idleLimit: Duration
    let keepIdle: Int
    var lastSweep = ContinuousClock.now

    /// `vault` opens sealed passwords; a pool without one (a site's) takes passwords in the clear.
    public init(vault: CredentialVault?, idleLimit: Duration = .seconds(900), keepIdle: Int = 64) {
        self.vault = vault
        self.idleLimit = idleLimit
        self.keepIdle = keepIdle
    }

    /// The driver for this machine's BMC. The pool reaches every BMC itself, `site` or not:
    /// the region routes a site's machines elsewhere (`SiteRoutedBMCs`).
    public func bmc(
        machineID: String,
        reference: BMCReference,
        sealedPassword: [UInt8],
        site: String? = nil
    ) throws -> any BMC {
        if let bmc = cached(machineID, reference, sealedPassword) { return bmc }
        guard let vault else {
            throw BMCError(.rejected, address: reference.address, "this pool opens no sealed password")
        }
        return store(
            machineID,
            reference,
            sealedPassword,
            password: try vault.open(sealedPassword, machineID: machineID)
        )
    }

    /// The driver for a BMC whose password came in the clear (a site's pool: the region sends
    /// the password with each relayed operation, over the site link).
    public func bmc(machineID: String, reference: BMCReference, password: String) -> any BMC {
        let key = Array(SHA256.hash(data: Data(password.utf8)))
        return cached(machineID, reference, key) ?? store(machineID, reference, key, password: password)
    }

    func cached(_ machineID: String, _ reference: BMCReference, _ key: [UInt8]) -> (any BMC)? {
        let now = ContinuousClock.now
        sweep(now)
        guard var e = entries[machineID], e.reference == reference, e.sealed == key else { return nil }
        e.lastUsed = now
        entries[machineID] = e
        return e.bmc
    }

    func store(_ machineID: String, _ reference: BMCReference, _ key: [UInt8], password: String) -> any BMC {
        if let old = entries.removeValue(forKey: machineID) {
            Task { await old.bmc.close() }
        }
        let bmc = Self.make(reference, password: password)
        entries[machineID] = Entry(reference: reference, sealed: key, bmc: bmc, lastUsed: .now)
        return bmc
    }

    /// Closes drivers idle past `idleLimit`, at most every 10 s, while the pool is over `keepIdle`.
    func sweep(_ now: ContinuousClock.Instant) {
        guard entries.count > keepIdle, now - lastSweep > .seconds(10) else { return }
        lastSweep = now
        let idle = entries.filter { now - $0.value.lastUsed > idleLimit }
        for (id, e) in idle {
            entries.removeValue(forKey: id)
            Task { await e.bmc.close() }
        }
    }

    public static func make(
        _ r: BMCReference,
        password: String,
        timeouts: BMCTimeouts? = nil,
        cipherSuite: UInt8? = nil
    ) -> any BMC {
        switch r.driver {
        case .ipmi:
            return IPMIClient(
                IPMIEndpoint(
                    host: r.host,
                    port: r.port,
                    user: r.user,
                    password: password,
                    cipherSuite: cipherSuite,
                    timeouts: timeouts ?? BMCTimeouts()
                )
            )
        case .redfish:
            // For Redfish, the reference's address is its base URL.
            var endpoint = RedfishEndpoint(
                baseURL: r.address,
                user: r.user,
                password: password,
                system: r.system,
                verifyTLS: !r.insecureTLS
            )
            if let timeouts { endpoint.timeouts = timeouts }
            return RedfishClient(endpoint)
        }
    }

    /// Drops (and closes) the cached driver of a machine, after it is deleted.
    public func forget(machineID: String) async {
        if let e = entries.removeValue(forKey: machineID) { await e.bmc.close() }
    }

    /// Closes every driver, concurrently (each logs its Redfish session out, bounded by 5 s).
    public func closeAll() async {
        let all = entries.values.map(\.bmc)
        entries = [:]
        await withDiscardingTaskGroup { group in
            for b in all { group.addTask { await b.close() } }
        }
    }
}
