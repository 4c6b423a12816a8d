import Foundation
import Synchronization
import Testing

@testable import FarrierAgent

#if canImport(Glibc)
import Glibc
#endif

/// ATA Security Erase against a simulated SATA drive. No drive or emulator here has the ATA
/// security feature set (QEMU's IDE and AHCI disks do not report it), so the drive below is the
/// peer: the feature set's states and rules from ATA8-ACS (a password enables it; ERASE UNIT
/// only right after ERASE PREPARE and with the password; a locked drive takes only UNLOCK; a
/// frozen one refuses every security command), behind the checks a SAT layer makes on an ATA
/// PASS-THROUGH (16) command. The kernel's own SG_IO path is exercised on a device that is not
/// SCSI, and its answers' decoding on sense data of the kinds libata returns.
@Suite struct ATASecurityEraseTests {
    final class SimulatedDrive: ATASecurityErase.Device, Sendable {
        struct State {
            var password: [UInt8]?
            var locked = false
            var frozen = false
            var enhanced = true
            var featureSet = true
            var attemptsLeft = 5
            var prepared = false
            var failErase = false
            var refusePassword = false
            var silentIdentifyAfterErase = false
            var eraseTried = false
            var contents = [UInt8](repeating: 0xAA, count: 4096)
            var commands: [UInt8] = []
        }
        let state: Mutex<State>

        init(_ configure: (inout State) -> Void = { _ in }) {
            var s = State()
            configure(&s)
            state = Mutex(s)
        }

        var commands: [UInt8] { state.withLock { $0.commands } }
        var snapshot: State { state.withLock { $0 } }

        struct Aborted: Error, CustomStringConvertible {
            var description: String { "ATA error 0x4 status 0x51 (command aborted)" }
        }

        func identify(_ s: State) -> [UInt8] {
            var data = [UInt8](repeating: 0, count: 512)
            func put(_ word: Int, _ v: UInt16) {
                data[2 * word] = UInt8(v & 0xFF)
                data[2 * word + 1] = UInt8(v >> 8)
            }
            put(82, s.featureSet ? 0x4002 : 0x4000)
            var w128: UInt16 = s.featureSet ? 0x1 : 0
            if s.featureSet {
                if s.password != nil { w128 |= 0x2 }
                if s.locked { w128 |= 0x4 }
                if s.frozen { w128 |= 0x8 }
                if s.attemptsLeft == 0 { w128 |= 0x10 }
                if s.enhanced { w128 |= 0x20 }
            }
            put(128, w128)
            put(89, 30)  // 60 minutes
            put(90, 0x8000 | 45)  // 90 minutes
            return data
        }

