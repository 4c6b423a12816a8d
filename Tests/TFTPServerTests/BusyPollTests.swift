import TFTPServer
import Testing

@Suite struct BusyPollTests {
    /// `shouldPoll` for each of `actives` in turn (a mutating call cannot sit inside #expect).
    func decisions(_ p: inout BusyPoll, _ actives: [Int]) -> [Bool] {
        actives.map { p.shouldPoll(active: $0) }
    }

    @Test func pollsOnlyWhileTransfersAreAtMostHalfTheCPUs() {
        var eight = BusyPoll(budget: .microseconds(50), cpus: 8)
        #expect(decisions(&eight, [1, 4, 5, 8]) == [true, true, false, false])
        var two = BusyPoll(budget: .microseconds(50), cpus: 2)
        #expect(decisions(&two, [1, 2]) == [true, false])
    }

    @Test func neverOnOneCPUOrWithAZeroBudget() {
        var one = BusyPoll(budget: .microseconds(50), cpus: 1)
        #expect(decisions(&one, [0, 1]) == [false, false])
        var off = BusyPoll(budget: .zero, cpus: 64)
        #expect(decisions(&off, [1]) == [false])
    }

    @Test func missesInARowBackOffThenPollingResumes() {
        var p = BusyPoll(budget: .microseconds(50), cpus: 4)
        var polled: [Bool] = []
        for _ in 0..<BusyPoll.missesBeforeBackoff {
            polled += decisions(&p, [1])
            p.record(hit: false)
        }
        // Every wait polled until the last miss; then it sleeps without polling for a while.
        #expect(polled == Array(repeating: true, count: BusyPoll.missesBeforeBackoff))
        #expect(decisions(&p, Array(repeating: 1, count: BusyPoll.backoffWaits)).allSatisfy { !$0 })
        #expect(decisions(&p, [1]) == [true])
    }

    @Test func aHitClearsTheMisses() {
        var p = BusyPoll(budget: .microseconds(50), cpus: 4)
        for _ in 0..<10 {
            for _ in 1..<BusyPoll.missesBeforeBackoff { p.record(hit: false) }
            p.record(hit: true)
            #expect(decisions(&p, [1]) == [true])
        }
        #expect(p.misses == 0 && p.skip == 0)
    }
}
