import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// ATA Security Erase Unit: the drive erases every user-addressable block itself (and, in its
/// enhanced mode, the reallocated ones as well). Sent through the kernel's SCSI generic
/// passthrough (`SG_IO` with an ATA PASS-THROUGH (16) command, which libata translates) to a
/// SATA disk. The feature set wants a password on the drive first, which the erase then clears;
/// hdparm and Ironic go the same way.
///
/// The order, per ATA8-ACS:
/// 1. IDENTIFY DEVICE: word 128 says whether the feature set is there, enabled, locked or
///    frozen; words 89 and 90 how long the erase takes.
/// 2. A drive locked or enabled with Farrier's password (an erase cut off part way) is unlocked
///    and its password disabled first. Locked with any other password (a tenant's, set from
///    rescue), the step fails: it cannot be erased without it.
/// 3. SECURITY SET PASSWORD (the user password, high security), SECURITY ERASE PREPARE, and
///    SECURITY ERASE UNIT (enhanced when offered), which may take hours on a large drive.
/// 4. IDENTIFY again: the password must be gone. If the erase failed, the password is disabled
///    again. A power loss during the erase leaves it on (the drive comes back locked): the next
///    try unlocks it, as in 2; firmware that stops at boot to ask for it needs an operator
///    (`hdparm --security-disable farrier-erase`).
///
/// A frozen drive (firmware froze it at boot, as most do) or one without the feature set is left
/// to the other erases: `run` returns nil and says why.
struct ATASecurityErase {
    /// Farrier's password while an erase runs: a fixed one, so a drive whose erase was cut off
    /// can be unlocked again by the next try, by Farrier or an operator with hdparm.
    static let password = Array("farrier-erase".utf8)

    enum Erase: String, Equatable {
        case normal = "security erase"
        case enhanced = "enhanced security erase"
    }

    /// What IDENTIFY DEVICE says about the security feature set.
    struct Security: Equatable {
        var supported = false
        var enabled = false
        var locked = false
        var frozen = false
        var countExpired = false
        var enhancedSupported = false
        /// Minutes the drive says each erase takes (0: not given).
        var normalMinutes = 0
        var enhancedMinutes = 0
    }

    /// What to do about a drive, from its IDENTIFY (pure).
    enum Plan: Equatable {
        /// Leave it to the other erases, for this reason.
        case notApplicable(String)
        /// It cannot be erased: fail the step.
        case refuse(String)
        /// Unlock and disable Farrier's own password first (`unlock`: the drive is locked).
        case recover(unlock: Bool)
        case erase(Erase, timeoutSeconds: Int)
    }

    static func plan(_ s: Security) -> Plan {
        guard s.supported else { return .notApplicable("the drive has no ATA security feature set") }
        if s.enabled {
            // A password is set: Farrier's from an erase cut off, or someone else's.
            guard !s.frozen else {
                return .refuse(
                    "the drive has a security password set and its security is frozen (the firmware froze it at boot)"
                )
            }
            guard !s.countExpired else {
                return .refuse("the drive has a password set and its unlock attempts are used up (power cycle it)")
            }
            return .recover(unlock: s.locked)
        }
        guard !s.frozen else {
            return .notApplicable("the drive's security is frozen (the firmware froze it at boot)")
        }
        let erase: Erase = s.enhancedSupported ? .enhanced : .normal
        let minutes = erase == .enhanced ? s.enhancedMinutes : s.normalMinutes
        // Twice what the drive says, at least two hours; a drive that gives no time gets 12 h.
        let timeout = minutes > 0 ? max(2 * 3600, 2 * minutes * 60) : 12 * 3600
        return .erase(erase, timeoutSeconds: timeout)
    }

