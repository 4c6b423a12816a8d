import FarrierCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Erases a whole disk and proves it: the release wipe between tenants.
///
/// 1. The device's own secure erase when it has one: on an NVMe namespace, Format NVM with a
///    cryptographic or user data erase (`NVMeFormat`); on a SATA drive with the ATA security
///    feature set, not frozen, Security Erase Unit (`ATASecurityErase`); otherwise
///    `BLKSECDISCARD` (the kernel asks the device to discard the blocks and every copy of them
///    it holds). After a device's own erase the read-back (3) runs first: a disk that reads
///    back as zeroes is done, since the device has erased every block (what an erased block
///    reads as is the device's choice; a cryptographic or enhanced erase often leaves noise,
///    which then gets 2). This trusts the device's erase, as Ironic does: 258 sampled blocks
///    catch a device that ignored the command, not one that erased only part of it. Zeroing an
///    erased disk again would only cost time: hours on a large drive, and on QEMU's emulated NVMe
///    under load a write-zeroes that stalled past the kernel's I/O timeout and took the
///    namespace away (CI, twice).
/// 2. Then zeroes over the whole device with `BLKZEROOUT`: the kernel uses the device's
///    write-zeroes command where the device guarantees the blocks read back as zeroes (an
///    unmapping write-zeroes on NVMe, SCSI WRITE SAME, virtio-blk), and otherwise writes zero
///    pages itself. A file (tests) or a device that refuses the ioctl is overwritten with
///    zeroes by `pwrite`.
/// 3. A read-back of the first, the last and `samples` random 4 KiB blocks, with the page
///    cache bypassed where the device allows (`O_DIRECT`): any byte that is not zero fails
///    the wipe, so a device that ignored the erase cannot pass as wiped.
///
/// The device's own erase is tried only on a block device, not on a file (tests).
public struct DiskEraser: Sendable {
    public enum Method: String, Sendable {
        case nvmeCryptographic = "NVMe Format NVM (cryptographic erase), read back as zeroes"
        case nvmeUserData = "NVMe Format NVM (user data erase), read back as zeroes"
        case nvmeCryptoThenZeroes = "NVMe Format NVM (cryptographic erase), then write-zeroes (BLKZEROOUT)"
        case nvmeUserDataThenZeroes = "NVMe Format NVM (user data erase), then write-zeroes (BLKZEROOUT)"
        case nvmeThenOverwrite = "NVMe Format NVM (secure erase), then overwrite with zeroes"
        case ataSecurityErase = "ATA Security Erase Unit, read back as zeroes"
        case ataEnhancedSecurityErase = "ATA enhanced Security Erase Unit, read back as zeroes"
        case ataThenZeroes = "ATA Security Erase Unit, then write-zeroes (BLKZEROOUT)"
        case ataThenOverwrite = "ATA Security Erase Unit, then overwrite with zeroes"
        case secureDiscardThenZeroes = "secure discard (BLKSECDISCARD), then write-zeroes (BLKZEROOUT)"
        case zeroes = "write-zeroes (BLKZEROOUT)"
        case overwrite = "overwrite with zeroes"
    }

    public struct Outcome: Sendable, Equatable {
        public var method: Method
        public var verifiedBlocks: Int
    }

    static let BLKDISCARD: UInt = 0x1277
    static let BLKZEROOUT: UInt = 0x127F
    static let BLKSECDISCARD: UInt = 0x127D
    /// Linux's O_DIRECT (Glibc's module leaves it out without _GNU_SOURCE); arm64 numbers it apart.
    #if arch(arm64)
    static let O_DIRECT: Int32 = 0o200000
    #else
    static let O_DIRECT: Int32 = 0o40000
    #endif
    public static let blockSize = 4096

    public let path: String
    public let size: Int64
    /// Random blocks read back after the erase (besides the first and the last).
    public var samples = 256
    /// How much is zeroed per call, so progress is reported as it goes.
    var chunk: Int64 = 256 << 20

    public init(path: String, size: Int64, samples: Int = 256) {
        self.path = path
        self.size = size
        self.samples = samples
    }