        func send(_ cdb: [UInt8], transfer: ATASecurityErase.Transfer, timeoutSeconds: Int) throws -> [UInt8] {
            // What a SAT layer checks: the opcode, the protocol for the transfer, the length.
            let proto = (cdb[1] >> 1) & 0xF
            let ok: Bool
            // Byte 2: T_DIR (0x08, from the device), BYT_BLOK (0x04, count in blocks), T_LENGTH
            // (0x03; 2: the length is in the sector count field, 0: no data).
            let fromDevice = cdb[2] & 0x08 != 0
            let blocks = cdb[2] & 0x04 != 0
            let lengthField = cdb[2] & 0x03
            switch transfer {
            case .none: ok = proto == 3 && lengthField == 0
            case .fromDevice(let n):
                ok = proto == 4 && fromDevice && blocks && lengthField == 2 && Int(cdb[6]) * 512 == n
            case .toDevice(let b):
                ok = proto == 5 && !fromDevice && blocks && lengthField == 2 && Int(cdb[6]) * 512 == b.count
            }
            guard cdb.count == 16, cdb[0] == 0x85, ok, timeoutSeconds > 0 else {
                throw ATASecurityErase.CommandFailed(description: "SAT: invalid field in CDB \(cdb)")
            }
            return try state.withLock { s in
                let op = cdb[14]
                s.commands.append(op)
                let wasPrepared = s.prepared
                s.prepared = false
                var block: [UInt8] = []
                if case .toDevice(let b) = transfer { block = b }
                let given = Array(block.dropFirst(2).prefix(32))
                func matches() -> Bool {
                    guard let p = s.password else { return false }
                    return given == p + [UInt8](repeating: 0, count: 32 - p.count)
                }
                if op == 0xEC {
                    guard !(s.silentIdentifyAfterErase && s.eraseTried) else { throw Aborted() }
                    return identify(s)
                }
                guard s.featureSet, !s.frozen, !s.locked || op == 0xF2 else { throw Aborted() }
                switch op {
                case 0xF1:  // SET PASSWORD (user, high)
                    guard !s.refusePassword else { throw Aborted() }
                    s.password = Array(given.reversed().drop { $0 == 0 }.reversed())
                case 0xF2:  // UNLOCK
                    guard s.attemptsLeft > 0 else { throw Aborted() }
                    guard matches() else {
                        s.attemptsLeft -= 1
                        throw Aborted()
                    }
                    s.locked = false
                case 0xF3:  // ERASE PREPARE
                    s.prepared = true
                case 0xF4:  // ERASE UNIT
                    s.eraseTried = true
                    guard wasPrepared, matches(), !s.failErase else {
                        // Power lost mid-erase: the password stays, and the drive comes back locked.
                        if s.failErase { s.locked = true }
                        throw Aborted()
                    }
                    let enhanced = block[0] & 0x2 != 0
                    guard !enhanced || s.enhanced else { throw Aborted() }
                    s.contents = [UInt8](repeating: enhanced ? 0x5A : 0, count: s.contents.count)
                    s.password = nil
                case 0xF6:  // DISABLE PASSWORD
                    guard matches() else { throw Aborted() }
                    s.password = nil
                default:
                    throw Aborted()
                }
                return []
            }
        }
    }

    func run(_ drive: SimulatedDrive) throws -> (ATASecurityErase.Erase?, [String]) {
        let lines = Mutex<[String]>([])
        let erase = try ATASecurityErase(device: drive, path: "/dev/sdz").run { line in
            lines.withLock { $0.append(line) }
        }
        return (erase, lines.withLock { $0 })
    }

    @Test func aFreshDriveIsErasedAndLeftWithoutAPassword() throws {
        let drive = SimulatedDrive()
        let (erase, _) = try run(drive)
        #expect(erase == .enhanced)
        #expect(drive.commands == [0xEC, 0xF1, 0xF3, 0xF4, 0xEC])
        #expect(drive.snapshot.contents.allSatisfy { $0 == 0x5A } && drive.snapshot.password == nil)
        // Without the enhanced mode, the normal erase (zeroes).
        let plain = SimulatedDrive { $0.enhanced = false }
        #expect(try run(plain).0 == .normal)
        #expect(plain.snapshot.contents.allSatisfy { $0 == 0 })
    }

    @Test func aFrozenDriveOrOneWithoutTheFeatureSetIsLeftToTheOtherErases() throws {
        for drive in [SimulatedDrive { $0.frozen = true }, SimulatedDrive { $0.featureSet = false }] {
            let (erase, log) = try run(drive)
            #expect(erase == nil)
            #expect(drive.commands == [0xEC], "only IDENTIFY: \(drive.commands)")
            #expect(drive.snapshot.contents.allSatisfy { $0 == 0xAA })
            #expect(log.contains { $0.contains("frozen") || $0.contains("no ATA security feature set") }, "\(log)")
        }
    }