    /// The 512-byte data block of SECURITY SET PASSWORD, UNLOCK, DISABLE PASSWORD and ERASE UNIT:
    /// word 0 (bit 0: the master password; bit 1: the enhanced erase), the password in words
    /// 1–16 (32 bytes, zero-padded).
    static func passwordBlock(_ password: [UInt8], enhanced: Bool = false) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: 512)
        block[0] = enhanced ? 0x2 : 0
        for (i, b) in password.prefix(32).enumerated() { block[2 + i] = b }
        return block
    }

    enum Transfer: Equatable {
        case none
        case fromDevice(Int)
        case toDevice([UInt8])
    }

    /// ATA PASS-THROUGH (16) (SAT-3): the ATA command with its protocol, and for a PIO transfer
    /// the length in sectors from the count field, in 512-byte blocks.
    static func cdb(command: UInt8, transfer: Transfer) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 16)
        c[0] = 0x85
        switch transfer {
        case .none:
            // Non-data, without CK_COND: success is a plain GOOD status, whatever sense format
            // the kernel or the adapter would have used for the registers.
            c[1] = 3 << 1
        case .fromDevice(let n):
            c[1] = 4 << 1  // PIO data-in
            c[2] = 0x0E  // T_DIR from the device, BYT_BLOK blocks, T_LENGTH in the count field
            c[6] = UInt8(n / 512)
        case .toDevice(let bytes):
            c[1] = 5 << 1  // PIO data-out
            c[2] = 0x06  // T_DIR to the device, BYT_BLOK, T_LENGTH in the count field
            c[6] = UInt8(bytes.count / 512)
        }
        c[13] = 0x40  // device: LBA mode
        c[14] = command
        return c
    }

    /// A device that takes ATA commands: the kernel's SG_IO on a block device, or a test's drive.
    protocol Device {
        /// Sends one command; returns what came back, or throws `CommandFailed`.
        func send(_ cdb: [UInt8], transfer: Transfer, timeoutSeconds: Int) throws -> [UInt8]
    }

    struct CommandFailed: Error, CustomStringConvertible {
        var description: String
    }

    static let identifyDevice: UInt8 = 0xEC
    static let setPassword: UInt8 = 0xF1
    static let unlock: UInt8 = 0xF2
    static let erasePrepare: UInt8 = 0xF3
    static let eraseUnit: UInt8 = 0xF4
    static let disablePassword: UInt8 = 0xF6

    let device: any Device
    let path: String

    func send(_ opcode: UInt8, _ transfer: Transfer, timeoutSeconds: Int = 15) throws -> [UInt8] {
        try device.send(
            Self.cdb(command: opcode, transfer: transfer),
            transfer: transfer,
            timeoutSeconds: timeoutSeconds
        )
    }

    func identify() throws -> Security { Security(identify: try send(Self.identifyDevice, .fromDevice(512))) }

    func command(_ opcode: UInt8, data: [UInt8]?, timeoutSeconds: Int = 15) throws {
        _ = try send(opcode, data.map { .toDevice($0) } ?? .none, timeoutSeconds: timeoutSeconds)
    }

    /// Removes Farrier's password (unlocking first when locked); fails when it is someone else's.
    func disableOwnPassword(unlock locked: Bool) throws {
        do {
            if locked { try command(Self.unlock, data: Self.passwordBlock(Self.password)) }
            try command(Self.disablePassword, data: Self.passwordBlock(Self.password))
        } catch {
            throw AgentFailure(
                "\(path) has an ATA security password that Farrier's did not remove (someone else's, or the drive did not answer); it cannot be erased without it: \(error)"
            )
        }
    }

    /// Erases the drive with its own Security Erase Unit, or returns nil (and says why through
    /// `log`) when it does not apply. A drive that has the feature set but cannot be erased
    /// fails: the release must not go on as if it had been.
    func run(log: (String) -> Void) throws -> Erase? {
        var security: Security
        do { security = try identify() } catch {
            log("no ATA security erase on \(path): IDENTIFY DEVICE failed (\(error))")
            return nil
        }
        if case .recover(let locked) = Self.plan(security) {
            log("\(path) has an ATA security password set\(locked ? " and is locked" : ""): removing Farrier's")
            try disableOwnPassword(unlock: locked)
            security = try identify()
            guard !security.enabled else {
                throw AgentFailure("\(path): the ATA security password is still set after it was disabled")
            }
        }
        switch Self.plan(security) {
        case .notApplicable(let reason):
            log("no ATA security erase on \(path): \(reason)")
            return nil
        case .refuse(let reason):
            throw AgentFailure("cannot erase \(path): \(reason)")
        case .recover:
            throw AgentFailure("\(path): the ATA security password is still set after it was disabled")
        case .erase(let erase, let timeout):
            log("\(path): ATA \(erase.rawValue) (the drive may take up to \(timeout / 60) minutes)")
            do { try command(Self.setPassword, data: Self.passwordBlock(Self.password)) } catch {
                // A drive that says it has the feature set but refuses a password: if none took,
                // nothing changed and the other erases go on.
                let now = try identify()
                guard !now.enabled else {
                    try disableOwnPassword(unlock: now.locked)
                    throw AgentFailure("ATA security erase of \(path): setting the password failed (\(error))")
                }
                log("no ATA security erase on \(path): the drive refused a password (\(error))")
                return nil
            }
            do {
                try command(Self.erasePrepare, data: nil)
                try command(
                    Self.eraseUnit,
                    data: Self.passwordBlock(Self.password, enhanced: erase == .enhanced),
                    timeoutSeconds: timeout
                )
            } catch {
                // Do not leave the drive with Farrier's password on it. A drive that does not
                // answer IDENTIFY now is taken to hold the password, locked.
                let left = (try? identify()) ?? Security(supported: true, enabled: true, locked: true)
                if left.enabled { try? disableOwnPassword(unlock: left.locked) }
                throw AgentFailure("ATA \(erase.rawValue) of \(path) failed: \(error)")
            }
            let after = try identify()
            guard !after.enabled else {
                try? disableOwnPassword(unlock: after.locked)
                throw AgentFailure("ATA \(erase.rawValue) of \(path) left its password set")
            }
            return erase
        }
    }
}

