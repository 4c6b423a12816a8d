import FarrierCore
import Foundation
import Testing

@Suite struct WaterfallTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func theLastBootStartsAfterTheLastQuietSpell() {
        let times = [0.0, 1, 2, 100, 100.5, 103, 120].map { t0.addingTimeInterval($0) }
        let boot = Waterfall.lastBoot(times.shuffled(), time: { $0 })
        #expect(boot == Array(times[3...]))
        #expect(Waterfall.lastBoot([Date](), time: { $0 }).isEmpty)
    }

    /// The agent's phases belong to the boot they follow, however far apart: a download of
    /// minutes, a wipe of hours.
    @Test func theAgentsPhasesNeverStartABoot() {
        let events: [(Double, String)] = [
            (0, "dhcp"), (1, "tftp"), (3, "http"), (5, "agent"), (400, "agent"), (4000, "agent"), (5000, "dhcp"),
            (5001, "http"),
        ]
        let time: ((Double, String)) -> Date = { t0.addingTimeInterval($0.0) }
        let boot = Waterfall.lastBoot(events.shuffled(), time: time, continues: { $0.1 == "agent" })
        #expect(boot.map(\.0) == [5000, 5001])
        let deploy = Waterfall.lastBoot(Array(events.prefix(6)), time: time, continues: { $0.1 == "agent" })
        #expect(deploy.map(\.0) == [0, 1, 3, 5, 400, 4000])
        // Without the rule, the quiet spells would split it.
        #expect(Waterfall.lastBoot(Array(events.prefix(6)), time: { t0.addingTimeInterval($0.0) }).map(\.0) == [4000])
    }

    @Test func barsRunFromEachEventToTheNextOnTheBootsScale() {
        // 0 s, 1 s, 9 s, 10 s: on a 11-column scale the bars start at 0, 1, 9 and 10.
        let events = [(0.0, "dhcp DISCOVER"), (1, "tftp RRQ undionly.kpxe"), (9, "http script"), (10, "http GET")].map {
            (time: t0.addingTimeInterval($0.0), label: $0.1)
        }
        let rows = Waterfall.render(events, width: 11)
        #expect(rows.count == 4)
        let bars = rows.map { row in
            let bar = row.split(separator: "|", omittingEmptySubsequences: false)[1]
            return (
                bar.firstIndex(of: "#").map { bar.distance(from: bar.startIndex, to: $0) },
                bar.filter { $0 == "#" }.count, bar.count
            )
        }
        #expect(bars.map(\.0) == [0, 1, 9, 10])
        #expect(bars.map(\.1) == [1, 8, 1, 1])
        #expect(bars.allSatisfy { $0.2 == 11 })
        #expect(rows[0].hasPrefix("   0.000s  dhcp DISCOVER "))
        #expect(rows[1].hasSuffix("|  8.000s"))
        #expect(rows[3].hasSuffix("|  end"))
        #expect(Waterfall.render([]).isEmpty)
    }
}
