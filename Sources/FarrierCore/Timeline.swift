import Foundation

/// One step of a machine's boot, recorded as it happens so `farrier machine show` can tell where a
/// boot stopped and how long each stage took.
public struct TimelineEvent: Codable, Sendable, Hashable {
    public enum Stage: String, Codable, Sendable {
        case dhcp
        case proxyDHCP = "proxydhcp"
        case tftp
        case http
        /// The agent's task, from its result: one event per phase at its start, and `done`.
        case agent
    }

    public var mac: MACAddress
    public var time: Date
    public var stage: Stage
    /// What happened, e.g. `DISCOVER`, `OFFER 198.18.0.100`, `RRQ undionly.kpxe`, `script`.
    public var event: String
    /// Free-form detail: boot file, client class, bytes and duration of a transfer, an error.
    public var detail: String

    public init(mac: MACAddress, time: Date, stage: Stage, event: String, detail: String = "") {
        self.mac = mac
        self.time = time
        self.stage = stage
        self.event = event
        self.detail = detail
    }
}

/// A boot's timeline drawn as text: one row per event, a bar from the event to the next one on a
/// scale of the whole boot, so the slow stage stands out at a glance (`farrier machine show`).
public enum Waterfall {
    /// The machine states whose work takes more than one boot: a deploy boots the ramdisk, then
    /// the disk; both ask for their iPXE script in the same state.
    static let stepStates: Set<String> = ["commissioning", "deploying", "releasing", "rescuing", "exiting-rescue"]

    /// The state an iPXE script was asked in, from its timeline event (`http script` with
    /// `state=…` in its detail); nil for any other event.
    public static func scriptState(stage: String, event: String, detail: String) -> String? {
        guard stage == TimelineEvent.Stage.http.rawValue, event == "script" else { return nil }
        return detail.split(separator: " ").first { $0.hasPrefix("state=") }.map { String($0.dropFirst(6)) }
    }

    /// What the waterfall draws, in time order. Boots are split at quiet spells of more than `gap`
    /// seconds (a boot's stages, ROM DHCP to the ramdisk's, follow each other within seconds); an
    /// event that `continues` its boot never starts one (the agent's phases can be minutes, a
    /// download, or hours, a wipe, apart). The last boot is drawn, with the boot before it when
    /// the last asked for no script (the installed OS asking for its address) within `follow`
    /// seconds of it, and with the boots before those that served the same step (scripts asked
    /// in the same step state, or no script within `follow` seconds of such a boot; each within
    /// `follow` seconds of the next: a deploy's ramdisk boot, the ramdisk's own DHCP and its
    /// agent's phases, then its boot from disk), back to an iPXE wait loop's poll.
    public static func lastStep<E>(
        _ events: [E],
        time: (E) -> Date,
        gap: TimeInterval = 30,
        follow: TimeInterval = 600,
        continues: (E) -> Bool = { _ in false },
        scriptState: (E) -> String?
    ) -> [E] {
        let sorted = events.sorted { time($0) < time($1) }
        guard !sorted.isEmpty else { return [] }
        var starts = [0]
        for i in sorted.indices.dropFirst()
        where !continues(sorted[i]) && time(sorted[i]).timeIntervalSince(time(sorted[i - 1])) > gap {
            starts.append(i)
        }
        let boots = zip(starts, starts.dropFirst() + [sorted.count]).map { $0..<$1 }
        /// Whether boot `b` follows the one before it within `follow` seconds.
        func soon(_ b: Int) -> Bool {
            b > 0
                && time(sorted[boots[b].lowerBound]).timeIntervalSince(time(sorted[boots[b - 1].upperBound - 1]))
                    <= follow
        }
        // Each boot's step state: its script's, or, for a boot that asked for none (a ramdisk's or
        // an installed OS's DHCP), the state of the boot it soon follows.
        var states: [String?] = []
        for b in boots.indices {
            let own = sorted[boots[b]].lazy.compactMap(scriptState).first
            states.append(own ?? (soon(b) ? states[b - 1] : nil))
        }
        /// An iPXE wait loop's poll: nothing but the script (a deploy queued for a slot asks again
        /// and again); a step's earlier boots are joined only up to one.
        func poll(_ b: Int) -> Bool { sorted[boots[b]].allSatisfy { scriptState($0) != nil } }
        var first = boots.count - 1
        // The last boot asked for no script: drawn with the boot it soon follows.
        if sorted[boots[first]].allSatisfy({ scriptState($0) == nil }), soon(first) { first -= 1 }
        if let step = states[first], stepStates.contains(step) {
            while soon(first), states[first - 1] == step, !poll(first - 1) { first -= 1 }
        }
        return Array(sorted[boots[first].lowerBound...])
    }

    /// `lastStep` for timeline events as the API gives them: the agent's phases continue their
    /// boot, and an `http script` event's detail names its step state.
    public static func lastStep<E>(
        _ events: [E],
        time: (E) -> Date,
        stage: (E) -> String,
        event: (E) -> String,
        detail: (E) -> String
    ) -> [E] {
        lastStep(
            events,
            time: time,
            continues: { stage($0) == TimelineEvent.Stage.agent.rawValue },
            scriptState: { scriptState(stage: stage($0), event: event($0), detail: detail($0)) }
        )
    }

    /// Rows for events already in time order: offset from the first, label, the bar (`width`
    /// columns for the whole span), and the time to the next event.
    public static func render(_ events: [(time: Date, label: String)], width: Int = 40) -> [String] {
        guard let first = events.first?.time, let last = events.last?.time else { return [] }
        let span = max(last.timeIntervalSince(first), 0.001)
        let width = max(width, 10)
        let labelWidth = min(32, events.map(\.label.count).max() ?? 0)
        // Clamped: an event timed before the first (clocks of the VM and the server differ) is drawn
        // at the start, not at a negative column.
        func column(_ t: Date) -> Int {
            let at = (t.timeIntervalSince(first) / span * Double(width - 1)).rounded(.down)
            return at.isFinite ? Int(min(max(at, 0), Double(width - 1))) : 0
        }
        return events.indices.map { i in
            let e = events[i]
            let next = i + 1 < events.count ? events[i + 1].time : e.time
            let from = column(e.time)
            let to = max(from + 1, column(next))
            let bar =
                String(repeating: " ", count: from) + String(repeating: "#", count: to - from)
                + String(repeating: " ", count: width - to)
            let label = e.label.count > labelWidth ? String(e.label.prefix(labelWidth - 1)) + "~" : e.label
            let offset = String(format: "%8.3fs", e.time.timeIntervalSince(first))
            let took = i + 1 < events.count ? String(format: "%.3fs", next.timeIntervalSince(e.time)) : "end"
            return "\(offset)  \(label.padding(toLength: labelWidth, withPad: " ", startingAt: 0))  |\(bar)|  \(took)"
        }
    }
}
