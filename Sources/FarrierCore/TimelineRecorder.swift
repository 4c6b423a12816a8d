import Dispatch
import Foundation
import Synchronization

/// Collects timeline events and machine sightings from the protocol servers and writes them to
/// the store in batches, off the network event loops.
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
    let queue = DispatchQueue(label: "farrier.timeline")
    let pending = Mutex(Pending())
    let known: Mutex<Set<MACAddress>>
    let flushInterval: DispatchTimeInterval
    let onError: @Sendable (any Error) -> Void

    public init(
        store: any MachineStore, flushInterval: DispatchTimeInterval = .milliseconds(100),
        onError: @escaping @Sendable (any Error) -> Void = { _ in }
    ) {
        self.store = store
        self.flushInterval = flushInterval
        self.onError = onError
        let macs = (try? store.machines().map(\.mac)) ?? []
        known = Mutex(Set(macs))
    }

    /// Whether this MAC belongs to a machine Farrier knows.
    public func isKnown(_ mac: MACAddress) -> Bool { known.withLock { $0.contains(mac) } }

    public func record(_ event: TimelineEvent) {
        enqueue { $0.events.append(event) }
    }

    /// Notes that `mac` belongs to a machine already in the store, so its DHCP traffic goes on
    /// the timeline too.
    public func markKnown(_ mac: MACAddress) { known.withLock { _ = $0.insert(mac) } }

    /// Notes that a network-boot client was seen: it becomes a `discovered` machine if new.
    public func sighted(_ mac: MACAddress, platform: ClientPlatform) {
        known.withLock { _ = $0.insert(mac) }
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
        if schedule { queue.asyncAfter(deadline: .now() + flushInterval) { self.flushNow() } }
    }

    /// Writes everything pending. Called by the timer, and at shutdown.
    public func flushNow() {
        let batch = pending.withLock { p -> Pending in
            let b = p
            p = Pending()
            return b
        }
        do {
            let now = Date()
            for (mac, platform) in batch.sightings {
                _ = try store.recordSighting(mac: mac, platform: platform, at: now)
            }
            try store.appendTimeline(batch.events)
        } catch {
            onError(error)
        }
    }

    /// Waits for scheduled writes, then flushes.
    public func drain() {
        queue.sync { self.flushNow() }
    }
}
