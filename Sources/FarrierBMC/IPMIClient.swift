import Foundation
import IPMIWire
import Logging
import Synchronization

/// Credentials and options for one IPMI BMC.
public struct IPMIEndpoint: Sendable, Hashable {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    /// Force a cipher suite (3 or 17); nil: ask the BMC and prefer 17.
    public var cipherSuite: UInt8?
    public var privilege: IPMIPrivilege
    public var timeouts: BMCTimeouts
    /// Idle time after which the session gets a keep-alive (BMCs drop idle sessions; some after 30 s).
    public var keepAlive: Duration

    public init(
        host: String, port: Int = 623, user: String, password: String, cipherSuite: UInt8? = nil,
        privilege: IPMIPrivilege = .administrator, timeouts: BMCTimeouts = BMCTimeouts(), keepAlive: Duration = .seconds(10)
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.cipherSuite = cipherSuite
        self.privilege = privilege
        self.timeouts = timeouts
        self.keepAlive = keepAlive
    }

    public var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// An established RMCP+ session on its own UDP socket.
final class IPMISession: Sendable {
    let endpoint: UDPEndpoint
    let crypto: Mutex<IPMISessionCrypto>
    let requestSequence = Atomic<UInt8>(0)
    let lastUsed = Mutex(ContinuousClock.now)
    let suite: IPMICipherSuite
    let address: String
    let timeouts: BMCTimeouts

    init(endpoint: UDPEndpoint, crypto: IPMISessionCrypto, suite: IPMICipherSuite, address: String, timeouts: BMCTimeouts) {
        self.endpoint = endpoint
        self.crypto = Mutex(crypto)
        self.suite = suite
        self.address = address
        self.timeouts = timeouts
    }

    var bmcSessionID: UInt32 { crypto.withLock { $0.bmcSessionID } }

    func nextRequestSequence() -> UInt8 {
        requestSequence.wrappingAdd(1, ordering: .relaxed).newValue & 0x3F
    }

    func seal(_ type: IPMIPayloadType, _ payload: [UInt8]) -> [UInt8] {
        var iv = [UInt8](repeating: 0, count: 16)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<16 { iv[i] = rng.next() }
        return crypto.withLock { $0.seal(type, payload: payload, iv: iv) }
    }

    /// Opens a datagram of this session; nil if it is not one (stale, forged or other type).
    func open(_ bytes: [UInt8]) -> (IPMIPayloadType, [UInt8])? {
        guard case .v2(let envelope) = try? IPMIDatagram(decoding: bytes) else { return nil }
        guard let payload = try? crypto.withLock({ try $0.open(envelope) }) else { return nil }
        return (envelope.payloadType, payload)
    }

    /// Sends a request and waits for its response, retransmitting on timeout.
    func send(_ make: (UInt8) -> IPMIRequest, what: String) async throws -> IPMIResponse {
        let request = make(nextRequestSequence())
        let message = request.encoded()
        lastUsed.withLock { $0 = .now }
        for _ in 0...timeouts.retries {
            try await endpoint.send(seal(.ipmi, message))
            let deadline = ContinuousClock.now + timeouts.attempt
            while ContinuousClock.now < deadline {
                guard let bytes = await endpoint.next(timeout: ContinuousClock.now.duration(to: deadline)) else { break }
                guard let (type, payload) = open(bytes), type == .ipmi,
                    let response = try? IPMIResponse(decoding: payload), response.answers(request)
                else { continue }
                return response
            }
        }
        throw BMCError.timeout(address, after: timeouts.attempt * (timeouts.retries + 1), doing: what)
    }

    func close() async {
        let sid = bmcSessionID
        // Best effort, one try: the BMC frees the slot now instead of at its idle timeout.
        try? await endpoint.send(seal(.ipmi, IPMICommand.closeSession(bmcSessionID: sid, sequence: nextRequestSequence()).encoded()))
        _ = await endpoint.next(timeout: .milliseconds(300))
        await endpoint.close()
    }
}

/// An IPMI v2.0 over LAN (RMCP+) BMC driver.
///
/// One operation at a time; the main session is made on first use, kept alive while idle, and
/// made again if the BMC stops answering (for example after it restarted). A console takes a
/// second session, so a BMC never sees more than 2 from Farrier.
public final class IPMIClient: BMC, Sendable {
    public let endpointConfiguration: IPMIEndpoint
    let logger: Logger
    let gate = SerialGate()
    let session = Mutex<IPMISession?>(nil)
    let keepAliveTask = Mutex<Task<Void, Never>?>(nil)

