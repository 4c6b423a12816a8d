import Crypto
import Foundation
import Glibc
import NIOPosix
import WireSupport

/// Where a site's cache gets a file it does not hold: the region. The file is named by the
/// SHA-256 of its bytes, so whoever serves it, the cache checks what it got.
public protocol CacheOrigin: Sendable {
    /// Streams the file named `digest` into `sink`: `sink.begin(size:)` once, with the size the
    /// origin announces, then its bytes in order through `sink.write`.
    func fetch(_ digest: String, into sink: PullSink) async throws
}

/// What a pull writes into: a `.partial` file in the cache's directory, hashed as it is written.
/// Used by one pull at a time: the cache makes one for a pull, hands it to its origin's `fetch`
/// and touches it again only after `fetch` returned. That hand-over is what makes it Sendable
/// (an origin may stream into it from a closure the transport runs, like gRPC's).
public final class PullSink: @unchecked Sendable {
    let fd: CInt
    let path: String
    var hasher = SHA256()
    var written: Int64 = 0
    var expected: Int64?
    let reserve: @Sendable (Int64) async throws -> Void

    init(fd: CInt, path: String, reserve: @escaping @Sendable (Int64) async throws -> Void) {
        self.fd = fd
        self.path = path
        self.reserve = reserve
    }

    /// The file's size, before any byte: the cache makes room for it (evicting what was used
    /// least recently) or refuses it.
    public func begin(size: Int64) async throws {
        guard expected == nil else { throw SiteCache.Failure.origin("the origin announced a size twice") }
        guard size >= 0 else { throw SiteCache.Failure.origin("the origin announced a negative size") }
        try await reserve(size)
        expected = size
    }

    /// The next bytes of the file. More than the announced size is an error.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard let expected else { throw SiteCache.Failure.origin("bytes before the size") }
        guard written + Int64(bytes.count) <= expected else {
            throw SiteCache.Failure.short(expected: expected, got: written + Int64(bytes.count))
        }
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw SiteCache.Failure.io("writing \(path): \(String(cString: strerror(errno)))")
            }
            offset += n
        }
        hasher.update(data: bytes)
        written += Int64(bytes.count)
    }
}

