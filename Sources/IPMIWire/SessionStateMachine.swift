import WireSupport

/// RMCP+ session setup (IPMI v2.0 §13.14–13.31, §22.13–22.15) as a pure state machine: Get
/// Channel Authentication Capabilities, Get Channel Cipher Suites, Open Session, RAKP 1–4 and
/// Set Session Privilege Level. It takes events (a datagram arrived, a wait timed out) and
/// returns what to do next; it does no I/O and reads no clock, so tables of captured bytes
/// drive it in tests. `IPMIClient` is its driver: it sends what `.send` carries, feeds every
/// datagram to `received`, and calls `timedOut` when a wait ends with nothing for the machine.
///
/// Retransmission and restarts are decided here. A lost capabilities or cipher-suite exchange
/// is retransmitted up to `retries` times. RAKP steps are not safely repeatable (a BMC that got
/// RAKP 3 but lost its RAKP 4 has moved on), so each gets one retransmission and then the setup
/// restarts from Open Session with new IDs, as ipmitool does, at most `attempts` times. Stale
/// answers to earlier attempts are told apart by their tag and session IDs, and ignored.
public struct IPMISessionStateMachine: Sendable {
    public struct Configuration: Sendable {
        public var user: String
        public var password: [UInt8]
        public var privilege: IPMIPrivilege
        /// A cipher suite the operator forced (3 or 17); nil: ask the BMC, prefer 17.
        public var cipherSuite: UInt8?
        /// Retransmissions of a step outside RAKP, and of Set Session Privilege Level.
        public var retries: Int

        public init(user: String, password: [UInt8], privilege: IPMIPrivilege, cipherSuite: UInt8?, retries: Int) {
            self.user = user
            self.password = password
            self.privilege = privilege
            self.cipherSuite = cipherSuite
            self.retries = retries
        }

        /// How many times the setup may start from Open Session.
        var attempts: Int { max(2, retries + 1) }
        /// Retransmissions of an Open Session or RAKP message before the setup restarts.
        var rakpRetries: Int { min(1, retries) }
    }

    public enum Step: Sendable, Hashable, CustomStringConvertible {
        case capabilities, cipherSuites, openSession, rakp1, rakp3, privilege

        public var description: String {
            switch self {
            case .capabilities: "Get Channel Authentication Capabilities"
            case .cipherSuites: "Get Channel Cipher Suites"
            case .openSession: "Open Session"
            case .rakp1: "RAKP 1"
            case .rakp3: "RAKP 3"
            case .privilege: "Set Session Privilege Level"
            }
        }

        /// Steps after which a lost answer restarts the setup instead of failing it.
        var restartsSetup: Bool { self != .capabilities && self != .cipherSuites }
    }

    public enum Failure: Error, Sendable, Hashable, CustomStringConvertible {
        /// The BMC answered a step with an error (its completion code or RAKP status).
        case refused(Step, String)
        /// The BMC does not speak IPMI v2.0.
        case onlyIPMIv15
        /// The operator forced a suite Farrier does not speak.
        case unsupportedSuite(UInt8)
        /// The BMC offers no suite Farrier accepts (3 or 17).
        case noSecureSuite(offered: [UInt8])
        /// Wrong user name or password (the BMC said so, or its RAKP 2 did not verify).
        case authenticationFailed
        /// RAKP 4 came with a status of success and an integrity value that does not verify.
        case rakp4DoesNotVerify
        /// Nothing answered `Step` through all retransmissions (and, for RAKP steps, restarts).
        case timedOut(Step)

        public var description: String {
            switch self {
            case .refused(let step, let why): "refused \(step): \(why)"
            case .onlyIPMIv15: "speaks only IPMI v1.5"
            case .unsupportedSuite(let id): "cipher suite \(id) is not one Farrier speaks (3 and 17)"
            case .noSecureSuite(let offered):
                "offers cipher suites \(offered.map(String.init).joined(separator: ",")); Farrier needs 3 or 17"
            case .authenticationFailed: "authentication failed (user name or password)"
            case .rakp4DoesNotVerify: "sent a RAKP 4 that does not verify"
            case .timedOut(let step): "did not answer \(step)"
            }
        }
    }