    @Test func aDriveThatRefusesAPasswordIsLeftToTheOtherErases() throws {
        let drive = SimulatedDrive { $0.refusePassword = true }
        let (erase, log) = try run(drive)
        #expect(erase == nil && drive.commands == [0xEC, 0xF1, 0xEC], "\(drive.commands)")
        #expect(log.last?.contains("refused a password") == true, "\(log)")
        #expect(drive.snapshot.contents.allSatisfy { $0 == 0xAA } && drive.snapshot.password == nil)
    }

    @Test func aFailedEraseNeverLeavesFarriersPasswordOnTheDrive() throws {
        let drive = SimulatedDrive { $0.failErase = true }
        #expect(throws: AgentFailure.self) { try run(drive) }
        // The erase failed and the drive came back locked: unlocked and its password disabled.
        let s = drive.snapshot
        #expect(s.password == nil && !s.locked, "\(s.commands)")
        #expect(drive.commands.suffix(3) == [0xEC, 0xF2, 0xF6], "\(drive.commands)")
    }

    /// The erase fails and the drive then does not answer IDENTIFY: it is taken to be locked
    /// with Farrier's password, which is removed.
    @Test func aDriveSilentAfterAFailedEraseStillLosesFarriersPassword() throws {
        let drive = SimulatedDrive {
            $0.failErase = true
            $0.silentIdentifyAfterErase = true
        }
        #expect(throws: AgentFailure.self) { try run(drive) }
        #expect(drive.snapshot.password == nil && !drive.snapshot.locked, "\(drive.commands)")
        #expect(drive.commands.suffix(3) == [0xEC, 0xF2, 0xF6], "\(drive.commands)")
    }

    @Test func aDriveLeftLockedByAnEarlierEraseIsRecoveredThenErased() throws {
        let drive = SimulatedDrive {
            $0.password = ATASecurityErase.password
            $0.locked = true
        }
        let (erase, log) = try run(drive)
        #expect(erase == .enhanced)
        #expect(drive.commands == [0xEC, 0xF2, 0xF6, 0xEC, 0xF1, 0xF3, 0xF4, 0xEC])
        #expect(log.first?.contains("password set and is locked") == true, "\(log)")
        #expect(drive.snapshot.password == nil && drive.snapshot.contents.allSatisfy { $0 == 0x5A })
    }

    @Test func aDriveLockedWithSomeoneElsesPasswordFailsTheStep() throws {
        let drive = SimulatedDrive {
            $0.password = Array("tenant".utf8)
            $0.locked = true
        }
        let error = #expect(throws: AgentFailure.self) { try run(drive) }
        #expect(error?.description.contains("did not remove") == true, "\(String(describing: error))")
        #expect(drive.snapshot.contents.allSatisfy { $0 == 0xAA } && drive.snapshot.password == Array("tenant".utf8))
        // Used up unlock attempts: refused without trying.
        let expired = SimulatedDrive {
            $0.password = Array("tenant".utf8)
            $0.locked = true
            $0.attemptsLeft = 0
        }
        #expect(throws: AgentFailure.self) { try run(expired) }
        #expect(expired.commands == [0xEC])
    }

