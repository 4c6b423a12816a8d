import DHCPWire
import FarrierCore
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Counters a scrape can read. Never labelled by MAC or address.
public final class DHCPMetrics: Sendable {
    public let received = Atomic<Int>(0)
    public let malformed = Atomic<Int>(0)
    public let dropped = Atomic<Int>(0)
    public let offers = Atomic<Int>(0)
    public let acks = Atomic<Int>(0)
    public let naks = Atomic<Int>(0)
    public let commitFailures = Atomic<Int>(0)
    public let sendErrors = Atomic<Int>(0)
    /// DISCOVERs unanswered because their subnet's pool had no free address.
    public let poolExhausted = Atomic<Int>(0)
    /// Requests decoded, by message type: DISCOVER, REQUEST, DECLINE, RELEASE, INFORM, and any
    /// other (a reply type, an unknown one, or none: BOOTP).
    public let discovers = Atomic<Int>(0)
    public let requests = Atomic<Int>(0)
    public let declines = Atomic<Int>(0)
    public let releases = Atomic<Int>(0)
    public let informs = Atomic<Int>(0)
    public let otherTypes = Atomic<Int>(0)
    public init() {}

    func decoded(_ type: DHCPMessageType?) {
        switch type {
        case .discover?: discovers.add(1, ordering: .relaxed)
        case .request?: requests.add(1, ordering: .relaxed)
        case .decline?: declines.add(1, ordering: .relaxed)
        case .release?: releases.add(1, ordering: .relaxed)
        case .inform?: informs.add(1, ordering: .relaxed)
        default: otherTypes.add(1, ordering: .relaxed)
        }
    }
}

/// Lets one warning per key through per interval, and says how many occurrences it stands for.
public struct WarningLimiter<Key: Hashable & Sendable>: Sendable {
    public let interval: Duration
    var last: [Key: (warned: ContinuousClock.Instant, since: Int)] = [:]

    public init(interval: Duration) { self.interval = interval }

    /// Counts one occurrence of `key`; returns how many occurrences (this one included) the
    /// warning to log now stands for, or nil when one was logged for `key` less than
    /// `interval` ago.
    public mutating func note(_ key: Key, at now: ContinuousClock.Instant) -> Int? {
        var entry = last[key] ?? (warned: now - interval, since: 0)
        entry.since += 1
        guard now - entry.warned >= interval else {
            last[key] = entry
            return nil
        }
        last[key] = (warned: now, since: 0)
        return entry.since
    }
}

/// Shared between the socket threads: the responder (and its lease table), the lease store, and
/// the timeline.
final class DHCPEngine: Sendable {
    let responder: Mutex<DHCPResponder>
    let store: any LeaseStore
    let recorder: TimelineRecorder
    let addressBook: AddressBook
    let metrics: DHCPMetrics
    let logger: Logger
    let proxyMode: Bool
    let proxyPort: Int
    /// How long an address seen in proxy mode is kept (seen_address), and how many MACs at most.
    static let seenLifetime: TimeInterval = 86_400
    static let seenLimit = 65_536
    /// Proxy mode: the address last written for each MAC.
    let seenWritten: Mutex<[MACAddress: IPv4Address]>
    /// At most one warning per exhausted subnet a minute: a full pool under a PXE storm is
    /// thousands of DISCOVERs a minute.
    let exhaustionWarnings = Mutex(WarningLimiter<IPv4Network>(interval: .seconds(60)))

    init(
        responder: DHCPResponder,
        store: any LeaseStore,
        recorder: TimelineRecorder,
        addressBook: AddressBook,
        metrics: DHCPMetrics,
        logger: Logger,
        seen: [MACAddress: IPv4Address] = [:]
    ) {
        self.seenWritten = Mutex(seen)
        self.proxyMode = responder.configuration.mode == .proxy
        self.proxyPort = responder.configuration.proxyPort
        self.responder = Mutex(responder)
        self.store = store
        self.recorder = recorder
        self.addressBook = addressBook
        self.metrics = metrics
        self.logger = logger
    }

