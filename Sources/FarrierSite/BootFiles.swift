import Crypto
import Foundation
import Glibc
import Logging
import NIOPosix
import Synchronization
import SystemSupport
import WireSupport

/// A file of a boot root that sites serve as the region does: the ramdisk's kernel and initrd,
/// and the iPXE binaries. Named by its path under the boot root, and by the SHA-256 of its bytes.
public struct BootFile: Codable, Sendable, Hashable {
    public var path: String
    public var sha256: String
    public var size: Int64

    public init(path: String, sha256: String, size: Int64) {
        self.path = path
        self.sha256 = sha256
        self.size = size
    }

    /// The ramdisk's files, under the boot root.
    public static let ramdisk = ["ramdisk/vmlinuz", "ramdisk/initrd.img"]

    /// Whether `path` is a boot file's path: a ramdisk file, or an iPXE binary at the top of
    /// the boot root (`*.kpxe`, `*.efi`, `*.pxe`, a plain name), never anything else.
    public static func isBootPath(_ path: String) -> Bool {
        if ramdisk.contains(path) { return true }
        let plain = path.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2d || c == 0x5f
                || c == 0x2e
        }
        return plain && !path.hasPrefix(".") && path.utf8.count <= 64
            && [".kpxe", ".efi", ".pxe"].contains { path.hasSuffix($0) }
    }
}

/// The region's side: the boot files of its boot root, with their digests. A file is hashed
/// again only when its inode, size or modification time changed, so each site's call costs a
/// few `stat`s, not a read of the ramdisk.
public final class BootFileCatalog: Sendable {
    public let root: String
    struct Stamp: Hashable {
        var inode: UInt64
        var size: Int64
        var mtime: Int64
    }
    let known: Mutex<[String: (stamp: Stamp, sha256: String)]> = Mutex([:])
    let inflight: Mutex<[String: (Stamp, Task<String, any Error>)]> = Mutex([:])

    public init(root: String) { self.root = root }

    static func stamp(_ path: String) -> Stamp? {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        return Stamp(
            inode: UInt64(st.st_ino),
            size: Int64(st.st_size),
            mtime: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        )
    }

    /// The boot files present now (iPXE binaries by name, then the ramdisk's).
    public func files() async throws -> [BootFile] {
        let top = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter {
            BootFile.isBootPath($0)
        }
        var out: [BootFile] = []
        for path in top.sorted() + BootFile.ramdisk {
            let full = root + "/" + path
            guard let stamp = Self.stamp(full) else { continue }
            if let k = known.withLock({ $0[path] }), k.stamp == stamp {
                out.append(BootFile(path: path, sha256: k.sha256, size: stamp.size))
                continue
            }
            // One read of a changed file, however many sites ask at once.
            let hashing = inflight.withLock { m -> Task<String, any Error> in
                if let (s, t) = m[path], s == stamp { return t }
                let t = Task { try await NIOThreadPool.singleton.runIfActive { try Self.sha256(full) } }
                m[path] = (stamp, t)
                return t
            }
            let digest = try await hashing.value
            inflight.withLock { m in if m[path]?.0 == stamp { m[path] = nil } }
            // Changed while it was read: left out this time, listed at the next call.
            guard Self.stamp(full) == stamp else { continue }
            known.withLock { $0[path] = (stamp, digest) }
            out.append(BootFile(path: path, sha256: digest, size: stamp.size))
        }
        return out
    }