extension ATASecurityErase.Security {
    /// From IDENTIFY DEVICE's 512 bytes (little-endian words). Word 82 bit 1 and word 128
    /// bit 0 both say "supported"; word 128 holds the state. Words 89 and 90: time in units
    /// of 2 minutes (bit 15 set: units of 2 minutes in bits 14:0, else bits 7:0); 255 or
    /// 32767 means "more than that".
    init(identify: [UInt8]) {
        func word(_ n: Int) -> UInt16 {
            identify.count >= 2 * n + 2 ? UInt16(identify[2 * n]) | UInt16(identify[2 * n + 1]) << 8 : 0
        }
        let w128 = word(128)
        // 0x0000 and 0xFFFF are "not reported" for the command set words.
        let w82 = word(82)
        supported = w82 != 0xFFFF && w82 & 0x2 != 0 && w128 & 0x1 != 0
        enabled = w128 & 0x2 != 0
        locked = w128 & 0x4 != 0
        frozen = w128 & 0x8 != 0
        countExpired = w128 & 0x10 != 0
        enhancedSupported = w128 & 0x20 != 0
        func minutes(_ w: UInt16) -> Int {
            let units = w & 0x8000 != 0 ? Int(w & 0x7FFF) : Int(w & 0xFF)
            return units * 2
        }
        normalMinutes = minutes(word(89))
        enhancedMinutes = minutes(word(90))
    }
}

/// SG_IO on a block device (struct sg_io_hdr, 88 bytes on 64-bit Linux, laid out by hand).
/// Anything but a clean completion is a `CommandFailed` naming the SCSI status, the sense key
/// and, from ATA PASS-THROUGH's status descriptor, the ATA error and status registers.
struct SGIODevice: ATASecurityErase.Device {
    static let SG_IO: UInt = 0x2285
    let fd: Int32

