import FarrierAgent
import FarrierCore
import Foundation
import Testing

@Suite struct AgentUnitTests {
    @Test func kernelCommandLine() throws {
        let c = try #require(
            AgentConfiguration.fromKernelCommandLine(
                "initrd=initrd.img farrier.url=https://198.18.0.1:8443 farrier.cert=sha256:00ff farrier.mode=rescue console=ttyS0\n"
            )
        )
        #expect(c.serverURL == "https://198.18.0.1:8443")
        #expect(c.certificateSHA256 == "sha256:00ff")
        #expect(c.mode == "rescue")
        #expect(AgentConfiguration.fromKernelCommandLine("quiet console=ttyS0") == nil)
        // A token on the command line is no longer read: the agent gets its token at hello.
        #expect(AgentConfiguration.fromKernelCommandLine("farrier.url=https://h:1 farrier.token=abc") == nil)
    }

    /// Inventory from a tree laid out like a QEMU VM's /proc and /sys.
    @Test func inventoryFromSysfs() throws {
        let root = NSTemporaryDirectory() + "farrier-sys-\(UInt32.random(in: 0..<UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        func put(_ path: String, _ text: String) throws {
            try FileManager.default.createDirectory(
                atPath: root + (path as NSString).deletingLastPathComponent,
                withIntermediateDirectories: true
            )
            try text.write(toFile: root + path, atomically: true, encoding: .utf8)
        }
        try put(
            "/proc/cpuinfo",
            "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n"
        )
        try put("/proc/meminfo", "MemTotal:        2014520 kB\nMemFree:          100 kB\n")
        try put("/sys/block/vda/size", "41943040\n")
        try put("/sys/block/vda/serial", "farrier-disk-1\n")
        try put("/sys/block/vda/queue/rotational", "0\n")
        try put("/sys/block/vda/removable", "0\n")
        try put("/sys/block/sda/size", "2097152\n")
        try put("/sys/block/sda/device/model", "QEMU HARDDISK   \n")
        try put("/sys/block/sda/queue/rotational", "1\n")
        // A SCSI disk's serial is in its Unit Serial Number VPD page: a 4-byte header, then padded text.
        try Data([0x00, 0x80, 0x00, 0x0c] + Array("   QM00005  ".utf8)).write(
            to: URL(fileURLWithPath: root + "/sys/block/sda/device/vpd_pg80")
        )
        try put("/sys/block/loop0/size", "100\n")
        try put("/sys/block/sr0/size", "100\n")
        try put("/sys/class/net/ens3/address", "52:54:00:18:00:01\n")
        try put("/sys/class/net/ens3/carrier", "1\n")
        try FileManager.default.createDirectory(
            atPath: root + "/sys/class/net/ens3/device",
            withIntermediateDirectories: true
        )
        try FileManager.default.createDirectory(
            atPath: root + "/sys/bus/virtio/drivers/virtio_net",
            withIntermediateDirectories: true
        )
        try FileManager.default.createSymbolicLink(
            atPath: root + "/sys/class/net/ens3/device/driver",
            withDestinationPath: "../../../../bus/virtio/drivers/virtio_net"
        )
        try put("/sys/class/net/lo/address", "00:00:00:00:00:00\n")
        try put("/sys/class/dmi/id/sys_vendor", "QEMU\n")
        try put("/sys/class/dmi/id/product_name", "Standard PC (i440FX + PIIX, 1996)\n")
        try put("/sys/class/dmi/id/product_serial", "lab-1\n")
        // Two threads of one core; one NUMA node; BIOS and board from DMI.
        for cpu in ["cpu0", "cpu1"] {
            try put("/sys/devices/system/cpu/\(cpu)/topology/core_id", "0\n")
            try put("/sys/devices/system/cpu/\(cpu)/topology/physical_package_id", "0\n")
        }
        try put("/sys/devices/system/cpu/online", "0-1\n")
        try put("/sys/devices/system/node/node0/cpulist", "0-1\n")
        try put("/sys/devices/system/node/possible", "0\n")
        try put("/sys/class/dmi/id/bios_vendor", "SeaBIOS\n")
        try put("/sys/class/dmi/id/bios_version", "1.16.2-debian-1.16.2-1\n")
        try put("/sys/class/dmi/id/bios_date", "04/01/2014\n")
        try put("/sys/class/dmi/id/board_serial", "\n")
        try put("/sys/class/dmi/id/chassis_serial", "CH-9\n")
        try put("/sys/block/vda/device/wwid", "naa.5000c500a1b2c3d4\n")
        try put("/sys/class/net/ens3/speed", "10000\n")
        // PCI: the emulated VGA (not a GPU), an NVIDIA 3D controller with its driver, a NIC.
        for (address, vendor, device, cls) in [
            ("0000:00:02.0", "0x1234", "0x1111", "0x030000"), ("0000:00:05.0", "0x10de", "0x2330", "0x030200"),
            ("0000:00:03.0", "0x1af4", "0x1000", "0x020000"),
        ] {
            try put("/sys/bus/pci/devices/\(address)/vendor", vendor + "\n")
            try put("/sys/bus/pci/devices/\(address)/device", device + "\n")
            try put("/sys/bus/pci/devices/\(address)/class", cls + "\n")
        }
        try FileManager.default.createDirectory(
            atPath: root + "/sys/bus/pci/drivers/nvidia",
            withIntermediateDirectories: true
        )
        try FileManager.default.createSymbolicLink(
            atPath: root + "/sys/bus/pci/devices/0000:00:05.0/driver",
            withDestinationPath: "../../../bus/pci/drivers/nvidia"
        )
        let inv = InventoryCollector(root: root).collect()
        #expect(inv.cpuModel == "QEMU Virtual CPU version 2.5+")
        #expect(inv.cores == 1 && inv.threads == 2)
        #expect(inv.numaNodes == 1)
        #expect(inv.biosVendor == "SeaBIOS" && inv.biosDate == "04/01/2014" && inv.chassisSerial == "CH-9")
        #expect(inv.boardSerial == nil)
        #expect(inv.pciDevices?.map(\.address) == ["0000:00:02.0", "0000:00:03.0", "0000:00:05.0"])
        #expect(inv.gpus.map(\.name) == ["NVIDIA 10de:2330"] && inv.gpus.first?.driver == "nvidia")
        #expect(inv.disks.first { $0.name == "vda" }?.wwn == "naa.5000c500a1b2c3d4")
        #expect(inv.memoryBytes == 2_014_520 * 1024)
        #expect(inv.disks.map(\.name) == ["sda", "vda"])
        #expect(inv.disks.first { $0.name == "vda" }?.sizeBytes == Int64(41_943_040) * 512)
        #expect(inv.disks.first { $0.name == "vda" }?.serial == "farrier-disk-1")
        #expect(inv.disks.first { $0.name == "sda" }?.model == "QEMU HARDDISK")
        #expect(inv.disks.first { $0.name == "sda" }?.rotational == true)
        #expect(inv.disks.first { $0.name == "sda" }?.serial == "QM00005")
        #expect(
            inv.nics == [
                Inventory.NIC(
                    name: "ens3",
                    mac: "52:54:00:18:00:01",
                    driver: "virtio_net",
                    link: true,
                    speedMbps: 10000
                )
            ]
        )
        #expect(inv.vendor == "QEMU" && inv.serial == "lab-1")
        #expect(inv.firmware == .bios)
    }
}