    /// Counts a DISCOVER that found its subnet's pool full, and warns about the subnet at most
    /// once a minute, saying how many went unanswered since the last warning.
    func poolExhausted(_ network: IPv4Network) {
        metrics.poolExhausted.add(1, ordering: .relaxed)
        let now = ContinuousClock.now
        guard let unwarned = exhaustionWarnings.withLock({ $0.note(network, at: now) }) else { return }
        logger.warning(
            "DHCP pool exhausted: no free address to offer; widen the pool, shorten leases or reserve addresses",
            metadata: ["dhcp.subnet": "\(network)", "dhcp.unanswered": "\(unwarned)"]
        )
    }

    /// Counts a datagram dropped before it could be answered (undecodable, or truncated by the
    /// receive buffer) and logs it at debug level.
    func dropMalformed(_ message: Logger.Message, reason: String, ingress: DHCPIngress, count: Int) {
        metrics.malformed.add(1, ordering: .relaxed)
        logger.debug(
            message,
            metadata: [
                "dhcp.error": "\(reason)", "dhcp.src": "\(ingress.sourceAddress):\(ingress.sourcePort)",
                "dhcp.interface": "\(ingress.interface)", "dhcp.bytes": "\(count)",
            ]
        )
    }

    /// Decodes and answers one datagram (already counted as received by the caller). `send` gets the encoded reply: at once when it depends
    /// on nothing unwritten, else from `leases.commit(to:)` once the lease is durable.
    func handle(
        _ bytes: [UInt8],
        ingress: DHCPIngress,
        leases: inout LeaseBatch,
        send: @escaping (_ reply: [UInt8], _ address: IPv4Address, _ port: Int) -> Void
    ) {
        let request: DHCPMessage
        do {
            request = try DHCPMessage(decoding: bytes)
        } catch {
            dropMalformed("dropped malformed DHCP packet", reason: "\(error)", ingress: ingress, count: bytes.count)
            return
        }
        metrics.decoded(request.messageType)
        let now = Date()
        let outcome = responder.withLock { $0.handle(request, ingress: ingress, now: now) }
        let mac = request.clientMAC
        let stage: TimelineEvent.Stage = proxyMode || ingress.port == proxyPort ? .proxyDHCP : .dhcp
        let type = request.messageType?.description ?? "?"

        if let mac, outcome.client.isNetworkBoot || recorder.isKnown(mac) {
            if let p = outcome.client.platform, case .discover? = request.messageType {
                recorder.sighted(mac, platform: p)
            }
            recorder.record(
                TimelineEvent(
                    mac: mac,
                    time: now,
                    stage: stage,
                    event: type,
                    detail: "client=\(outcome.client.label) via=\(ingress.interface):\(ingress.port)"
                )
            )
        }
        // Which address a MAC holds, for the agent channel's and the boot script's address
        // checks. In full mode only what Farrier itself acknowledged counts (a client's own
        // ciaddr could name anyone's address). In proxy mode another server leases: the
        // address the client's own DHCP traffic shows (ciaddr, or the address it requests from
        // that server) is the best there is.
        // What proxy mode learns this way is also written down (the seen_address table, not
        // leases), so a server restarted while an agent runs still knows that agent's address:
        // the agent asks for nothing again until it renews, hours later. Only for network-boot
        // clients and known machines, only when the MAC's address changes, and at most
        // `seenLimit` MACs, so a flood of made-up MACs cannot grow the table or cost fsyncs.
        if proxyMode, let mac, request.messageType == .request,
            let seen = request.ciaddr != .any ? request.ciaddr : request.options.requestedIPAddress
        {
            addressBook.record(seen, mac)
            if outcome.client.isNetworkBoot || recorder.isKnown(mac) {
                let write = seenWritten.withLock { written -> Bool in
                    guard written[mac] != seen, written[mac] != nil || written.count < Self.seenLimit else {
                        return false
                    }
                    written[mac] = seen
                    return true
                }
                if write {
                    do { try store.recordSeenAddress(mac: mac, address: seen, at: now) } catch {
                        seenWritten.withLock { $0[mac] = nil }
                        logger.warning(
                            "address seen in proxy mode not written",
                            metadata: ["dhcp.mac": "\(mac)", "dhcp.error": "\(error)"]
                        )
                    }
                }
            }
        }
        guard let reply = outcome.reply else {
            metrics.dropped.add(1, ordering: .relaxed)
            if let network = outcome.exhaustedSubnet { poolExhausted(network) }
            logger.debug(
                "no reply",
                metadata: [
                    "dhcp.xid": "\(hex(request.xid))", "dhcp.mac": "\(mac.map { "\($0)" } ?? "-")",
                    "dhcp.type": "\(type)", "dhcp.reason": "\(outcome.dropReason ?? "")",
                ]
            )
            if outcome.forget != nil {
                leases.add(commit: nil, forget: outcome.forget) { _ in }
            }
            return
        }
        let replyType = reply.messageType ?? .nak
        let encoded = reply.encoded()
        let destination = outcome.destinationAddress
        let port = outcome.destinationPort
        let finish = { [self] in
            switch replyType {
            case .offer: metrics.offers.add(1, ordering: .relaxed)
            case .ack: metrics.acks.add(1, ordering: .relaxed)
            default: metrics.naks.add(1, ordering: .relaxed)
            }
            if let mac {
                if replyType == .ack, reply.yiaddr != .any { addressBook.record(reply.yiaddr, mac) }
                if outcome.client.isNetworkBoot || recorder.isKnown(mac) {
                    var detail = reply.yiaddr != .any ? "address=\(reply.yiaddr)" : "proxy"
                    if !reply.bootFileName.isEmpty { detail += " file=\(reply.bootFileName)" }
                    recorder.record(
                        TimelineEvent(
                            mac: mac,
                            time: Date(),
                            stage: stage,
                            event: replyType.description,
                            detail: detail
                        )
                    )
                }
            }
            logger.debug(
                "reply",
                metadata: [
                    "dhcp.xid": "\(hex(request.xid))", "dhcp.mac": "\(mac.map { "\($0)" } ?? "-")",
                    "dhcp.type": "\(replyType)", "dhcp.yiaddr": "\(reply.yiaddr)",
                    "dhcp.file": "\(reply.bootFileName)", "dhcp.client": "\(outcome.client.label)",
                ]
            )
            send(encoded, destination, port)
        }
        if outcome.commit != nil || outcome.forget != nil {
            leases.add(commit: outcome.commit, forget: outcome.forget) { [self] result in
                switch result {
                case .success: finish()
                case .failure(let error):
                    // The client retries; an ACK for a lease that is not on disk is never sent.
                    metrics.commitFailures.add(1, ordering: .relaxed)
                    logger.error("lease commit failed; ACK withheld", metadata: ["dhcp.error": "\(error)"])
                }
            }
        } else {
            finish()
        }
    }
}

