/// When a transfer polls for the client's next packet instead of sleeping in recv(2) at once.
///
/// A lockstep transfer's speed is its round trip, and a sleeping receiver's share of it is the
/// scheduler waking the thread when the ACK lands. Measured on this project's 2-vCPU test
/// machine (nested virtualisation), that wakeup is most of a loopback round trip: 110 µs per
/// block sleeping, 34 µs polling for up to 50 µs first. Polling spends a CPU to buy that: in
/// `bench/tftp` 1.35× tftpd-hpa's lockstep speed for 1.7× its CPU per GiB, where sleeping gives
/// 1.07× for 0.89×. TFTP carries only the iPXE binary (about 1 MiB: milliseconds either way;
/// kernels and images go over HTTP), so polling is off unless `tftp.busy-poll` sets a budget.
/// When on, it is bounded three ways:
/// - only `budget` long per wait, then the transfer sleeps as before;
/// - only while transfers are at most half the CPUs: a rack booting at once sleeps, and a
///   single-CPU machine never polls (the poller would starve the rest);
/// - a transfer whose client answers slower than the budget (a distant or slow client) stops
///   polling after `missesBeforeBackoff` misses in a row, for `backoffWaits` waits, then tries
///   again.
///
/// A pure value: the transfer asks `shouldPoll` before each wait and reports the outcome.
public struct BusyPoll: Sendable, Hashable {
    public let budget: Duration
    public let cpus: Int
    public private(set) var misses = 0
    public private(set) var skip = 0
    public static let missesBeforeBackoff = 4
    public static let backoffWaits = 64

    public init(budget: Duration, cpus: Int) {
        self.budget = budget
        self.cpus = cpus
    }

    /// Whether to poll before sleeping, with `active` transfers running (this one included).
    public mutating func shouldPoll(active: Int) -> Bool {
        guard budget > .zero, cpus >= 2, active <= cpus / 2 else { return false }
        if skip > 0 {
            skip -= 1
            return false
        }
        return true
    }

    /// What the poll found: a packet (`hit`), or nothing within the budget.
    public mutating func record(hit: Bool) {
        if hit {
            misses = 0
            return
        }
        misses += 1
        if misses >= Self.missesBeforeBackoff {
            misses = 0
            skip = Self.backoffWaits
        }
    }
}