    /// Erases, then verifies. `progress` gets the bytes done so far.
    public func erase(log: (String) -> Void = { _ in }, progress: (Int64) -> Void = { _ in }) throws -> Outcome {
        guard size > 0 else { throw AgentFailure("cannot erase \(path): its size is \(size)") }
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw AgentFailure("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var method: Method
        var whole: (UInt64, UInt64) = (0, UInt64(size))
        // The device's own erase first; write-zeroes after it either way, since what an erased
        // block reads back as is the device's choice, and the read-back wants zeroes.
        let nvme = try NVMeFormat(fd: fd, path: path).run()
        let ata =
            nvme == nil && isBlockDevice(fd)
            ? try ATASecurityErase(device: SGIODevice(fd: fd), path: path).run(log: log) : nil
        // The device erased itself: done if it reads back as zeroes (the method it then is, and
        // the erase's name for the log).
        let own: (method: Method, name: String)? =
            nvme.map { ($0 == .cryptographic ? .nvmeCryptographic : .nvmeUserData, "NVMe format") }
            ?? ata.map { ($0 == .enhanced ? .ataEnhancedSecurityErase : .ataSecurityErase, "ATA \($0.rawValue)") }
        if let own {
            do {
                let blocks = try Self.verifyZeroes(path: path, size: size, samples: samples)
                progress(size)
                return Outcome(method: own.method, verifiedBlocks: blocks)
            } catch {
                log("after the \(own.name): \(error); zeroing \(path) as well")
            }
        }
        let secure = nvme == nil && ata == nil && ioctl(fd, Self.BLKSECDISCARD, &whole) == 0
        var zeroed: Bool
        do { zeroed = try zeroOut(fd, progress: progress) } catch {
            // A device that fails write-zeroes part way (seen on QEMU's NVMe after a format)
            // still gets every byte written, the slow way.
            log("\(error); overwriting \(path) with zeroes instead")
            zeroed = false
        }
        if zeroed {
            switch nvme {
            case .cryptographic: method = .nvmeCryptoThenZeroes
            case .userData: method = .nvmeUserDataThenZeroes
            case nil: method = ata != nil ? .ataThenZeroes : secure ? .secureDiscardThenZeroes : .zeroes
            }
        } else if ata != nil {
            try overwrite(fd, progress: progress)
            method = .ataThenOverwrite
        } else if nvme != nil {
            try overwrite(fd, progress: progress)
            method = .nvmeThenOverwrite
        } else {
            try overwrite(fd, progress: progress)
            method = .overwrite
        }
        guard fsync(fd) == 0 || errno == EINVAL else {
            throw AgentFailure("fsync \(path): \(String(cString: strerror(errno)))")
        }
        let blocks = try Self.verifyZeroes(path: path, size: size, samples: samples)
        return Outcome(method: method, verifiedBlocks: blocks)
    }

    func isBlockDevice(_ fd: Int32) -> Bool {
        var st = stat()
        return fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFBLK
    }

    /// BLKZEROOUT in chunks. False when the device (or a file) does not take the ioctl at all.
    func zeroOut(_ fd: Int32, progress: (Int64) -> Void) throws -> Bool {
        var offset: Int64 = 0
        while offset < size {
            let length = min(chunk, size - offset)
            var range: (UInt64, UInt64) = (UInt64(offset), UInt64(length))
            if ioctl(fd, Self.BLKZEROOUT, &range) != 0 {
                let e = errno
                if offset == 0, [ENOTTY, EINVAL, EOPNOTSUPP].contains(e) { return false }
                throw AgentFailure("zeroing \(path) at \(offset): \(String(cString: strerror(e)))")
            }
            offset += length
            progress(offset)
        }
        return true
    }

    func overwrite(_ fd: Int32, progress: (Int64) -> Void) throws {
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: Self.blockSize)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var offset: Int64 = 0
        while offset < size {
            let n = Int(min(Int64(zeros.count), size - offset))
            do { try pwriteAll(fd, UnsafeRawBufferPointer(rebasing: zeros[0..<n]), at: offset) } catch {
                throw AgentFailure("overwriting \(path) at \(offset): \(error)")
            }
            offset += Int64(n)
            progress(offset)
        }
    }

    /// Reads back the first 4 KiB, the last 4 KiB (ending at the last byte, on a 512-byte
    /// boundary) and `samples` random 4 KiB blocks; throws at the first byte that is not zero.
    /// Returns how many blocks were read.
    public static func verifyZeroes(path: String, size: Int64, samples: Int) throws -> Int {
        guard size > 0 else { throw AgentFailure("cannot verify \(path): its size is \(size)") }
        // O_DIRECT reads the device, not a cached copy; a file system without it (tmpfs) is
        // read through the cache, after the cache is dropped for the file.
        var fd = open(path, O_RDONLY | O_CLOEXEC | Self.O_DIRECT)
        if fd < 0 {
            fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd >= 0 { _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) }
        }
        guard fd >= 0 else { throw AgentFailure("cannot open \(path) to verify: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: blockSize, alignment: blockSize)
        defer { block.deallocate() }
        let count = max(1, size / Int64(blockSize))
        // The tail: the last 4 KiB, rounded down to a sector so O_DIRECT takes it (a device's
        // size is a whole number of sectors, so the read reaches its last byte).
        let tail = max(0, size - Int64(blockSize)) & ~Int64(511)
        var offsets: [Int64] = [0, tail]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<samples { offsets.append(Int64.random(in: 0..<count, using: &rng) * Int64(blockSize)) }
        for offset in offsets {
            let want = Int(min(Int64(blockSize), size - offset))
            var got = 0
            while got < want {
                let n = pread(fd, block.baseAddress! + got, blockSize - got, off_t(offset) + off_t(got))
                if n < 0, errno == EINTR { continue }
                guard n > 0 else {
                    throw AgentFailure(
                        "verifying \(path): cannot read the block at \(offset): \(n < 0 ? String(cString: strerror(errno)) : "end of device")"
                    )
                }
                got += n
            }
            if let i = block[0..<want].firstIndex(where: { $0 != 0 }) {
                throw AgentFailure(
                    "verifying \(path): byte \(offset + Int64(i)) is not zero after the erase; the disk is not wiped",
                    code: .wipeNotVerified
                )
            }
        }
        return offsets.count
    }
}