    static func sha256(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SiteCache.Failure.io("opening \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SiteCache.Failure.io("reading \(path): \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            buffer.withUnsafeBytes { hasher.update(data: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
        return hasher.finalize().hexString
    }
}

/// The site's side: puts the region's boot files into the site's boot root, each pulled once
/// through the cache (checked against its digest) and then linked (or copied) into place and
/// renamed over the old one, so a machine booting meanwhile gets the old file or the new, never
/// a part. What was installed is kept in `stateFile`; a file replaced since (another inode) is
/// installed again.
public final class BootFileSync: Sendable {
    let cache: SiteCache
    let root: String
    let stateFile: String
    let logger: Logger
    let busy = Atomic<Bool>(false)
    /// When the next round may start, after a failed one.
    let retryAfter: Mutex<ContinuousClock.Instant?> = Mutex(nil)

    struct Installed: Codable, Equatable {
        var sha256: String
        var inode: UInt64
        var size: Int64
    }

    public init(cache: SiteCache, root: String, stateFile: String, logger: Logger) {
        self.cache = cache
        self.root = root
        self.stateFile = stateFile
        self.logger = logger
    }

    /// The paths in `root` that hold what `stateFile` says was installed from the region (the
    /// same inode and size): the region's builds, which a restart leaves in place.
    public static func installed(stateFile: String, root: String) -> Set<String> {
        let installed: [String: Installed] = readStateFile(stateFile) ?? [:]
        return Set(
            installed.filter { path, i in
                guard let s = BootFileCatalog.stamp(root + "/" + path) else { return false }
                return s.inode == i.inode && s.size == i.size
            }.keys
        )
    }

    /// The files of `files` not installed as listed.
    public func missing(_ files: [BootFile]) -> [BootFile] {
        let installed: [String: Installed] = readStateFile(stateFile) ?? [:]
        return files.filter { f in
            guard let i = installed[f.path], i.sha256 == f.sha256, let s = BootFileCatalog.stamp(root + "/" + f.path)
            else { return true }
            return s.inode != i.inode || s.size != i.size
        }
    }

    /// Starts installing what `files` lists and the boot root lacks; the task (its value: how
    /// many failed), or nil if one runs. Paths that are not boot files' are refused. All the
    /// missing files are pulled into the cache first, and placed only when every one of them
    /// is there: a new kernel never goes out beside an old initrd. After a failure the round
    /// is tried again after 5 minutes.
    public func start(_ files: [BootFile]) -> Task<Int, Never>? {
        let wanted = missing(files.filter { BootFile.isBootPath($0.path) && SiteCache.isDigest($0.sha256) })
        guard !wanted.isEmpty else { return nil }
        if let after = retryAfter.withLock({ $0 }), ContinuousClock.now < after { return nil }
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            return nil
        }
        return Task { [self] in
            defer { busy.store(false, ordering: .releasing) }
            var held: [(BootFile, SiteCache.Lease)] = []
            var failures = 0
            for f in wanted {
                do { held.append((f, try await cache.acquire(f.sha256))) } catch {
                    failures += 1
                    logger.warning(
                        "boot file from the region failed",
                        metadata: ["path": "\(f.path)", "error": "\(error)", "retry.seconds": "300"]
                    )
                }
            }
            if failures == 0 {
                var state: [String: Installed] = readStateFile(stateFile) ?? [:]
                for (f, lease) in held {
                    do {
                        state[f.path] = try await place(lease.path, f)
                        logger.info(
                            "boot file from the region",
                            metadata: ["path": "\(f.path)", "sha256": "\(f.sha256)", "bytes": "\(f.size)"]
                        )
                    } catch {
                        failures += 1
                        logger.warning(
                            "placing a boot file from the region failed",
                            metadata: ["path": "\(f.path)", "error": "\(error)", "retry.seconds": "300"]
                        )
                    }
                }
                do { try writeStateFile(stateFile, state) } catch {
                    logger.warning("recording the boot files failed", metadata: ["error": "\(error)"])
                }
            }
            for (_, lease) in held { await cache.release(lease) }
            retryAfter.withLock { $0 = failures > 0 ? ContinuousClock.now + .seconds(300) : nil }
            return failures
        }
    }

    /// Links (or copies) the cached file at `source` to `f`'s place and renames it over the old.
    func place(_ source: String, _ f: BootFile) async throws -> Installed {
        let target = root + "/" + f.path
        let temporary = target + ".sync"
        return try await NIOThreadPool.singleton.runIfActive { () throws -> Installed in
            try FileManager.default.createDirectory(
                atPath: (target as NSString).deletingLastPathComponent,
                withIntermediateDirectories: true
            )
            unlink(temporary)
            // A hard link costs no copy; across file systems, a copy.
            if link(source, temporary) != 0 {
                try FileManager.default.copyItem(atPath: source, toPath: temporary)
                let fd = open(temporary, O_RDONLY | O_CLOEXEC)
                if fd >= 0 {
                    fsync(fd)
                    close(fd)
                }
            }
            guard rename(temporary, target) == 0 else {
                let message = String(cString: strerror(errno))
                unlink(temporary)
                throw SiteCache.Failure.io("renaming \(temporary): \(message)")
            }
            guard let s = BootFileCatalog.stamp(target) else { throw SiteCache.Failure.io("\(target) vanished") }
            return Installed(sha256: f.sha256, inode: s.inode, size: s.size)
        }
    }
}
