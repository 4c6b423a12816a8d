import Testing

@testable import FarrierAgent

/// The pure parts of the config drive's partition edit and of NVMe Format (the real paths run
/// against sfdisk, blkid and mtools in AgentTests, and in the lab's VMs).
@Suite struct ConfigDriveAndEraseTests {
    @Test func crc32IsIEEE() {
        #expect(PartitionTableEdit.crc32(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(PartitionTableEdit.crc32([]) == 0)
    }

    @Test func anMBRGetsAPartitionAtTheDisksEnd() throws {
        var mbr = [UInt8](repeating: 0, count: 512)
        mbr[510] = 0x55
        mbr[511] = 0xAA
        // One Linux partition: sectors 2048 ..< 2048 + 40960 (20 MiB).
        mbr[446 + 4] = 0x83
        LittleEndian.put32(&mbr, 446 + 8, 2048)
        LittleEndian.put32(&mbr, 446 + 12, 40960)
        let disk: Int64 = 200 << 20
        let edit = try PartitionTableEdit.addPartition(
            read: { offset, count in offset == 0 ? mbr : [UInt8](repeating: 0, count: count) },
            diskBytes: disk,
            sectorSize: 512,
            partitionBytes: 64 << 20
        )
        #expect(edit.scheme == "mbr" && edit.number == 2)
        #expect(edit.start == disk - (64 << 20) && edit.length == 64 << 20)
        let table = try #require(edit.writes.first?.1)
        #expect(table[446 + 16 + 4] == 0x0C)
        #expect(LittleEndian.get32(table, 446 + 16 + 8) == UInt32((disk - (64 << 20)) / 512))
        // The existing entry is untouched.
        #expect(Array(table[446..<462]) == Array(mbr[446..<462]))
    }

    @Test func noRoomOrNoTableIsAClearFailure() {
        var mbr = [UInt8](repeating: 0, count: 512)
        #expect(throws: AgentFailure.self) {
            try PartitionTableEdit.addPartition(
                read: { _, c in [UInt8](repeating: 0, count: c) },
                diskBytes: 1 << 30,
                sectorSize: 512,
                partitionBytes: 64 << 20
            )
        }
        mbr[510] = 0x55
        mbr[511] = 0xAA
        mbr[446 + 4] = 0x83
        LittleEndian.put32(&mbr, 446 + 8, 2048)
        LittleEndian.put32(&mbr, 446 + 12, UInt32((100 << 20) / 512))  // fills the disk
        let full = mbr
        #expect(throws: AgentFailure.self) {
            try PartitionTableEdit.addPartition(
                read: { o, c in o == 0 ? full : [UInt8](repeating: 0, count: c) },
                diskBytes: 101 << 20,
                sectorSize: 512,
                partitionBytes: 64 << 20
            )
        }
    }

    @Test func nvmeFormatKeepsTheLBAFormatAndPicksTheErase() {
        var controller = [UInt8](repeating: 0, count: 4096)
        var namespace = [UInt8](repeating: 0, count: 4096)
        controller[256] = 0x2  // OACS: Format NVM
        namespace[26] = 0x13  // FLBAS: format 3, extended metadata
        var caps = NVMeFormat.Capabilities(controller: controller, namespace: namespace)
        #expect(caps.formatSupported && !caps.cryptographicErase && caps.lbaFormat == 3 && caps.extendedMetadata)
        #expect(caps.cdw10(.userData) == 3 | 1 << 4 | 1 << 9)
        controller[524] = 0x4  // FNA: cryptographic erase supported
        caps = NVMeFormat.Capabilities(controller: controller, namespace: namespace)
        #expect(caps.cryptographicErase && caps.cdw10(.cryptographic) == 3 | 1 << 4 | 2 << 9)
        // Formats above 15 keep their upper bits (FLBAS bits 6:5 → CDW10 bits 13:12).
        namespace[26] = 0x21
        caps = NVMeFormat.Capabilities(controller: controller, namespace: namespace)
        #expect(caps.lbaFormat == 0x11 && caps.cdw10(.cryptographic) & 0x3000 == 0x1000)
        // Protection information stays as it is (DPS: type 1, in the first bytes).
        namespace[29] = 0x9
        caps = NVMeFormat.Capabilities(controller: controller, namespace: namespace)
        #expect(caps.cdw10(.userData) & 0x1E0 == 1 << 5 | 1 << 8)
        controller[256] = 0
        #expect(!NVMeFormat.Capabilities(controller: controller, namespace: namespace).formatSupported)
    }
}
