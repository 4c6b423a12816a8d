import Foundation

/// Machine records and their boot timelines. SQLite implements it now; PostgreSQL later.
///
/// The control plane's stores (machines, projects and tokens, images) are async: a gRPC
/// handler, an HTTP route or the reconciler awaits the database and never blocks a thread of
/// the cooperative pool or an event loop on a write. `LeaseStore` stays synchronous: the DHCP
/// socket threads own their threads and group-commit leases on them.
public protocol MachineStore: Sendable {
    /// Updates `lastSeen` (and the platform, when it was unknown) of the machine with this MAC
    /// and returns it. A MAC no machine has becomes a `discovered` machine only when `create`
    /// is given and fewer than `create` machines are `discovered`; otherwise nothing is written
    /// and the result is nil (what unauthenticated traffic can create is bounded).
    func recordSighting(mac: MACAddress, platform: ClientPlatform, at: Date, create: Int?) async throws -> Machine?
    /// Deletes `discovered` machines (never enrolled: no BMC, no project) last seen before
    /// `before`, with their timelines. Returns their MACs.
    func pruneDiscovered(lastSeenBefore before: Date) async throws -> [MACAddress]
    func machine(mac: MACAddress) async throws -> Machine?
    func machine(id: String) async throws -> Machine?
    func machine(name: String) async throws -> Machine?
    func machines() async throws -> [Machine]
    /// The machines `query` selects, ordered by name, filtered in the database: the API's
    /// pages and the reconciler's scan read only what they need, not the whole fleet.
    func machines(_ query: MachineQuery) async throws -> [Machine]
    /// Every machine in a lifecycle step (`Lifecycle.steps`), as the reconciler's scan reads it.
    func machineSteps() async throws -> [MachineStep]
    /// How many machines there are in each state, site, zone and project: one grouped query,
    /// for the metrics.
    func machineCounts() async throws -> [MachineCount]
    /// Enrolls a machine with its BMC: the machine with this MAC is renamed, gets the BMC and
    /// goes from `discovered` to `enrolled`; or a new `enrolled` machine is made. `sealedPassword` is stored as given (already encrypted).
    /// Throws `StoreError.Code.alreadyExists` when the name belongs to a machine with another MAC.
    /// `credential` names the BMC credential the password was copied from (nil: its own).
    func enroll(
        name: String,
        mac: MACAddress,
        bmc: BMCReference,
        sealedPassword: [UInt8],
        credential: String?,
        at: Date
    ) async throws -> Machine
    /// Enrolls every machine of `batch` in one transaction, or none: as `enroll` does for one
    /// (a machine already known by its MAC keeps its ID, which must be the entry's, and is
    /// renamed; others are made with the entry's ID), with zone, rack, tags, other MACs, named
    /// credential and site (an entry with no site keeps the machine's). Refuses the batch with
    /// `.inUse` when a named credential's password is no longer `credentialSecret` (replaced
    /// meanwhile) or a machine is in a step. Throws `StoreError.Code.alreadyExists` when a name belongs to a machine
    /// with another MAC, and `.inUse` when a MAC's machine is not the one the entry's ID names
    /// (it was made or deleted meanwhile: check and send the batch again).
    func enroll(_ batch: [Enrollment], at: Date) async throws -> [Machine]
    /// The encrypted BMC password of a machine, as `enroll` stored it.
    func sealedBMCPassword(machineID: String) async throws -> [UInt8]?
    /// Reads the machine, lets `body` change it, and writes it back with the events `body`
    /// returns, in one transaction: this is the commit of a lifecycle transition. When `body`
    /// throws, nothing is written and the error propagates. Returns the machine as written.
    ///
    /// With a `fence`, the commit happens only while that claim on the machine is held (see
    /// `WorkClaimStore`); otherwise it throws `StoreError.Code.fenced` and writes nothing.
    func update(
        machineID: String,
        fence: WorkClaim?,
        _ body: @escaping @Sendable (inout Machine) throws -> [MachineEvent]
    ) async throws -> Machine
    /// Like `update`, with `running`: how many machines are in each step past `queued` (and not
    /// waiting for their OS, phase `os`), counted
    /// in the same transaction under a lock that every such update takes, so two replicas
    /// admitting at once cannot both take the last slot of a cap.
    func updateCounting(
        machineID: String,
        fence: WorkClaim?,
        _ body: @escaping @Sendable (inout Machine, _ running: [MachineState: Int]) throws -> [MachineEvent]
    ) async throws -> Machine
    /// Picks the first pool machine (`ready`, in no project) that `accept` takes, smallest
    /// first (fewest cores, then least memory, then name: big machines stay free for big
    /// requests), and updates it with `body`, in one transaction, so two concurrent allocations never get the
    /// same machine. Reads the pool in batches in that order (the database sorts it), so an
    /// allocation costs a batch, not the fleet. Nil when `accept` takes none.
    func allocate(
        _ accept: @escaping @Sendable (Machine) -> Bool,
        _ body: @escaping @Sendable (inout Machine) throws -> [MachineEvent]
    ) async throws -> Machine?
    /// Removes a machine with its timeline and events.
    func deleteMachine(id: String) async throws
    /// Events with an id above `after`, oldest first; of one machine, or of all when nil.
    func events(after: Int64, machineID: String?, limit: Int) async throws -> [MachineEvent]
    /// The id of the newest event, of one machine or of all when nil; 0 when there is none.
    func lastEventID(machineID: String?) async throws -> Int64
    func appendTimeline(_ events: [TimelineEvent]) async throws
    /// The most recent `limit` events of a machine, oldest first.
    func timeline(mac: MACAddress, limit: Int) async throws -> [TimelineEvent]
}

