import Foundation

/// A site (issue 16): boot services near a set of racks, run by `farrier site` and known to the
/// region by the certificate it got when it joined. An admin adds it (`farrier site add`), which
/// makes a one-time join token; the site joins with it once.
public struct Site: Codable, Sendable, Hashable {
    public var name: String
    public var created: Date
    /// SHA-256 (hex) of the join token not yet used; nil once the site joined.
    public var joinTokenSHA256: String?
    /// When the join token stops working: unused, or for a join sent again (below).
    public var joinExpires: Date?
    /// SHA-256 (hex) of the join token the site joined with, and the certificate it was given
    /// (PEM): a join that presents that token and the same key again before `joinExpires` (its
    /// first answer was lost) is given that certificate again, and nothing else is.
    public var spentTokenSHA256: String?
    public var certificatePEM: String?
    /// Serial (lowercase hex) of the certificate issued when the site joined: the one
    /// certificate the region accepts from it.
    public var certificateSerial: String?
    public var certificateNotAfter: Date?
    public var joined: Date?
    /// What the site's last call over its link said, and when it came (nil: never called).
    public var link: SiteLink?

    public init(
        name: String,
        created: Date,
        joinTokenSHA256: String? = nil,
        joinExpires: Date? = nil,
        certificateSerial: String? = nil,
        certificateNotAfter: Date? = nil,
        joined: Date? = nil,
        link: SiteLink? = nil,
        spentTokenSHA256: String? = nil,
        certificatePEM: String? = nil
    ) {
        self.name = name
        self.created = created
        self.joinTokenSHA256 = joinTokenSHA256
        self.joinExpires = joinExpires
        self.certificateSerial = certificateSerial
        self.certificateNotAfter = certificateNotAfter
        self.joined = joined
        self.link = link
        self.spentTokenSHA256 = spentTokenSHA256
        self.certificatePEM = certificatePEM
    }
}

/// A site's last heartbeat over its mutual-TLS link to the region: when, from where, and what
/// it reported of itself.
public struct SiteLink: Codable, Sendable, Hashable {
    public var lastSeen: Date
    /// The address the call came from (host:port as the region saw it).
    public var address: String
    /// Events and reports the site holds that the region has not acknowledged.
    public var queueDepth: Int64
    public var cachedFiles: Int64
    public var cachedBytes: Int64
    /// The site agent's Farrier version.
    public var version: String
    /// The BMC channels the site had open to the region's replicas (nil: it did not say).
    public var bmcChannels: Int64?

    public init(
        lastSeen: Date,
        address: String,
        queueDepth: Int64 = 0,
        cachedFiles: Int64 = 0,
        cachedBytes: Int64 = 0,
        version: String = "",
        bmcChannels: Int64? = nil
    ) {
        self.lastSeen = lastSeen
        self.address = address
        self.queueDepth = queueDepth
        self.cachedFiles = cachedFiles
        self.cachedBytes = cachedBytes
        self.version = version
        self.bmcChannels = bmcChannels
    }

    /// A link is up while heartbeats keep coming; after this long without one it is down.
    public static let downAfter: TimeInterval = 30

    public func state(at now: Date) -> String { now.timeIntervalSince(lastSeen) <= Self.downAfter ? "up" : "down" }
}

/// Sites and their join tokens.
public protocol SiteStore: Sendable {
    /// Records a new site; `alreadyExists` if the name is taken.
    func createSite(_ site: Site) async throws
    func sites() async throws -> [Site]
    func site(name: String) async throws -> Site?
    /// The site whose unused join token has this hash, or whose join spent it (`spentTokenSHA256`;
    /// expiry is the caller's to check).
    func site(joinTokenSHA256: String) async throws -> Site?
    /// Spends a join token: the site still waiting on it records its certificate (serial and
    /// PEM) and moves the token's hash to `spentTokenSHA256`, in one write. False when the token
    /// was spent (or the site removed) meanwhile, so of two joins racing with one token, one wins.
    func completeJoin(
        name: String,
        joinTokenSHA256: String,
        certificateSerial: String,
        certificateNotAfter: Date,
        certificatePEM: String,
        at: Date
    ) async throws -> Bool
    /// Forgets a site (its certificate is refused from then on); false if there was none.
    func deleteSite(name: String) async throws -> Bool
    /// Records a heartbeat from site `name` presenting the certificate `certificateSerial`;
    /// false (and nothing written) unless that is the site's current certificate, so a removed
    /// site, or one joined again since with another key, is refused.
    func recordSiteLink(name: String, certificateSerial: String, link: SiteLink) async throws -> Bool
    /// Appends boot timeline events site `name` recorded, once and in order. Each carries the
    /// site's own increasing number, and the site says which mark it believes the region has
    /// (`after`): unless that is the site's mark, nothing is written (the site sends again from
    /// the mark returned, so a gap is filled, never skipped). Events at or below the mark are
    /// skipped (sent again after a lost answer); those for a MAC that is none of the site's
    /// machines are dropped (a site speaks only for its own); the rest are appended, and the
    /// mark moves to `through` (at least every number given: events the caller could not read
    /// count too), all in one transaction. Nil, with nothing written, unless `certificateSerial`
    /// is the site's current certificate; else the mark after.
    func appendSiteEvents(
        name: String,
        certificateSerial: String,
        after: Int64,
        events: [SiteEvent],
        through: Int64
    ) async throws -> Int64?
    /// Replaces what site `name` last said its machines lease (the site decides its leases;
    /// the region keeps them to show and reach the machines): leases for a MAC that is none of
    /// the site's machines are dropped. Nil, with nothing written, unless `certificateSerial`
    /// is the site's current certificate; else how many were kept.
    func recordSiteLeases(name: String, certificateSerial: String, leases: [Lease]) async throws -> Int?
    /// The leases sites reported for these MACs, each for a machine still at the site that
    /// reported it.
    func siteLeases(macs: [MACAddress]) async throws -> [Lease]
}

