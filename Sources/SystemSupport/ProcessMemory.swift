import CSystemSupport
import Foundation

/// The process's memory as the kernel and malloc see it, and glibc's knobs over it.
///
/// Resident memory in a long-running server is mostly malloc's arenas, not live objects: glibc
/// gives each thread that meets contention an arena of its own (up to eight per core), and memory
/// freed inside an arena stays resident until the arena's top shrinks. `limitArenas` and `trim`
/// are the two levers; `heap` and `resident` measure what they do.
public enum ProcessMemory {
    /// Caps malloc's arenas. Call before the process starts its threads; arenas made earlier stay.
    @discardableResult
    public static func limitArenas(_ arenas: Int) -> Bool {
        farrier_malloc_set_arena_max(Int32(clamping: max(1, arenas))) == 1
    }

    /// Returns free pages inside every arena to the kernel; true when some were.
    @discardableResult
    public static func trim() -> Bool { farrier_malloc_trim() == 1 }

    /// Bytes malloc has handed out and not had back (including chunks mapped on their own), and
    /// the bytes its arenas span (in use or free).
    public static func heap() -> (inUse: Int, arenas: Int) {
        let info = farrier_heap_info_now()
        return (Int(clamping: info.in_use), Int(clamping: info.arenas))
    }

    /// Resident and peak resident bytes (VmRSS and VmHWM in /proc/self/status); nil off Linux.
    public static func resident() -> (current: Int, peak: Int)? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        var current: Int?
        var peak: Int?
        for line in status.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count >= 2, let kib = Int(parts[1]) else { continue }
            if parts[0] == "VmRSS:" { current = kib * 1024 }
            if parts[0] == "VmHWM:" { peak = kib * 1024 }
        }
        guard let current, let peak else { return nil }
        return (current, peak)
    }

    /// Open file descriptors and the soft limit on them.
    public static func fileDescriptors() -> (open: Int, limit: Int)? {
        guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return nil }
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
        return (fds.count, Int(clamping: limit.rlim_cur))
    }
}
