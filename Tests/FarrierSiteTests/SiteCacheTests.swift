import Crypto
import FarrierHTTP
import FarrierSite
import Foundation
import Hummingbird
import Synchronization
import TestSupport
import Testing

/// The site cache against a real HTTP server nobody here wrote (Python's `http.server`) as the
/// region: one pull for many requests, bytes checked against their name, eviction least
/// recently used first (never a file being served), bounds, a restart, and an origin that fails.
@Suite(.serialized) struct SiteCacheTests {
    /// Python's http.server on a loopback port, serving `root` (files under `root/images/`).
    /// It logs each request on stderr: the test counts the GETs the origin saw.
    final class Origin: Sendable {
        let h: Harness
        let root: String
        let port: Int
        let log: String

        /// Started on a thread of its own: waiting for Python must not hold one of the
        /// cooperative pool's two threads, which the rest of the unit suite shares.
        static func start(_ h: Harness) async throws -> Origin { try await offPool { try Origin(h) } }

        init(_ h: Harness) throws {
            self.h = h
            root = h.directory + "/region"
            try FileManager.default.createDirectory(atPath: root + "/images", withIntermediateDirectories: true)
            var started: (Int, String)?
            // A free port below the ephemeral range; another test may take it between the probe
            // and the bind, so a few tries.
            for attempt in 0..<5 where started == nil {
                let port = Int.random(in: 20000..<32000)
                let log = "http-\(attempt).log"
                let p = try h.start(
                    ["python3", "-m", "http.server", "\(port)", "--bind", "127.0.0.1", "--directory", root],
                    log: log
                )
                let deadline = Date().addingTimeInterval(30)
                while p.isRunning, Date() < deadline, !Self.accepts(port) { usleep(50_000) }
                if p.isRunning, Self.accepts(port) { started = (port, log) }
            }
            guard let started else { throw Harness.CommandError(description: "python3 -m http.server did not start") }
            (port, log) = started
        }

        static func accepts(_ port: Int) -> Bool {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(port).bigEndian)
            a.sin_addr.s_addr = inet_addr("127.0.0.1")
            return withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
        }

        var url: String { "http://127.0.0.1:\(port)" }

        /// Puts `bytes` under `images/NAME`, NAME their SHA-256 unless given.
        @discardableResult
        func put(_ bytes: Data, as name: String? = nil) throws -> String {
            let digest = name ?? SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
            try bytes.write(to: URL(fileURLWithPath: root + "/images/" + digest))
            return digest
        }

