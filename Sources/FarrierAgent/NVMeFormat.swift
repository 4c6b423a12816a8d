import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// NVMe Format NVM with Secure Erase Settings, through the kernel's admin passthrough
/// (`NVME_IOCTL_ADMIN_CMD` on the namespace's block device): the device erases its user data
/// itself, including what it holds outside the host's view (spare blocks, caches). A
/// cryptographic erase (the media key is replaced) when the controller supports it, else a
/// user data erase. The namespace keeps its current LBA format.
struct NVMeFormat {
    static let NVME_IOCTL_ID: UInt = 0x4E40
    static let NVME_IOCTL_ADMIN_CMD: UInt = 0xC048_4E41

    enum Erase: String {
        case cryptographic = "cryptographic erase"
        case userData = "user data erase"
    }

    /// What the controller and namespace say about formatting (from Identify).
    struct Capabilities: Equatable {
        var formatSupported: Bool
        var cryptographicErase: Bool
        /// The namespace's current LBA format index, and whether its metadata is extended.
        var lbaFormat: UInt32
        var extendedMetadata: Bool
        /// End-to-end protection (Identify Namespace DPS): its type (0: none) and whether it is
        /// in the metadata's first bytes; kept as they are.
        var protection: UInt32 = 0
        var protectionFirst = false

        /// CDW10 of Format NVM for this namespace: its LBA format and metadata setting kept,
        /// and the secure erase setting (1: user data erase, 2: cryptographic erase).
        func cdw10(_ erase: Erase) -> UInt32 {
            let ses: UInt32 = erase == .cryptographic ? 2 : 1
            return (lbaFormat & 0xF) | ((lbaFormat & 0x30) << 8) | (extendedMetadata ? 1 << 4 : 0)
                | ((protection & 0x7) << 5)
                | (protectionFirst ? 1 << 8 : 0) | (ses << 9)
        }

        /// From the Identify Controller and Identify Namespace data (4096 bytes each).
        init(controller c: [UInt8], namespace n: [UInt8]) {
            let oacs = UInt16(c[256]) | UInt16(c[257]) << 8
            formatSupported = oacs & 0x2 != 0
            cryptographicErase = c[524] & 0x4 != 0
            let flbas = n[26]
            lbaFormat = UInt32(flbas & 0xF) | UInt32((flbas >> 5) & 0x3) << 4
            extendedMetadata = flbas & 0x10 != 0
            protection = UInt32(n[29] & 0x7)
            protectionFirst = n[29] & 0x8 != 0
        }

        init(formatSupported: Bool, cryptographicErase: Bool, lbaFormat: UInt32, extendedMetadata: Bool) {
            self.formatSupported = formatSupported
            self.cryptographicErase = cryptographicErase
            self.lbaFormat = lbaFormat
            self.extendedMetadata = extendedMetadata
        }
    }

    let fd: Int32
    let path: String

    /// The namespace id, or nil when the device is not an NVMe namespace.
    func namespaceID() -> UInt32? {
        let id = ioctl(fd, Self.NVME_IOCTL_ID)
        return id > 0 ? UInt32(id) : nil
    }

    /// Formats with secure erase when the device is an NVMe namespace whose controller
    /// supports Format NVM. Returns what was done, or nil when it does not apply.
    func run() throws -> Erase? {
        guard let nsid = namespaceID() else { return nil }
        let controller = try identify(cns: 1, nsid: 0)
        let namespace = try identify(cns: 0, nsid: nsid)
        let caps = Capabilities(controller: controller, namespace: namespace)
        guard caps.formatSupported else { return nil }
        let erase: Erase = caps.cryptographicErase ? .cryptographic : .userData
        // A format can take minutes on a large device; the admin command waits up to an hour.
        var status: Int32 = 0
        _ = try admin(
            opcode: 0x80,
            nsid: nsid,
            cdw10: caps.cdw10(erase),
            data: nil,
            timeoutMs: 3_600_000,
            status: &status
        )
        guard status == 0 else {
            throw AgentFailure(
                "NVMe Format NVM (\(erase.rawValue)) of \(path) failed: status 0x\(String(status, radix: 16))"
            )
        }
        return erase
    }

    func identify(cns: UInt32, nsid: UInt32) throws -> [UInt8] {
        var status: Int32 = 0
        let data = try admin(opcode: 0x06, nsid: nsid, cdw10: cns, data: 4096, timeoutMs: 10_000, status: &status)
        guard status == 0 else {
            throw AgentFailure("NVMe Identify (CNS \(cns)) of \(path) failed: status 0x\(String(status, radix: 16))")
        }
        return data
    }

    /// One admin command (struct nvme_admin_cmd, 72 bytes, laid out by hand). `status` gets the
    /// NVMe status (ioctl's positive return); a failed ioctl throws.
    func admin(
        opcode: UInt8,
        nsid: UInt32,
        cdw10: UInt32,
        data length: Int?,
        timeoutMs: UInt32,
        status: inout Int32
    ) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: length ?? 0)
        var cmd = [UInt8](repeating: 0, count: 72)
        cmd[0] = opcode
        LittleEndian.put32(&cmd, 4, nsid)
        LittleEndian.put32(&cmd, 40, cdw10)
        LittleEndian.put32(&cmd, 64, timeoutMs)
        let rc: Int32 = buffer.withUnsafeMutableBytes { data in
            if let base = data.baseAddress, !data.isEmpty {
                LittleEndian.put64(&cmd, 24, UInt64(UInt(bitPattern: base)))
                LittleEndian.put32(&cmd, 36, UInt32(data.count))
            }
            return cmd.withUnsafeMutableBytes { ioctl(fd, Self.NVME_IOCTL_ADMIN_CMD, $0.baseAddress!) }
        }
        guard rc >= 0 else {
            throw AgentFailure(
                "NVMe admin command 0x\(String(opcode, radix: 16)) on \(path): \(String(cString: strerror(errno)))"
            )
        }
        status = rc
        return buffer
    }
}
