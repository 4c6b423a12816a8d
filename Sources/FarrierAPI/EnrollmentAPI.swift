import FarrierBMC
import FarrierControl
import FarrierCore
import Foundation
import GRPCCore
import Logging
import SwiftProtobuf
import Tracing

/// Bulk enrollment and named BMC credentials (issue 18 point 1).
extension MachineAPI {
    /// The most entries one `EnrollMachines` call takes.
    static let maxEnrollEntries = 100_000
    /// The most problems one refused enrollment lists (it says how many there were).
    static let maxListedProblems = 50

    public func enrollMachines(
        request: RPCAsyncSequence<Farrier_V1_EnrollMachinesEntry, any Error>,
        context: ServerContext
    ) async throws -> Farrier_V1_EnrollMachinesResponse {
        _ = try Caller.admin("enrolling machines")
        var entries: [Farrier_V1_EnrollMachinesEntry] = []
        for try await e in request {
            entries.append(e)
            if entries.count > Self.maxEnrollEntries {
                throw RPCError(
                    code: .invalidArgument,
                    message: "at most \(Self.maxEnrollEntries) machines in one enrollment; nothing was enrolled"
                )
            }
        }
        guard let first = entries.first else {
            throw RPCError(code: .invalidArgument, message: "no machines to enroll")
        }
        try Self.checkCommissionTests(
            commission: first.commission,
            tests: first.commissionTests,
            parameters: first.commissionParameters
        )
        // Checked before anything is written; each machine's run gets its own ID.
        let run = try await testRun(tests: first.commissionTests, parameters: first.commissionParameters)
        let batch = try await checkEnrollment(entries)
        let enrolled = try await controller.enroll(batch)
        logger.info("machines enrolled", metadata: ["count": "\(enrolled.count)"])
        // The answer is small whatever the fleet: name, MAC, state and reason of each machine
        // (10 000 whole machines, inventories and all, would pass the client's 4 MiB limit).
        func slim(_ m: Machine, _ reason: String? = nil) -> Farrier_V1_Machine {
            var v = Farrier_V1_Machine()
            v.id = m.id
            v.name = m.name
            v.mac = m.mac.description
            v.state = m.state.rawValue
            v.reason = reason ?? m.reason
            return v
        }
        var response = Farrier_V1_EnrollMachinesResponse()
        for m in enrolled {
            guard first.commission, m.state == .enrolled || m.state == .ready, !Task.isCancelled else {
                response.machines.append(slim(m))
                continue
            }
            // Each its own commit, after the enrollment's: one that cannot start (a machine
            // another caller moved meanwhile) stays as it is, and its reason says why.
            var own = run
            own?.runID = UUID().uuidString.lowercased()
            let opening = Self.opening(own)
            do {
                // A batch's commissions are traces of their own (10 000 steps in one trace would
                // be one sampling decision and a trace no backend shows); one machine's is the call's.
                let commissioned =
                    enrolled.count > 1
                    ? try await InstrumentationContext.$current.withValue(nil) {
                        try await controller.apply(.commission, machineID: m.id, change: opening)
                    }
                    : try await controller.apply(.commission, machineID: m.id, change: opening)
                response.machines.append(slim(commissioned))
            } catch {
                logger.warning("enrolled, not commissioned", metadata: ["machine": "\(m.name)", "error": "\(error)"])
                response.machines.append(slim(m, "enrolled, not commissioned: \(error)"))
            }
        }
        return response
    }