        func gets(_ digest: String) -> Int {
            h.read(log).split(separator: "\n").filter { $0.contains("\"GET /images/\(digest) ") }.count
        }
    }

    static func random(_ count: Int) -> Data {
        FileHandle(forReadingAtPath: "/dev/urandom")?.readData(ofLength: count) ?? Data()
    }

    static func files(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
    }

    @Test func manyRequestsOnePull() async throws {
        let h = try Harness("site-cache-one")
        defer { h.cleanup() }
        let o = try await Origin.start(h)
        let bytes = Self.random(3_000_000)
        let d = try o.put(bytes)
        let origin = HTTPOrigin(baseURL: o.url, authorization: nil)
        let cache = try SiteCache(directory: h.directory + "/cache", capacity: 10_000_000, origin: origin)
        let leases = try await withThrowingTaskGroup(of: SiteCache.Lease.self) { group in
            for _ in 0..<20 { group.addTask { try await cache.acquire(d) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(leases.count == 20)
        #expect(leases.filter(\.pulled).count == 1)
        #expect(o.gets(d) == 1, "the origin saw \(o.gets(d)) GETs")
        #expect(origin.bytesReceived == Int64(bytes.count))
        #expect(try Data(contentsOf: URL(fileURLWithPath: leases[0].path)) == bytes)
        let counters = await cache.counters
        #expect(counters.pulls == 1 && counters.hits == 19 && counters.pulledBytes == Int64(bytes.count))
        let entry = try #require(await cache.contents.first)
        #expect(entry.digest == d && entry.readers == 20 && entry.size == Int64(bytes.count))
        for l in leases { await cache.release(l) }
        #expect(await cache.contents.first?.readers == 0)
        // Later requests are hits: no more GETs.
        let again = try await cache.acquire(d)
        #expect(!again.pulled && o.gets(d) == 1)
        #expect(Self.files(h.directory + "/cache") == [d])
    }

    @Test func bytesThatDoNotMatchTheirNameAreDropped() async throws {
        let h = try Harness("site-cache-bad")
        defer { h.cleanup() }
        let o = try await Origin.start(h)
        let good = Self.random(100_000)
        let name = SHA256.hash(data: good).map { String(format: "%02x", $0) }.joined()
        try o.put(Self.random(100_000), as: name)
        let cache = try SiteCache(
            directory: h.directory + "/cache",
            capacity: 1_000_000,
            origin: HTTPOrigin(baseURL: o.url, authorization: nil)
        )
        await #expect {
            try await cache.acquire(name)
        } throws: { error in
            guard case SiteCache.Failure.mismatch(let e, _) = error else { return false }
            return e == name
        }
        #expect(Self.files(h.directory + "/cache").isEmpty, "left: \(Self.files(h.directory + "/cache"))")
        #expect(await cache.usedBytes == 0)
        #expect(await cache.counters.failedPulls == 1)
        // Put right at the origin, the next request pulls again and succeeds.
        try o.put(good)
        let l = try await cache.acquire(name)
        #expect(l.pulled && l.size == 100_000)
    }

    @Test func leastRecentlyUsedGoesFirstAndServedFilesStay() async throws {
        let h = try Harness("site-cache-lru")
        defer { h.cleanup() }
        let o = try await Origin.start(h)
        let (a, b, c, e) = (
            try o.put(Self.random(1_000_000)), try o.put(Self.random(1_000_000)),
            try o.put(Self.random(1_000_000)), try o.put(Self.random(1_000_000))
        )
        let dir = h.directory + "/cache"
        let cache = try SiteCache(
            directory: dir,
            capacity: 3_500_000,
            origin: HTTPOrigin(baseURL: o.url, authorization: nil)
        )
        for d in [a, b, c] { await cache.release(try await cache.acquire(d)) }
        // a used again: b is now the least recently used.
        await cache.release(try await cache.acquire(a))
        let le = try await cache.acquire(e)
        #expect(Set(Self.files(dir)) == [a, c, e], "after e: \(Self.files(dir))")
        #expect(await cache.counters.evictions == 1)
        // While a, c and e are all being served, b finds no room.
        let (la, lc) = (try await cache.acquire(a), try await cache.acquire(c))
        await #expect {
            try await cache.acquire(b)
        } throws: { error in
            guard case SiteCache.Failure.full(let needed, _, let pinned) = error else { return false }
            return needed == 1_000_000 && pinned == 3_000_000
        }
        #expect(Set(Self.files(dir)) == [a, c, e])
        // c released: b takes its place (c is the only file not being served).
        await cache.release(lc)
        await cache.release(try await cache.acquire(b))
        #expect(Set(Self.files(dir)) == [a, b, e], "after b: \(Self.files(dir))")
        await cache.release(la)
        await cache.release(le)
        // Bigger than the whole cache: refused before a byte is written.
        let big = try o.put(Self.random(4_000_000))
        await #expect(throws: SiteCache.Failure.tooBig(size: 4_000_000, capacity: 3_500_000)) {
            try await cache.acquire(big)
        }
        #expect(Set(Self.files(dir)) == [a, b, e])
        await #expect(throws: SiteCache.Failure.badName("../etc/passwd")) { try await cache.acquire("../etc/passwd") }
    }

    @Test func aRestartKeepsFilesAndTheirOrder() async throws {
        let h = try Harness("site-cache-restart")
        defer { h.cleanup() }
        let o = try await Origin.start(h)
        let (a, b, c) = (
            try o.put(Self.random(500_000)), try o.put(Self.random(500_000)), try o.put(Self.random(500_000))
        )
        let dir = h.directory + "/cache"
        do {
            let cache = try SiteCache(
                directory: dir,
                capacity: 2_000_000,
                origin: HTTPOrigin(baseURL: o.url, authorization: nil)
            )
            for d in [a, b, c] {
                await cache.release(try await cache.acquire(d))
                // Recency is kept as the file's modification time: distinct times.
                try await Task.sleep(for: .milliseconds(20))
            }
            await cache.release(try await cache.acquire(a))
        }
        // An interrupted pull's leftover.
        try Data(count: 1000).write(
            to: URL(fileURLWithPath: dir + "/" + String(repeating: "0", count: 64) + ".partial")
        )
        // Lower capacity: the least recently used (b) goes at start.
        let origin = HTTPOrigin(baseURL: o.url, authorization: nil)
        let cache = try SiteCache(directory: dir, capacity: 1_000_000, origin: origin)
        #expect(await cache.contents.map(\.digest) == [a, c])
        #expect(Set(Self.files(dir)) == [a, c])
        let l = try await cache.acquire(c)
        #expect(!l.pulled && origin.requestCount == 0)
    }

    @Test func anOriginThatFailsLeavesNothing() async throws {
        let h = try Harness("site-cache-fail")
        defer { h.cleanup() }
        let o = try await Origin.start(h)
        let dir = h.directory + "/cache"
        let cache = try SiteCache(
            directory: dir,
            capacity: 1_000_000,
            origin: HTTPOrigin(baseURL: o.url, authorization: nil)
        )
        let missing = String(repeating: "ab", count: 32)
        await #expect(throws: SiteCache.Failure.notFound(missing)) { try await cache.acquire(missing) }
        #expect(Self.files(dir).isEmpty)
        // Nobody listening.
        let closed = try SiteCache(
            directory: dir,
            capacity: 1_000_000,
            origin: HTTPOrigin(baseURL: "http://127.0.0.1:1", authorization: nil)
        )
        await #expect(throws: (any Error).self) { try await closed.acquire(missing) }
        #expect(Self.files(dir).isEmpty)
    }
}