    public enum Action: Sendable {
        /// Send this datagram; then feed what arrives to `received`, and call `timedOut` when
        /// one attempt's time passes with no answer that ended the step.
        case send([UInt8], Step)
        /// The session is up at the requested privilege: its keys, IDs and sequence numbers.
        case established(IPMISessionCrypto, IPMICipherSuite)
        /// Setup failed. `close`: a session was opened and should be closed (best effort).
        case fail(Failure, close: IPMISessionCrypto?)
    }

    /// Random bytes (IDs, the console random, IVs): the system's in production, a table's in tests.
    public typealias RandomBytes = @Sendable (Int) -> [UInt8]

    enum State: Sendable {
        case idle
        case capabilities(IPMIRequest)
        case cipherSuites(IPMIRequest, index: Int, data: [UInt8])
        case openSession(Session)
        case rakp1(Session, bmcSessionID: UInt32, exchange: RAKPExchange)
        case rakp3(Session, bmcSessionID: UInt32, exchange: RAKPExchange, m2: RAKPMessage2)
        case privilege(IPMISessionCrypto, IPMIRequest)
        case done
    }

    /// One attempt's identity: what tells its answers from stale ones.
    struct Session: Sendable {
        var consoleSessionID: UInt32
        var tag: UInt8
    }

    public let configuration: Configuration
    let random: RandomBytes
    var state: State = .idle
    var suite: IPMICipherSuite = .suite3
    /// The datagram last sent and how often (retransmissions are the same bytes).
    var lastSent: [UInt8] = []
    var sends = 0
    /// Setups started from Open Session so far.
    public private(set) var attempt = 0
    /// A sealed Close Session for a session this setup abandons (its RAKP 4 or privilege answer
    /// was lost, so the BMC may hold it open): the driver sends it once, before what `timedOut`
    /// returned, so the BMC frees the slot now rather than at its idle timeout.
    public private(set) var closeAbandoned: [UInt8]?

    public init(configuration: Configuration, random: @escaping RandomBytes) {
        self.configuration = configuration
        self.random = random
    }

    /// The first action: ask the BMC what it supports.
    public mutating func start() -> Action {
        let request = IPMICommand.getChannelAuthCapabilities(privilege: configuration.privilege)
        state = .capabilities(request)
        return send(IPMIv15Packet(message: request.encoded()).encoded(), .capabilities)
    }