func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }

/// DHCP (full or proxy) on the configured interfaces, as a lifecycle `Service`.
///
/// With a fence (replicas on PostgreSQL), it answers only while it holds the fence's key for
/// every interface's network (`DHCPFence`): one replica per boot network. The others stand by,
/// trying again every `fenceRetry`; the one that takes over waits `fenceGrace` first (longer
/// than a holder takes to notice it lost its hold: `fenceCheck` plus the fence's 2 s timeout),
/// then reads the leases afresh from the database, since the last holder wrote them.
public final class DHCPService: Service, Sendable {
    let configuration: DHCPConfiguration
    /// Builds the engine from the store (leases, seen addresses); nil when DHCP is off.
    let makeEngine: (@Sendable () throws -> DHCPEngine)?
    /// Records the stored leases (and seen addresses) in the address book again: a replica
    /// standing by for the fence follows what the one that holds it leases.
    let loadAddresses: (@Sendable () throws -> Void)?
    /// Built at start (in init) when there is no fence; with one, at each takeover, on a thread of
    /// its own.
    let engine: DHCPEngine?
    /// The engine answering now, if any (with a fence, only while this replica holds it).
    let answering = Mutex<DHCPEngine?>(nil)
    let fence: (any DHCPFence)?
    let logger: Logger
    public let metrics: DHCPMetrics
    static let fenceRetry: Duration = .seconds(2)
    static let fenceCheck: Duration = .seconds(1)
    static let fenceGrace: Duration = .seconds(4)