/// The collector on this machine's own /proc and /sys (the kernel, a real peer): what it says
/// agrees with what the system says by other means.
@Suite struct HostInventoryTests {
    @Test func theHostsOwnInventory() throws {
        let inv = InventoryCollector().collect()
        let online = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8).components(separatedBy: "\nprocessor")
            .count
        #expect(inv.threads == online)
        #expect(inv.cores >= 1 && inv.cores <= online)
        #expect((inv.numaNodes ?? 0) >= 1)
        let pci = try FileManager.default.contentsOfDirectory(atPath: "/sys/bus/pci/devices")
        #expect(inv.pciDevices?.count == pci.count && !pci.isEmpty)
        #expect(inv.pciDevices?.allSatisfy { $0.vendor.count == 4 && $0.pciClass.count == 6 } == true)
        if FileManager.default.fileExists(atPath: "/sys/class/dmi/id/bios_vendor") {
            #expect(inv.biosVendor != nil)
        }
        // A NIC on PCI names its function, which is in the PCI list.
        for nic in inv.nics {
            if let a = nic.pciAddress { #expect(pci.contains(a), "\(nic.name) at \(a)") }
        }
    }
}

/// The release wipe on real files and a real block device: every byte zero afterwards, and a
/// disk that did not take the erase fails the read-back.
@Suite(.serialized) struct DiskEraserTests {
    /// A file of `bytes` non-zero bytes (an old tenant's data).
    func tempFile(_ bytes: Int) throws -> String {
        let path = NSTemporaryDirectory() + "farrier-erase-\(UInt32.random(in: 0..<UInt32.max))"
        var data = Data(count: bytes)
        var rng = SystemRandomNumberGenerator()
        data.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in 0..<words.count { words[i] = rng.next() | 0x0101_0101_0101_0101 }
            for i in (words.count * 8)..<raw.count { raw[i] = 0x5A }
        }
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func aFileIsOverwrittenAndVerified() throws {
        let size: Int64 = 9 * 1_048_576 + 123  // not a whole number of blocks
        let path = try tempFile(Int(size))
        defer { try? FileManager.default.removeItem(atPath: path) }
        var seen: [Int64] = []
        let outcome = try DiskEraser(path: path, size: size).erase(progress: { seen.append($0) })
        #expect(outcome.method == .overwrite)
        #expect(outcome.verifiedBlocks == 258)
        #expect(seen.last.map { $0 == size } == true, "progress ended at \(String(describing: seen.last))")
        let back = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(back.count == Int(size) && !back.contains { $0 != 0 })
    }