/// A site's copy of the region's content-addressed files (images, ramdisks, iPXE binaries):
/// each pulled once, checked against its name, kept in a bounded directory and evicted least
/// recently used first.
///
/// - One pull per file: requests for a file being pulled wait for that pull.
/// - A file is visible only once whole, its SHA-256 checked and its bytes on disk (written to
///   `NAME.partial`, fsynced, renamed, the directory fsynced): a crash leaves the file or
///   nothing, and leftover `.partial` files are removed at start.
/// - A file being served (a `Lease` not yet released) is never evicted. A pull that does not
///   fit beside them fails (`full`), and so does a file bigger than the whole cache.
/// - Recency is the file's modification time (set at each use), so it survives a restart.
public actor SiteCache {
    public struct Entry: Sendable, Equatable {
        public let digest: String
        public let size: Int64
        public var lastUsed: Date
        /// Leases not yet released.
        public var readers: Int
    }

    /// A file held for reading: not evicted until `release`.
    public struct Lease: Sendable {
        public let digest: String
        public let path: String
        public let size: Int64
        /// Whether it was pulled for this request (false: already here, or pulled for another).
        public let pulled: Bool
    }

    public struct Counters: Sendable, Equatable {
        /// Requests answered from what was already here (or pulled for another request).
        public var hits = 0
        /// Pulls from the origin that completed.
        public var pulls = 0
        public var pulledBytes: Int64 = 0
        public var evictions = 0
        public var failedPulls = 0
    }

    public enum Failure: Error, CustomStringConvertible, Equatable {
        case badName(String)
        case tooBig(size: Int64, capacity: Int64)
        case full(needed: Int64, capacity: Int64, pinned: Int64)
        case mismatch(expected: String, got: String)
        case short(expected: Int64, got: Int64)
        case origin(String)
        /// The origin has no file of that name.
        case notFound(String)
        case io(String)

        public var description: String {
            switch self {
            case .badName(let n): "\(n.prefix(80)) is not a file name here (a SHA-256: 64 lowercase hex digits)"
            case .tooBig(let s, let c): "the file is \(s) bytes, more than the whole cache (\(c) bytes)"
            case .full(let n, let c, let p):
                "no room for \(n) bytes: \(p) of the cache's \(c) bytes are being served and cannot be evicted"
            case .mismatch(let e, let g): "the origin's bytes for \(e) have SHA-256 \(g); dropped"
            case .short(let e, let g): "the origin announced \(e) bytes and sent \(g)"
            case .origin(let m): "origin: \(m)"
            case .notFound(let d): "the origin has no file \(d)"
            case .io(let m): m
            }
        }
    }

    public nonisolated let directory: String
    public nonisolated let capacity: Int64
    let origin: any CacheOrigin
    var entries: [String: Entry] = [:]
    /// Bytes on disk in whole files, and bytes set aside for pulls in flight.
    var used: Int64 = 0
    var reserved: Int64 = 0
    var pulls: [String: Task<Void, any Error>] = [:]
    public private(set) var counters = Counters()

    /// Opens the cache in `directory` (made if missing): the files there are its entries, most
    /// recently used by modification time; leftovers of interrupted pulls are removed, and if
    /// the files exceed `capacity` (it was lowered), the least recently used go.
    public init(directory: String, capacity: Int64, origin: any CacheOrigin) throws {
        self.directory = directory
        self.capacity = capacity
        self.origin = origin
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) where name.hasSuffix(".partial") {
            unlink(directory + "/" + name)
        }
        for e in try Self.entries(in: directory) {
            entries[e.digest] = e
            used += e.size
        }
        while used > capacity, let victim = entries.values.min(by: { $0.lastUsed < $1.lastUsed }) {
            unlink(directory + "/" + victim.digest)
            entries[victim.digest] = nil
            used -= victim.size
            counters.evictions += 1
        }
    }

    /// The whole files in a cache directory, most recently used first, read without opening the
    /// cache (for `farrier site status`).
    public static func entries(in directory: String) throws -> [Entry] {
        var found: [Entry] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) where isDigest(name) {
            let a = try FileManager.default.attributesOfItem(atPath: directory + "/" + name)
            guard a[.type] as? FileAttributeType == .typeRegular, let size = (a[.size] as? NSNumber)?.int64Value,
                let mtime = a[.modificationDate] as? Date
            else { continue }
            found.append(Entry(digest: name, size: size, lastUsed: mtime, readers: 0))
        }
        return found.sorted { $0.lastUsed > $1.lastUsed }
    }

    /// Whether `name` can name a cached file: a SHA-256 in 64 lowercase hex digits.
    public static func isDigest(_ name: String) -> Bool {
        name.utf8.count == 64 && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// The entries, most recently used first.
    public var contents: [Entry] { entries.values.sorted { $0.lastUsed > $1.lastUsed } }
    /// Bytes held in whole files.
    public var usedBytes: Int64 { used }

    /// The file named `digest`, pulled from the origin first if it is not here. Release the
    /// lease when done reading.
    public func acquire(_ digest: String) async throws -> Lease {
        guard Self.isDigest(digest) else { throw Failure.badName(digest) }
        // A request that waited for another's pull can find the file evicted again when every
        // other file is being served: a few rounds, then `full`. The pulling request itself
        // cannot: the pull admits the file already leased to it.
        for _ in 0..<3 {
            if var e = entries[digest] {
                e.readers += 1
                e.lastUsed = Date()
                entries[digest] = e
                // Recency on disk, for the next start; a failure only loses that.
                _ = utimensat(AT_FDCWD, directory + "/" + digest, nil, 0)
                counters.hits += 1
                return Lease(digest: digest, path: directory + "/" + digest, size: e.size, pulled: false)
            }
            if let pending = pulls[digest] {
                try await pending.value
                continue
            }
            let task = Task { try await self.pull(digest) }
            pulls[digest] = task
            defer { pulls[digest] = nil }
            do {
                try await task.value
            } catch {
                counters.failedPulls += 1
                throw error
            }
            guard let e = entries[digest] else { continue }
            return Lease(digest: digest, path: directory + "/" + digest, size: e.size, pulled: true)
        }
        throw Failure.full(needed: 0, capacity: capacity, pinned: pinnedBytes)
    }

    public func release(_ lease: Lease) {
        guard var e = entries[lease.digest], e.readers > 0 else { return }
        e.readers -= 1
        entries[lease.digest] = e
    }

    var pinnedBytes: Int64 { entries.values.filter { $0.readers > 0 }.reduce(0) { $0 + $1.size } }

    /// Sets `size` bytes aside, evicting unpinned files least recently used first.
    func reserve(_ size: Int64) throws {
        guard size <= capacity else { throw Failure.tooBig(size: size, capacity: capacity) }
        while used + reserved + size > capacity {
            guard let victim = entries.values.filter({ $0.readers == 0 }).min(by: { $0.lastUsed < $1.lastUsed })
            else {
                throw Failure.full(needed: size, capacity: capacity, pinned: pinnedBytes)
            }
            unlink(directory + "/" + victim.digest)
            entries[victim.digest] = nil
            used -= victim.size
            counters.evictions += 1
        }
        reserved += size
    }

    func unreserve(_ size: Int64) { reserved -= size }

    func admit(_ digest: String, size: Int64) {
        reserved -= size
        used += size
        // Leased to the request that pulled it, so nothing evicts it before that request
        // takes it back.
        entries[digest] = Entry(digest: digest, size: size, lastUsed: Date(), readers: 1)
        counters.pulls += 1
        counters.pulledBytes += size
    }

    /// One pull: into `NAME.partial`, checked, made durable, renamed into place.
    nonisolated func pull(_ digest: String) async throws {
        let final = directory + "/" + digest
        let partial = final + ".partial"
        let fd = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Failure.io("creating \(partial): \(String(cString: strerror(errno)))") }
        let held = ReservationBox()
        let sink = PullSink(fd: fd, path: partial) { size in
            try await self.reserve(size)
            held.size = size
        }
        do {
            try await origin.fetch(digest, into: sink)
            guard let expected = sink.expected else { throw Failure.origin("no size announced") }
            guard sink.written == expected else { throw Failure.short(expected: expected, got: sink.written) }
            let got = sink.hasher.finalize().hexString
            guard got == digest else { throw Failure.mismatch(expected: digest, got: got) }
            let dir = directory
            try await NIOThreadPool.singleton.runIfActive {
                guard fsync(fd) == 0 else { throw Failure.io("fsync \(partial): \(String(cString: strerror(errno)))") }
                guard rename(partial, final) == 0 else {
                    throw Failure.io("renaming \(partial): \(String(cString: strerror(errno)))")
                }
                let d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                if d >= 0 {
                    fsync(d)
                    close(d)
                }
            }
            close(fd)
            await admit(digest, size: expected)
        } catch {
            close(fd)
            unlink(partial)
            if let size = held.size { await unreserve(size) }
            throw error
        }
    }
}

/// The size a pull set aside, for its clean-up; written once by the pull's own task.
final class ReservationBox: @unchecked Sendable {
    var size: Int64?
}
