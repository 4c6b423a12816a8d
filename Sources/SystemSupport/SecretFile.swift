#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Files that hold secrets (keys, tokens, nonces): created with their final mode from the first
/// moment, so no instant exists where another user could open them, written whole and fsynced.
public enum SecretFile {
    public struct Failure: Error, CustomStringConvertible {
        public let path: String
        public let operation: String
        public let errno: Int32
        public var description: String { "cannot \(operation) \(path): \(String(cString: strerror(errno)))" }
    }

    /// Creates `path` with `mode` and writes `bytes`. `exclusive`: fail if it exists (O_EXCL);
    /// otherwise an existing file is truncated, and its mode set to `mode`. A write or sync that
    /// fails removes the file: half a key is worse than none (a later exclusive create would
    /// find it and fail for good).
    public static func create(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600, exclusive: Bool) throws(Failure) {
        let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (exclusive ? O_EXCL : O_TRUNC), mode)
        guard fd >= 0 else { throw Failure(path: path, operation: "create", errno: errno) }
        func fail(_ operation: String, _ code: Int32) -> Failure {
            close(fd)
            unlink(path)
            return Failure(path: path, operation: operation, errno: code)
        }
        // An existing file keeps its mode through O_TRUNC: narrow (or set) it before writing.
        guard fchmod(fd, mode) == 0 else { throw fail("set the mode of", errno) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw fail("write", n < 0 ? errno : EIO) }
            done += n
        }
        guard fsync(fd) == 0 else { throw fail("sync", errno) }
        close(fd)
    }

    /// Replaces `path` atomically: the bytes go to a temporary file of this call's own next to
    /// it (created with `mode`), a rename puts them in place, and the directory is synced, so a
    /// reader sees the old file or the whole new one, also after a crash.
    public static func replace(_ path: String, _ bytes: [UInt8], mode: mode_t) throws(Failure) {
        var rng = SystemRandomNumberGenerator()
        let tmp = path + ".tmp-\(getpid())-\(String(rng.next() as UInt32, radix: 16))"
        try create(tmp, bytes, mode: mode, exclusive: true)
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw Failure(path: path, operation: "rename \(tmp) to", errno: e)
        }
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw Failure(path: directory, operation: "open the directory", errno: errno) }
        defer { close(dfd) }
        guard fsync(dfd) == 0 else { throw Failure(path: directory, operation: "sync the directory", errno: errno) }
    }
}

extension SecretFile {
    /// Runs `body` holding an exclusive `flock` on `path` (created 0600 when missing, never
    /// removed: removing a lock file lets two holders lock two different files). Processes that
    /// share a directory, and threads of one process, take turns; the kernel drops the lock if
    /// the holder dies.
    public static func withExclusiveLock<T>(_ path: String, _ body: () throws -> T) throws -> T {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure(path: path, operation: "open the lock", errno: errno) }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw Failure(path: path, operation: "lock", errno: errno) }
        }
        return try body()
    }
}