/// A boot timeline event as a site recorded it, with the site's own number for it.
public struct SiteEvent: Sendable, Hashable {
    public var id: Int64
    public var event: TimelineEvent
    /// The longest event and detail texts a site sends and a region keeps (characters).
    public static let maxEvent = 128
    public static let maxDetail = 1024

    public init(id: Int64, event: TimelineEvent) {
        self.id = id
        self.event = event
    }

    /// The rule of `appendSiteEvents`, for both stores: given the site's `mark`, what to append
    /// (numbered above it, oldest first) and the mark after; nil when nothing is to be written
    /// (the site believed another mark, or nothing is past this one).
    public static func delivery(
        mark: Int64,
        after: Int64,
        events: [SiteEvent],
        through: Int64
    ) -> (fresh: [SiteEvent], next: Int64)? {
        let fresh = events.filter { $0.id > mark }.sorted { $0.id < $1.id }
        let next = max(through, fresh.last?.id ?? 0)
        guard after == mark, next > mark else { return nil }
        return (fresh, next)
    }
}

/// What a site boots one of its machines with, as the region last said: enough to render the
/// machine's iPXE script at the site, with or without the region.
public struct SiteBootEntry: Sendable, Hashable {
    public var name: String
    /// The machine's lifecycle state (as text: a site may be older or newer than its region).
    public var state: String
    public var nextBoot: Lifecycle.NextBoot
    public var firmware: Firmware

    public init(name: String, state: String, nextBoot: Lifecycle.NextBoot, firmware: Firmware) {
        self.name = name
        self.state = state
        self.nextBoot = nextBoot
        self.firmware = firmware
    }

    /// From the region's words for it. A next boot this site does not know (a newer region's)
    /// waits: never the disk by accident.
    public init(name: String, state: String, nextBoot: String, firmware: String) {
        self.init(
            name: name,
            state: state,
            nextBoot: Lifecycle.NextBoot(rawValue: nextBoot) ?? .wait,
            firmware: Firmware(rawValue: firmware) ?? .unknown
        )
    }

    /// The machine's script. A deployed machine boots its disk; one waiting waits; a ramdisk
    /// step boots the ramdisk with the site's agent channel (`ramdisk`). Without one, such a
    /// machine waits, never falling through to its disk.
    public func script(selfURL: String, mac: MACAddress, pollSeconds: Int, ramdisk: RamdiskEndpoint? = nil) -> String {
        switch nextBoot {
        case .disk: return BootScript.localDisk(machine: name, firmware: firmware)
        case .wait:
            return BootScript.wait(scriptURL: selfURL, mac: mac, reason: "\(name) (\(state))", pollSeconds: pollSeconds)
        case .ramdisk, .rescue:
            guard let ramdisk else {
                return BootScript.wait(
                    scriptURL: selfURL,
                    mac: mac,
                    reason: "\(name) (\(state)): its site serves no agent channel",
                    pollSeconds: pollSeconds
                )
            }
            return BootScript.ramdisk(
                serverURL: ramdisk.serverURL,
                scriptURL: selfURL,
                machine: name,
                agentURL: ramdisk.agentURL,
                certificateSHA256: ramdisk.certificateSHA256,
                mode: nextBoot == .rescue ? "rescue" : "agent"
            )
        }
    }
}

/// Where a ramdisk boot gets its files (`serverURL`/tftp/ramdisk/…) and its agent channel, and
/// the channel's certificate's SHA-256, which the agent pins.
public struct RamdiskEndpoint: Sendable, Hashable {
    public var serverURL: String
    public var agentURL: String
    public var certificateSHA256: String

    public init(serverURL: String, agentURL: String, certificateSHA256: String) {
        self.serverURL = serverURL
        self.agentURL = agentURL
        self.certificateSHA256 = certificateSHA256
    }
}
