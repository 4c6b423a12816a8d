import Crypto
import FarrierCore
import Foundation
import WireSupport

#if canImport(Glibc)
import Glibc
#endif

/// Image bytes on disk, content-addressed: `<root>/sha256/<hex>`. An upload goes to
/// `<root>/tmp` first, is hashed as it arrives, fsynced, and renamed into place, so a crash
/// leaves either no image or a whole one (and at most a temporary file, removed at start).
public struct ImageRepository: Sendable {
    public let root: String
    /// The largest virtual size a qcow2 upload may have: it becomes that many raw bytes here.
    public let maxVirtualSize: Int64

    public static let defaultMaxVirtualSize: Int64 = 256 << 30

    public init(root: String, maxVirtualSize: Int64 = ImageRepository.defaultMaxVirtualSize) throws {
        self.root = root
        self.maxVirtualSize = maxVirtualSize
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
        _ upload: ImageUpload,
        declared: String,
        expectedSHA256: String?
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
            if let detected {
                throw ControlError(
                    .invalid,
                    "the image is declared raw but its bytes are \(detected); say --format \(detected)"
                )
            }
        case "raw.gz", "raw.zst", "qcow2":
            if detected != declared {
                throw ControlError(
                    .invalid,
                    "the image is declared \(declared) but its bytes are \(detected ?? "not compressed (raw?)")"
                )
            }
        default:
            throw ControlError(.invalid, "unknown image format '\(declared)'; valid: raw, raw.gz, raw.zst, qcow2")
        }
        var source = upload.path
        var sha = digest
        var bytes = size
        var format = ImageInfo.Format(rawValue: declared) ?? .raw
        if declared == "qcow2" {
            // A qcow2 file can name other files (a backing file, an external data file) that
            // qemu-img would read: an upload could import any file this server can read. The
            // header is inspected first and such images refused; the conversion then opens the
            // image with no backing file at all, whatever its header says.
            try Self.checkQcow2(Self.qcow2Info(upload.path), maxVirtualSize: maxVirtualSize)
            // Converted once, here; machines are always served raw bytes.
            let raw = upload.path + ".raw"
            try Self.run(["qemu-img", "convert", "-O", "raw", Self.qcow2WithoutBacking(upload.path), raw])
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

    /// What `qemu-img info --output=json` says of a qcow2 file that matters for intake.
    public struct Qcow2Info: Sendable, Equatable {
        public var virtualSize: Int64
        public var backingFile: String?
        public var dataFile: String?
        public init(virtualSize: Int64, backingFile: String? = nil, dataFile: String? = nil) {
            self.virtualSize = virtualSize
            self.backingFile = backingFile
            self.dataFile = dataFile
        }

        /// Parses qemu-img's JSON.
        public init(json: Data) throws {
            guard let o = try? JSONSerialization.jsonObject(with: json) as? [String: Any],
                let size = (o["virtual-size"] as? NSNumber)?.int64Value
            else { throw ControlError(.invalid, "qemu-img info gave no virtual size for the image") }
            virtualSize = size
            backingFile = (o["full-backing-filename"] as? String) ?? (o["backing-filename"] as? String)
            let specific = (o["format-specific"] as? [String: Any])?["data"] as? [String: Any]
            dataFile = specific?["data-file"] as? String
        }
    }

    static func qcow2Info(_ path: String) throws -> Qcow2Info {
        // info opens the image without its backing file (qemu-img sets BDRV_O_NO_BACKING), with
        // shared locks (-U), bounded in wall time, CPU and memory: a crafted header must not
        // hang or exhaust the server.
        try Qcow2Info(
            json: Data(
                try Self.run([
                    "timeout", "60", "prlimit", "--as=\(1 << 30)", "--cpu=30", "qemu-img", "info", "-U",
                    "--output=json", "-f", "qcow2", path,
                ]).utf8
            )
        )
    }

    /// Refuses qcow2 images that name another file or are larger than the cap, with a message
    /// the uploader can act on.
    public static func checkQcow2(_ info: Qcow2Info, maxVirtualSize: Int64) throws {
        if let b = info.backingFile {
            throw ControlError(
                .invalid,
                "the qcow2 image has a backing file ('\(b)'); upload a standalone image (qemu-img convert -O qcow2 it first)"
            )
        }
        if let d = info.dataFile {
            throw ControlError(
                .invalid,
                "the qcow2 image has an external data file ('\(d)'); upload a standalone image"
            )
        }
        guard info.virtualSize <= maxVirtualSize else {
            throw ControlError(
                .invalid,
                "the qcow2 image's virtual size is \(info.virtualSize) bytes, over the server's limit of \(maxVirtualSize) (images.max-virtual-size)"
            )
        }
    }

    /// The image as qemu-img's JSON pseudo-filename, opened with no backing file.
    static func qcow2WithoutBacking(_ path: String) -> String {
        let file = String(
            decoding: try! JSONSerialization.data(withJSONObject: path, options: .fragmentsAllowed),
            as: UTF8.self
        )
        return #"json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"# + file + "}}"
    }

    public func remove(sha256: String) { try? FileManager.default.removeItem(atPath: path(sha256: sha256)) }

    static func magic(_ path: String) throws -> [UInt8] {
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw ControlError(.unavailable, "cannot read \(path)")
        }
        defer { try? h.close() }
        return Array(try h.read(upToCount: 8) ?? Data())
    }

    static func hashFile(_ path: String) throws -> (String, Int64) {
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw ControlError(.unavailable, "cannot read \(path)")
        }
        defer { try? h.close() }
        var hasher = SHA256()
        var size: Int64 = 0
        while let chunk = try h.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
            size += Int64(chunk.count)
        }
        return (hasher.finalize().hexString, size)
    }

    /// Runs a command; returns its standard output (small: qemu-img's JSON). Standard error
    /// goes to a file, so neither pipe can fill while the other is read.
    @discardableResult
    static func run(_ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let errPath = NSTemporaryDirectory() + "farrier-run-" + UUID().uuidString
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: errPath) }
        guard let errFile = FileHandle(forWritingAtPath: errPath) else {
            throw ControlError(.unavailable, "cannot create \(errPath)")
        }
        defer { try? errFile.close() }
        let out = Pipe()
        p.standardError = errFile
        p.standardOutput = out
        do { try p.run() } catch { throw ControlError(.unavailable, "cannot run \(args[0]): \(error)") }
        let output = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            let message = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
            throw ControlError(
                .invalid,
                "\(args[0]) failed: \(message.trimmingCharacters(in: .whitespacesAndNewlines))"
            )
        }
        return String(decoding: output, as: UTF8.self)
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
        guard fd >= 0 else {
            throw ControlError(.unavailable, "cannot create \(path): \(String(cString: strerror(errno)))")
        }
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
        guard fsync(fd) == 0 else {
            throw ControlError(.unavailable, "cannot fsync image: \(String(cString: strerror(errno)))")
        }
        return (hasher.finalize().hexString, size)
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
