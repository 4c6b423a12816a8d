import Crypto
import FarrierBMC
import FarrierCore
import FarrierStore
import Foundation
import Testing

@testable import FarrierControl

/// Maintenance holds (no transition, no allocation, only between steps) and the power sync's
/// pure reading logic (drift and a failing BMC, each an event when it begins and when it ends).
@Suite struct MaintenancePowerTests {
    let store: SQLiteStore
    let controller: Controller

    init() throws {
        store = try SQLiteStore()
        let vault = CredentialVault(key: SymmetricKey(size: .bits256))
        controller = Controller(store: store, pool: BMCPool(vault: vault), agentKey: SymmetricKey(size: .bits256))
    }

    /// A machine enrolled and moved to `ready` by hand (as a finished commission leaves it).
    func ready(_ name: String, mac: String) async throws -> Machine {
        let m = try await store.enroll(
            name: name,
            mac: MACAddress(mac)!,
            bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9623"),
            sealedPassword: [1],
            at: Date()
        )
        return try await store.update(machineID: m.id) { x in
            x.state = .ready
            return []
        }
    }

    let hold = Maintenance(reason: "DIMM swap", since: Date(), by: "admin")

    @Test func maintenanceRefusesTransitionsAndAllocation() async throws {
        let a = try await ready("a", mac: "52:54:00:00:00:01")
        let b = try await ready("b", mac: "52:54:00:00:00:02")
        try await controller.setMaintenance(machineID: a.id, hold, by: "admin")
        // No transition: the refusal names the hold and how to end it, and changes nothing.
        let refused = await #expect(throws: ControlError.self) {
            try await controller.apply(.commission, machineID: a.id)
        }
        #expect(refused?.description.contains("in maintenance (DIMM swap") == true)
        #expect(refused?.description.contains("farrier machine maintenance off a") == true)
        #expect(try await store.machine(id: a.id)?.state == .ready)
        // Allocation passes it by: `a` is the smaller name, yet `b` is picked, then none.
        let picked = try await controller.allocate({ _ in true }, fill: { $0.project = nil })
        #expect(picked?.id == b.id)
        #expect(try await controller.allocate({ _ in true }, fill: { _ in }) == nil)
        // Off again: allocatable.
        try await controller.setMaintenance(machineID: a.id, nil, by: "admin")
        #expect(try await controller.allocate({ _ in true }, fill: { _ in })?.id == a.id)
        let events = try await store.events(after: 0, machineID: a.id, limit: 10).map(\.message)
        #expect(Array(events.prefix(2)) == ["maintenance on: DIMM swap", "maintenance off"])
    }

    @Test func maintenanceStartsOnlyBetweenSteps() async throws {
        let a = try await ready("a", mac: "52:54:00:00:00:01")
        try await controller.apply(.commission, machineID: a.id)
        let refused = await #expect(throws: ControlError.self) {
            try await controller.setMaintenance(machineID: a.id, hold, by: "admin")
        }
        #expect(refused?.description.contains("only between steps") == true)
        #expect(try await store.machine(id: a.id)?.maintenance == nil)
        // Turning it off (when it is not on) is no change and no event.
        try await controller.setMaintenance(machineID: a.id, nil, by: "admin")
        #expect(try await store.events(after: 0, machineID: a.id, limit: 10).count == 1)
    }

    @Test func aDiscoveredMachineCannotBeHeld() async throws {
        let m = try #require(
            try await store.recordSighting(
                mac: MACAddress("52:54:00:00:00:07")!,
                platform: .init(architecture: .x86_64, firmware: .bios),
                at: Date(),
                create: 10
            )
        )
        let refused = await #expect(throws: ControlError.self) {
            try await controller.setMaintenance(machineID: m.id, hold, by: "admin")
        }
        #expect(refused?.description.contains("only discovered; enroll it first") == true)
    }

    struct NoAnswer: Error, CustomStringConvertible {
        var description: String { "no answer from 127.0.0.1:9623" }
    }

    @Test func readingsMarkDriftAndFailingBMCsOnceEach() {
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        // Ready and off: as expected, no event.
        var (p, events) = PowerSync.next(nil, state: .ready, .success(.off), now: t0)
        #expect(p == PowerReading(state: .off, read: t0))
        #expect(events.isEmpty)
        // Found on: drift, one event; read again on, no second event.
        (p, events) = PowerSync.next(p, state: .ready, .success(.on), now: t0 + 1)
        #expect(p.expected == .off && p.state == .on)
        #expect(events.count == 1 && events[0].hasPrefix("power drift: found on, but a ready machine should be off"))
        (p, events) = PowerSync.next(p, state: .ready, .success(.on), now: t0 + 2)
        #expect(p.expected == .off && events.isEmpty)
        // The BMC stops answering: marked with the error and since when, once; the last answer stays.
        (p, events) = PowerSync.next(p, state: .ready, .failure(NoAnswer()), now: t0 + 3)
        #expect(p.failingSince == t0 + 3 && p.error == "no answer from 127.0.0.1:9623" && p.read == t0 + 2)
        #expect(
            p.state == .on
                && events == ["power sync: the BMC stopped answering (an admin's machine show has the error)"]
        )
        (p, events) = PowerSync.next(p, state: .ready, .failure(NoAnswer()), now: t0 + 4)
        #expect(p.failingSince == t0 + 3 && events.isEmpty)
        // It answers again, off: both the failure and the drift end, each with its event.
        (p, events) = PowerSync.next(p, state: .ready, .success(.off), now: t0 + 5)
        #expect(p == PowerReading(state: .off, read: t0 + 5))
        #expect(events.count == 2 && events[0].contains("answers again") && events[1].contains("drift from off ended"))
        // A deployed machine found off drifts; enrolled and failed machines expect nothing.
        #expect(PowerSync.next(nil, state: .deployed, .success(.off), now: t0).0.expected == .on)
        #expect(PowerSync.next(nil, state: .enrolled, .success(.on), now: t0).0.expected == nil)
        #expect(PowerSync.next(nil, state: .failed, .success(.off), now: t0).0.expected == nil)
    }

    @Test func reasonsAreRequiredAndBounded() {
        #expect(Maintenance.reasonProblem("") != nil)
        #expect(Maintenance.reasonProblem("   ") != nil)
        #expect(Maintenance.reasonProblem("a\nb") != nil)
        #expect(Maintenance.reasonProblem(String(repeating: "x", count: 257)) != nil)
        #expect(Maintenance.reasonProblem("replace PSU 2") == nil)
    }
}
