import Foundation
import IPMIWire
import Synchronization
import Testing
import WireSupport

/// `IPMISessionStateMachine` driven by datagrams captured from a session setup between Farrier
/// and OpenIPMI's `ipmi_sim` (tcpdump on loopback, 2026-12-02; user admin, password s3cret-pw):
/// no socket, no clock. The random values the capture's console used (session ID, tag, the
/// console random, the IV) are read back from its packets and handed to the machine, so every
/// datagram it sends must equal the captured one byte for byte.
@Suite struct SessionStateMachineTests {
    enum Side { case console, bmc }

    /// Suite chosen from the BMC's list (Get Channel Cipher Suites, five pages): ipmi_sim lists
    /// no suite 17, so 3.
    static let listed: [(from: Side, hex: String)] = [
        (.console, "0600ff07000000000000000000092018c88100388e04b5"),
        (.bmc, "0600ff0700000000000000000010811c6320003800019704030000000009"),
        (.console, "0600ff070000000000000000000a2018c88100540e00809d"),
        (.bmc, "0600ff0700000000000000000019811c632000540001c000004080c001014080c002014180c045"),
        (.console, "0600ff070000000000000000000a2018c88104540e008198"),
        (.bmc, "0600ff0700000000000000000019811c63200454000103014181c004014182c005014183c006e9"),
        (.console, "0600ff070000000000000000000a2018c88108540e008293"),
        (.bmc, "0600ff0700000000000000000019811c632008540001024080c007024280c008024281c00902de"),
        (.console, "0600ff070000000000000000000a2018c8810c540e00838e"),
        (.bmc, "0600ff0700000000000000000019811c63200c5400014282c00a024283c00b024380c00c024389"),
        (.console, "0600ff070000000000000000000a2018c88110540e008489"),
        (.bmc, "0600ff0700000000000000000014811c63201054000181c00d024382c00e024383d0"),
        (.console, "0600ff07061000000000000000002000e0000000aadadb9b000000080100000001000008010000000200000801000000"),
        (
            .bmc,
            "0600ff07061100000000000000002400e0000000aadadb9b02000000000000080100000001000008010000000200000801000000"
        ),
        (
            .console,
            "0600ff07061200000000000000002100e0000000020000004c49467ca1e2d5e000f5bcbd72a532491400000561646d696e"
        ),
        (
            .bmc,
            "0600ff07061300000000000000003c00e0000000aadadb9bfc5fa976341023f22620337ed18ee713a1a2a3a4b1b2c1c2d1d2e1e2e3e4e5e6e509b61613fcc57c80a564917c1484433394f383"
        ),
        (.console, "0600ff07061400000000000000001c00e000000002000000efccda9158eea019b45d8fe60fe10f49ebb795d2"),
        (.bmc, "0600ff07061500000000000000001400e0000000aadadb9b44572e92bfde471d906d1c2f"),
        (
            .console,
            "0600ff0706c002000000010000002000eea5a488e37e4eea9b8fea740674a9a5ca31434ee105355ccbaa01fb37810c00ffff0207a827a2696a48593471c6c081"
        ),
        (
            .bmc,
            "0600ff0706c0aadadb9b010000002000298e725aa7678be1c77b789e2fb54806e1039da872dd14e20122b6b62c10e144ffff02076ce0efe27a6817886dce9e08"
        ),
    ]

    /// Suite 3 forced (--cipher-suite 3): no listing.
    static let forced3: [(from: Side, hex: String)] = [
        (.console, "0600ff07000000000000000000092018c88100388e04b5"),
        (.bmc, "0600ff0700000000000000000010811c6320003800019704030000000009"),
        (.console, "0600ff0706100000000000000000200035000000b4e8a086000000080100000001000008010000000200000801000000"),
        (
            .bmc,
            "0600ff0706110000000000000000240035000000b4e8a08682000000000000080100000001000008010000000200000801000000"
        ),
        (
            .console,
            "0600ff0706120000000000000000210035000000820000007b8121e953f8a14f6218cdab1fdfc2bf1400000561646d696e"
        ),
        (
            .bmc,
            "0600ff07061300000000000000003c0035000000b4e8a086e34a5fff0155506b9a21ee6117d3be73a1a2a3a4b1b2c1c2d1d2e1e2e3e4e5e635881a013c66e4593661372e641fd5f496c26e10"
        ),
        (.console, "0600ff07061400000000000000001c003500000082000000a265484dc37f42b792e16900cd4844d47bcfac8a"),
        (.bmc, "0600ff0706150000000000000000140035000000b4e8a0860e614199d6245ccb5ad170bd"),
        (
            .console,
            "0600ff0706c082000000010000002000a1e516b353d3cdf75be3f8afdeba8e6cdd4466cac032dd9ab854a958490f18a9ffff0207700d651e6621846605472e81"
        ),
        (
            .bmc,
            "0600ff0706c0b4e8a086010000002000bc9ff3654eab24529ba2de00f4477d2c1165addbcce9aaebd26dec7c9c382139ffff020702b5e122d2644e63b57c9603"
        ),
    ]

