import FarrierControl
import FarrierCore
import Foundation
import Testing

/// qcow2 intake against the real qemu-img: an upload that names another file (a backing file,
/// an external data file) or is larger than the cap is refused before any conversion, with a
/// message that says why; a standalone image is converted to raw.
/// A class so that each test's directory is removed when the test ends (deinit).
@Suite(.serialized) final class ImageIntakeTests {
    let dir: String
    let repo: ImageRepository

    init() throws {
        dir = NSTemporaryDirectory() + "farrier-intake-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        repo = try ImageRepository(root: dir + "/images", maxVirtualSize: 64 << 20)
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func qemuImg(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["qemu-img"] + args
        try p.run()
        p.waitUntilExit()
        try #require(p.terminationStatus == 0, "qemu-img \(args)")
    }

    /// Uploads a file's bytes as the server's upload path does, then commits it as qcow2.
    func upload(_ path: String) throws -> (sha256: String, size: Int64, format: ImageInfo.Format) {
        let u = try repo.beginUpload()
        try u.write(try Data(contentsOf: URL(fileURLWithPath: path)))
        return try repo.commit(u, declared: "qcow2", expectedSHA256: nil)
    }

    /// A secret the server can read, e.g. its BMC key.
    func secret() throws -> String {
        let path = dir + "/bmc.key"
        try Data(repeating: 0x5A, count: 1 << 20).write(to: URL(fileURLWithPath: path))
        return path
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }

    @Test func aBackingFileIsRefused() throws {
        defer { cleanup() }
        let secret = try secret()
        try qemuImg(["create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", dir + "/evil.qcow2", "1M"])
        let error = #expect(throws: ControlError.self) { try upload(dir + "/evil.qcow2") }
        #expect(error?.kind == .invalid)
        #expect(
            error?.description.contains("backing file") == true && error?.description.contains(secret) == true,
            "\(String(describing: error))"
        )
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo.blobDirectory).isEmpty)
    }

    @Test func anExternalDataFileIsRefused() throws {
        defer { cleanup() }
        let secret = try secret()
        try qemuImg([
            "create", "-q", "-f", "qcow2", "-o", "data_file=\(secret),data_file_raw=on", dir + "/evil.qcow2", "1M",
        ])
        let error = #expect(throws: ControlError.self) { try upload(dir + "/evil.qcow2") }
        #expect(error?.description.contains("external data file") == true, "\(String(describing: error))")
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo.blobDirectory).isEmpty)
    }

    @Test func aVirtualSizeOverTheCapIsRefused() throws {
        defer { cleanup() }
        try qemuImg(["create", "-q", "-f", "qcow2", dir + "/huge.qcow2", "10T"])
        let error = #expect(throws: ControlError.self) { try upload(dir + "/huge.qcow2") }
        #expect(
            error?.description.contains("virtual size is 10995116277760 bytes") == true,
            "\(String(describing: error))"
        )
    }

    @Test func aStandaloneImageIsConvertedToRaw() throws {
        defer { cleanup() }
        let raw = dir + "/disk.raw"
        var bytes = Data(repeating: 0, count: 2 << 20)
        bytes.replaceSubrange(0..<11, with: Data("hello, disk".utf8))
        try bytes.write(to: URL(fileURLWithPath: raw))
        try qemuImg(["convert", "-q", "-f", "raw", "-O", "qcow2", raw, dir + "/disk.qcow2"])
        let stored = try upload(dir + "/disk.qcow2")
        #expect(stored.format == .raw && stored.size == 2 << 20)
        let back = try Data(contentsOf: URL(fileURLWithPath: repo.path(sha256: stored.sha256)))
        #expect(back == bytes)
    }

    /// The check itself, on qemu-img's JSON: the fields it reads.
    @Test func infoJSONIsRead() throws {
        let json =
            #"{"virtual-size": 1048576, "format": "qcow2", "full-backing-filename": "/etc/shadow", "format-specific": {"type": "qcow2", "data": {"data-file": "/x"}}}"#
        let info = try ImageRepository.Qcow2Info(json: Data(json.utf8))
        #expect(info == .init(virtualSize: 1 << 20, backingFile: "/etc/shadow", dataFile: "/x"))
        #expect(throws: ControlError.self) { try ImageRepository.Qcow2Info(json: Data("{}".utf8)) }
        #expect(throws: Never.self) {
            try ImageRepository.checkQcow2(.init(virtualSize: 1 << 20), maxVirtualSize: 1 << 20)
        }
    }
}