    func send(_ cdb: [UInt8], transfer: ATASecurityErase.Transfer, timeoutSeconds: Int) throws -> [UInt8] {
        var header = [UInt8](repeating: 0, count: 88)
        var data: [UInt8]
        let direction: Int32
        switch transfer {
        case .none: (data, direction) = ([], -1)  // SG_DXFER_NONE
        case .toDevice(let bytes): (data, direction) = (bytes, -2)  // SG_DXFER_TO_DEV
        case .fromDevice(let n): (data, direction) = ([UInt8](repeating: 0, count: n), -3)  // SG_DXFER_FROM_DEV
        }
        var command = cdb
        var sense = [UInt8](repeating: 0, count: 32)
        LittleEndian.put32(&header, 0, UInt32(UInt8(ascii: "S")))
        LittleEndian.put32(&header, 4, UInt32(bitPattern: direction))
        header[8] = UInt8(command.count)
        header[9] = UInt8(sense.count)
        LittleEndian.put32(&header, 12, UInt32(data.count))
        LittleEndian.put32(&header, 40, UInt32(clamping: timeoutSeconds * 1000))
        let rc: Int32 = data.withUnsafeMutableBytes { d in
            command.withUnsafeMutableBytes { c in
                sense.withUnsafeMutableBytes { s in
                    LittleEndian.put64(&header, 16, d.baseAddress.map { UInt64(UInt(bitPattern: $0)) } ?? 0)
                    LittleEndian.put64(&header, 24, UInt64(UInt(bitPattern: c.baseAddress!)))
                    LittleEndian.put64(&header, 32, UInt64(UInt(bitPattern: s.baseAddress!)))
                    return header.withUnsafeMutableBytes { ioctl(fd, Self.SG_IO, $0.baseAddress!) }
                }
            }
        }
        guard rc == 0 else {
            throw ATASecurityErase.CommandFailed(description: "SG_IO: \(String(cString: strerror(errno)))")
        }
        let status = header[64]
        let hostStatus = UInt16(header[68]) | UInt16(header[69]) << 8
        let driverStatus = UInt16(header[70]) | UInt16(header[71]) << 8
        if let failure = Self.failure(
            status: status,
            hostStatus: hostStatus,
            driverStatus: driverStatus,
            sense: Array(sense.prefix(Int(header[67])))
        ) {
            throw ATASecurityErase.CommandFailed(description: failure)
        }
        return data
    }

    /// Why a completed SG_IO failed, or nil when the command succeeded (pure). A command that
    /// succeeded may still come back as CHECK CONDITION with "ATA pass through information
    /// available" (sense key 0 or RECOVERED ERROR), in descriptor format with the ATA status
    /// descriptor's error bit clear, or in fixed format.
    static func failure(status: UInt8, hostStatus: UInt16, driverStatus: UInt16, sense: [UInt8]) -> String? {
        guard hostStatus == 0 else { return "host status 0x\(String(hostStatus, radix: 16))" }
        // DRIVER_SENSE (0x08) only says sense data came with the answer.
        guard driverStatus & ~0x08 == 0 else { return "driver status 0x\(String(driverStatus, radix: 16))" }
        guard status != 0 else { return nil }
        guard status == 0x02, sense.count >= 8 else { return "SCSI status 0x\(String(status, radix: 16))" }
        // Descriptor format (0x72): key in byte 1, ASC/ASCQ in 2–3, descriptors from byte 8.
        let key: UInt8
        let asc: UInt8
        let ascq: UInt8
        if sense[0] & 0x7F == 0x72 {
            (key, asc, ascq) = (sense[1] & 0xF, sense[2], sense[3])
        } else if sense.count >= 14 {
            (key, asc, ascq) = (sense[2] & 0xF, sense[12], sense[13])
        } else {
            return "SCSI status 0x\(String(status, radix: 16)), short sense"
        }
        var ataError: UInt8 = 0
        var ataStatus: UInt8 = 0
        var found = false
        if sense[0] & 0x7F == 0x72 {
            var i = 8
            let end = min(sense.count, 8 + Int(sense[7]))
            while i + 1 < end {
                let length = Int(sense[i + 1]) + 2
                if sense[i] == 0x09, i + 13 < sense.count {
                    (ataError, ataStatus, found) = (sense[i + 3], sense[i + 13], true)
                }
                i += length
            }
        }
        // ATA PASS-THROUGH INFORMATION AVAILABLE (00/1D) with the registers clean: success.
        // In fixed format (some kernels and bridges answer so) the registers are not all there:
        // the sense key says it (no sense, or recovered error).
        if asc == 0x00, ascq == 0x1D, key == 0 || key == 1, !found || ataStatus & 0x21 == 0 { return nil }
        let registers =
            found ? ", ATA error 0x\(String(ataError, radix: 16)) status 0x\(String(ataStatus, radix: 16))" : ""
        return
            "sense key 0x\(String(key, radix: 16)) ASC/ASCQ 0x\(String(asc, radix: 16))/0x\(String(ascq, radix: 16))\(registers)"
    }
}
