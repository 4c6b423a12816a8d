import TFTPWire

/// The sending side of one TFTP read transfer (RFC 1350, 2347, 2348, 7440), without I/O.
///
/// Blocks are numbered absolutely from 1; on the wire the number is truncated to 16 bits, so
/// files of more than 65535 blocks roll over to 0 (common practice; no RFC defines it).
///
/// Retransmission happens only when the deadline passes, never because a duplicate ACK arrived
/// (the Sorcerer's Apprentice bug, RFC 1123 §4.2.3.1). An ACK for a block inside the window that
/// was sent means the receiver saw a gap: sending resumes after that block (RFC 7440 §4).
public struct TFTPTransferStateMachine: Sendable {
    public enum Action: Hashable, Sendable {
        /// Send the option acknowledgement.
        case sendOptionAck([TFTPOption])
        /// Send DATA for these absolute block numbers.
        case sendData(ClosedRange<Int>)
        /// Nothing to send now.
        case none
        /// The last block was acknowledged.
        case finished
        /// Give up: retries are exhausted, or the client aborted.
        case failed(String)
    }

    enum State: Hashable, Sendable {
        case idle
        case awaitingOptionAckAck
        case transferring
        case done
    }

    public let negotiation: TFTPNegotiation
    public let fileSize: Int
    /// The number of DATA blocks, including a final empty block when the size is a multiple of blksize.
    public let totalBlocks: Int
    public let retransmitTimeout: Duration
    public let maxRetries: Int

    var state: State = .idle
    /// Highest block acknowledged in order.
    public private(set) var acknowledged = 0
    /// Highest block sent so far.
    public private(set) var sentThrough = 0
    public private(set) var retries = 0
    /// When to call `timeout(now:)` next, if anything is outstanding.
    public private(set) var deadline: ContinuousClock.Instant?
    /// Retransmitted packets, for metrics.
    public private(set) var retransmissions = 0

    public init(
        negotiation: TFTPNegotiation,
        fileSize: Int,
        retransmitTimeout: Duration? = nil,
        maxRetries: Int = 5
    ) {
        self.negotiation = negotiation
        self.fileSize = fileSize
        self.totalBlocks = fileSize / negotiation.blockSize + 1
        self.retransmitTimeout = retransmitTimeout ?? .seconds(negotiation.timeoutSeconds ?? 1)
        self.maxRetries = maxRetries
    }

    public var isFinished: Bool { state == .done }

    /// The byte range of an absolute block in the file.
    public func byteRange(ofBlock block: Int) -> Range<Int> {
        let start = (block - 1) * negotiation.blockSize
        return min(start, fileSize)..<min(start + negotiation.blockSize, fileSize)
    }

    public static func wireBlock(_ block: Int) -> UInt16 { UInt16(truncatingIfNeeded: block) }

    public mutating func start(now: ContinuousClock.Instant) -> Action {
        precondition(state == .idle, "start called twice")
        deadline = now + retransmitTimeout
        if negotiation.acknowledged.isEmpty {
            state = .transferring
            return sendWindow()
        }
        state = .awaitingOptionAckAck
        return .sendOptionAck(negotiation.acknowledged)
    }

    public mutating func receiveAck(_ wireBlock: UInt16, now: ContinuousClock.Instant) -> Action {
        switch state {
        case .idle, .done:
            return .none
        case .awaitingOptionAckAck:
            guard wireBlock == 0 else { return .none }
            state = .transferring
            retries = 0
            deadline = now + retransmitTimeout
            return sendWindow()
        case .transferring:
            // Find the absolute block this ACK names among those sent and not yet acknowledged.
            guard
                let block = (acknowledged + 1...max(acknowledged + 1, sentThrough)).first(where: {
                    $0 <= sentThrough && Self.wireBlock($0) == wireBlock
                })
            else {
                return .none  // duplicate or stale ACK: never retransmit on it
            }
            acknowledged = block
            retries = 0
            if acknowledged == totalBlocks {
                state = .done
                deadline = nil
                return .finished
            }
            deadline = now + retransmitTimeout
            if acknowledged < sentThrough {
                // The receiver acknowledged part of the window: it saw a gap. Resume after it.
                sentThrough = acknowledged
                return sendWindow()
            }
            return sendWindow()
        }
    }

    public mutating func receiveError() -> Action {
        guard state != .done else { return .none }
        state = .done
        deadline = nil
        return .failed("client sent an error")
    }

    /// Call when `deadline` has passed.
    public mutating func timeout(now: ContinuousClock.Instant) -> Action {
        guard let d = deadline, now >= d, state != .done else { return .none }
        guard retries < maxRetries else {
            state = .done
            deadline = nil
            return .failed("no acknowledgement after \(retries) retransmissions")
        }
        retries += 1
        deadline = now + retransmitTimeout
        switch state {
        case .awaitingOptionAckAck:
            retransmissions += 1
            return .sendOptionAck(negotiation.acknowledged)
        case .transferring:
            let range = (acknowledged + 1)...min(acknowledged + negotiation.windowSize, totalBlocks)
            retransmissions += range.count
            return .sendData(range)
        case .idle, .done:
            return .none
        }
    }

    /// Sends the blocks that fit in the window after the last acknowledged one and are not yet sent.
    mutating func sendWindow() -> Action {
        let last = min(acknowledged + negotiation.windowSize, totalBlocks)
        let first = max(sentThrough, acknowledged) + 1
        guard first <= last else { return .none }
        sentThrough = last
        return .sendData(first...last)
    }
}
