import Crypto
import FarrierCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Image bytes on disk, content-addressed: `<root>/sha256/<hex>`. An upload goes to
/// `<root>/tmp` first, is hashed as it arrives, fsynced, and renamed into place, so a crash
/// leaves either no image or a whole one (and at most a temporary file, removed at start).
public struct ImageRepository: Sendable {
    public let root: String

    public init(root: String) throws {
        self.root = root
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/sha256", withIntermediateDirectories: true)
        try? fm.removeItem(atPath: root + "/tmp")
        try fm.createDirectory(atPath: root + "/tmp", withIntermediateDirectories: true)
    }

    public var blobDirectory: String { root + "/sha256" }
    public func path(sha256: String) -> String { blobDirectory + "/" + sha256 }

    public func beginUpload() throws -> ImageUpload {
        try ImageUpload(path: root + "/tmp/" + UUID().uuidString.lowercased())
    }

    /// Checks the upload against its declared format and expected digest, converts qcow2 to
    /// raw, and moves the bytes into place. Returns the stored digest, size and format.
    public func commit(
        _ upload: ImageUpload, declared: String, expectedSHA256: String?
    ) throws -> (sha256: String, size: Int64, format: ImageInfo.Format) {
        let (digest, size) = try upload.finish()
        defer { try? FileManager.default.removeItem(atPath: upload.path) }
        if let expected = expectedSHA256, !expected.isEmpty, expected.lowercased() != digest {
            throw ControlError(.invalid, "uploaded bytes have sha256 \(digest), not the expected \(expected)")
        }
        guard size > 0 else { throw ControlError(.invalid, "the image is empty") }
        let magic = try Self.magic(upload.path)
        let detected: String? =
            if magic.starts(with: [0x1f, 0x8b]) { "raw.gz" } else if magic.starts(with: [0x28, 0xb5, 0x2f, 0xfd]) {
                "raw.zst"
            } else if magic.starts(with: [0x51, 0x46, 0x49, 0xfb]) { "qcow2" } else { nil }
        switch declared {
        case "raw":
            if let detected { throw ControlError(.invalid, "the image is declared raw but its bytes are \(detected); say --format \(detected)") }
        case "raw.gz", "raw.zst", "qcow2":
            if detected != declared {
                throw ControlError(.invalid, "the image is declared \(declared) but its bytes are \(detected ?? "not compressed (raw?)")")
            }
        default:
            throw ControlError(.invalid, "unknown image format '\(declared)'; valid: raw, raw.gz, raw.zst, qcow2")
        }
        var source = upload.path, sha = digest, bytes = size
        var format = ImageInfo.Format(rawValue: declared) ?? .raw
        if declared == "qcow2" {
            // Converted once, here; machines are always served raw bytes.
            let raw = upload.path + ".raw"
            try Self.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", upload.path, raw])
            (sha, bytes) = try Self.hashFile(raw)
            source = raw
            format = .raw
        }
        defer { if source != upload.path { try? FileManager.default.removeItem(atPath: source) } }
        let target = path(sha256: sha)
        if FileManager.default.fileExists(atPath: target) {
            return (sha, bytes, format)  // same bytes already stored
        }
        guard rename(source, target) == 0 else {
            throw ControlError(.unavailable, "cannot store image: rename failed: \(String(cString: strerror(errno)))")
        }
        let dir = Glibc.open(blobDirectory, O_RDONLY)
        if dir >= 0 {
            fsync(dir)
            close(dir)
        }
        return (sha, bytes, format)
    }

    public func remove(sha256: String) { try? FileManager.default.removeItem(atPath: path(sha256: sha256)) }

    static func magic(_ path: String) throws -> [UInt8] {
        guard let h = FileHandle(forReadingAtPath: path) else { throw ControlError(.unavailable, "cannot read \(path)") }
        defer { try? h.close() }
        return Array(try h.read(upToCount: 8) ?? Data())
    }

    static func hashFile(_ path: String) throws -> (String, Int64) {
        guard let h = FileHandle(forReadingAtPath: path) else { throw ControlError(.unavailable, "cannot read \(path)") }
        defer { try? h.close() }
        var hasher = SHA256()
        var size: Int64 = 0
        while let chunk = try h.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
            size += Int64(chunk.count)
        }
        return (hasher.finalize().map { String(format: "%02x", $0) }.joined(), size)
    }

    static func run(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        do { try p.run() } catch { throw ControlError(.unavailable, "cannot run \(args[0]): \(error)") }
        let message = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw ControlError(.invalid, "\(args[0]) failed: \(String(decoding: message, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }
}

/// One upload in progress: bytes appended to a temporary file and hashed as they come.
public final class ImageUpload: @unchecked Sendable {
    public let path: String
    let fd: Int32
    var hasher = SHA256()
    var closed = false
    public private(set) var size: Int64 = 0

    init(path: String) throws {
        self.path = path
        fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL, 0o640)
        guard fd >= 0 else { throw ControlError(.unavailable, "cannot create \(path): \(String(cString: strerror(errno)))") }
    }

    public func write(_ bytes: Data) throws {
        hasher.update(data: bytes)
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw ControlError(.unavailable, "cannot write image: \(String(cString: strerror(errno)))")
                }
                offset += n
            }
        }
        size += Int64(bytes.count)
    }

    /// Flushes to disk and closes; returns the digest and size.
    func finish() throws -> (String, Int64) {
        defer { closeOnce() }
        guard fsync(fd) == 0 else { throw ControlError(.unavailable, "cannot fsync image: \(String(cString: strerror(errno)))") }
        return (hasher.finalize().map { String(format: "%02x", $0) }.joined(), size)
    }

    /// Abandons the upload.
    func closeOnce() {
        if !closed { close(fd) }
        closed = true
    }

    public func abort() {
        closeOnce()
        try? FileManager.default.removeItem(atPath: path)
    }
}
