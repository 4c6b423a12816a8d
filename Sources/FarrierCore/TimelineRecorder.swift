import Foundation
import Synchronization

/// Collects timeline events and machine sightings from the protocol servers and writes them to
/// the store in batches, off the network event loops and the DHCP threads: a write is a task
/// that awaits the store, and each batch's task waits for the one before, so batches land in
/// order.
///
/// Timeline events are diagnostics, not committed state: a crash may lose the last batch
/// (at most `flushInterval` worth), never a lease or a machine record already written.
public final class TimelineRecorder: Sendable {
    struct Pending {
        var events: [TimelineEvent] = []
        var sightings: [MACAddress: ClientPlatform] = [:]
        var scheduled = false
    }

    let store: any MachineStore
    let pending = Mutex(Pending())
    /// The last batch's write: the next one starts after it.
    let tail = Mutex<Task<Void, Never>?>(nil)
    let known: Mutex<Set<MACAddress>>
    let flushInterval: Duration
    let onError: @Sendable (any Error) -> Void
    /// At most this many `discovered` machines: a sighting of a new MAC beyond it creates none.
    public let maxDiscovered: Int
    /// New MACs refused for the cap.
    public let refusedDiscoveries = Atomic<Int>(0)
    let onRefused: @Sendable (MACAddress, Int) -> Void

    /// `known`: the MACs of the machines already in the store.
    public init(
        store: any MachineStore,
        known: some Sequence<MACAddress>,
        flushInterval: Duration = .milliseconds(100),
        maxDiscovered: Int = 4096,
        onError: @escaping @Sendable (any Error) -> Void = { _ in },
        onRefused: @escaping @Sendable (_ mac: MACAddress, _ refusedSoFar: Int) -> Void = { _, _ in }
    ) {
        self.store = store
        self.flushInterval = flushInterval
        self.maxDiscovered = maxDiscovered
        self.onError = onError
        self.onRefused = onRefused
        self.known = Mutex(Set(known))
    }

    /// Whether this MAC belongs to a machine Farrier knows.
    public func isKnown(_ mac: MACAddress) -> Bool { known.withLock { $0.contains(mac) } }

    public func record(_ event: TimelineEvent) {
        enqueue { $0.events.append(event) }
    }

    /// Forgets machines that were deleted (pruned): their traffic is no longer recorded.
    public func forget(_ macs: [MACAddress]) {
        known.withLock { for m in macs { $0.remove(m) } }
    }

    /// Notes that `mac` belongs to a machine already in the store, so its DHCP traffic goes on
    /// the timeline too.
    public func markKnown(_ mac: MACAddress) { known.withLock { _ = $0.insert(mac) } }

    /// Notes that a network-boot client was seen by DHCP: it becomes a `discovered` machine if
    /// new, while fewer than `maxDiscovered` are (DHCP traffic is the only thing that creates
    /// machines).
    public func sighted(_ mac: MACAddress, platform: ClientPlatform) {
        enqueue { p in
            if let old = p.sightings[mac], old.firmware != .unknown, platform.firmware == .unknown { return }
            p.sightings[mac] = platform
        }
    }

    func enqueue(_ change: (inout Pending) -> Void) {
        let schedule = pending.withLock { p -> Bool in
            change(&p)
            if p.scheduled { return false }
            p.scheduled = true
            return true
        }
        if schedule { _ = write(after: flushInterval) }
    }

    /// Starts a task that sleeps `delay`, waits for the previous batch's write, then writes
    /// everything pending.
    func write(after delay: Duration?) -> Task<Void, Never> {
        tail.withLock { last in
            let previous = last
            let task = Task {
                if let delay { try? await Task.sleep(for: delay) }
                await previous?.value
                await self.flushNow()
            }
            last = task
            return task
        }
    }

    /// Writes everything pending.
    func flushNow() async {
        let batch = pending.withLock { p -> Pending in
            let b = p
            p = Pending()
            return b
        }
        do {
            let now = Date()
            for (mac, platform) in batch.sightings {
                if try await store.recordSighting(mac: mac, platform: platform, at: now, create: maxDiscovered) != nil {
                    known.withLock { _ = $0.insert(mac) }
                } else {
                    let n = refusedDiscoveries.add(1, ordering: .relaxed).newValue
                    onRefused(mac, n)
                }
            }
            // Only machines that exist get a timeline: a flood of made-up MACs past the cap
            // writes nothing.
            let known = self.known.withLock { $0 }
            try await store.appendTimeline(batch.events.filter { known.contains($0.mac) })
        } catch {
            onError(error)
        }
    }

    /// Writes everything pending now, after the writes already started; returns when it is
    /// written (at shutdown, and in tests).
    public func drain() async {
        await write(after: nil).value
    }
}
