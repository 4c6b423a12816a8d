import TFTPServer
import TFTPWire
import Testing

@Suite struct TFTPTransferStateMachineTests {
    let t0 = ContinuousClock.now

    func machine(size: Int, options: [(String, String)] = [], retries: Int = 3) -> TFTPTransferStateMachine {
        let req = TFTPRequest(filename: "f", options: options.map { TFTPOption($0.0, $0.1) })
        return TFTPTransferStateMachine(
            negotiation: TFTPNegotiation(request: req, fileSize: size),
            fileSize: size,
            retransmitTimeout: .seconds(1),
            maxRetries: retries
        )
    }

    @Test func lockstepWithoutOptions() {
        var m = machine(size: 1024)  // two full 512-byte blocks, then an empty third
        #expect(m.totalBlocks == 3)
        #expect(m.start(now: t0) == .sendData(1...1))
        #expect(m.receiveAck(1, now: t0) == .sendData(2...2))
        #expect(m.receiveAck(2, now: t0) == .sendData(3...3))
        #expect(m.byteRange(ofBlock: 3) == 1024..<1024)
        #expect(m.receiveAck(3, now: t0) == .finished)
        #expect(m.isFinished)
    }

    @Test func optionAckThenData() {
        var m = machine(size: 100, options: [("blksize", "1468"), ("tsize", "0")])
        #expect(m.start(now: t0) == .sendOptionAck([TFTPOption("blksize", "1468"), TFTPOption("tsize", "100")]))
        #expect(m.receiveAck(1, now: t0) == TFTPTransferStateMachine.Action.none)  // not ACK 0
        #expect(m.receiveAck(0, now: t0) == .sendData(1...1))
        #expect(m.receiveAck(1, now: t0) == .finished)
    }

    @Test func duplicateAckNeverRetransmits() {
        var m = machine(size: 2000)
        _ = m.start(now: t0)
        #expect(m.receiveAck(1, now: t0) == .sendData(2...2))
        // Sorcerer's Apprentice: the duplicate ACK 1 must not cause DATA 2 to go out again.
        #expect(m.receiveAck(1, now: t0) == TFTPTransferStateMachine.Action.none)
        #expect(m.receiveAck(1, now: t0 + .milliseconds(500)) == TFTPTransferStateMachine.Action.none)
        #expect(m.retransmissions == 0)
    }

    @Test func retransmitsOnlyAfterTheTimeoutAndGivesUpAfterTheBudget() {
        var m = machine(size: 2000, retries: 2)
        #expect(m.start(now: t0) == .sendData(1...1))
        #expect(m.deadline == t0 + .seconds(1))
        // Before the deadline nothing happens.
        #expect(m.timeout(now: t0 + .milliseconds(999)) == TFTPTransferStateMachine.Action.none)
        #expect(m.timeout(now: t0 + .seconds(1)) == .sendData(1...1))
        #expect(m.deadline == t0 + .seconds(2))
        #expect(m.timeout(now: t0 + .seconds(2)) == .sendData(1...1))
        guard case .failed = m.timeout(now: t0 + .seconds(3)) else {
            Issue.record("expected failure after the retry budget")
            return
        }
        #expect(m.retransmissions == 2)
        #expect(m.isFinished)
    }

    @Test func progressResetsTheRetryBudgetAndMovesTheDeadline() {
        var m = machine(size: 2000, retries: 1)
        _ = m.start(now: t0)
        #expect(m.timeout(now: t0 + .seconds(1)) == .sendData(1...1))
        #expect(m.receiveAck(1, now: t0 + .milliseconds(1500)) == .sendData(2...2))
        #expect(m.retries == 0)
        #expect(m.deadline == t0 + .milliseconds(2500))
        #expect(m.timeout(now: t0 + .milliseconds(2500)) == .sendData(2...2))
    }

    @Test func optionAckIsRetransmittedOnTimeout() {
        var m = machine(size: 10, options: [("tsize", "0")])
        let oack = m.start(now: t0)
        #expect(m.timeout(now: t0 + .seconds(1)) == oack)
    }

    @Test func windowedTransferAndGapRecovery() {
        var m = machine(size: 512 * 20 + 5, options: [("windowsize", "8")])  // 21 blocks
        #expect(m.start(now: t0) == .sendOptionAck([TFTPOption("windowsize", "8")]))
        #expect(m.receiveAck(0, now: t0) == .sendData(1...8))
        #expect(m.receiveAck(8, now: t0) == .sendData(9...16))
        // The receiver saw a gap after block 12: it ACKs 12 and the sender resumes at 13.
        #expect(m.receiveAck(12, now: t0) == .sendData(13...20))
        #expect(m.receiveAck(20, now: t0) == .sendData(21...21))
        // A late ACK for an older block changes nothing.
        #expect(m.receiveAck(16, now: t0) == TFTPTransferStateMachine.Action.none)
        #expect(m.timeout(now: t0 + .seconds(1)) == .sendData(21...21))
        #expect(m.receiveAck(21, now: t0) == .finished)
    }

    @Test func blockNumbersRollOverPast65535() {
        var m = machine(size: 512 * 65536 + 1, options: [("windowsize", "4")])  // 65537 blocks
        _ = m.start(now: t0)
        var action = m.receiveAck(0, now: t0)
        var acked = 0
        var steps = 0
        while case .sendData(let r) = action, steps < 20_000 {
            acked = r.upperBound
            action = m.receiveAck(TFTPTransferStateMachine.wireBlock(acked), now: t0)
            steps += 1
        }
        #expect(action == .finished)
        #expect(acked == 65537)
        #expect(TFTPTransferStateMachine.wireBlock(65536) == 0)
    }

    @Test func clientErrorEndsTheTransfer() {
        var m = machine(size: 10, options: [("tsize", "0")])
        _ = m.start(now: t0)
        guard case .failed = m.receiveError() else {
            Issue.record("expected failure")
            return
        }
        #expect(m.timeout(now: t0 + .seconds(5)) == TFTPTransferStateMachine.Action.none)
    }
}