/// The image route serving from the cache, fetched by curl: ten machines at once get the same
/// bytes from one pull, ranges work, an unknown image is a 404, and once the responses are
/// sent no file stays leased.
@Suite(.serialized) struct CacheImageSourceTests {
    @Test func tenDownloadsOnePull() async throws {
        let h = try Harness("site-serve")
        defer { h.cleanup() }
        let o = try await SiteCacheTests.Origin.start(h)
        let bytes = SiteCacheTests.random(5_000_000)
        let d = try o.put(bytes)
        let cache = try SiteCache(
            directory: h.directory + "/cache",
            capacity: 50_000_000,
            origin: HTTPOrigin(baseURL: o.url, authorization: nil)
        )
        let router = Router()
        addImageRoute(router, source: CacheImageSource(cache: cache))
        let port = Mutex<Int?>(nil)
        let app = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } }
        )
        let server = Task { try await app.runService() }
        defer { server.cancel() }
        // Bounded generously: the whole unit suite shares two cores with this.
        let deadline = Date().addingTimeInterval(60)
        while port.withLock({ $0 }) == nil, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        let url = "http://127.0.0.1:\(try #require(port.withLock { $0 }))/images/"
        let want = SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
        let script = (0..<10).map { "curl -sf '\(url)\(d)' | sha256sum > \(h.directory)/sum\($0) &" }.joined(
            separator: "\n"
        )
        _ = try await offPool { try h.run(["bash", "-c", script + "\nwait"], timeout: 120) }
        for i in 0..<10 {
            #expect(h.read("sum\(i)").hasPrefix(want), "download \(i): \(h.read("sum\(i)"))")
        }
        #expect(o.gets(d) == 1, "the origin saw \(o.gets(d)) GETs")
        let part = try await offPool {
            try h.run([
                "curl", "-sf", "-r", "1000-1999", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url + d,
            ])
            .stdout
        }
        #expect(part == "206 1000")
        let status = try await offPool {
            try h.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url + String(repeating: "cd", count: 32)])
                .stdout
        }
        #expect(status == "404")
        let released = Date().addingTimeInterval(10)
        while await cache.contents.first?.readers != 0, Date() < released {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(await cache.contents.map(\.readers) == [0])
    }
}