    /// The module's hex decoder (IPMIWireTests.swift).
    static func bytes(_ hex: String) -> [UInt8] { IPMIWireTests.bytes(hex) }

    /// Random bytes handed out in order; a test that asks for more than it gave fails.
    final class RandomTable: Sendable {
        let values: Mutex<[[UInt8]]>
        init(_ values: [[UInt8]]) { self.values = Mutex(values) }
        func next(_ n: Int) -> [UInt8] {
            values.withLock { v in
                guard let first = v.first, first.count == n else {
                    Issue.record(
                        "asked for \(n) random bytes, the table has \(v.first.map { "\($0.count)" } ?? "none")"
                    )
                    return [UInt8](repeating: 0x5A, count: n)
                }
                v.removeFirst()
                return first
            }
        }
    }

    /// The randoms a capture's console used: its session ID and tag (Open Session), its random
    /// (RAKP 1) and the IV of Set Session Privilege Level.
    static func randoms(_ capture: [(from: Side, hex: String)]) -> [[UInt8]] {
        let console = capture.filter { $0.from == .console }.map { bytes($0.hex) }
        let open = console.first { $0.count > 5 && $0[5] == IPMIPayloadType.openSessionRequest.rawValue }!
        let rakp1 = console.first { $0.count > 5 && $0[5] == IPMIPayloadType.rakp1.rawValue }!
        let privilege = console.last!
        return [Array(open[20..<24]), [open[16]], Array(rakp1[24..<40]), Array(privilege[16..<32])]
    }

    static func machine(
        _ capture: [(from: Side, hex: String)],
        password: String = "s3cret-pw",
        suite: UInt8? = nil,
        retries: Int = 1,
        randoms: [[UInt8]]? = nil
    ) -> IPMISessionStateMachine {
        let table = RandomTable(randoms ?? Self.randoms(capture))
        return IPMISessionStateMachine(
            configuration: .init(
                user: "admin",
                password: Array(password.utf8),
                privilege: .administrator,
                cipherSuite: suite,
                retries: retries
            ),
            random: { table.next($0) }
        )
    }

    /// Plays a capture: each datagram the machine sends must be the console's next one, and the
    /// BMC's answer is fed back. Returns the last action.
    @discardableResult
    static func play(
        _ m: inout IPMISessionStateMachine,
        _ capture: [(from: Side, hex: String)],
        upTo count: Int? = nil
    ) -> IPMISessionStateMachine.Action {
        var action = m.start()
        var i = 0
        let end = count ?? capture.count
        while i < end {
            guard case .send(let packet, let step) = action else {
                Issue.record("expected a send at datagram \(i), got \(action)")
                return action
            }
            #expect(capture[i].from == .console)
            #expect(packet == bytes(capture[i].hex), "datagram \(i) (\(step))")
            guard i + 1 < end else { return action }
            guard let next = m.received(bytes(capture[i + 1].hex)) else {
                Issue.record("the BMC's datagram \(i + 1) was ignored")
                return action
            }
            action = next
            i += 2
        }
        return action
    }

