import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only directory tree that TFTP and HTTP serve files from.
///
/// Request paths are sanitised: a leading `/` is stripped, and `..`, empty-after-strip, NUL and
/// backslash paths are refused. The resolved real path (symlinks followed) must stay under the
/// root's real path, so a link cannot lead outside it either.
public final class BootRoot: Sendable {
    public enum Refusal: Error, Equatable, CustomStringConvertible {
        case outsideRoot
        case notFound
        case notAFile

        public var description: String {
            switch self {
            case .outsideRoot: "access violation: path outside the boot root"
            case .notFound: "file not found"
            case .notAFile: "not a regular file"
            }
        }
    }

    public let path: String
    let realRoot: String
    /// Files up to this size are kept in memory once read (iPXE binaries are well under 1 MiB).
    let cacheLimit: Int
    let cache = Mutex<[String: (mtime: Int, data: [UInt8])]>([:])

    public init(path: String, cacheLimit: Int = 4 << 20) {
        self.path = path
        self.realRoot = Self.realpath(path) ?? path
        self.cacheLimit = cacheLimit
    }

    static func realpath(_ p: String) -> String? {
        guard let r = Glibc.realpath(p, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    /// Resolves a client-supplied path to a real path inside the root.
    public func resolve(_ requested: String) throws(Refusal) -> String {
        var rel = requested
        while rel.hasPrefix("/") { rel.removeFirst() }
        let parts = rel.split(separator: "/", omittingEmptySubsequences: true)
        guard !parts.isEmpty, !rel.contains("\0"), !rel.contains("\\"),
            !parts.contains(where: { $0 == ".." || $0 == "." })
        else { throw .outsideRoot }
        let joined = realRoot + "/" + parts.joined(separator: "/")
        guard let real = Self.realpath(joined) else { throw .notFound }
        guard real.hasPrefix(realRoot + "/") else { throw .outsideRoot }
        var st = stat()
        guard stat(real, &st) == 0 else { throw .notFound }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .notAFile }
        return real
    }

    /// Opens a file for reading.
    public func open(_ requested: String) throws -> BootFile {
        let real = try resolve(requested)
        let fd = Glibc.open(real, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Refusal.notFound }
        var st = stat()
        fstat(fd, &st)
        let size = Int(st.st_size)
        let mtime = Int(st.st_mtim.tv_sec) &* 1_000_000_000 &+ Int(st.st_mtim.tv_nsec)
        if size <= cacheLimit {
            defer { close(fd) }
            if let hit = cache.withLock({ $0[real] }), hit.mtime == mtime, hit.data.count == size {
                return BootFile(path: real, size: size, storage: .memory(hit.data))
            }
            var data = [UInt8](repeating: 0, count: size)
            var done = 0
            while done < size {
                let n = data.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, size - done, off_t(done)) }
                if n <= 0 { throw Refusal.notFound }
                done += n
            }
            cache.withLock { $0[real] = (mtime, data) }
            return BootFile(path: real, size: size, storage: .memory(data))
        }
        return BootFile(path: real, size: size, storage: .descriptor(FileDescriptor(fd)))
    }
}

final class FileDescriptor: Sendable {
    let fd: CInt
    init(_ fd: CInt) { self.fd = fd }
    deinit { close(fd) }
}

/// An open file of the boot root.
public struct BootFile: Sendable {
    enum Storage: Sendable {
        case memory([UInt8])
        case descriptor(FileDescriptor)
    }

    public let path: String
    public let size: Int
    let storage: Storage

    /// Whether the bytes are held in memory (small files), so reads cost no system call.
    public var isInMemory: Bool {
        if case .memory = storage { return true }
        return false
    }

    /// Reads `range` (clamped to the file) straight into `out`'s free space: `out` must have
    /// room for it. Returns the bytes written.
    public func read(_ range: Range<Int>, into out: UnsafeMutableRawBufferPointer) -> Int {
        let r = min(range.lowerBound, size)..<min(range.upperBound, size)
        precondition(out.count >= r.count, "buffer too small")
        switch storage {
        case .memory(let data):
            data.withUnsafeBytes { src in
                out.baseAddress!.copyMemory(from: src.baseAddress! + r.lowerBound, byteCount: r.count)
            }
            return r.count
        case .descriptor(let file):
            var done = 0
            while done < r.count {
                let n = pread(file.fd, out.baseAddress! + done, r.count - done, off_t(r.lowerBound + done))
                if n <= 0 { break }
                done += n
            }
            return done
        }
    }

    /// Reads `range` (clamped to the file) and appends it to `out`.
    public func read(_ range: Range<Int>, into out: inout [UInt8]) {
        let r = min(range.lowerBound, size)..<min(range.upperBound, size)
        switch storage {
        case .memory(let data):
            out.append(contentsOf: data[r])
        case .descriptor(let file):
            let start = out.count
            out.append(contentsOf: repeatElement(0, count: r.count))
            var done = 0
            while done < r.count {
                let n = out.withUnsafeMutableBytes {
                    pread(file.fd, $0.baseAddress! + start + done, r.count - done, off_t(r.lowerBound + done))
                }
                if n <= 0 { break }
                done += n
            }
            out.removeLast(r.count - done)
        }
    }
}