    /// Checks every entry against the others and the fleet, and seals each password to its
    /// machine's ID. Throws one `invalidArgument` listing every problem, each naming its entry's
    /// source, when there is any: then nothing is written.
    func checkEnrollment(_ entries: [Farrier_V1_EnrollMachinesEntry]) async throws -> [Enrollment] {
        let fleet = try await store.machines()
        let byMAC = Dictionary(fleet.map { ($0.mac, $0) }, uniquingKeysWith: { a, _ in a })
        let byName = Dictionary(fleet.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        // Other NICs' MACs already recorded: no entry may claim one as its own.
        var otherOwner: [String: String] = [:]
        for m in fleet { for o in m.otherMACs ?? [] { otherOwner[o] = m.name } }
        var credentials: [String: (BMCCredential, String)?] = [:]
        var sites: [String: Bool] = [:]
        var names: [String: String] = [:]
        var macs: [String: String] = [:]
        var problems: [String] = []
        var batch: [Enrollment] = []
        for (i, e) in entries.enumerated() {
            let source = e.source.isEmpty ? "entry \(i + 1)" : String(e.source.prefix(200))
            var mine: [String] = []
            func bad(_ p: String) { mine.append("\(source) (\(e.name.isEmpty ? "no name" : e.name)): \(p)") }
            defer { problems += mine }
            if let p = Machine.nameProblem(e.name) { bad(p) }
            if let other = names[e.name] { bad("name '\(e.name)' is also given by \(other)") }
            names[e.name] = names[e.name] ?? source
            // MACs: at least one, each a MAC, none given twice, none another machine's.
            var parsed: [MACAddress] = []
            if e.macs.isEmpty { bad("a mac is required") }
            for text in e.macs {
                guard let mac = MACAddress(text) else {
                    bad("mac '\(text)' is not a MAC address (like 52:54:00:12:34:56)")
                    continue
                }
                if let other = macs[mac.description] {
                    bad("mac \(mac) is also given by \(other)")
                } else if let owner = otherOwner[mac.description], owner != e.name {
                    bad("mac \(mac) is a NIC of machine \(owner)")
                } else if !parsed.isEmpty, let owner = byMAC[mac], owner.name != e.name {
                    bad("mac \(mac) is the boot MAC of machine \(owner.name)")
                }
                macs[mac.description] = source
                parsed.append(mac)
            }
            if let boot = parsed.first, let named = byName[e.name], named.mac != boot {
                bad("name '\(e.name)' is already used by the machine with MAC \(named.mac)")
            }
            // A machine in a step keeps its BMC and placement until the step ends.
            if let boot = parsed.first, let known = byMAC[boot], Lifecycle.steps.contains(known.state) {
                bad("machine \(known.name) is \(known.state.rawValue); enroll it again once the step ends")
            }
            // The BMC: a URL, and a password or a named credential (not both).
            var password: String?
            var credentialName: String?
            var url = e.bmcURL
            switch (e.bmcPassword.isEmpty, e.bmcCredential.isEmpty) {
            case (true, true): bad("a bmc-password-file or a bmc-credential is required")
            case (false, false): bad("give a bmc-password-file or a bmc-credential, not both")
            case (false, true): password = e.bmcPassword
            case (true, false):
                if credentials[e.bmcCredential] == nil {
                    credentials[e.bmcCredential] = try await openCredential(e.bmcCredential)
                }
                if let (c, secret) = credentials[e.bmcCredential] ?? nil {
                    credentialName = c.name
                    password = secret
                    switch Self.url(e.bmcURL, credential: c) {
                    case .success(let u): url = u
                    case .failure(let p): bad(p.description)
                    }
                } else {
                    bad("no BMC credential named '\(e.bmcCredential)' (farrier bmc credential list)")
                }
            }
            // (With an unknown credential the URL's missing user is no problem of its own.)
            var reference: BMCReference?
            if e.bmcCredential.isEmpty || credentialName != nil {
                do { reference = try BMCReference(url: url, insecureTLS: e.bmcInsecureTls) } catch {
                    bad(error.description)
                }
            }
            // Placement: zone, rack, tags; the site must exist.
            for (field, value) in [("zone", e.zone), ("rack", e.rack)] where value.count > Validation.maxFieldLength {
                bad("\(field) is longer than \(Validation.maxFieldLength) characters")
            }
            if e.tags.count > Validation.maxTags { bad("at most \(Validation.maxTags) tags") }
            for (k, v) in e.tags.sorted(by: { $0.key < $1.key }) {
                if let p = Validation.tagProblem(key: k, value: v) { bad(p) }
            }
            if !e.site.isEmpty {
                if sites[e.site] == nil { sites[e.site] = try await store.site(name: e.site) != nil }
                if sites[e.site] != true { bad("no site named '\(e.site)' (farrier site list)") }
            }
            guard mine.isEmpty, let boot = parsed.first, let reference, let password else { continue }
            // The password is sealed to the machine's ID: the existing one for a known MAC.
            let id = byMAC[boot]?.id ?? UUID().uuidString.lowercased()
            batch.append(
                Enrollment(
                    id: id,
                    name: e.name,
                    mac: boot,
                    otherMACs: parsed.dropFirst().map(\.description),
                    bmc: reference,
                    sealedPassword: try vault.seal(password, machineID: id),
                    credential: credentialName,
                    credentialSecret: credentialName.flatMap { credentials[$0]??.0.sealedPassword },
                    zone: e.zone,
                    rack: e.rack,
                    tags: e.tags,
                    site: e.site.isEmpty ? nil : e.site
                )
            )
        }
        if !problems.isEmpty {
            let listed = problems.prefix(Self.maxListedProblems).joined(separator: "\n")
            let more =
                problems.count > Self.maxListedProblems ? "\n… and \(problems.count - Self.maxListedProblems) more" : ""
            throw RPCError(
                code: .invalidArgument,
                message:
                    "nothing was enrolled: \(problems.count) problem\(problems.count == 1 ? "" : "s") in \(entries.count) machines\n\(listed)\(more)"
            )
        }
        return batch
    }

    /// A credential and its password, or nil when there is none by that name.
    func openCredential(_ name: String) async throws -> (BMCCredential, String)? {
        guard let c = try await store.bmcCredential(name: name) else { return nil }
        return (c, try vault.open(c.sealedPassword, machineID: BMCCredential.sealingContext(c.name)))
    }

    /// A BMC URL used with credential `c`: as given when it names the credential's user, with
    /// that user put in when it names none (`ipmi://HOST`); any other user (or a password,
    /// never echoed) is a problem. Single and bulk enrollment both ask this.
    static func url(_ url: String, credential c: BMCCredential) -> Result<String, InputProblem> {
        guard let scheme = url.range(of: "://") else { return .success(url) }
        let authority = url[scheme.upperBound...].prefix { $0 != "/" }
        guard let at = authority.lastIndex(of: "@") else {
            let encoded = c.user.addingPercentEncoding(withAllowedCharacters: .urlUserAllowed) ?? c.user
            return .success(String(url[..<scheme.upperBound]) + encoded + "@" + url[scheme.upperBound...])
        }
        let raw = String(authority[..<at])
        let user = raw.removingPercentEncoding ?? raw
        if user == c.user { return .success(url) }
        if user.contains(":") {
            return .failure(InputProblem("BMC URL must not contain a password; the credential holds it"))
        }
        return .failure(
            InputProblem("the BMC URL's user '\(user)' is not credential \(c.name)'s ('\(c.user)'); leave it out")
        )
    }

    public func addBMCCredential(
        request: Farrier_V1_AddBMCCredentialRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_BMCCredential {
        let caller = try Caller.admin("managing BMC credentials")
        if let p = BMCCredential.nameProblem(request.name) { throw RPCError(code: .invalidArgument, message: p) }
        guard !request.user.isEmpty, request.user.count <= 64,
            !request.user.contains(where: { $0 == ":" || $0 == "@" || $0 == "/" || $0.isNewline })
        else {
            throw RPCError(
                code: .invalidArgument,
                message: "a BMC user is required: at most 64 characters, without ':', '@', '/' or line breaks"
            )
        }
        guard !request.password.isEmpty, request.password.utf8.count <= 1024 else {
            throw RPCError(code: .invalidArgument, message: "a password is required (at most 1024 bytes)")
        }
        let credential = BMCCredential(
            name: request.name,
            user: request.user,
            sealedPassword: try vault.seal(request.password, machineID: BMCCredential.sealingContext(request.name)),
            created: Date()
        )
        if request.replace {
            // Every machine using it gets the new password, sealed to its own ID, in the same
            // transaction; its cached BMC session is dropped so the next call uses the new one.
            let users = try await store.machines(usingCredential: request.name)
            var secrets: [String: [UInt8]] = [:]
            for id in users { secrets[id] = try vault.seal(request.password, machineID: id) }
            try await store.replaceBMCCredential(credential, machineSecrets: secrets)
            logger.info(
                "BMC credential replaced",
                metadata: ["credential": "\(request.name)", "machines": "\(users.count)", "by": "\(caller.tokenName)"]
            )
        } else {
            try await store.addBMCCredential(credential)
            logger.info(
                "BMC credential added",
                metadata: ["credential": "\(request.name)", "by": "\(caller.tokenName)"]
            )
        }
        let stored = try await store.bmcCredentials().first { $0.name == request.name } ?? credential
        return Farrier_V1_BMCCredential(stored)
    }

    public func listBMCCredentials(
        request: Farrier_V1_ListBMCCredentialsRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_ListBMCCredentialsResponse {
        _ = try Caller.admin("managing BMC credentials")
        var response = Farrier_V1_ListBMCCredentialsResponse()
        response.credentials = try await store.bmcCredentials().map(Farrier_V1_BMCCredential.init)
        return response
    }

    public func removeBMCCredential(
        request: Farrier_V1_RemoveBMCCredentialRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_RemoveBMCCredentialResponse {
        let caller = try Caller.admin("managing BMC credentials")
        guard try await store.removeBMCCredential(name: request.name) else {
            throw RPCError(code: .notFound, message: "no BMC credential named '\(request.name)'")
        }
        logger.info("BMC credential removed", metadata: ["credential": "\(request.name)", "by": "\(caller.tokenName)"])
        return Farrier_V1_RemoveBMCCredentialResponse()
    }
}

extension Farrier_V1_BMCCredential {
    init(_ c: BMCCredential) {
        self.init()
        name = c.name
        user = c.user
        created = Google_Protobuf_Timestamp(date: c.created)
        machines = Int32(clamping: c.machines)
    }
}