/// One machine of a bulk enrollment (`MachineStore.enroll(_:at:)`), checked by the caller.
public struct Enrollment: Sendable, Hashable {
    /// The machine's ID: the existing one for a MAC already known, else a new one. The password
    /// is sealed to it.
    public var id: String
    public var name: String
    public var mac: MACAddress
    public var otherMACs: [String]
    public var bmc: BMCReference
    public var sealedPassword: [UInt8]
    public var credential: String?
    /// The credential's sealed password as it was when this entry's copy was made: the store
    /// refuses the batch if the credential was replaced meanwhile.
    public var credentialSecret: [UInt8]?
    public var zone: String
    public var rack: String
    public var tags: [String: String]
    public var site: String?

    public init(
        id: String,
        name: String,
        mac: MACAddress,
        otherMACs: [String] = [],
        bmc: BMCReference,
        sealedPassword: [UInt8],
        credential: String? = nil,
        credentialSecret: [UInt8]? = nil,
        zone: String = "",
        rack: String = "",
        tags: [String: String] = [:],
        site: String? = nil
    ) {
        self.id = id
        self.name = name
        self.mac = mac
        self.otherMACs = otherMACs
        self.bmc = bmc
        self.sealedPassword = sealedPassword
        self.credential = credential
        self.credentialSecret = credentialSecret
        self.zone = zone
        self.rack = rack
        self.tags = tags
        self.site = site
    }
}

extension Enrollment {
    /// Refuses the entry when the named credential's password is no longer `credentialSecret`
    /// (`current` is its sealed password now, nil when it is gone).
    public func checkCredential(current: [UInt8]?) throws {
        guard let c = credential else { return }
        guard let current, current == credentialSecret else {
            throw StoreError(.inUse, "BMC credential '\(c)' changed while enrolling; enroll again")
        }
    }

    /// Refuses the entry's name when `holder`, the MAC of the machine holding it, is another.
    public func checkName(heldBy holder: MACAddress?) throws {
        if let holder, holder != mac {
            throw StoreError(.alreadyExists, "machine name '\(name)' is already used by the machine with MAC \(holder)")
        }
    }

    /// The machine as this entry leaves it, from `existing` (the machine its MAC names, if any),
    /// the one rule both stores write: a known machine keeps its ID (which must be the
    /// entry's), its state unless discovered (then enrolled), and its site unless the entry
    /// names one; a machine in a step is refused. A new one is enrolled with the entry's ID.
    public func machine(replacing existing: Machine?, at time: Date) throws -> Machine {
        var m: Machine
        if let existing {
            guard existing.id == id else {
                throw StoreError(.inUse, "the machine with MAC \(mac) changed while enrolling; enroll again")
            }
            guard !Lifecycle.steps.contains(existing.state) else {
                throw StoreError(
                    .inUse,
                    "machine \(existing.name) is \(existing.state.rawValue); enroll it again once the step ends"
                )
            }
            m = existing
            m.name = name
            // discovered ─enroll─▶ enrolled; a machine further along keeps its state.
            if m.state == .discovered { m.state = .enrolled }
        } else {
            m = Machine(
                id: id,
                name: name,
                mac: mac,
                architecture: .unknown,
                firmware: .unknown,
                state: .enrolled,
                firstSeen: time,
                lastSeen: time
            )
        }
        m.bmc = bmc
        m.bmcCredential = credential
        m.otherMACs = otherMACs.isEmpty ? nil : otherMACs
        m.zone = zone
        m.rack = rack
        m.tags = tags
        if let site { m.site = site }
        return m
    }
}

