import FarrierCore
import Foundation
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// The deployed OS's cloud-init data as a config drive: a partition at the end of the disk
/// with a FAT filesystem labelled `CIDATA` (mkdosfs) holding the NoCloud files (mcopy), which cloud-init's NoCloud
/// datasource finds by its label (as Ironic's config drive is found). Nothing is fetched over
/// the network at first boot, so nothing on the boot network can ask for a tenant's data.
///
/// The partition is added to the image's GPT (or MBR) after the image is written: the GPT's
/// backup header moves to the end of the (usually larger) disk, and the new partition takes
/// the disk's last `size` bytes, after every existing partition (cloud-init's growpart then
/// grows the root partition up to it).
struct ConfigDrive {
    static let size: Int64 = 64 << 20
    let disk: String
    let log: (String) -> Void

    /// Adds the partition, formats it and writes the seed.
    func write(_ seed: NoCloudSeed) throws {
        let fd = open(disk, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            throw AgentFailure("config drive: cannot open \(disk): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        fstat(fd, &st)
        let isBlock = (st.st_mode & S_IFMT) == S_IFBLK
        var sectorSize: Int32 = 512
        if isBlock { _ = ioctl(fd, 0x1268, &sectorSize) }  // BLKSSZGET
        let diskSize = lseek(fd, 0, SEEK_END)
        let table: PartitionTableEdit
        do {
            table = try PartitionTableEdit.addPartition(
                read: { offset, count in try Self.pread(fd, offset, count) },
                diskBytes: Int64(diskSize),
                sectorSize: Int(sectorSize),
                partitionBytes: Self.size
            )
            for (offset, bytes) in table.writes { try bytes.withUnsafeBytes { try pwriteAll(fd, $0, at: offset) } }
            guard fsync(fd) == 0 || errno == EINVAL else {
                throw AgentFailure("config drive: fsync: \(String(cString: strerror(errno)))")
            }
        } catch {
            close(fd)
            throw error
        }
        if isBlock { _ = ioctl(fd, 0x125F) }  // BLKRRPART
        close(fd)
        log(
            "config drive: partition \(table.number) of \(disk) (\(table.scheme)), bytes \(table.start)–\(table.start + table.length - 1)"
        )
        // The partition's device: the kernel's node for a disk, a loop device over the range for a file.
        var device: String
        var loop: String?
        if isBlock {
            device = try partitionNode(number: table.number)
        } else {
            let out = try Self.output([
                "losetup", "-f", "--show", "-o", "\(table.start)", "--sizelimit", "\(table.length)", disk,
            ])
            device = out.trimmingCharacters(in: .whitespacesAndNewlines)
            loop = device
        }
        defer { if let loop { _ = Agent.run(["losetup", "-d", loop]) } }
        _ = try Self.output(["mkdosfs", "-n", "CIDATA", device])
        // The files go in with mtools: no mount, so no filesystem driver is needed, and nothing
        // of the deployed disk is ever mounted in the ramdisk.
        let staging = "/run/farrier-cidata"
        try? FileManager.default.removeItem(atPath: staging)
        try FileManager.default.createDirectory(
            atPath: staging,
            withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700]
        )
        defer { try? FileManager.default.removeItem(atPath: staging) }
        var names: [String] = []
        var files = [("meta-data", seed.metaData), ("user-data", seed.userData), ("vendor-data", seed.vendorData)]
        // NoCloud reads network-config at init-local, before any network is up.
        if let network = seed.networkConfig { files.append(("network-config", network)) }
        for (name, text) in files {
            try text.write(toFile: staging + "/" + name, atomically: false, encoding: .utf8)
            names.append(staging + "/" + name)
        }
        _ = try Self.output(["env", "MTOOLS_SKIP_CHECK=1", "mcopy", "-o", "-i", device] + names + ["::"])
        log("config drive: NoCloud seed (\(files.map(\.0).joined(separator: ", "))) written on \(device), label CIDATA")
    }

    /// /dev/vda3, /dev/nvme0n1p3…: waits (bounded, 10 s) for the kernel to make it.
    func partitionNode(number: Int) throws -> String {
        let last = disk.last ?? "a"
        let node = disk + (last.isNumber ? "p" : "") + "\(number)"
        for _ in 0..<100 {
            if access(node, F_OK) == 0 { return node }
            usleep(100_000)
        }
        throw AgentFailure("config drive: \(node) did not appear after re-reading \(disk)'s partition table")
    }

    static func pread(_ fd: Int32, _ offset: Int64, _ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes {
                Glibc.pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done))
            }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw AgentFailure("config drive: short read at \(offset)") }
            done += n
        }
        return bytes
    }

    /// Runs a command; its stdout, or a failure with its stderr.
    static func output(_ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw AgentFailure(
                "config drive: \(args.joined(separator: " ")) failed: \(String(decoding: errors, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))"
            )
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Adding one partition at the end of a disk to its GPT or MBR: pure (reads through a closure,
/// returns the writes), so it is tested on bytes.
struct PartitionTableEdit {
    var scheme: String
    var number: Int
    var start: Int64
    var length: Int64
    /// (byte offset, bytes) to write.
    var writes: [(Int64, [UInt8])]

    static let basicDataType: [UInt8] = [
        0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
    ]

    static func addPartition(
        read: (Int64, Int) throws -> [UInt8],
        diskBytes: Int64,
        sectorSize ss: Int,
        partitionBytes: Int64
    ) throws -> PartitionTableEdit {
        let sectors = diskBytes / Int64(ss)
        let mbr = try read(0, 512)
        guard mbr[510] == 0x55, mbr[511] == 0xAA else {
            throw AgentFailure("config drive: the image has no partition table")
        }
        let header = try read(Int64(ss), ss)
        if Array(header[0..<8]) == Array("EFI PART".utf8) {
            return try gpt(
                mbr: mbr,
                header: header,
                read: read,
                sectors: sectors,
                ss: ss,
                partitionBytes: partitionBytes
            )
        }
        return try msdos(mbr: mbr, sectors: sectors, ss: ss, partitionBytes: partitionBytes)
    }

    static func gpt(
        mbr: [UInt8],
        header: [UInt8],
        read: (Int64, Int) throws -> [UInt8],
        sectors: Int64,
        ss: Int,
        partitionBytes: Int64
    ) throws -> PartitionTableEdit {
        let headerSize = Int(LittleEndian.get32(header, 12))
        guard headerSize >= 92, headerSize <= ss else {
            throw AgentFailure("config drive: GPT header size \(headerSize)")
        }
        var check = Array(header[0..<headerSize])
        LittleEndian.put32(&check, 16, 0)
        guard crc32(check) == LittleEndian.get32(header, 16) else {
            throw AgentFailure("config drive: the GPT header's CRC does not match")
        }
        let entriesLBA = Int64(LittleEndian.get64(header, 72))
        let count = Int(LittleEndian.get32(header, 80))
        let entrySize = Int(LittleEndian.get32(header, 84))
        guard entrySize >= 128, count > 0, count <= 1024 else {
            throw AgentFailure("config drive: GPT with \(count) entries of \(entrySize) bytes")
        }
        var entries = try read(entriesLBA * Int64(ss), count * entrySize)
        let entrySectors = Int64((count * entrySize + ss - 1) / ss)
        var highest: Int64 = 0
        var free: Int?
        for i in 0..<count {
            let e = i * entrySize
            if entries[e..<e + 16].allSatisfy({ $0 == 0 }) {
                if free == nil { free = i }
                continue
            }
            highest = max(highest, Int64(LittleEndian.get64(entries, e + 40)))
        }
        guard let slot = free else { throw AgentFailure("config drive: the GPT has no free entry") }
        let lastUsable = sectors - 1 - entrySectors - 1
        let align = Int64(1 << 20) / Int64(ss)
        let first = (lastUsable + 1 - partitionBytes / Int64(ss)) / align * align
        guard first > highest else {
            throw AgentFailure(
                "config drive: no room after the image's partitions (the disk is \(sectors * Int64(ss)) bytes)"
            )
        }
        let e = slot * entrySize
        for i in 0..<entrySize { entries[e + i] = 0 }
        entries.replaceSubrange(e..<e + 16, with: basicDataType)
        var unique = SecureRandom.bytes(16)
        unique[7] = (unique[7] & 0x0F) | 0x40  // version 4 (mixed-endian field 3)
        unique[8] = (unique[8] & 0x3F) | 0x80
        entries.replaceSubrange(e + 16..<e + 32, with: unique)
        LittleEndian.put64(&entries, e + 32, UInt64(first))
        LittleEndian.put64(&entries, e + 40, UInt64(lastUsable))
        for (i, u) in "config-2".utf16.enumerated() {
            entries[e + 56 + 2 * i] = UInt8(u & 0xFF)
            entries[e + 57 + 2 * i] = UInt8(u >> 8)
        }
        let entriesCRC = crc32(entries)
        var primary = Array(header[0..<headerSize])
        LittleEndian.put64(&primary, 32, UInt64(sectors - 1))
        LittleEndian.put64(&primary, 48, UInt64(lastUsable))
        LittleEndian.put32(&primary, 88, entriesCRC)
        var backup = primary
        LittleEndian.put64(&backup, 24, UInt64(sectors - 1))
        LittleEndian.put64(&backup, 32, 1)
        LittleEndian.put64(&backup, 72, UInt64(sectors - 1 - entrySectors))
        for h in [0, 1] {
            var x = h == 0 ? primary : backup
            LittleEndian.put32(&x, 16, 0)
            LittleEndian.put32(&x, 16, crc32(x))
            if h == 0 { primary = x } else { backup = x }
        }
        // The protective MBR covers the whole disk again.
        var pmbr = mbr
        LittleEndian.put32(&pmbr, 446 + 12, UInt32(min(sectors - 1, 0xFFFF_FFFF)))
        let pad = { (b: [UInt8]) in b + [UInt8](repeating: 0, count: ss - b.count) }
        // The image's own backup header (at the image's end, now inside the disk): zeroed, so
        // nothing finds a stale GPT there.
        var stale: [(Int64, [UInt8])] = []
        let oldBackup = Int64(LittleEndian.get64(header, 32))
        if oldBackup > highest, oldBackup < sectors - 1 - entrySectors {
            stale.append((oldBackup * Int64(ss), [UInt8](repeating: 0, count: ss)))
        }
        return PartitionTableEdit(
            scheme: "gpt",
            number: slot + 1,
            start: first * Int64(ss),
            length: (lastUsable - first + 1) * Int64(ss),
            writes: [
                (0, pmbr), (Int64(ss), pad(primary)), (entriesLBA * Int64(ss), entries),
                ((sectors - 1 - entrySectors) * Int64(ss), entries), ((sectors - 1) * Int64(ss), pad(backup)),
            ] + stale
        )
    }

    static func msdos(mbr: [UInt8], sectors: Int64, ss: Int, partitionBytes: Int64) throws -> PartitionTableEdit {
        // A protective MBR without a GPT where this disk's sectors put it: a GPT made for
        // another sector size (a 512-byte image on a 4Kn disk). Not an MBR to add to.
        if (0..<4).contains(where: { mbr[446 + 16 * $0 + 4] == 0xEE }) {
            throw AgentFailure(
                "config drive: the image's GPT is not where this disk's \(ss)-byte sectors put it (an image for another sector size)"
            )
        }
        var table = mbr
        var highest: Int64 = 0
        var free: Int?
        for i in 0..<4 {
            let e = 446 + 16 * i
            if table[e + 4] == 0 {
                if free == nil { free = i }
                continue
            }
            highest = max(
                highest,
                Int64(LittleEndian.get32(table, e + 8)) + Int64(LittleEndian.get32(table, e + 12)) - 1
            )
        }
        guard let slot = free else { throw AgentFailure("config drive: the MBR has no free primary entry") }
        let end = min(sectors, 0xFFFF_FFFF) - 1
        let align = Int64(1 << 20) / Int64(ss)
        let first = (end + 1 - partitionBytes / Int64(ss)) / align * align
        guard first > highest else { throw AgentFailure("config drive: no room after the image's partitions") }
        let e = 446 + 16 * slot
        table.replaceSubrange(e..<e + 8, with: [0x00, 0xFE, 0xFF, 0xFF, 0x0C, 0xFE, 0xFF, 0xFF])
        LittleEndian.put32(&table, e + 8, UInt32(first))
        LittleEndian.put32(&table, e + 12, UInt32(end - first + 1))
        return PartitionTableEdit(
            scheme: "mbr",
            number: slot + 1,
            start: first * Int64(ss),
            length: (end - first + 1) * Int64(ss),
            writes: [(0, table)]
        )
    }

    /// CRC-32 (IEEE 802.3, reflected), as GPT uses.
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            crc ^= UInt32(b)
            for _ in 0..<8 { crc = (crc >> 1) ^ (0xEDB8_8320 & (0 &- (crc & 1))) }
        }
        return ~crc
    }
}