    @Test func identifyWordsAndTimeouts() {
        var identify = [UInt8](repeating: 0, count: 512)
        identify[164] = 0x02  // word 82 bit 1
        identify[256] = 0x21  // word 128: supported, enhanced
        identify[178] = 100  // word 89: 200 minutes
        let s = ATASecurityErase.Security(identify: identify)
        #expect(s == .init(supported: true, enhancedSupported: true, normalMinutes: 200))
        // The enhanced erase gives no time: 12 hours. The normal one's 200 minutes: twice that.
        #expect(ATASecurityErase.plan(s) == .erase(.enhanced, timeoutSeconds: 12 * 3600))
        #expect(
            ATASecurityErase.plan(.init(supported: true, normalMinutes: 200))
                == .erase(.normal, timeoutSeconds: 400 * 60)
        )
        #expect(
            ATASecurityErase.plan(.init(supported: true, normalMinutes: 10)) == .erase(.normal, timeoutSeconds: 7200)
        )
        // Word 82 "not reported" (0xFFFF) is not support, whatever word 128 says.
        identify[164] = 0xFF
        identify[165] = 0xFF
        #expect(!ATASecurityErase.Security(identify: identify).supported)
    }

    @Test func commandBlocksAreWhatSATAndTheDriveExpect() {
        // IDENTIFY DEVICE as hdparm sends it: PIO data-in, one block, counted in the sector count.
        #expect(
            ATASecurityErase.cdb(command: 0xEC, transfer: .fromDevice(512))
                == [0x85, 0x08, 0x0E, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0xEC, 0]
        )
        let block = ATASecurityErase.passwordBlock(Array("pw".utf8), enhanced: true)
        #expect(
            block.count == 512 && block[0] == 0x02 && block[2] == UInt8(ascii: "p") && block[3] == UInt8(ascii: "w")
        )
        #expect(block[4...].allSatisfy { $0 == 0 })
        #expect(
            ATASecurityErase.cdb(command: 0xF4, transfer: .toDevice(block))
                == [0x85, 0x0A, 0x06, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0xF4, 0]
        )
        #expect(
            ATASecurityErase.cdb(command: 0xF3, transfer: .none)
                == [0x85, 0x06, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0xF3, 0]
        )
    }

    @Test func sgioAnswersDecode() {
        // A non-data command with CK_COND that succeeded: CHECK CONDITION, "ATA pass through
        // information available", the status descriptor's registers clean (status 0x50).
        var ok: [UInt8] = [0x72, 0x01, 0x00, 0x1D, 0, 0, 0, 14, 0x09, 0x0C] + [UInt8](repeating: 0, count: 12)
        ok[21] = 0x50
        #expect(SGIODevice.failure(status: 0x02, hostStatus: 0, driverStatus: 0x08, sense: ok) == nil)
        #expect(SGIODevice.failure(status: 0, hostStatus: 0, driverStatus: 0, sense: []) == nil)
        // The drive aborted it: ABORTED COMMAND, error 0x04, status 0x51.
        var aborted = ok
        aborted[1] = 0x0B
        aborted[11] = 0x04
        aborted[21] = 0x51
        #expect(
            SGIODevice.failure(status: 0x02, hostStatus: 0, driverStatus: 0x08, sense: aborted)
                == "sense key 0xb ASC/ASCQ 0x0/0x1d, ATA error 0x4 status 0x51"
        )
        // The same success in fixed format (no registers to read): still a success.
        let fixed: [UInt8] = [0x70, 0, 0x01, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x00, 0x1D]
        #expect(SGIODevice.failure(status: 0x02, hostStatus: 0, driverStatus: 0x08, sense: fixed) == nil)
        // Not an ATA device behind the SCSI layer: fixed-format ILLEGAL REQUEST, invalid opcode.
        let illegal: [UInt8] = [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0x00]
        #expect(
            SGIODevice.failure(status: 0x02, hostStatus: 0, driverStatus: 0x08, sense: illegal)
                == "sense key 0x5 ASC/ASCQ 0x20/0x0"
        )
        #expect(SGIODevice.failure(status: 0, hostStatus: 0x1, driverStatus: 0, sense: []) == "host status 0x1")
    }

    /// The kernel's SG_IO on a device that is not SCSI: IDENTIFY fails, and the erase is left
    /// to the others, with the reason logged.
    @Test func aDeviceThatIsNotSCSIIsLeftToTheOtherErases() throws {
        let fd = open("/dev/null", O_RDWR | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        let lines = Mutex<[String]>([])
        let erase = try ATASecurityErase(device: SGIODevice(fd: fd), path: "/dev/null").run { line in
            lines.withLock { $0.append(line) }
        }
        #expect(erase == nil)
        let log = lines.withLock { $0 }
        #expect(log.count == 1 && log[0].contains("IDENTIFY DEVICE failed (SG_IO: "), "\(log)")
    }
}
