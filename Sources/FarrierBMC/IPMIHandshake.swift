import Foundation
import IPMIWire
import Logging
import SystemSupport

// Session setup: the driver of `IPMISessionStateMachine`, which makes every decision; here
// are only the socket, the clock and the mapping of its failures to BMC errors.
extension IPMIClient {
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

    func withBound<T: Sendable>(
        _ limit: Duration,
        what: String,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
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
    func exchange<T>(
        _ udp: UDPEndpoint,
        _ packet: [UInt8],
        what: String,
        retries: Int? = nil,
        _ accept: ([UInt8]) throws -> T?
    ) async throws -> T {
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

    /// Drives `IPMISessionStateMachine` over `udp`: sends what it says, feeds it every datagram
    /// that arrives, and tells it when an attempt's time passed. All decisions are the machine's.
    func handshake(_ udp: UDPEndpoint) async throws -> IPMISession {
        let ep = endpointConfiguration
        var machine = IPMISessionStateMachine(
            configuration: .init(
                user: ep.user,
                password: Array(ep.password.utf8),
                privilege: ep.privilege,
                cipherSuite: ep.cipherSuite,
                retries: ep.timeouts.retries
            ),
            random: SecureRandom.bytes
        )
        var action = machine.start()
        var attempt = 0
        // Bounded by the machine (at most 64 cipher-suite pages, retries and restarts), and by
        // the caller's operation timeout (withBound).
        while true {
            switch action {
            case .send(let packet, let step):
                // The operation's bound passed (withBound cancels): stop at once, not after the
                // machine's remaining retries. (Only here: an established or refused session is
                // still handed over or closed.)
                try Task.checkCancellation()
                if machine.attempt > 1, machine.attempt != attempt {
                    logger.debug(
                        "IPMI session setup restarts",
                        metadata: ["ipmi.attempt": "\(machine.attempt)", "ipmi.step": "\(step)"]
                    )
                }
                attempt = machine.attempt
                // A session the machine gave up on (its last answer lost): closed, best effort.
                if let bye = machine.takeCloseAbandoned() { try? await udp.send(bye) }
                try await udp.send(packet)
                let deadline = ContinuousClock.now + ep.timeouts.attempt
                var next: IPMISessionStateMachine.Action?
                while next == nil, ContinuousClock.now < deadline {
                    guard let bytes = await udp.next(timeout: ContinuousClock.now.duration(to: deadline)) else { break }
                    next = machine.received(bytes)
                }
                action = next ?? machine.timedOut()
            case .established(let crypto, let suite):
                logger.debug("IPMI session established", metadata: ["ipmi.suite": "\(suite.id)"])
                return IPMISession(
                    endpoint: udp,
                    crypto: crypto,
                    suite: suite,
                    address: address,
                    timeouts: ep.timeouts,
                    sequenceUsed: 1
                )
            case .fail(let failure, let close):
                if let bye = machine.takeCloseAbandoned() { try? await udp.send(bye) }
                if let close {
                    // A session was opened (the privilege was refused): free the BMC's slot now.
                    await IPMISession(
                        endpoint: udp,
                        crypto: close,
                        suite: .suite3,
                        address: address,
                        timeouts: ep.timeouts,
                        sequenceUsed: 1
                    )
                    .close()
                }
                throw error(for: failure)
            }
        }
    }

    /// The BMC error an operator sees for a failed setup.
    func error(for failure: IPMISessionStateMachine.Failure) -> BMCError {
        let ep = endpointConfiguration
        switch failure {
        case .refused(.capabilities, let why):
            return BMCError(
                .protocolError,
                address: address,
                "BMC \(address) refused Get Channel Authentication Capabilities: \(why)"
            )
        case .refused(.privilege, let why):
            return BMCError(
                .rejected,
                address: address,
                "BMC \(address) refused privilege \(ep.privilege) for user \(ep.user): \(why)"
            )
        case .refused(let step, let why):
            return BMCError(.rejected, address: address, "BMC \(address) refused \(step): \(why)")
        case .onlyIPMIv15:
            return BMCError.unsupported(
                address,
                operation: "IPMI v2.0 (RMCP+)",
                detail: "the BMC only speaks IPMI v1.5"
            )
        case .unsupportedSuite(let id):
            return BMCError.unsupported(
                address,
                operation: "cipher suite \(id)",
                detail: "Farrier speaks suites 3 and 17"
            )
        case .noSecureSuite(let offered):
            return BMCError.unsupported(
                address,
                operation: "a secure cipher suite",
                detail: "it offers \(offered.map(String.init).joined(separator: ",")), Farrier needs 3 or 17"
            )
        case .authenticationFailed:
            return BMCError.authenticationFailed(address)
        case .rakp4DoesNotVerify:
            return BMCError(.protocolError, address: address, "BMC \(address) sent a RAKP 4 that does not verify")
        case .timedOut(let step) where step == .capabilities || step == .cipherSuites:
            return BMCError.timeout(
                address,
                after: ep.timeouts.attempt * (ep.timeouts.retries + 1),
                doing: step.description
            )
        case .timedOut:
            return BMCError.timeout(address, after: ep.timeouts.operation, doing: "session setup")
        }
    }
}