    @Test(arguments: [
        (SessionStateMachineTests.listed, nil as UInt8?, 3 as UInt8), (SessionStateMachineTests.forced3, 3, 3),
    ])
    func aCapturedSetupReplaysByteForByte(_ capture: [(from: Side, hex: String)], _ forced: UInt8?, _ suite: UInt8) {
        var m = Self.machine(capture, suite: forced)
        var action = Self.play(&m, capture, upTo: capture.count - 1)
        action = m.received(Self.bytes(capture.last!.hex)) ?? action
        guard case .established(let crypto, let established) = action else {
            Issue.record("not established: \(action)")
            return
        }
        #expect(established.id == suite)
        #expect(crypto.bmcSessionID != 0 && crypto.consoleSessionID != 0)
        // The privilege request used sequence number 1; the session's next is 2.
        #expect(crypto.nextSequence == 2)
        #expect(m.attempt == 1)
    }

    @Test func aWrongPasswordFailsAtRAKP2() {
        var m = Self.machine(Self.listed, password: "not-the-password")
        // Up to RAKP 1 the password plays no part: the same bytes go out.
        let rakp1 = Self.listed.firstIndex { Self.bytes($0.hex)[5] == IPMIPayloadType.rakp1.rawValue }!
        Self.play(&m, Self.listed, upTo: rakp1 + 1)
        let action = m.received(Self.bytes(Self.listed[rakp1 + 1].hex))
        guard case .fail(.authenticationFailed, close: nil)? = action else {
            Issue.record("expected authenticationFailed, got \(String(describing: action))")
            return
        }
    }

    /// RAKP 2 lost: RAKP 1 is sent once more, then the setup restarts from Open Session with a
    /// new session ID and tag; the first attempt's RAKP 2, arriving late, is ignored; the BMC
    /// answers the new Open Session with a session ID of its own, which RAKP 1 then carries.
    @Test func aLostRAKP2RestartsWithNewIDsAndStaleAnswersAreIgnored() {
        let newSID: [UInt8] = [0x11, 0x22, 0x33, 0x44]
        // The same tag as the first attempt's (1 in 256 by chance): only the console session ID
        // tells the first attempt's late answers from the second's.
        let newTag = Self.randoms(Self.forced3)[1]
        // The capture's session ID, tag and random for the first attempt; new ones for the second.
        let table = Array(Self.randoms(Self.forced3).prefix(3)) + [newSID, newTag, [UInt8](repeating: 0xC3, count: 16)]
        var m = Self.machine(Self.forced3, suite: 3, randoms: table)
        // Capabilities, Open Session, RAKP 1 sent.
        let rakp1 = Self.play(&m, Self.forced3, upTo: 5)
        guard case .send(let first, .rakp1) = rakp1 else {
            Issue.record("expected RAKP 1, got \(rakp1)")
            return
        }
        guard case .send(let again, .rakp1) = m.timedOut() else {
            Issue.record("expected RAKP 1 again")
            return
        }
        #expect(again == first)
        guard case .send(let reopen, .openSession) = m.timedOut() else {
            Issue.record("expected a new Open Session")
            return
        }
        #expect(m.attempt == 2)
        let open = Self.bytes(Self.forced3[2].hex)
        #expect(reopen != open)
        #expect(Array(reopen[16...16]) == newTag && Array(reopen[20..<24]) == newSID)
        // The first attempt's RAKP 2 and Open Session response, late: not for this attempt.
        #expect(m.received(Self.bytes(Self.forced3[5].hex)) == nil)
        #expect(m.received(Self.bytes(Self.forced3[3].hex)) == nil)
        // The BMC answers the new Open Session with another session ID of its own.
        var response = Self.bytes(Self.forced3[3].hex)
        response[16] = newTag[0]
        response.replaceSubrange(20..<24, with: newSID)
        response.replaceSubrange(24..<28, with: [0xAB, 0xCD, 0xEF, 0x01])
        guard case .send(let rakp1b, .rakp1)? = m.received(response) else {
            Issue.record("expected RAKP 1 for the new session")
            return
        }
        #expect(rakp1b[16] == newTag[0])
        #expect(Array(rakp1b[20..<24]) == [0xAB, 0xCD, 0xEF, 0x01])  // the BMC's new session ID
        #expect(Array(rakp1b[24..<40]) == [UInt8](repeating: 0xC3, count: 16))
        // The first attempt's RAKP 2 (the right tag, the old console session ID), arriving now.
        #expect(m.received(Self.bytes(Self.forced3[5].hex)) == nil)
    }

