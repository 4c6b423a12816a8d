import FarrierAgent
import FarrierCore
import Foundation
import Testing

@Suite struct AgentUnitTests {
    @Test func kernelCommandLine() throws {
        let c = try #require(AgentConfiguration.fromKernelCommandLine(
            "initrd=initrd.img farrier.url=http://198.18.0.1:8080 farrier.token=abc.3.XYZ_- farrier.mode=rescue console=ttyS0\n"))
        #expect(c.serverURL == "http://198.18.0.1:8080")
        #expect(c.token == "abc.3.XYZ_-")
        #expect(c.mode == "rescue")
        #expect(AgentConfiguration.fromKernelCommandLine("quiet console=ttyS0") == nil)
    }

    /// Inventory from a tree laid out like a QEMU VM's /proc and /sys.
    @Test func inventoryFromSysfs() throws {
        let root = NSTemporaryDirectory() + "farrier-sys-\(UInt32.random(in: 0..<UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        func put(_ path: String, _ text: String) throws {
            try FileManager.default.createDirectory(atPath: root + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: root + path, atomically: true, encoding: .utf8)
        }
        try put("/proc/cpuinfo", "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n")
        try put("/proc/meminfo", "MemTotal:        2014520 kB\nMemFree:          100 kB\n")
        try put("/sys/block/vda/size", "41943040\n")
        try put("/sys/block/vda/serial", "farrier-disk-1\n")
        try put("/sys/block/vda/queue/rotational", "0\n")
        try put("/sys/block/vda/removable", "0\n")
        try put("/sys/block/sda/size", "2097152\n")
        try put("/sys/block/sda/device/model", "QEMU HARDDISK   \n")
        try put("/sys/block/sda/queue/rotational", "1\n")
        try put("/sys/block/loop0/size", "100\n")
        try put("/sys/block/sr0/size", "100\n")
        try put("/sys/class/net/ens3/address", "52:54:00:18:00:01\n")
        try put("/sys/class/net/ens3/carrier", "1\n")
        try FileManager.default.createDirectory(atPath: root + "/sys/class/net/ens3/device", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/sys/bus/virtio/drivers/virtio_net", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: root + "/sys/class/net/ens3/device/driver", withDestinationPath: "../../../../bus/virtio/drivers/virtio_net")
        try put("/sys/class/net/lo/address", "00:00:00:00:00:00\n")
        try put("/sys/class/dmi/id/sys_vendor", "QEMU\n")
        try put("/sys/class/dmi/id/product_name", "Standard PC (i440FX + PIIX, 1996)\n")
        try put("/sys/class/dmi/id/product_serial", "lab-1\n")
        let inv = InventoryCollector(root: root).collect()
        #expect(inv.cpuModel == "QEMU Virtual CPU version 2.5+")
        #expect(inv.cores == 2)
        #expect(inv.memoryBytes == 2014520 * 1024)
        #expect(inv.disks.map(\.name) == ["sda", "vda"])
        #expect(inv.disks.first { $0.name == "vda" }?.sizeBytes == Int64(41943040) * 512)
        #expect(inv.disks.first { $0.name == "vda" }?.serial == "farrier-disk-1")
        #expect(inv.disks.first { $0.name == "sda" }?.model == "QEMU HARDDISK")
        #expect(inv.disks.first { $0.name == "sda" }?.rotational == true)
        #expect(inv.nics == [Inventory.NIC(name: "ens3", mac: "52:54:00:18:00:01", driver: "virtio_net", link: true)])
        #expect(inv.vendor == "QEMU" && inv.serial == "lab-1")
        #expect(inv.firmware == .bios)
    }
}
