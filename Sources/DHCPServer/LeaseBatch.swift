import FarrierCore

/// The lease changes a DHCP socket thread decided while answering one batch of datagrams, made
/// durable together (group commit): one transaction and one fsync for every exchange in the
/// batch. The replies that depend on them wait in their `then` until the transaction is on disk,
/// so an ACK never leaves for a lease that is not.
///
/// Owned by one thread; nothing here is shared.
struct LeaseBatch {
    private var latest: [MACAddress: Lease] = [:]
    private var forgets: [MACAddress] = []
    private var waiting: [(Result<Void, any Error>) -> Void] = []

    var isEmpty: Bool { waiting.isEmpty }

    /// Adds a lease to write and/or a MAC whose lease to delete. Later entries for one MAC win.
    mutating func add(commit: Lease?, forget: MACAddress?, then: @escaping (Result<Void, any Error>) -> Void) {
        if let l = commit { latest[l.mac] = l }
        if let m = forget {
            latest[m] = nil
            forgets.append(m)
        }
        waiting.append(then)
    }

    /// Writes and fsyncs everything added, runs each `then` with the outcome, and empties.
    mutating func commit(to store: any LeaseStore) {
        guard !waiting.isEmpty else { return }
        let result: Result<Void, any Error>
        do {
            for m in forgets where latest[m] == nil { try store.deleteLease(mac: m) }
            try store.commit(Array(latest.values))
            result = .success(())
        } catch {
            result = .failure(error)
        }
        let done = waiting
        self = LeaseBatch()
        for then in done { then(result) }
    }
}