    @Test func aByteLeftBehindFailsTheReadBack() throws {
        let path = try tempFile(1 << 20)
        defer { try? FileManager.default.removeItem(atPath: path) }
        // Zero all of it but one byte in the last block, which the read-back always looks at.
        var data = Data(count: 1 << 20)
        data[(1 << 20) - 5] = 0x42
        try data.write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: AgentFailure.self) {
            try DiskEraser.verifyZeroes(path: path, size: 1 << 20, samples: 0)
        }
        #expect(
            error?.description.contains("byte \((1 << 20) - 5) is not zero") == true,
            "\(String(describing: error))"
        )
        // And random sampling finds a dirty region: half the disk left, 256 samples.
        data = Data(count: 1 << 20)
        for i in (1 << 19)..<(1 << 20) { data[i] = 1 }
        data[(1 << 20) - 5] = 0
        for i in ((1 << 20) - 4096)..<(1 << 20) { data[i] = 0 }
        try data.write(to: URL(fileURLWithPath: path))
        #expect(throws: AgentFailure.self) { try DiskEraser.verifyZeroes(path: path, size: 1 << 20, samples: 256) }
    }

    /// A loop device takes BLKZEROOUT: the erase goes through the kernel's write-zeroes, and
    /// the backing file holds zeroes only.
    @Test(.enabled(if: getuid() == 0, "needs root for a loop device"))
    func aBlockDeviceIsZeroedByTheKernel() throws {
        let path = try tempFile(32 << 20)
        defer { try? FileManager.default.removeItem(atPath: path) }
        func run(_ args: [String]) throws -> String {
            let p = Process()
            let out = Pipe()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = args
            p.standardOutput = out
            try p.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { throw AgentFailure("\(args) exited \(p.terminationStatus)") }
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let loop = try run(["losetup", "--find", "--show", path])
        var attached = true
        defer { if attached { _ = try? run(["losetup", "-d", loop]) } }
        let outcome = try DiskEraser(path: loop, size: 32 << 20).erase()
        #expect(outcome.method == .zeroes || outcome.method == .secureDiscardThenZeroes, "\(outcome)")
        _ = try run(["losetup", "-d", loop])
        attached = false
        let back = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(!back.contains { $0 != 0 })
    }
}