    /// Suite 17 listed, and refused at Open Session ("no matching cipher suite"): the setup offers
    /// suite 3 under a new tag and session ID, and a second refusal (the answer to a retransmitted
    /// suite-17 request) is not taken for the answer to it.
    @Test func aRefusedSuite17FallsBackTo3UnderNewIDs() {
        let capture = Self.listed
        let first = Self.randoms(capture)
        let sid2: [UInt8] = [0x21, 0x43, 0x65, 0x07]
        let tag2: [UInt8] = [0x99]
        var m = Self.machine(capture, randoms: [first[0], first[1], sid2, tag2])
        // The BMC's first page of cipher suites, with its first record's ID changed to 17.
        var page = Self.bytes(capture[3].hex)
        let record = page.firstIndex(of: 0xC0, after: 21)
        page[record + 1] = 0x11
        page[page.count - 1] = 0 &- page[17..<(page.count - 1)].reduce(0, &+)
        guard case .send = m.start() else {
            Issue.record("expected capabilities")
            return
        }
        _ = m.received(Self.bytes(capture[1].hex))
        var action = m.received(page)
        for i in [5, 7, 9, 11] { action = m.received(Self.bytes(capture[i].hex)) }
        guard case .send(let open17, .openSession)? = action else {
            Issue.record("expected Open Session, got \(String(describing: action))")
            return
        }
        let open3Captured = Self.bytes(capture[12].hex)
        // Suite 17's algorithms (HMAC-SHA256, HMAC-SHA256-128, AES) instead of suite 3's.
        #expect(Array(open17[24...]) != Array(open3Captured[24...]))
        #expect(open17[16] == first[1][0] && Array(open17[20..<24]) == first[0])
        var refusal = Self.bytes(capture[13].hex)
        refusal[17] = 0x11  // no matching cipher suite
        guard case .send(let open3, .openSession)? = m.received(refusal) else {
            Issue.record("expected Open Session with suite 3")
            return
        }
        #expect(Array(open3[24...]) == Array(open3Captured[24...]))
        #expect(open3[16] == tag2[0] && Array(open3[20..<24]) == sid2)
        #expect(m.attempt == 1)
        // The refusal again (its request was retransmitted): the old tag, ignored.
        #expect(m.received(refusal) == nil)
    }