/// A named BMC credential (`farrier bmc credential add`): a user and a password, sealed under
/// the credential's name, that many machines' BMCs share.
public struct BMCCredential: Sendable, Hashable {
    public var name: String
    public var user: String
    public var sealedPassword: [UInt8]
    public var created: Date
    /// How many machines use it (filled when listed).
    public var machines: Int

    public init(name: String, user: String, sealedPassword: [UInt8], created: Date, machines: Int = 0) {
        self.name = name
        self.user = user
        self.sealedPassword = sealedPassword
        self.created = created
        self.machines = machines
    }

    /// Credential names follow machine names' rules. Returns why not, or nil.
    public static func nameProblem(_ name: String) -> String? {
        Machine.nameProblem(name).map { $0.replacingOccurrences(of: "machine name", with: "credential name") }
    }

    /// What its password is sealed to: never a machine's ID, so one cannot open the other's.
    public static func sealingContext(_ name: String) -> String { "bmc-credential:" + name }
}

/// Named BMC credentials.
public protocol BMCCredentialStore: Sendable {
    /// Throws `StoreError.Code.alreadyExists` when the name is taken.
    func addBMCCredential(_ credential: BMCCredential) async throws
    /// Replaces a credential's user and password, and every machine's copy that uses it (their
    /// sealed passwords, by machine ID, and their BMC's user), in one transaction. Throws
    /// `.notFound` for no such credential, and `.inUse` when the machines using it are not
    /// exactly those given (one enrolled meanwhile: read them again).
    func replaceBMCCredential(_ credential: BMCCredential, machineSecrets: [String: [UInt8]]) async throws
    func bmcCredential(name: String) async throws -> BMCCredential?
    /// Every credential, by name, with how many machines use it.
    func bmcCredentials() async throws -> [BMCCredential]
    /// The IDs of the machines whose BMC password comes from this credential.
    func machines(usingCredential name: String) async throws -> [String]
    /// Throws `.inUse` while machines use it; false when there was none.
    func removeBMCCredential(name: String) async throws -> Bool
}

/// Which machines a `MachineStore.machines(_:)` call reads: every field set narrows it.
public struct MachineQuery: Sendable, Hashable {
    /// Only machines in one of these states.
    public var states: Set<MachineState>?
    /// Only machines of this project.
    public var project: String?
    /// Only machines in this zone.
    public var zone: String?
    /// Only machines of this site.
    public var site: String?
    /// Only machines whose name sorts after this one (a page's start).
    public var after: String?
    /// At most this many.
    public var limit: Int?

    public init(
        states: Set<MachineState>? = nil,
        project: String? = nil,
        zone: String? = nil,
        site: String? = nil,
        after: String? = nil,
        limit: Int? = nil
    ) {
        self.states = states
        self.project = project
        self.zone = zone
        self.site = site
        self.after = after
        self.limit = limit
    }
}

/// One DHCP server per boot network when replicas share a database: a replica answers DHCP on
/// its interfaces only while it holds a key for each interface's network. PostgreSQL's
/// session advisory locks hold them, on a connection of their own: when the holder dies or
/// loses the database, the database lets go and another replica takes over. The embedded
/// store has one process, and no fence.
public protocol DHCPFence: Sendable {
    /// Takes every key or none (it lets go of what it took when one is held elsewhere): true
    /// when this process now holds them all, until `release()` or until the fence's
    /// connection ends.
    func acquire(_ keys: [String]) async throws -> Bool
    /// Throws when the keys may no longer be held: the connection ended or the database did
    /// not answer in time (then the connection is closed, so the database lets go too).
    func check() async throws
    /// Lets go of every key (closes the connection).
    func release() async
}

/// Durable DHCP leases.
public protocol LeaseStore: Sendable {
    /// The leases, read on the calling thread: for the DHCP engine, built at the server's start
    /// (before anything else holds a connection) or, at a takeover, on a thread of its own;
    /// never from a task on Swift's cooperative pool while the server runs.
    func leases() throws -> [Lease]
    /// The same, awaited, for the API. It must not block a thread of the cooperative pool: with
    /// SQLite, two list calls (as many as this machine has cores) each blocked in a synchronous
    /// read waiting for a reader connection, while the tasks holding every reader waited for a
    /// pool thread to finish and give theirs back, and the whole server stopped.
    func currentLeases() async throws -> [Lease]
    /// The leases of these MACs only (a page of machines), awaited.
    func currentLeases(macs: [MACAddress]) async throws -> [Lease]
    /// Writes the leases and makes them durable (fsync) before returning.
    func commit(_ leases: [Lease]) throws
    func deleteLease(mac: MACAddress) throws
    /// Proxy mode: the address a MAC's own DHCPREQUEST showed (ciaddr, or the address it asked
    /// the other server for), one per MAC, kept apart from leases: a client's claim, used only
    /// to bind its agent's calls and boot script to that address after a restart, never as a
    /// lease, an API address or an ssh target. Written durably before returning.
    func recordSeenAddress(mac: MACAddress, address: IPv4Address, at time: Date) throws
    /// Deletes those seen before `cutoff`, then returns the rest, oldest first.
    func seenAddresses(since cutoff: Date) throws -> [(mac: MACAddress, address: IPv4Address)]
}