    public init(
        configuration: DHCPConfiguration,
        httpPort: Int,
        store: any LeaseStore,
        recorder: TimelineRecorder,
        addressBook: AddressBook,
        fence: (any DHCPFence)? = nil,
        logger: Logger
    ) throws {
        self.configuration = configuration
        self.logger = logger
        self.fence = fence
        let metrics = DHCPMetrics()
        self.metrics = metrics
        if configuration.mode == .off || configuration.interfaces.isEmpty {
            makeEngine = nil
            loadAddresses = nil
            engine = nil
            return
        }
        /// The stored leases (and in proxy mode the addresses seen), each also recorded in the
        /// address book, which the boot path and the agent channel check peers against.
        let load: @Sendable () throws -> ([Lease], [MACAddress: IPv4Address]) = {
            let stored = try store.leases()
            for l in stored { addressBook.record(l.address, l.mac) }
            // Proxy mode: what earlier runs saw, newest last, except where a reservation (recorded
            // before this) already names the address: the operator's word outranks a client's.
            var seen: [MACAddress: IPv4Address] = [:]
            if configuration.mode == .proxy {
                let reserved = Set(configuration.reservations.map(\.address))
                for (mac, ip) in try store.seenAddresses(since: Date().addingTimeInterval(-DHCPEngine.seenLifetime)) {
                    seen[mac] = ip
                    if !reserved.contains(ip) { addressBook.record(ip, mac) }
                }
            }
            return (stored, seen)
        }
        let make: @Sendable () throws -> DHCPEngine = {
            var responder = DHCPResponder(configuration: configuration, httpPort: httpPort)
            let (stored, seen) = try load()
            responder.loadLeases(stored)
            return DHCPEngine(
                responder: responder,
                store: store,
                recorder: recorder,
                addressBook: addressBook,
                metrics: metrics,
                logger: logger,
                seen: seen
            )
        }
        makeEngine = make
        loadAddresses = { _ = try load() }
        engine = fence == nil ? try make() : nil
        // With a fence, DHCP answers only from the takeover on (seconds after the start), but
        // the address book is filled now, as without one: an agent in the middle of a step whose
        // server restarted must not be refused ("no machine holds this address") meanwhile.
        if fence != nil { _ = try load() }
    }

    public func run() async throws {
        guard let makeEngine else {
            let why = configuration.mode == .off ? "mode is off" : "no interfaces are configured (dhcp.interfaces)"
            logger.notice("DHCP is off: \(why); nothing will be answered")
            try await gracefulShutdown()
            return
        }
        guard let fence else {
            // Built in init, at the server's start, before anything else holds a database
            // connection (so its synchronous read cannot wait on the pool's threads), and so the
            // address book knows every leased address before the boot path serves.
            guard let engine else { return }
            let threads = try await start(engine)
            try? await gracefulShutdown()
            await stop(threads, engine)
            return
        }
        try await runFenced(fence, makeEngine)
    }

    /// Stands by until the fence gives this replica every interface's network, answers until
    /// it loses them or shuts down, and stands by again after a loss.
    func runFenced(_ fence: any DHCPFence, _ makeEngine: @escaping @Sendable () throws -> DHCPEngine) async throws {
        let names = try configuration.interfaces.map { name -> String in
            guard let iface = InterfaceAddress.lookup(name) else {
                throw SocketError(description: "DHCP interface \(name) does not exist or has no IPv4 address")
            }
            return "\(iface.network)"
        }
        let keys = names.map { "dhcp " + $0 }
        let networks: Logger.MetadataValue = "\(names.joined(separator: ","))"
        var standingBy = false
        while !Task.isShuttingDownGracefully {
            let held: Bool
            do {
                held = try await fence.acquire(keys)
            } catch {
                logger.warning(
                    "DHCP cannot reach the database to take its boot network; trying again",
                    metadata: ["dhcp.networks": networks, "error": "\(error)"]
                )
                held = false
            }
            guard held else {
                if !standingBy {
                    logger.notice(
                        "DHCP standing by: another replica answers on this boot network",
                        metadata: ["dhcp.networks": networks]
                    )
                    standingBy = true
                }
                // Another replica leases: its new leases (an address given to another MAC) reach
                // this one's address book within a retry, so the boot path and agent channel
                // here never pair an address with the machine that held it before.
                if let loadAddresses {
                    do { try await Self.onThreadOfItsOwn(loadAddresses) } catch {
                        logger.warning(
                            "DHCP standing by cannot read the leases",
                            metadata: ["dhcp.networks": networks, "error": "\(error)"]
                        )
                    }
                }
                if await Self.pause(Self.fenceRetry) { break }
                continue
            }
            standingBy = false
            // A holder that lost the network stops within fenceCheck and its timeout.
            if await Self.pause(Self.fenceGrace) { break }
            let engine: DHCPEngine
            let threads: [DHCPSocketThread]
            do {
                engine = try await Self.onThreadOfItsOwn(makeEngine)
                threads = try await start(engine)
            } catch {
                await fence.release()
                throw error
            }
            logger.notice("DHCP holds its boot network", metadata: ["dhcp.networks": networks])
            var lost = false
            while !lost, await !Self.pause(Self.fenceCheck) {
                do {
                    try await fence.check()
                } catch {
                    logger.error(
                        "DHCP lost its hold on the boot network (the database is unreachable): stopping until it holds it again",
                        metadata: ["dhcp.networks": networks, "error": "\(error)"]
                    )
                    lost = true
                }
            }
            await stop(threads, engine)
            if !lost { break }
        }
        await fence.release()
    }