    /// A datagram arrived. nil: it is not an answer to the step in progress (stale, forged,
    /// another session's, undecodable); keep waiting for the rest of the attempt.
    public mutating func received(_ datagram: [UInt8]) -> Action? {
        switch state {
        case .idle, .done:
            return nil
        case .capabilities(let request):
            guard let r = Self.presessionResponse(datagram, to: request) else { return nil }
            guard r.completionCode == .ok, let caps = try? ChannelAuthCapabilities(decoding: r.data) else {
                return finish(.refused(.capabilities, "\(r.completionCode)"))
            }
            guard caps.supportsIPMIv2 else { return finish(.onlyIPMIv15) }
            if let forced = configuration.cipherSuite {
                guard let s = IPMICipherSuite.supported(id: forced) else { return finish(.unsupportedSuite(forced)) }
                suite = s
                return beginSetup()
            }
            return askCipherSuites(index: 0, data: [])
        case .cipherSuites(let request, let index, let data):
            guard let r = Self.presessionResponse(datagram, to: request) else { return nil }
            // A BMC without the command (or with an empty list) gets suite 3, as ipmitool's default.
            guard r.completionCode == .ok, r.data.count >= 1 else { return chooseSuite(offered: []) }
            let all = data + r.data.dropFirst()
            // Records come 16 at a time; a shorter answer is the last (64 requests at most).
            if r.data.count < 17 || index == 63 {
                return chooseSuite(offered: IPMICipherSuiteRecord.parse(all).map(\.id))
            }
            return askCipherSuites(index: index + 1, data: all)
        case .openSession(let session):
            guard let p = Self.payload(datagram, .openSessionResponse),
                let open = try? OpenSessionResponse(decoding: p),
                open.tag == session.tag, open.status != .ok || open.consoleSessionID == session.consoleSessionID
            else { return nil }
            if open.status == .noMatchingCipherSuite, suite == .suite17, configuration.cipherSuite == nil {
                // Suite 17 listed but refused: offer 3 in the same attempt, under a new tag and
                // session ID, so a second refusal (the answer to a retransmitted suite-17
                // request) cannot be taken for the answer to this one.
                suite = .suite3
                return openSession(newSession())
            }
            guard open.status == .ok else {
                return finish(
                    open.status.isAuthenticationFailure
                        ? .authenticationFailed : .refused(.openSession, "\(open.status)")
                )
            }
            let exchange = RAKPExchange(
                suite: suite,
                consoleSessionID: session.consoleSessionID,
                bmcSessionID: open.bmcSessionID,
                consoleRandom: random(16),
                userName: configuration.user,
                password: configuration.password,
                privilege: configuration.privilege
            )
            state = .rakp1(session, bmcSessionID: open.bmcSessionID, exchange: exchange)
            return send(rmcpPlusPresession(.rakp1, payload: exchange.rakp1(tag: session.tag)), .rakp1)
        case .rakp1(let session, let bmcSessionID, let exchange):
            guard let p = Self.payload(datagram, .rakp2), let m2 = try? RAKPMessage2(decoding: p),
                m2.tag == session.tag,
                m2.status != .ok || m2.consoleSessionID == session.consoleSessionID
            else { return nil }
            guard m2.status == .ok else {
                return finish(
                    m2.status.isAuthenticationFailure ? .authenticationFailed : .refused(.rakp1, "\(m2.status)")
                )
            }
            // A wrong password shows here: the BMC's code was made with a different key.
            guard m2.keyExchangeCode == exchange.expectedRAKP2Code(m2) else { return finish(.authenticationFailed) }
            state = .rakp3(session, bmcSessionID: bmcSessionID, exchange: exchange, m2: m2)
            return send(rmcpPlusPresession(.rakp3, payload: exchange.rakp3(tag: session.tag, after: m2)), .rakp3)
        case .rakp3(let session, let bmcSessionID, let exchange, let m2):
            guard let p = Self.payload(datagram, .rakp4), let m4 = try? RAKPMessage4(decoding: p),
                m4.tag == session.tag,
                m4.status != .ok || m4.consoleSessionID == session.consoleSessionID
            else { return nil }
            guard m4.status == .ok else {
                return finish(
                    m4.status.isAuthenticationFailure ? .authenticationFailed : .refused(.rakp3, "\(m4.status)")
                )
            }
            guard m4.integrityCheckValue == exchange.expectedRAKP4ICV(m2) else { return finish(.rakp4DoesNotVerify) }
            var crypto = IPMISessionCrypto(
                keys: exchange.sessionKeys(after: m2),
                bmcSessionID: bmcSessionID,
                consoleSessionID: session.consoleSessionID
            )
            let request = IPMICommand.setSessionPrivilege(configuration.privilege, sequence: 1)
            let packet = crypto.seal(.ipmi, payload: request.encoded(), iv: random(16))
            state = .privilege(crypto, request)
            return send(packet, .privilege)
        case .privilege(var crypto, let request):
            guard case .v2(let envelope)? = try? IPMIDatagram(decoding: datagram), envelope.payloadType == .ipmi,
                let payload = try? crypto.open(envelope), let r = try? IPMIResponse(decoding: payload),
                r.answers(request)
            else { return nil }
            guard r.completionCode == .ok else {
                state = .done
                return .fail(.refused(.privilege, "\(r.completionCode)"), close: crypto)
            }
            state = .done
            return .established(crypto, suite)
        }
    }

    /// One attempt's time passed with nothing that ended the step: retransmit, restart the
    /// setup from Open Session, or give up.
    public mutating func timedOut() -> Action {
        let step: Step
        let retries: Int
        switch state {
        case .idle, .done: return .fail(.timedOut(.capabilities), close: nil)
        case .capabilities: (step, retries) = (.capabilities, configuration.retries)
        case .cipherSuites: (step, retries) = (.cipherSuites, configuration.retries)
        case .openSession: (step, retries) = (.openSession, configuration.rakpRetries)
        case .rakp1: (step, retries) = (.rakp1, configuration.rakpRetries)
        case .rakp3: (step, retries) = (.rakp3, configuration.rakpRetries)
        case .privilege: (step, retries) = (.privilege, configuration.retries)
        }
        if sends <= retries {
            sends += 1
            if case .privilege(var crypto, let request) = state {
                // Inside the session every packet needs a new sequence number (a BMC drops a
                // repeated one as a replay): seal the request again rather than resend the bytes.
                lastSent = crypto.seal(.ipmi, payload: request.encoded(), iv: random(16))
                state = .privilege(crypto, request)
            }
            return .send(lastSent, step)
        }
        if step.restartsSetup, attempt < configuration.attempts {
            abandon()
            return beginSetup()
        }
        abandon()
        return finish(.timedOut(step))
    }