    public init(_ endpoint: IPMIEndpoint, logger: Logger = Logger(label: "farrier.ipmi")) {
        self.endpointConfiguration = endpoint
        var l = logger
        l[metadataKey: "bmc"] = "\(endpoint.address)"
        self.logger = l
    }

    public var address: String { endpointConfiguration.address }

    // MARK: Operations

    public func info() async throws -> BMCInfo {
        let r = try await command("Get Device ID") { IPMICommand.getDeviceID(sequence: $0) }
        let id = try decode { try DeviceID(decoding: r.data) }
        var details = ["ipmi_version": id.ipmiVersionString, "cipher_suite": "\(session.withLock { $0?.suite.id } ?? 0)"]
        details["asf_presence"] = await presence()
        return BMCInfo(
            driver: "ipmi", address: address, manufacturer: "IANA \(id.manufacturerID)",
            model: "product \(id.productID) device \(id.deviceID)", firmware: id.firmwareString, details: details)
    }

    /// RMCP/ASF Presence Ping on a socket of its own: "ipmi" if the pong says IPMI is supported,
    /// "no-ipmi" if it does not, "none" if nothing answers (many BMCs ignore ASF).
    public func presence() async -> String {
        guard let udp = try? await UDPEndpoint.connect(host: endpointConfiguration.host, port: endpointConfiguration.port) else {
            return "none"
        }
        defer { Task { await udp.close() } }
        let tag = UInt8.random(in: 0...254)
        let pong = try? await exchange(udp, ASFPresencePing(tag: tag).encoded(), what: "ASF Presence Ping", retries: 1) { bytes in
            guard case .asfPong(let p) = try? IPMIDatagram(decoding: bytes), p.tag == tag else { return nil as ASFPresencePong? }
            return p
        }
        guard let pong else { return "none" }
        return pong.supportsIPMI ? "ipmi" : "no-ipmi"
    }

    public func powerState() async throws -> PowerState {
        let r = try await command("Get Chassis Status") { IPMICommand.getChassisStatus(sequence: $0) }
        return try decode { try ChassisStatus(decoding: r.data) }.powerOn ? .on : .off
    }

    public func power(_ action: PowerAction) async throws {
        let control: ChassisControl =
            switch action {
            case .on: .powerUp
            case .off: .powerDown
            case .cycle: .powerCycle
            case .reset: .hardReset
            case .softOff: .softShutdown
            }
        _ = try await command("Chassis Control \(action.rawValue)", unsupported: "power \(action.rawValue)") {
            IPMICommand.chassisControl(control, sequence: $0)
        }
    }

    public func setBootOverride(_ override: BootOverride) async throws {
        let flags = IPMIBootFlags(device: override.device == .pxe ? .pxe : .disk, persistent: override.persistent, efi: override.efi)
        try await withLiveSession { s in
            // ipmitool's sequence: set-in-progress, clear the boot-info acknowledge, the flags,
            // then done. Only the flags must succeed: some BMCs (ipmi_sim) refuse parameter 0.
            _ = try? await s.send({ IPMICommand.setSystemBootOptions(parameter: 0, data: [0x01], sequence: $0) }, what: "Set System Boot Options")
            _ = try? await s.send({ IPMICommand.setSystemBootOptions(parameter: 4, data: [0x01, 0x01], sequence: $0) }, what: "Set System Boot Options")
            let r = try await s.send({ IPMICommand.setSystemBootOptions(parameter: 5, data: flags.encoded(), sequence: $0) }, what: "Set System Boot Options")
            try self.check(r, operation: "boot device \(override.device.rawValue)")
            _ = try? await s.send({ IPMICommand.setSystemBootOptions(parameter: 0, data: [0x00], sequence: $0) }, what: "Set System Boot Options")
        }
    }

    public func bootOverride() async throws -> BootOverride? {
        let r = try await command("Get System Boot Options", unsupported: "reading the boot device") {
            IPMICommand.getSystemBootOptions(parameter: 5, sequence: $0)
        }
        let flags = try decode { try IPMIBootFlags(decodingResponse: r.data) }
        switch flags.device {
        case .pxe: return BootOverride(device: .pxe, persistent: flags.persistent, efi: flags.efi)
        case .disk: return BootOverride(device: .disk, persistent: flags.persistent, efi: flags.efi)
        default: return nil
        }
    }

