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
        let cores = max(1, lines.filter { $0.hasPrefix("processor") }.count)
        let memKB =
            (read("/proc/meminfo") ?? "").split(separator: "\n").first { $0.hasPrefix("MemTotal:") }
            .flatMap { $0.split(separator: " ").dropFirst().first }.flatMap { Int64($0) } ?? 0
        return Inventory(
            cpuModel: model,
            cores: cores,
            memoryBytes: memKB * 1024,
            disks: disks(),
            nics: nics(),
            vendor: read("/sys/class/dmi/id/sys_vendor") ?? "",
            product: read("/sys/class/dmi/id/product_name") ?? "",
            serial: read("/sys/class/dmi/id/product_serial") ?? "",
            firmware: FileManager.default.fileExists(atPath: root + "/sys/firmware/efi") ? .uefi : .bios
        )
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
                serial: read(base + "/serial") ?? read(base + "/device/serial") ?? read(base + "/device/wwid") ?? "",
                rotational: read(base + "/queue/rotational") == "1"
            )
        }
    }

    public func nics() -> [Inventory.NIC] {
        list("/sys/class/net").compactMap { name in
            let base = "/sys/class/net/\(name)"
            guard name != "lo", FileManager.default.fileExists(atPath: root + base + "/device") else { return nil }
            let driver =
                (try? FileManager.default.destinationOfSymbolicLink(atPath: root + base + "/device/driver"))
                .map { ($0 as NSString).lastPathComponent } ?? ""
            return Inventory.NIC(
                name: name,
                mac: read(base + "/address") ?? "",
                driver: driver,
                link: read(base + "/carrier") == "1"
            )
        }
    }
}
