import FarrierCore
import Foundation
import Testing

@Suite struct WaterfallTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    /// A timeline event as the tests write it: seconds from t0, stage, event, detail.
    typealias Event = (t: Double, stage: String, event: String, detail: String)

    func drawn(_ events: [Event]) -> [Double] {
        Waterfall.lastStep(
            events.shuffled(),
            time: { t0.addingTimeInterval($0.t) },
            stage: \.stage,
            event: \.event,
            detail: \.detail
        ).map(\.t)
    }

    static func boot(at t: Double, state: String) -> [Event] {
        [
            (t, "dhcp", "DISCOVER", "client=pxe-bios"), (t + 1, "dhcp", "ACK", "address=198.18.0.100"),
            (t + 2, "http", "script", "state=\(state) platform=pcbios"), (t + 3, "http", "GET", "vmlinuz"),
        ]
    }

    @Test func theLastBootStartsAfterTheLastQuietSpell() {
        #expect(
            drawn(Self.boot(at: 0, state: "deployed") + Self.boot(at: 100, state: "deployed")) == [100, 101, 102, 103]
        )
        #expect(drawn([]).isEmpty)
        #expect(
            Waterfall.scriptState(stage: "http", event: "script", detail: "state=ready platform=efi at=site") == "ready"
        )
        #expect(Waterfall.scriptState(stage: "http", event: "GET", detail: "state=ready") == nil)
    }

    /// The agent's phases belong to the boot they follow, however far apart: a download of
    /// minutes, a wipe of hours.
    @Test func theAgentsPhasesNeverStartABoot() {
        let events: [Event] = [
            (0, "dhcp", "DISCOVER", ""), (1, "tftp", "RRQ", ""), (3, "http", "GET", ""), (5, "agent", "wipe", ""),
            (400, "agent", "verify", ""), (4000, "agent", "done", ""), (5000, "dhcp", "DISCOVER", ""),
            (5001, "http", "GET", ""),
        ]
        #expect(drawn(events) == [5000, 5001])
        #expect(drawn(Array(events.prefix(6))) == [0, 1, 3, 5, 400, 4000])
        // Without the rule, the quiet spells would split it.
        let split = Waterfall.lastStep(
            Array(events.prefix(6)),
            time: { t0.addingTimeInterval($0.t) },
            scriptState: { _ in nil }
        )
        #expect(split.map(\.t) == [4000])
    }

    /// A deployed machine shows its deploy: the ramdisk boot, the agent's phases, the boot from
    /// disk (asked in the same step's state) and the installed OS's DHCP a minute later; not the
    /// commission before it. A restart later is a boot of its own.
    @Test func aDeploysBootsAreDrawnTogether() {
        let commission = Self.boot(at: -2000, state: "commissioning") + [(-1990, "agent", "done", "")]
        let ramdisk =
            Self.boot(at: 0, state: "deploying") + [
                (10, "dhcp", "DISCOVER", "client=plain"), (11, "dhcp", "ACK", "address=198.18.0.100"),
                (15, "agent", "download", ""), (15, "agent", "write", ""), (200, "agent", "verify", ""),
                (230, "agent", "done", ""),
            ]
        let disk = Self.boot(at: 280, state: "deploying").prefix(3)
        let os: [Event] = [(340, "dhcp", "DISCOVER", "client=plain"), (341, "dhcp", "ACK", "address=198.18.0.100")]
        let deploy = commission + ramdisk + disk + os
        #expect(drawn(deploy) == (ramdisk + disk + os).map(\.t).sorted())
        // The OS's DHCP long after its boot (a lease renewal) is not part of it.
        #expect(drawn(deploy + [(4000, "dhcp", "REQUEST", "client=plain")]) == [4000])
        // A restart: its boot from disk (state deployed) and its OS, and nothing of the deploy.
        let restart =
            Array(Self.boot(at: 9000, state: "deployed").prefix(3)) + [(9060, "dhcp", "DISCOVER", "client=plain")]
        #expect(drawn(deploy + restart) == restart.map(\.t))
        // A ramdisk slow to ask for its address (a switch port without portfast: 45 s after the
        // initrd's GET) is still the deploy's, and so is what follows it.
        let slow =
            Self.boot(at: 0, state: "deploying") + [
                (48, "dhcp", "DISCOVER", "client=plain"), (60, "agent", "write", ""), (230, "agent", "done", ""),
            ]
        #expect(drawn(commission + slow + os) == (slow + os).map(\.t).sorted())
        // A deploy queued for a slot polls its script from iPXE's wait loop: the polls are not drawn.
        let polls: [Event] = (1...5).map {
            (Double(-400 + 60 * $0), "http", "script", "state=deploying platform=pcbios")
        }
        #expect(drawn(polls + ramdisk + os) == (ramdisk + os).map(\.t).sorted())
        // A step's boots far apart (a deploy retried the next day) are not joined.
        #expect(drawn(Array(ramdisk) + Self.boot(at: 90_000, state: "deploying")) == [90_000, 90_001, 90_002, 90_003])
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

    @Test func anEventBeforeTheFirstIsDrawnAtTheStart() {
        // The agent's phases are timed by the VM's clock, which can be behind the server's.
        let events = [(0.0, "dhcp DISCOVER"), (-5, "agent write"), (10, "agent done")].map {
            (time: t0.addingTimeInterval($0.0), label: $0.1)
        }
        let rows = Waterfall.render(events, width: 11)
        #expect(rows.count == 3)
        for row in rows {
            let bar = row.split(separator: "|", omittingEmptySubsequences: false)[1]
            #expect(bar.count == 11, "\(row)")
        }
        #expect(rows[1].split(separator: "|")[1].hasPrefix("#"), "\(rows[1])")
    }
}
