import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The local side of a serial console: the terminal in raw mode, keyboard input as a stream
/// that ends at `~.` (after a newline, or first thing) or at end of input, and output to stdout.
final class TerminalConsole: @unchecked Sendable {
    let input: AsyncStream<[UInt8]>
    private var saved = termios()
    private var raw = false

    init() {
        let (stream, continuation) = AsyncStream.makeStream(of: [UInt8].self)
        input = stream
        if isatty(0) == 1, tcgetattr(0, &saved) == 0 {
            var t = saved
            cfmakeraw(&t)
            if tcsetattr(0, TCSANOW, &t) == 0 { raw = true }
        }
        // Blocking reads on a thread of their own; the escape is found here.
        let thread = Thread {
            var atLineStart = true
            var sawTilde = false
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(0, &buffer, buffer.count)
                if n <= 0 { break }
                var out: [UInt8] = []
                for b in buffer[0..<n] {
                    if sawTilde {
                        sawTilde = false
                        if b == UInt8(ascii: ".") {
                            if !out.isEmpty { continuation.yield(out) }
                            continuation.finish()
                            return
                        }
                        out.append(UInt8(ascii: "~"))
                        if b == UInt8(ascii: "~") {
                            atLineStart = false
                            continue
                        }  // ~~ sends one ~
                    }
                    if atLineStart && b == UInt8(ascii: "~") {
                        sawTilde = true
                        continue
                    }
                    out.append(b)
                    atLineStart = b == 13 || b == 10
                }
                if !out.isEmpty { continuation.yield(out) }
            }
            continuation.finish()
        }
        thread.start()
    }

    func show(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { p in
            var off = 0
            while off < p.count {
                let n = write(1, p.baseAddress! + off, p.count - off)
                if n <= 0 { return }
                off += n
            }
        }
    }

    func note(_ text: String) {
        // In raw mode a bare \n does not return the carriage.
        FileHandle.standardError.write(Data((raw ? "\r\n" + text + "\r\n" : text + "\n").utf8))
    }

    func restore() {
        if raw {
            tcsetattr(0, TCSANOW, &saved)
            raw = false
        }
    }

    deinit { restore() }
}
