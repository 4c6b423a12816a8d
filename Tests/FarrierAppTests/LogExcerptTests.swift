import TestSupport
import Testing

/// `Harness.logExcerpt`, which the lab suites print when a server fails: a crash's reason and
/// frames come before the tail, since the tail of a crashed process's log is its register dump.
struct LogExcerptTests {
    /// Swift 6.3.1's backtracer on an index out of range (a program built here with `swiftc -g`),
    /// cut to its shape: reason, banner, crashed thread, registers, images.
    static let crash = """
        time=2026-12-05T21:14:20.000 level=info logger=farrier msg="deploy started"
        Swift/ContiguousArrayBuffer.swift:692: Fatal error: Index out of range

        *** Signal 4: Backtracing from 0x7fe17bf6df7f... done ***

        *** Program crashed: Illegal instruction at 0x00007fe17bf6df7f ***

        Platform: x86_64 Linux (Debian GNU/Linux 12 (bookworm))

        Thread 0 "bt" crashed:

          0      0x00007fe17bf6df7f closure #1 in closure #1 in _assertionFailure(_:_:file:line:flags:) + 623 in libswiftCore.so
          1 [ra] 0x00007fe17c0f961f _assertionFailure(_:_:file:line:flags:) + 302 in libswiftCore.so
          2 [ra] 0x00005633eb457fc0 f(_:_:) + 47 in bt at /tmp/bt/main.swift:1:40

        Registers:

        rax 0x0000000000000000  0
        rdx 0x00000000000002b4  692
        """

    @Test func aCrashShowsItsReasonAndFramesBeforeTheTail() {
        let text = Harness.logExcerpt(Self.crash, lines: 2)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.first == "(crashed) *** Program crashed: Illegal instruction at 0x00007fe17bf6df7f ***")
        #expect(lines.contains("Swift/ContiguousArrayBuffer.swift:692: Fatal error: Index out of range"))
        #expect(lines.contains { $0.contains("f(_:_:) + 47 in bt at /tmp/bt/main.swift:1:40") })
        #expect(!lines.contains("Registers:"))
        #expect(Array(lines.suffix(3)) == ["(last lines)", "rax 0x0000000000000000  0", "rdx 0x00000000000002b4  692"])
    }

    @Test func aLogWithoutACrashIsItsTail() {
        #expect(Harness.logExcerpt("a\nb\nc", lines: 2) == "b\nc")
    }
}
