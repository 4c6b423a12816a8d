import Foundation
import SystemSupport
import Testing
import WireSupport

#if canImport(Glibc)
import Glibc
#endif

/// The POSIX helpers the server, the agent and the lab share, against the kernel itself.
/// A class so that each test's directory is removed when the test ends (deinit), whichever test
/// it was: the heap test made one per run and left it in /tmp.
@Suite final class SystemSupportTests {
    let dir: String

    init() throws {
        dir = NSTemporaryDirectory() + "farrier-system-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func mode(_ path: String) -> mode_t {
        var st = stat()
        guard stat(path, &st) == 0 else { return 0o7777 }
        return st.st_mode & 0o7777
    }

    func contents(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "<unreadable>" }

    @Test func aSecretFileHasItsModeAndBytesAndIsMadeOnceWhenExclusive() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/key"
        try SecretFile.create(path, Array("first\n".utf8), exclusive: true)
        #expect(mode(path) == 0o600 && contents(path) == "first\n")
        // Exclusive: an existing file is never overwritten.
        var refused: SecretFile.Failure?
        do { try SecretFile.create(path, Array("second\n".utf8), exclusive: true) } catch { refused = error }
        #expect(refused?.errno == EEXIST && contents(path) == "first\n")
        // Not exclusive: an existing, wider file is narrowed before the bytes go in.
        let wide = dir + "/wide"
        _ = FileManager.default.createFile(
            atPath: wide,
            contents: Data("old and longer\n".utf8),
            attributes: [.posixPermissions: 0o644]
        )
        try SecretFile.create(wide, Array("new\n".utf8), exclusive: false)
        #expect(mode(wide) == 0o600 && contents(wide) == "new\n")
    }

    @Test func replaceIsAtomicAndLeavesNoTemporaryFile() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/cert.pem"
        try SecretFile.replace(path, Array("one".utf8), mode: 0o644)
        try SecretFile.replace(path, Array("two".utf8), mode: 0o644)
        #expect(contents(path) == "two" && mode(path) == 0o644)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["cert.pem"])
        // A directory that does not exist: a clear failure naming the path.
        var failure: SecretFile.Failure?
        do { try SecretFile.replace(dir + "/missing/x", [1], mode: 0o600) } catch { failure = error }
        #expect(failure?.errno == ENOENT && failure?.description.contains("/missing/x") == true)
    }

    /// A child started while this thread blocks a signal and ignores another still gets an empty
    /// mask and default dispositions, a session of its own when asked, and its output in the file.
    @Test func aSpawnedChildHasCleanSignalsAndItsOwnSession() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out"
        var block = sigset_t()
        var old = sigset_t()
        sigemptyset(&block)
        sigaddset(&block, SIGUSR1)
        pthread_sigmask(SIG_BLOCK, &block, &old)
        let previous = signal(SIGUSR2, SIG_IGN)
        let pid: pid_t
        do {
            defer {
                pthread_sigmask(SIG_SETMASK, &old, nil)
                signal(SIGUSR2, previous)
            }
            pid = try ProcessSpawn.spawn(
                [
                    "sh", "-c",
                    "grep -E '^(SigBlk|SigIgn):' /proc/self/status; cut -d' ' -f6 /proc/self/stat; echo pid $$",
                ],
                output: out,
                newSession: true
            )
        }
        var status: Int32 = 0
        #expect(waitpid(pid, &status, 0) == pid && status == 0)
        let lines = contents(out).split(separator: "\n").map(String.init)
        // grep's own /proc/self is the shell's child: the mask and dispositions it inherited.
        #expect(lines.contains { $0.hasPrefix("SigBlk:") && $0.hasSuffix("0000000000000000") }, "\(lines)")
        // Ignored: none of the standard signals 1-31 (SIGUSR2 was ignored here). glibc's own
        // real-time signals 32 and 33 may show as ignored in any process it starts.
        let ignored = lines.first { $0.hasPrefix("SigIgn:") }.flatMap {
            UInt64($0.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16)
        }
        #expect(ignored.map { $0 & 0x7fff_ffff } == 0, "\(lines)")
        // Field 6 of cut's /proc/self/stat is its session: the shell's pid, the session leader.
        #expect(lines.count == 4 && lines[3] == "pid \(pid)" && lines[2] == "\(pid)", "\(lines)")
        // A program that does not exist is a failure naming it.
        var failure: ProcessSpawn.Failure?
        do { _ = try ProcessSpawn.spawn(["no-such-program-farrier"], output: nil, newSession: false) } catch {
            failure = error
        }
        #expect(failure?.program == "no-such-program-farrier")
    }

    @Test func durationsClampForTimers() {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(Duration.milliseconds(1500).nanosecondsClamped == 1_500_000_000)
        #expect(Duration.seconds(-3).nanosecondsClamped == 0)
        #expect(Duration.seconds(Int64.max).nanosecondsClamped == .max)
        #expect(Duration.nanoseconds(7).nanosecondsClamped == 7)
    }

    @Test func randomBytesFillTheWholeBufferAndDiffer() {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(SecureRandom.bytes(0).isEmpty)
        #expect(SecureRandom.bytes(16).count == 16)
        // 64 draws of 32 bytes: a repeat would mean a stuck or constant source.
        let draws = (0..<64).map { _ in SecureRandom.bytes(32) }
        #expect(Set(draws).count == 64)
        // 64 KiB in one buffer (several getrandom calls of 256 bytes or more): every byte value
        // appears (each misses with a chance of about e^-256), and no 256-byte stretch is all
        // zero, so no part of the buffer was left unfilled.
        let big = SecureRandom.bytes(65_536)
        #expect(Set(big).count == 256)
        let stretches = stride(from: 0, to: big.count, by: 256).map { big[$0..<$0 + 256] }
        #expect(stretches.allSatisfy { $0.contains { $0 != 0 } })
    }

    @Test func hexIsTwoLowerCaseDigitsAByte() {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect([UInt8]().hexString == "")
        #expect([0x00, 0x0F, 0xA5, 0xFF].hexString == "000fa5ff")
        let all = (0...255).map { UInt8($0) }
        #expect(all.hexString == all.map { String(format: "%02x", $0) }.joined())
        #expect(all[250...].hexString == "fafbfcfdfeff")
    }

    @Test func heapAndResidentMemoryMoveWithWhatTheProcessHolds() throws {
        let before = ProcessMemory.heap()
        // 64 MiB in 4 KiB blocks, touched: inside malloc's arenas, not mapped on their own.
        var blocks: [UnsafeMutableRawPointer] = []
        for _ in 0..<16384 {
            guard let p = malloc(4096) else { break }
            memset(p, 1, 4096)
            blocks.append(p)
        }
        #expect(blocks.count == 16384)
        let held = ProcessMemory.heap()
        #expect(held.inUse - before.inUse >= 48 << 20, "heap in use rose by \(held.inUse - before.inUse) bytes")
        let rssHeld = try #require(ProcessMemory.resident())
        #expect(rssHeld.peak >= rssHeld.current)
        // Freed all but the last block, so the arena's top cannot shrink: the pages stay resident
        // until a trim gives them back.
        for p in blocks.dropLast() { free(p) }
        let rssFreed = try #require(ProcessMemory.resident()).current
        ProcessMemory.trim()
        let rssTrimmed = try #require(ProcessMemory.resident()).current
        free(blocks.last)
        #expect(rssFreed - rssTrimmed >= 32 << 20, "a trim gave back \(rssFreed - rssTrimmed) bytes")
        let fds = try #require(ProcessMemory.fileDescriptors())
        #expect(fds.open >= 3 && fds.limit >= fds.open)
    }
}
