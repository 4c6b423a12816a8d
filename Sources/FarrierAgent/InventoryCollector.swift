import CFarrierNet
import FarrierCore
import Foundation

/// Reads the hardware inventory from procfs and sysfs. `root` prefixes every path, so tests
/// can point it at a copy of a machine's /proc and /sys.
public struct InventoryCollector {
    public let root: String

    public init(root: String = "") { self.root = root }

    func read(_ path: String) -> String? {
        (try? String(contentsOfFile: root + path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func list(_ path: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root + path)) ?? []).sorted()
    }

    public func collect() -> Inventory {
        let cpuinfo = read("/proc/cpuinfo") ?? ""
        let lines = cpuinfo.split(separator: "\n")
        let model =
            lines.first { $0.hasPrefix("model name") }.flatMap { $0.split(separator: ":", maxSplits: 1).last }
            .map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown"
        let threads = max(1, lines.filter { $0.hasPrefix("processor") }.count)
        let memKB =
            (read("/proc/meminfo") ?? "").split(separator: "\n").first { $0.hasPrefix("MemTotal:") }
            .flatMap { $0.split(separator: " ").dropFirst().first }.flatMap { Int64($0) } ?? 0
        var inv = Inventory(
            cpuModel: model,
            cores: physicalCores() ?? threads,
            memoryBytes: memKB * 1024,
            disks: disks(),
            nics: nics(),
            vendor: read("/sys/class/dmi/id/sys_vendor") ?? "",
            product: read("/sys/class/dmi/id/product_name") ?? "",
            serial: read("/sys/class/dmi/id/product_serial") ?? "",
            firmware: FileManager.default.fileExists(atPath: root + "/sys/firmware/efi") ? .uefi : .bios
        )
        inv.threads = threads
        let nodes = list("/sys/devices/system/node").filter { $0.hasPrefix("node") && Int($0.dropFirst(4)) != nil }
        inv.numaNodes = max(1, nodes.count)
        inv.pciDevices = pciDevices()
        func dmi(_ name: String) -> String? { read("/sys/class/dmi/id/" + name).flatMap { $0.isEmpty ? nil : $0 } }
        inv.biosVendor = dmi("bios_vendor")
        inv.biosVersion = dmi("bios_version")
        inv.biosDate = dmi("bios_date")
        inv.boardSerial = dmi("board_serial")
        inv.chassisSerial = dmi("chassis_serial")
        return inv
    }

    /// Physical cores: distinct (package, core) pairs of the CPUs' topology; nil without one.
    public func physicalCores() -> Int? {
        let cpus = list("/sys/devices/system/cpu").filter { $0.hasPrefix("cpu") && Int($0.dropFirst(3)) != nil }
        var cores = Set<String>()
        for cpu in cpus {
            let base = "/sys/devices/system/cpu/\(cpu)/topology/"
            guard let core = read(base + "core_id") else { continue }
            cores.insert((read(base + "physical_package_id") ?? "0") + "/" + core)
        }
        return cores.isEmpty ? nil : cores.count
    }

    /// Every PCI function, with its IDs, class and driver.
    public func pciDevices() -> [Inventory.PCIDevice] {
        list("/sys/bus/pci/devices").compactMap { address in
            let base = "/sys/bus/pci/devices/\(address)/"
            func hex(_ name: String) -> String? {
                read(base + name).map { $0.hasPrefix("0x") ? String($0.dropFirst(2)) : $0 }
            }
            guard let vendor = hex("vendor"), let device = hex("device") else { return nil }
            return Inventory.PCIDevice(
                address: address,
                vendor: vendor,
                device: device,
                pciClass: hex("class") ?? "",
                driver: link(base + "driver")
            )
        }
    }

    /// The last path component of a symbolic link's target (a driver's name).
    func link(_ path: String) -> String? {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: root + path)).map {
            ($0 as NSString).lastPathComponent
        }
    }

    /// Whole disks: not partitions, loop, RAM, optical, zram or device-mapper devices.
    public func disks() -> [Inventory.Disk] {
        list("/sys/block").compactMap { name in
            if ["loop", "ram", "sr", "zram", "dm-", "md", "fd", "nbd"].contains(where: { name.hasPrefix($0) }) {
                return nil
            }
            let base = "/sys/block/\(name)"
            guard let sectors = read(base + "/size").flatMap({ Int64($0) }), sectors > 0 else { return nil }
            if read(base + "/removable") == "1" { return nil }
            return Inventory.Disk(
                name: name,
                sizeBytes: sectors * 512,
                model: read(base + "/device/model") ?? "",
                serial: read(base + "/serial") ?? read(base + "/device/serial") ?? unitSerial(base)
                    ?? read(base + "/device/wwid") ?? "",
                rotational: read(base + "/queue/rotational") == "1",
                wwn: read(base + "/device/wwid") ?? read(base + "/wwid")
            )
        }
    }

    /// A SCSI or SATA disk's serial: its Unit Serial Number VPD page (0x80), which sysfs has
    /// for them in place of a `serial` file: a 4-byte header, then the serial, space-padded.
    func unitSerial(_ base: String) -> String? {
        guard let page = FileManager.default.contents(atPath: root + base + "/device/vpd_pg80"), page.count > 4,
            page[page.startIndex + 1] == 0x80
        else { return nil }
        let serial = String(decoding: page.dropFirst(4).filter { $0 >= 0x20 && $0 < 0x7f }, as: UTF8.self)
            .trimmingCharacters(in: .whitespaces)
        return serial.isEmpty ? nil : serial
    }

    /// A NIC's firmware version through ethtool's driver info; nil when none or "N/A".
    static func firmware(of name: String) -> String? {
        var text = [CChar](repeating: 0, count: 64)
        guard farrier_nic_firmware(name, &text, 64) == 0 else { return nil }
        let v = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .trimmingCharacters(in: .whitespaces)
        return v.isEmpty || v == "N/A" ? nil : v
    }

    public func nics() -> [Inventory.NIC] {
        list("/sys/class/net").compactMap { name in
            let base = "/sys/class/net/\(name)"
            guard name != "lo", FileManager.default.fileExists(atPath: root + base + "/device") else { return nil }
            let up = read(base + "/carrier") == "1"
            // A PCI NIC's device is the PCI function (…/0000:00:03.0); a virtio NIC's is a child
            // of one (…/0000:00:03.0/virtio0). Others (USB: a BMC's host interface) have none,
            // though a PCI controller sits higher in their path.
            let real = URL(fileURLWithPath: root + base + "/device").resolvingSymlinksInPath().pathComponents
            let pci: String? =
                switch link(base + "/device/subsystem") {
                case "pci": real.last
                case "virtio": real.dropLast().last
                default: nil
                }
            var nic = Inventory.NIC(
                name: name,
                mac: read(base + "/address") ?? "",
                driver: link(base + "/device/driver") ?? "",
                link: up,
                // -1 or an error without a link; some drivers say nothing.
                speedMbps: up ? read(base + "/speed").flatMap { Int($0) }.flatMap { $0 > 0 ? $0 : nil } : nil,
                pciAddress: pci
            )
            // Only of this machine's own interfaces (not of a copy of /sys under `root`).
            if root.isEmpty { nic.firmware = Self.firmware(of: name) }
            return nic
        }
    }
}
