import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A real PostgreSQL 15 from Debian's packages (`postgresql-15`, which scripts/install-deps.sh
/// installs), made for one test in the harness's directory: initdb, then the server on a free
/// loopback port, run as `nobody` when the tests run as root (PostgreSQL refuses root). `stop()`
/// shuts it down and the harness's cleanup removes its files.
public final class PostgresServer: Sendable {
    public static let bin = "/usr/lib/postgresql/15/bin"
    public let port: Int
    public let dataDirectory: String
    let harness: Harness
    /// `ip netns exec NS` when it runs in a namespace.
    let inNamespace: [String]
    let process: Process

    /// `namespace`: run it in that network namespace (made by the test), for servers there.
    public init(_ h: Harness, namespace: String? = nil) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.bin + "/postgres") else {
            throw Harness.CommandError(
                description:
                    "PostgreSQL 15 is not installed at \(Self.bin): apt-get install postgresql-15 (scripts/install-deps.sh does)"
            )
        }
        harness = h
        inNamespace = namespace.map { ["ip", "netns", "exec", $0] } ?? []
        dataDirectory = h.directory + "/pg"
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        if getuid() == 0 {
            // The harness directory must be passable, and the data directory owned, by nobody.
            chmod(h.directory, 0o755)
            try h.run(["chown", "nobody:nogroup", dataDirectory])
        }
        chmod(dataDirectory, 0o700)
        try h.run(
            Self.asUnprivileged([
                Self.bin + "/initdb", "-D", dataDirectory, "-U", "farrier", "-A", "trust", "-E", "UTF8", "--no-sync",
            ]),
            timeout: 120
        )
        port = try Self.freePort()
        process = try h.start(
            inNamespace
                + Self.asUnprivileged([
                    Self.bin + "/postgres", "-D", dataDirectory, "-k", dataDirectory, "-p", "\(port)",
                    "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
                ]),
            log: "postgres.log"
        )
        let port = self.port
        try h.waitUntil("PostgreSQL accepting connections on 127.0.0.1:\(port)", timeout: 60, interval: 0.2) {
            guard process.isRunning else {
                throw Harness.CommandError(description: "postgres exited: \(h.read("postgres.log").suffix(2000))")
            }
            return try h.run(
                inNamespace + [
                    Self.bin + "/pg_isready", "-h", "127.0.0.1", "-p", "\(port)", "-U", "farrier", "-d", "postgres",
                    "-t", "1",
                ],
                check: false
            ).status == 0
        }
    }

    /// `args` run as nobody (setpriv execs, so the PID is the program's own) when we are root.
    static func asUnprivileged(_ args: [String]) -> [String] {
        getuid() == 0 ? ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"] + args : args
    }

    /// A new empty database; returns its URL.
    public func createDatabase(_ name: String) throws -> String {
        try harness.run(
            inNamespace + [
                "psql", "-h", "127.0.0.1", "-p", "\(port)", "-U", "farrier", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                "-c", "CREATE DATABASE \(name)",
            ]
        )
        return url(name)
    }

    public func url(_ database: String) -> String { "postgres://farrier@127.0.0.1:\(port)/\(database)?sslmode=disable" }

    /// Runs SQL with psql; returns its unaligned, tuples-only output.
    public func psql(_ database: String, _ sql: String) throws -> String {
        try harness.run(
            inNamespace + [
                "psql", "-h", "127.0.0.1", "-p", "\(port)", "-U", "farrier", "-d", database, "-v", "ON_ERROR_STOP=1",
                "-At",
                "-c", sql,
            ]
        ).stdout
    }

    /// Fast shutdown (clients disconnected, then a clean stop), bounded; then the postmaster is
    /// killed if it is still there.
    public func stop() {
        // By the pid and /proc, not Process.isRunning (which has been seen false for a live
        // child when several tests start processes at once).
        let pid = process.processIdentifier
        for (signal, seconds) in [(SIGINT, 15.0), (SIGQUIT, 5.0), (SIGKILL, 5.0)] {
            guard Harness.isLiveChild(pid) else { return }
            kill(pid, signal)
            let deadline = Date().addingTimeInterval(seconds)
            while Harness.isLiveChild(pid) && Date() < deadline { usleep(20_000) }
        }
    }

    /// A loopback TCP port nothing listens on now (the kernel's pick for a bound socket).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Harness.CommandError(description: "socket: \(errno)") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0
            }
        }
        guard bound else { throw Harness.CommandError(description: "cannot find a free port: \(errno)") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// Runs blocking work (waiting on processes) on a thread of its own and awaits it, so a test's
/// waiting does not hold one of the cooperative pool's few threads (two on a two-core machine)
/// that every other test's async work shares.
public func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try work() }) }.start()
    }
}

public func offPool(_ work: @escaping @Sendable () -> Void) async {
    await withCheckedContinuation { continuation in
        Thread {
            work()
            continuation.resume()
        }.start()
    }
}
