import Foundation
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// Starting and running programs for the lab (`ProcessSpawn`: clean signal state); detached
/// children get a session of their own so they outlive `farrier lab up`.
public enum Spawn {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Marks every descriptor above stderr close-on-exec, so children inherit only stdio: a
    /// daemon holding a descriptor of whoever ran `farrier lab up` (a pipe, a socket) would keep
    /// that caller waiting for it long after `lab up` has exited.
    static func closeInheritedDescriptors() {
        guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for name in fds {
            guard let fd = Int32(name), fd > 2 else { continue }
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
    }

    static func spawn(_ args: [String], stdout: String, detached: Bool) throws -> pid_t {
        closeInheritedDescriptors()
        do { return try ProcessSpawn.spawn(args, output: stdout, newSession: detached) } catch {
            throw Failure(description: error.description)
        }
    }

    /// Starts a long-running program detached from this process; output goes to `log`.
    public static func detached(_ args: [String], log: String) throws -> pid_t {
        try spawn(args, stdout: log, detached: true)
    }

    /// Runs a program to completion (killed after `timeout` seconds) and returns its status and output.
    @discardableResult
    public static func run(
        _ args: [String],
        timeout: Double = 60,
        check: Bool = true
    ) throws -> (status: Int32, output: String) {
        let out = NSTemporaryDirectory() + "farrier-run-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(out) }
        let pid = try spawn(args, stdout: out, detached: false)
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if Date() > deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                throw Failure(description: "\(args.joined(separator: " ")) did not finish within \(Int(timeout)) s")
            }
            usleep(5_000)
        }
        let output = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        if check && code != 0 {
            throw Failure(
                description:
                    "\(args.joined(separator: " ")) failed (\(code)): \(output.trimmingCharacters(in: .whitespacesAndNewlines))"
            )
        }
        return (code, output)
    }

    public static func isAlive(_ pid: pid_t) -> Bool { pid > 1 && kill(pid, 0) == 0 && !isZombie(pid) }

    static func isZombie(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        return stat[stat.index(close, offsetBy: 2)] == "Z"
    }

    /// Ends a process this lab started: SIGTERM, then SIGKILL after `grace` seconds. Reaps it
    /// if it is our child.
    public static func stop(_ pid: pid_t, grace: Double = 5) {
        guard pid > 1, kill(pid, 0) == 0 else { return }
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        var status: Int32 = 0
        while Date() < deadline {
            _ = waitpid(pid, &status, WNOHANG)
            if kill(pid, 0) != 0 || isZombie(pid) { return }
            usleep(20_000)
        }
        kill(pid, SIGKILL)
        _ = waitpid(pid, &status, WNOHANG)
    }
}
