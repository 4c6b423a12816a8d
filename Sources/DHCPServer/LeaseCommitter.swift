import Dispatch
import Glibc
import FarrierCore
import Synchronization

/// Makes leases durable with group commit: everything submitted while a write is in flight goes
/// into the next transaction together, so one fsync covers many concurrent exchanges. Completion
/// runs after the transaction is on disk; only then may the ACK leave.
final class LeaseCommitter: Sendable {
    struct Item {
        var commit: Lease?
        var forget: MACAddress?
        var completion: @Sendable (Result<Void, any Error>) -> Void
    }

    struct State {
        var pending: [Item] = []
        var running = false
    }

    let store: any LeaseStore
    let state = Mutex(State())
    let queue = DispatchQueue(label: "farrier.dhcp.leases")

    init(store: any LeaseStore) { self.store = store }

    func submit(commit: Lease?, forget: MACAddress?, completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        let start = state.withLock { s -> Bool in
            s.pending.append(Item(commit: commit, forget: forget, completion: completion))
            if s.running { return false }
            s.running = true
            return true
        }
        if start { queue.async { self.drain() } }
    }

    /// How long a commit waits for more leases to join it (PostgreSQL's commit_delay): under
    /// load, one fsync then covers a millisecond of exchanges instead of whatever arrived during
    /// the last one, which costs a little latency and saves most of the per-commit work.
    static let gatherDelay: UInt32 = 1000  // microseconds
    static let gatherEnough = 256

    func drain() {
        while true {
            if state.withLock({ $0.pending.count }) < Self.gatherEnough { usleep(Self.gatherDelay) }
            let batch = state.withLock { s -> [Item] in
                let b = s.pending
                s.pending = []
                if b.isEmpty { s.running = false }
                return b
            }
            if batch.isEmpty { return }
            let result: Result<Void, any Error>
            do {
                // Later entries for the same MAC win; forgets and commits are applied in order.
                var latest: [MACAddress: Lease] = [:]
                var forgets: [MACAddress] = []
                for item in batch {
                    if let l = item.commit { latest[l.mac] = l }
                    if let m = item.forget {
                        latest[m] = nil
                        forgets.append(m)
                    }
                }
                for m in forgets where latest[m] == nil { try store.deleteLease(mac: m) }
                try store.commit(Array(latest.values))
                result = .success(())
            } catch {
                result = .failure(error)
            }
            for item in batch { item.completion(result) }
        }
    }
}