extension LeaseStore {
    public func currentLeases(macs: [MACAddress]) async throws -> [Lease] {
        let wanted = Set(macs)
        return try await currentLeases().filter { wanted.contains($0.mac) }
    }

    public func recordSeenAddress(mac: MACAddress, address: IPv4Address, at time: Date) throws {}
    public func seenAddresses(since cutoff: Date) throws -> [(mac: MACAddress, address: IPv4Address)] { [] }
}

/// Projects and API tokens.
public protocol TenancyStore: Sendable {
    /// Throws `StoreError.Code.alreadyExists` when the name is taken.
    func createProject(_ project: Project) async throws
    func projects() async throws -> [Project]
    func project(name: String) async throws -> Project?
    /// Throws `StoreError.Code.inUse` while machines are allocated to the project or tokens use it.
    func deleteProject(name: String) async throws -> Bool
    func createToken(_ token: APIToken) async throws
    func token(secretSHA256: String) async throws -> APIToken?
    func tokens() async throws -> [APIToken]
    func revokeToken(id: String) async throws -> Bool
}

/// Image metadata (the bytes live in the content-addressed image directory).
public protocol ImageStore: Sendable {
    /// Throws `StoreError.Code.alreadyExists` when the name is taken.
    func addImage(_ image: ImageInfo) async throws
    func images() async throws -> [ImageInfo]
    func image(name: String) async throws -> ImageInfo?
    /// Throws `StoreError.Code.inUse` while a machine is deploying or deployed with it.
    func deleteImage(name: String) async throws -> Bool
    /// Whether any image row still refers to these bytes.
    func imageReferenced(sha256: String) async throws -> Bool
}

/// A replica's claim on driving one machine's step: its BMC actions, and the commits that follow
/// them. At most one replica holds a machine's claim at a time. A claim lapses `ttl` after it
/// was taken or last renewed (a replica that died holds nothing for long), and every new holder
/// gets a higher `token`, so a commit fenced with an old claim is refused.
public struct WorkClaim: Sendable, Hashable, CustomStringConvertible {
    public var machineID: String
    public var owner: String
    /// The fencing token: higher for every new holder of this machine's claim.
    public var token: Int64
    public init(machineID: String, owner: String, token: Int64) {
        self.machineID = machineID
        self.owner = owner
        self.token = token
    }
    public var description: String { "\(owner)#\(token)" }
}

/// Claims on machines' work, shared by the replicas through the database (its clock decides
/// when a claim has lapsed).
public protocol WorkClaimStore: Sendable {
    /// Takes the machine's claim for `owner` if nobody holds a live one (a lapsed claim is taken
    /// over with a higher token), or renews the live one `owner` already holds (same token).
    /// Nil when another owner holds a live claim.
    func claimWork(machineID: String, owner: String, ttl: Duration) async throws -> WorkClaim?
    /// Extends a claim still held with its token; false when it lapsed or was taken over.
    func renewWork(_ claim: WorkClaim, ttl: Duration) async throws -> Bool
    /// Gives a claim up at once (the work is done), if it is still held.
    func releaseWork(_ claim: WorkClaim) async throws
}

public typealias StateStore = MachineStore & LeaseStore & TenancyStore & ImageStore & WorkClaimStore & SiteStore
    & BMCCredentialStore & NetworkStore & TestScriptStore

/// Networks for deployed machines (issue 18 point 4) and the static addresses machines hold on
/// them. Machines take and give back addresses only in their own writes (`AddressAllocation`
/// runs inside each); these calls define networks and read who holds what.
public protocol NetworkStore: Sendable {
    /// Adds a network; `alreadyExists` if its name is taken, `notFound` if its site is not.
    func createNetwork(_ network: Network) async throws
    /// Every network, by name.
    func networks() async throws -> [Network]
    func network(name: String) async throws -> Network?
    /// Removes a network: `notFound` if there is none, `inUse` (naming the machines) while
    /// any machine holds an address on it.
    func deleteNetwork(name: String) async throws
    /// The addresses held on a network, lowest first, with the machine holding each.
    func networkAddresses(network: String) async throws -> [HeldAddress]
}

