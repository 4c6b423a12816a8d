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
    /// otherwise an existing file is truncated, and its mode set to `mode`.
    public static func create(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600, exclusive: Bool) throws(Failure) {
        let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (exclusive ? O_EXCL : O_TRUNC), mode)
        guard fd >= 0 else { throw Failure(path: path, operation: "create", errno: errno) }
        defer { close(fd) }
        // An existing file keeps its mode through O_TRUNC: narrow (or set) it before writing.
        guard fchmod(fd, mode) == 0 else { throw Failure(path: path, operation: "set the mode of", errno: errno) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw Failure(path: path, operation: "write", errno: n < 0 ? errno : EIO) }
            done += n
        }
        guard fsync(fd) == 0 else { throw Failure(path: path, operation: "sync", errno: errno) }
    }

    /// Replaces `path` atomically: the bytes go to `path.tmp` (created with `mode`), then a
    /// rename puts them in place, so a reader sees the old file or the whole new one.
    public static func replace(_ path: String, _ bytes: [UInt8], mode: mode_t) throws(Failure) {
        let tmp = path + ".tmp"
        do { try create(tmp, bytes, mode: mode, exclusive: false) } catch {
            unlink(tmp)
            throw error
        }
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw Failure(path: path, operation: "rename \(tmp) to", errno: e)
        }
    }
}