    public func openConsole() async throws -> any ConsoleSession {
        // A session of its own: SOL traffic must not queue behind power operations.
        let s = try await establish()
        do {
            let r = try await s.send({ IPMICommand.activateSOL(encrypted: s.suite.confidentiality != .none, authenticated: true, sequence: $0) }, what: "Activate Payload")
            if r.completionCode.rawValue == 0x80 {
                throw BMCError(.rejected, address: address, "BMC \(address): a serial console is already active on it")
            }
            try check(r, operation: "serial over LAN")
            let activation = try decode { try SOLActivation(decoding: r.data, requestPort: UInt16(endpointConfiguration.port)) }
            return SOLConsole(session: s, activation: activation, logger: logger)
        } catch {
            await s.close()
            throw error
        }
    }

    public func close() async {
        keepAliveTask.withLock { $0?.cancel() }
        let s = session.withLock { s -> IPMISession? in
            defer { s = nil }
            return s
        }
        await s?.close()
    }

    // MARK: Plumbing

    func decode<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            throw BMCError(.protocolError, address: address, "BMC \(address) sent an invalid answer: \(error)")
        }
    }

    func check(_ r: IPMIResponse, operation: String) throws {
        switch r.completionCode.rawValue {
        case 0x00: return
        case 0xC1: throw BMCError.unsupported(address, operation: operation, detail: "\(r.completionCode)")
        case 0xCC where operation.hasPrefix("power"):
            throw BMCError.unsupported(address, operation: operation, detail: "\(r.completionCode)")
        case 0xD4: throw BMCError(.rejected, address: address, "BMC \(address) refused \(operation): insufficient privilege for user \(endpointConfiguration.user)")
        default: throw BMCError(.rejected, address: address, "BMC \(address) refused \(operation): \(r.completionCode)")
        }
    }

    /// Runs `body` with the main session, under the per-BMC gate. If the session is dead (the
    /// BMC stopped answering it, say after a restart or a session timeout), it is made again
    /// once and `body` runs again: every operation here is idempotent.
    func withLiveSession<T: Sendable>(_ body: @escaping @Sendable (IPMISession) async throws -> T) async throws -> T {
        try await gate.run {
            let s = try await self.withSession()
            do {
                return try await body(s)
            } catch let e as BMCError where e.kind == .timeout {
                self.logger.info("BMC session stopped answering; making a new one", metadata: ["error": "\(e)"])
                self.drop(s)
                return try await body(try await self.withSession())
            }
        }
    }

    /// Runs one command in the main session (see `withLiveSession`).
    func command(_ what: String, unsupported: String? = nil, _ make: @escaping @Sendable (UInt8) -> IPMIRequest) async throws -> IPMIResponse {
        let r: IPMIResponse = try await withLiveSession { s in try await s.send(make, what: what) }
        if let unsupported { try check(r, operation: unsupported) } else { try check(r, operation: what) }
        return r
    }

    func drop(_ s: IPMISession) {
        session.withLock { if $0 === s { $0 = nil } }
        Task { await s.close() }
    }

    func withSession() async throws -> IPMISession {
        if let s = session.withLock({ $0 }) { return s }
        let s = try await establish()
        session.withLock { $0 = s }
        startKeepAlive()
        return s
    }

    func startKeepAlive() {
        let interval = endpointConfiguration.keepAlive
        keepAliveTask.withLock { task in
            guard task == nil else { return }
            task = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval / 3)
                    guard let self, let s = self.session.withLock({ $0 }) else { return }
                    guard ContinuousClock.now - s.lastUsed.withLock({ $0 }) >= interval else { continue }
                    // Get Device ID, as ipmitool's keep-alive does; errors surface on the next real command.
                    _ = try? await self.gate.run { try await s.send({ IPMICommand.getDeviceID(sequence: $0) }, what: "keep-alive") }
                }
            }
        }
    }

    /// Presence check, cipher suite choice, Open Session, RAKP 1–4 and the privilege level.
    func establish() async throws -> IPMISession {
        let ep = endpointConfiguration
        let udp = try await UDPEndpoint.connect(host: ep.host, port: ep.port)
        do {
            return try await withBound(ep.timeouts.operation, what: "session setup") {
                try await self.handshake(udp)
            }
        } catch {
            await udp.close()
            throw error
        }
    }

    func withBound<T: Sendable>(_ limit: Duration, what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else {
                throw BMCError.timeout(self.address, after: limit, doing: what)
            }
            return value
        }
    }

    /// Sends `packet` and returns the first datagram `accept` takes, retransmitting on timeout.
    func exchange<T>(_ udp: UDPEndpoint, _ packet: [UInt8], what: String, retries: Int? = nil, _ accept: ([UInt8]) throws -> T?) async throws -> T {
        var t = endpointConfiguration.timeouts
        if let retries { t.retries = retries }
        for _ in 0...t.retries {
            try await udp.send(packet)
            let deadline = ContinuousClock.now + t.attempt
            while ContinuousClock.now < deadline {
                guard let bytes = await udp.next(timeout: ContinuousClock.now.duration(to: deadline)) else { break }
                if let value = try accept(bytes) { return value }
            }
        }
        throw BMCError.timeout(address, after: t.attempt * (t.retries + 1), doing: what)
    }

    func presessionResponse(_ bytes: [UInt8], to request: IPMIRequest) -> IPMIResponse? {
        let message: [UInt8]
        switch try? IPMIDatagram(decoding: bytes) {
        case .v15(let m): message = m
        case .v2(let e) where e.payloadType == .ipmi && e.sessionID == 0: message = e.payload
        default: return nil
        }
        guard let r = try? IPMIResponse(decoding: message), r.answers(request) else { return nil }
        return r
    }

    func payload(_ bytes: [UInt8], _ type: IPMIPayloadType) -> [UInt8]? {
        guard case .v2(let e) = try? IPMIDatagram(decoding: bytes), e.payloadType == type else { return nil }
        return e.payload
    }

    func handshake(_ udp: UDPEndpoint) async throws -> IPMISession {
        let ep = endpointConfiguration
        // 1. Get Channel Authentication Capabilities (v1.5 framing): is RMCP+ there at all?
        let capsRequest = IPMICommand.getChannelAuthCapabilities(privilege: ep.privilege)
        let capsResponse = try await exchange(udp, IPMIv15Packet(message: capsRequest.encoded()).encoded(), what: "Get Channel Authentication Capabilities") {
            presessionResponse($0, to: capsRequest)
        }
        guard capsResponse.completionCode == .ok, let caps = try? ChannelAuthCapabilities(decoding: capsResponse.data) else {
            throw BMCError(.protocolError, address: address, "BMC \(address) refused Get Channel Authentication Capabilities: \(capsResponse.completionCode)")
        }
        guard caps.supportsIPMIv2 else {
            throw BMCError.unsupported(address, operation: "IPMI v2.0 (RMCP+)", detail: "the BMC only speaks IPMI v1.5")
        }

        // 2. Which cipher suite.
        var suite: IPMICipherSuite
        if let forced = ep.cipherSuite {
            guard let s = IPMICipherSuite.supported(id: forced) else {
                throw BMCError.unsupported(address, operation: "cipher suite \(forced)", detail: "Farrier speaks suites 3 and 17")
            }
            suite = s
        } else {
            let offered = try await cipherSuites(udp)
            if let best = IPMICipherSuite.preferred(among: offered) {
                suite = best
            } else if offered.isEmpty {
                suite = .suite3
            } else {
                throw BMCError.unsupported(address, operation: "a secure cipher suite", detail: "it offers \(offered.map(String.init).joined(separator: ",")), Farrier needs 3 or 17")
            }
        }
        logger.debug("IPMI session setup", metadata: ["ipmi.suite": "\(suite.id)"])

        // 3–6. Open Session, RAKP and the privilege level. RAKP steps are not safely repeatable
        // (a BMC that got our RAKP 3 but lost its RAKP 4 has moved on), so a lost exchange there
        // restarts the setup from Open Session with new IDs, as ipmitool does; stale answers to
        // earlier attempts are told apart by their tag and session IDs.
        let attempts = max(2, ep.timeouts.retries + 1)
        for attempt in 1...attempts {
            do {
                return try await openAndAuthenticate(udp, suite: &suite)
            } catch let e as BMCError where e.kind == .timeout && attempt < attempts {
                logger.debug("IPMI session setup restarts", metadata: ["ipmi.attempt": "\(attempt)", "error": "\(e)"])
            }
        }
        throw BMCError.timeout(address, after: ep.timeouts.operation, doing: "session setup")
    }

    func openAndAuthenticate(_ udp: UDPEndpoint, suite: inout IPMICipherSuite) async throws -> IPMISession {
        let ep = endpointConfiguration
        // Each step gets one retransmission; a lost exchange restarts the setup (see above).
        let stepRetries = min(1, ep.timeouts.retries)
        var rng = SystemRandomNumberGenerator()
        let consoleSID = UInt32.random(in: 1...UInt32.max, using: &rng)
        let tag = UInt8.random(in: 0...255, using: &rng)
        var open: OpenSessionResponse
        open = try await openSession(udp, tag: tag, consoleSID: consoleSID, suite: suite, retries: stepRetries)
        if open.status == .noMatchingCipherSuite && suite == .suite17 && ep.cipherSuite == nil {
            suite = .suite3
            open = try await openSession(udp, tag: tag, consoleSID: consoleSID, suite: suite, retries: stepRetries)
        }
        guard open.status == .ok else {
            if open.status.isAuthenticationFailure { throw BMCError.authenticationFailed(address) }
            throw BMCError(.rejected, address: address, "BMC \(address) refused the session: \(open.status)")
        }

        // 4. RAKP 1 and 2: the BMC proves it knows the password.
        let rm = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let rakp = RAKPExchange(
            suite: suite, consoleSessionID: consoleSID, bmcSessionID: open.bmcSessionID, consoleRandom: rm,
            userName: ep.user, password: Array(ep.password.utf8), privilege: ep.privilege)
        let m2 = try await exchange(udp, rmcpPlusPresession(.rakp1, payload: rakp.rakp1(tag: tag)), what: "RAKP 1", retries: stepRetries) { bytes -> RAKPExchange.Message2? in
            guard let p = payload(bytes, .rakp2), let m = try? RAKPExchange.Message2(decoding: p), m.tag == tag else { return nil }
            return m
        }
        guard m2.status == .ok else {
            if m2.status.isAuthenticationFailure { throw BMCError.authenticationFailed(address) }
            throw BMCError(.rejected, address: address, "BMC \(address) refused RAKP 1: \(m2.status)")
        }
        // A wrong password shows here: the BMC's code was made with a different key.
        guard m2.consoleSessionID == consoleSID, m2.keyExchangeCode == rakp.expectedRAKP2Code(m2) else {
            throw BMCError.authenticationFailed(address)
        }

        // 5. RAKP 3 and 4: we prove it, and both sides derive the session keys.
        let m4 = try await exchange(udp, rmcpPlusPresession(.rakp3, payload: rakp.rakp3(tag: tag, after: m2)), what: "RAKP 3", retries: stepRetries) { bytes -> RAKPExchange.Message4? in
            guard let p = payload(bytes, .rakp4), let m = try? RAKPExchange.Message4(decoding: p), m.tag == tag else { return nil }
            return m
        }
        guard m4.status == .ok else {
            if m4.status.isAuthenticationFailure { throw BMCError.authenticationFailed(address) }
            throw BMCError(.rejected, address: address, "BMC \(address) refused RAKP 3: \(m4.status)")
        }
        guard m4.integrityCheckValue == rakp.expectedRAKP4ICV(m2) else {
            throw BMCError(.protocolError, address: address, "BMC \(address) sent a RAKP 4 that does not verify")
        }
        let crypto = IPMISessionCrypto(keys: rakp.sessionKeys(after: m2), bmcSessionID: open.bmcSessionID, consoleSessionID: consoleSID)
        let session = IPMISession(endpoint: udp, crypto: crypto, suite: suite, address: address, timeouts: ep.timeouts)

        // 6. Raise the session to the privilege we asked for.
        let priv = try await session.send({ IPMICommand.setSessionPrivilege(ep.privilege, sequence: $0) }, what: "Set Session Privilege Level")
        guard priv.completionCode == .ok else {
            await session.close()
            throw BMCError(.rejected, address: address, "BMC \(address) refused privilege \(ep.privilege) for user \(ep.user): \(priv.completionCode)")
        }
        logger.debug("IPMI session established", metadata: ["ipmi.suite": "\(suite.id)"])
        return session
    }

    func openSession(_ udp: UDPEndpoint, tag: UInt8, consoleSID: UInt32, suite: IPMICipherSuite, retries: Int) async throws -> OpenSessionResponse {
        let request = OpenSessionRequest(tag: tag, consoleSessionID: consoleSID, suite: suite)
        return try await exchange(udp, rmcpPlusPresession(.openSessionRequest, payload: request.encoded()), what: "Open Session", retries: retries) { bytes in
            guard let p = payload(bytes, .openSessionResponse), let r = try? OpenSessionResponse(decoding: p), r.tag == tag else { return nil }
            return r
        }
    }

    /// The cipher suite IDs the BMC lists; empty if it does not implement the command.
    /// Sent outside a session in v1.5 framing, as Get Channel Authentication Capabilities is.
    func cipherSuites(_ udp: UDPEndpoint) async throws -> [UInt8] {
        var data: [UInt8] = []
        for index in 0..<64 {
            let request = IPMICommand.getChannelCipherSuites(index: UInt8(index), sequence: UInt8(index & 0x3F))
            let r = try await exchange(udp, IPMIv15Packet(message: request.encoded()).encoded(), what: "Get Channel Cipher Suites") {
                presessionResponse($0, to: request)
            }
            guard r.completionCode == .ok, r.data.count >= 1 else { return [] }
            data += r.data.dropFirst()
            if r.data.count < 17 { break }
        }
        return IPMICipherSuiteRecord.parse(data).map(\.id)
    }
}
