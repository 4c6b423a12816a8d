import Foundation
import IPMIWire
import Synchronization
import SystemSupport

/// An established RMCP+ session on its own UDP socket.
final class IPMISession: Sendable {
    let endpoint: UDPEndpoint
    let crypto: Mutex<IPMISessionCrypto>
    let requestSequence: Atomic<UInt8>
    let lastUsed = Mutex(ContinuousClock.now)
    let suite: IPMICipherSuite
    let address: String
    let timeouts: BMCTimeouts

    /// `sequenceUsed`: the last request sequence number the setup used (its Set Session
    /// Privilege Level).
    init(
        endpoint: UDPEndpoint,
        crypto: IPMISessionCrypto,
        suite: IPMICipherSuite,
        address: String,
        timeouts: BMCTimeouts,
        sequenceUsed: UInt8
    ) {
        self.endpoint = endpoint
        self.requestSequence = Atomic(sequenceUsed)
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
        let iv = SecureRandom.bytes(16)
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
                guard let bytes = await endpoint.next(timeout: ContinuousClock.now.duration(to: deadline)) else {
                    break
                }
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
        try? await endpoint.send(
            seal(.ipmi, IPMICommand.closeSession(bmcSessionID: sid, sequence: nextRequestSequence()).encoded())
        )
        _ = await endpoint.next(timeout: .milliseconds(300))
        await endpoint.close()
    }
}
