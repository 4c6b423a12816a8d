import Crypto
import FarrierSite
import Foundation
import Testing

/// The boot files a region lists and a site installs: only ramdisk files and top-level iPXE
/// binaries, whatever the region's list says; digests follow the bytes on disk.
@Suite struct BootFilesTests {
    @Test func onlyBootFilesArePaths() {
        for good in ["ramdisk/vmlinuz", "ramdisk/initrd.img", "undionly.kpxe", "ipxe.efi", "snponly_x86-64.efi"] {
            #expect(BootFile.isBootPath(good), "\(good)")
        }
        for bad in [
            "", "../ipxe.efi", "ramdisk/../../etc/passwd", "ramdisk/other", "a/b.efi", ".hidden.efi", "/ipxe.efi",
            "ipxe.efi/..", "ipxe.sh", "machines.json", String(repeating: "a", count: 70) + ".efi",
        ] {
            #expect(!BootFile.isBootPath(bad), "\(bad)")
        }
    }

    @Test func theCatalogFollowsTheBytes() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("farrier-boot-\(UUID())").path
        try FileManager.default.createDirectory(atPath: root + "/ramdisk", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        func digest(_ d: Data) -> String { SHA256.hash(data: d).map { String(format: "%02x", $0) }.joined() }
        let kernel = Data("kernel".utf8)
        let ipxe = Data(repeating: 7, count: 3_000_000)
        try kernel.write(to: URL(fileURLWithPath: root + "/ramdisk/vmlinuz"))
        try ipxe.write(to: URL(fileURLWithPath: root + "/ipxe.efi"))
        try Data("x".utf8).write(to: URL(fileURLWithPath: root + "/notes.txt"))
        let catalog = BootFileCatalog(root: root)
        let first = try await catalog.files()
        #expect(
            first == [
                BootFile(path: "ipxe.efi", sha256: digest(ipxe), size: 3_000_000),
                BootFile(path: "ramdisk/vmlinuz", sha256: digest(kernel), size: 6),
            ]
        )
        // Replaced (another file renamed over it): the new bytes' digest.
        let newer = Data("kernel 2".utf8)
        try newer.write(to: URL(fileURLWithPath: root + "/ramdisk/vmlinuz"), options: .atomic)
        let initrd = Data("initrd".utf8)
        try initrd.write(to: URL(fileURLWithPath: root + "/ramdisk/initrd.img"))
        #expect(
            try await catalog.files() == [
                BootFile(path: "ipxe.efi", sha256: digest(ipxe), size: 3_000_000),
                BootFile(path: "ramdisk/vmlinuz", sha256: digest(newer), size: 8),
                BootFile(path: "ramdisk/initrd.img", sha256: digest(initrd), size: 6),
            ]
        )
    }
}