/// Admins' commissioning test scripts (every version kept, content by hash), and the output of
/// each machine's last test run (kept apart from the machine: admins only read it).
public protocol TestScriptStore: Sendable {
    /// Stores `content` as the next version of `script.name` (`script.version` is ignored) and
    /// returns it. If the newest version has the same content, limit and description, that
    /// version is returned and nothing is written: a retried add is harmless.
    func addTestScript(_ script: TestScript, content: [UInt8]) async throws -> TestScript
    /// Every version of every script, by name then version.
    func testScripts() async throws -> [TestScript]
    func testScriptContent(sha256: String) async throws -> [UInt8]?
    /// Removes every version of a script and returns how many: `notFound` if it has none,
    /// `inUse` (naming them) while a machine commissioning, or failed in commissioning, has
    /// it among its tests (a retry would need it).
    func removeTestScript(name: String) async throws -> Int
    /// Keeps these outputs as the machine's run `runID`, replacing any of that run's and
    /// dropping other runs' (only the last run's output is kept).
    func putTestOutputs(machineID: String, runID: String, _ outputs: [TestOutput]) async throws
    func testOutputs(machineID: String, runID: String) async throws -> [TestOutput]
}

/// One test's output from a machine's run (a per-disk test has one for each disk).
public struct TestOutput: Sendable, Hashable {
    public var name: String
    /// The disk, or "" for a test that is not per disk.
    public var target: String
    public var output: String
    public init(name: String, target: String, output: String) {
        self.name = name
        self.target = target
        self.output = output
    }
}

extension BurnIn {
    /// The scripts this run names, for a script's removal (one a retry would need is in use).
    public var scriptNames: Set<String> { Set(tests.filter { $0.kind == .script }.map(\.name)) }
}

extension Machine {
    /// Whether removing the script `name` would leave this machine's run without it: it is
    /// commissioning, or failed in commissioning (a retry runs the same tests), with it.
    public func needsTestScript(_ name: String) -> Bool {
        guard state == .commissioning || (state == .failed && failedStep == .commissioning) else { return false }
        return burnIn?.scriptNames.contains(name) == true
    }
}

/// A static address a machine holds on a network.
public struct HeldAddress: Sendable, Hashable {
    public var network: String
    public var address: IPAddress
    public var machineID: String
    public var machine: String
    public var mac: MACAddress
    public init(network: String, address: IPAddress, machineID: String, machine: String, mac: MACAddress) {
        self.network = network
        self.address = address
        self.machineID = machineID
        self.machine = machine
        self.mac = mac
    }
}

extension MachineStore {
    /// `update` without a fence: API requests, agents' reports, timeouts (each guarded by the
    /// step's generation instead).
    public func update(
        machineID: String,
        _ body: @escaping @Sendable (inout Machine) throws -> [MachineEvent]
    ) async throws -> Machine {
        try await update(machineID: machineID, fence: nil, body)
    }

    /// `enroll` with a password of the machine's own.
    public func enroll(
        name: String,
        mac: MACAddress,
        bmc: BMCReference,
        sealedPassword: [UInt8],
        at: Date
    ) async throws -> Machine {
        try await enroll(name: name, mac: mac, bmc: bmc, sealedPassword: sealedPassword, credential: nil, at: at)
    }

    /// Looks a machine up by MAC (any common notation) or by name.
    public func machine(nameOrMAC key: String) async throws -> Machine? {
        if let mac = MACAddress(key), let m = try await machine(mac: mac) { return m }
        return try await machine(name: key)
    }
}

/// Every error a store throws about its data or its database. Callers branch on `code`, never on
/// the message; the API edges map the code to a status in one place (FarrierAPI's and
/// FarrierHTTP's error mappings).
public struct StoreError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        /// The name (or other unique key) is taken: pick another.
        case alreadyExists
        /// The row is still used by others (a project with machines, an image being deployed).
        case inUse
        /// The row the caller named does not exist.
        case notFound
        /// The database cannot do the work now (unreachable, busy, shutting down); retry.
        case unavailable
        /// A row cannot be read back as what was written.
        case corrupt
        /// The caller's claim on the machine lapsed or was taken over (`WorkClaim`): it must not
        /// act on the machine any more.
        case fenced
        /// A pool has nothing left to give (a network's static addresses).
        case exhausted
    }
    public var code: Code
    public var message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}