    /// Takes the Close Session datagram for an abandoned session, if there is one.
    public mutating func takeCloseAbandoned() -> [UInt8]? {
        defer { closeAbandoned = nil }
        return closeAbandoned
    }

    /// A session the BMC may have opened (after RAKP 3 or during the privilege step) is about
    /// to be left: seal its Close Session.
    mutating func abandon() {
        var crypto: IPMISessionCrypto
        switch state {
        case .rakp3(let session, let bmcSessionID, let exchange, let m2):
            crypto = IPMISessionCrypto(
                keys: exchange.sessionKeys(after: m2),
                bmcSessionID: bmcSessionID,
                consoleSessionID: session.consoleSessionID
            )
        case .privilege(let c, _):
            crypto = c
        default:
            return
        }
        let bye = IPMICommand.closeSession(bmcSessionID: crypto.bmcSessionID, sequence: 2)
        closeAbandoned = crypto.seal(.ipmi, payload: bye.encoded(), iv: random(16))
    }

    // MARK: Transitions

    mutating func send(_ packet: [UInt8], _ step: Step) -> Action {
        lastSent = packet
        sends = 1
        return .send(packet, step)
    }

    mutating func finish(_ failure: Failure) -> Action {
        state = .done
        return .fail(failure, close: nil)
    }

    mutating func askCipherSuites(index: Int, data: [UInt8]) -> Action {
        let request = IPMICommand.getChannelCipherSuites(index: UInt8(index), sequence: UInt8(index & 0x3F))
        state = .cipherSuites(request, index: index, data: data)
        return send(IPMIv15Packet(message: request.encoded()).encoded(), .cipherSuites)
    }

    mutating func chooseSuite(offered: [UInt8]) -> Action {
        if let best = IPMICipherSuite.preferred(among: offered) {
            suite = best
        } else if offered.isEmpty {
            suite = .suite3
        } else {
            return finish(.noSecureSuite(offered: offered))
        }
        return beginSetup()
    }

    /// Open Session with a new console session ID and tag.
    mutating func beginSetup() -> Action {
        attempt += 1
        return openSession(newSession())
    }

    /// A new console session ID (never 0, which means "no session") and tag.
    func newSession() -> Session {
        let id = random(4)
        let tag = random(1)
        let sid = UInt32(id[0]) | UInt32(id[1]) << 8 | UInt32(id[2]) << 16 | UInt32(id[3]) << 24
        return Session(consoleSessionID: sid == 0 ? 1 : sid, tag: tag[0])
    }

    mutating func openSession(_ session: Session) -> Action {
        state = .openSession(session)
        let request = OpenSessionRequest(tag: session.tag, consoleSessionID: session.consoleSessionID, suite: suite)
        return send(rmcpPlusPresession(.openSessionRequest, payload: request.encoded()), .openSession)
    }

    // MARK: Decoding

    /// An answer to `request` outside a session (v1.5 framing, or v2.0 with session ID 0).
    static func presessionResponse(_ bytes: [UInt8], to request: IPMIRequest) -> IPMIResponse? {
        let message: [UInt8]
        switch try? IPMIDatagram(decoding: bytes) {
        case .v15(let m): message = m
        case .v2(let e) where e.payloadType == .ipmi && e.sessionID == 0: message = e.payload
        default: return nil
        }
        guard let r = try? IPMIResponse(decoding: message), r.answers(request) else { return nil }
        return r
    }

    static func payload(_ bytes: [UInt8], _ type: IPMIPayloadType) -> [UInt8]? {
        guard case .v2(let e) = try? IPMIDatagram(decoding: bytes), e.payloadType == type else { return nil }
        return e.payload
    }
}