    /// A datagram replayed (the same Open Session response, RAKP 2 again while RAKP 4 is awaited,
    /// the capabilities answer during the RAKP exchange) changes nothing.
    @Test func replayedDatagramsAreIgnored() {
        var m = Self.machine(Self.forced3, suite: 3)
        Self.play(&m, Self.forced3, upTo: 7)  // RAKP 3 sent
        for i in [1, 3, 5] { #expect(m.received(Self.bytes(Self.forced3[i].hex)) == nil, "datagram \(i)") }
        // The genuine RAKP 4 still completes the step.
        guard case .send(_, .privilege)? = m.received(Self.bytes(Self.forced3[7].hex)) else {
            Issue.record("RAKP 4 did not lead to Set Session Privilege Level")
            return
        }
    }

    @Test func aRAKP4ThatDoesNotVerifyFails() {
        var m = Self.machine(Self.forced3, suite: 3)
        Self.play(&m, Self.forced3, upTo: 7)
        var rakp4 = Self.bytes(Self.forced3[7].hex)
        rakp4[rakp4.count - 1] ^= 0x01
        guard case .fail(.rakp4DoesNotVerify, close: nil)? = m.received(rakp4) else {
            Issue.record("a tampered RAKP 4 was not refused")
            return
        }
    }

    /// A BMC that never answers: capabilities is sent retries + 1 times, then the setup fails.
    @Test func silenceIsATimeoutAfterTheRetries() {
        var m = Self.machine(Self.forced3, suite: 3, retries: 3)
        guard case .send(let first, .capabilities) = m.start() else {
            Issue.record("expected capabilities")
            return
        }
        for _ in 0..<3 {
            guard case .send(let again, .capabilities) = m.timedOut() else {
                Issue.record("expected a retransmission")
                return
            }
            #expect(again == first)
        }
        guard case .fail(.timedOut(.capabilities), close: nil) = m.timedOut() else {
            Issue.record("expected a timeout")
            return
        }
    }

    /// Set Session Privilege Level lost: sent once more, then the setup restarts.
    @Test func aLostPrivilegeAnswerRestartsTheSetup() throws {
        // The capture's randoms, then: the resealed request's IV, the Close Session's IV, and the
        // second attempt's session ID and tag.
        let table =
            Self.randoms(Self.forced3) + [
                [UInt8](repeating: 0x77, count: 16), [UInt8](repeating: 0x88, count: 16), [1, 2, 3, 4], [9],
            ]
        var m = Self.machine(Self.forced3, suite: 3, randoms: table)
        guard case .send(let first, .privilege) = Self.play(&m, Self.forced3, upTo: 9) else {
            Issue.record("expected Set Session Privilege Level")
            return
        }
        guard case .send(let again, .privilege) = m.timedOut() else {
            Issue.record("expected a retransmission")
            return
        }
        // Sealed again: the next session sequence number (bytes 10-13), a new IV, never the
        // same bytes (a BMC drops a repeated sequence number as a replay).
        #expect(Array(first[10..<14]) == [1, 0, 0, 0] && Array(again[10..<14]) == [2, 0, 0, 0])
        #expect(again != first)
        guard case .send(_, .openSession) = m.timedOut() else {
            Issue.record("expected a restart from Open Session")
            return
        }
        #expect(m.attempt == 2)
        // The abandoned session is closed first: sealed in it (the BMC's session ID, the next
        // sequence number, 3), once.
        let taken = m.takeCloseAbandoned()
        let bye = try #require(taken)
        #expect(Array(bye[6..<10]) == Array(first[6..<10]) && Array(bye[10..<14]) == [3, 0, 0, 0])
        #expect(Array(bye[16..<32]) == [UInt8](repeating: 0x88, count: 16))
        #expect(m.takeCloseAbandoned() == nil)
    }

    /// Set Session Privilege Level refused (completion code 0xD4, insufficient privilege): the
    /// setup fails and hands back the session it opened, so the driver can close it.
    @Test func aRefusedPrivilegeFailsAndHandsBackTheSession() throws {
        let capture = Self.forced3
        var m = Self.machine(capture, suite: 3)
        Self.play(&m, capture, upTo: 9)
        // The session's keys, from the capture's own exchange.
        let r = Self.randoms(capture)
        let consoleSID = UInt32(r[0][0]) | UInt32(r[0][1]) << 8 | UInt32(r[0][2]) << 16 | UInt32(r[0][3]) << 24
        let openResponse = try OpenSessionResponse(decoding: Array(Self.bytes(capture[3].hex)[16...]))
        let m2 = try RAKPMessage2(decoding: Array(Self.bytes(capture[5].hex)[16...]))
        let exchange = RAKPExchange(
            suite: .suite3,
            consoleSessionID: consoleSID,
            bmcSessionID: openResponse.bmcSessionID,
            consoleRandom: r[2],
            userName: "admin",
            password: Array("s3cret-pw".utf8),
            privilege: .administrator
        )
        let keys = exchange.sessionKeys(after: m2)
        // The BMC's genuine answer, opened, its completion code changed, sealed again as the BMC would.
        var reader = IPMISessionCrypto(
            keys: keys,
            bmcSessionID: openResponse.bmcSessionID,
            consoleSessionID: consoleSID
        )
        guard case .v2(let envelope) = try IPMIDatagram(decoding: Self.bytes(capture[9].hex)) else {
            Issue.record("the capture's last datagram is not RMCP+")
            return
        }
        var message = try reader.open(envelope)
        message[6] = 0xD4
        message[message.count - 1] = 0 &- message[3..<(message.count - 1)].reduce(0, &+)
        var bmc = IPMISessionCrypto(keys: keys, bmcSessionID: consoleSID, consoleSessionID: openResponse.bmcSessionID)
        let refused = bmc.seal(.ipmi, payload: message, iv: [UInt8](repeating: 0x42, count: 16))
        guard case .fail(.refused(.privilege, let why), let close?)? = m.received(refused) else {
            Issue.record("a refused privilege did not fail the setup with its session")
            return
        }
        #expect(why.contains("0xD4"))
        #expect(close.bmcSessionID == openResponse.bmcSessionID && close.consoleSessionID == consoleSID)
    }
}

extension Array where Element == UInt8 {
    /// The index of the first `byte` at or after `start`.
    func firstIndex(of byte: UInt8, after start: Int) -> Int {
        self[start...].firstIndex(of: byte)!
    }
}