    /// Each subnet's pool: its size, and how many of its addresses an unexpired lease holds
    /// (offered or bound). Empty while no engine answers (DHCP off, or another replica holds
    /// the fence).
    public func poolUsage() -> [(network: IPv4Network, size: Int, leased: Int)] {
        guard let engine = answering.withLock({ $0 }) else { return [] }
        let now = Date()
        return engine.responder.withLock { $0.leases.poolUsage(now: now) }
    }

    /// Runs a blocking call (making the engine reads every lease synchronously) on a thread of
    /// its own: a task that blocks holds one of the cooperative pool's threads, as many as the
    /// machine has cores, and the tasks it waits on may need them.
    static func onThreadOfItsOwn<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }

    /// Waits `duration`, or less if a graceful shutdown begins: true when it did.
    static func pause(_ duration: Duration) async -> Bool {
        if Task.isShuttingDownGracefully { return true }
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                try? await Task.sleep(for: duration)
                return Task.isShuttingDownGracefully
            }
            group.addTask {
                do {
                    try await gracefulShutdown()
                    return true
                } catch {
                    return false
                }
            }
            let first = await group.next() ?? true
            group.cancelAll()
            return first
        }
    }

    /// Opens every interface's sockets and starts their threads (all or none).
    func start(_ engine: DHCPEngine) async throws -> [DHCPSocketThread] {
        var ports = [configuration.serverPort]
        if configuration.mode == .proxy, configuration.proxyPort != 0 { ports.append(configuration.proxyPort) }
        var threads: [DHCPSocketThread] = []
        do {
            for name in configuration.interfaces {
                guard let iface = InterfaceAddress.lookup(name) else {
                    throw SocketError(description: "DHCP interface \(name) does not exist or has no IPv4 address")
                }
                if configuration.mode == .full,
                    !configuration.subnets.contains(where: { $0.network.contains(iface.address) })
                {
                    logger.warning(
                        "no subnet configured for the interface's own network: only relayed requests will be answered",
                        metadata: ["dhcp.interface": "\(name)", "dhcp.address": "\(iface.address)"]
                    )
                }
                for port in ports {
                    let fd = try makeInterfaceSocket(
                        interface: name,
                        port: port,
                        receiveTimeout: DHCPSocketThread.receiveTimeout
                    )
                    let thread = DHCPSocketThread(
                        engine: engine,
                        interface: iface,
                        port: port,
                        socket: fd,
                        commitDelay: configuration.commitDelay
                    )
                    threads.append(thread)
                    thread.start()
                    logger.info(
                        "DHCP listening",
                        metadata: [
                            "dhcp.mode": "\(configuration.mode.rawValue)", "dhcp.interface": "\(name)",
                            "dhcp.address": "\(iface.address)", "dhcp.port": "\(port)",
                        ]
                    )
                }
            }
        } catch {
            for t in threads { await t.stop() }
            throw error
        }
        answering.withLock { $0 = engine }
        return threads
    }

    func stop(_ threads: [DHCPSocketThread], _ engine: DHCPEngine) async {
        answering.withLock { $0 = nil }
        for t in threads { await t.stop() }
        await engine.recorder.drain()
        logger.info("DHCP stopped")
    }
}
