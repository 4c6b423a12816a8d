import Crypto
import FarrierBMC
import FarrierControl
import FarrierCore
import FarrierStore
import Foundation
import Testing

@Suite struct ControllerTests {
    let store: SQLiteStore
    let controller: Controller

    init() throws {
        store = try SQLiteStore()
        let vault = CredentialVault(key: SymmetricKey(size: .bits256))
        controller = Controller(store: store, pool: BMCPool(vault: vault), agentKey: SymmetricKey(size: .bits256))
    }

    func enrolled(_ name: String, mac: String) throws -> Machine {
        try store.enroll(
            name: name, mac: MACAddress(mac)!, bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9623"), sealedPassword: [1],
            at: Date())
    }

    @Test func stepEntryBumpsGenerationAndQueues() throws {
        let m = try enrolled("a", mac: "52:54:00:00:00:01")
        let c = try controller.apply(.commission, machineID: m.id)
        #expect(c.state == .commissioning)
        #expect(c.phase == .queued)
        #expect(c.generation == m.generation + 1)
        // Committed: a fresh read sees it, with its event.
        #expect(try store.machine(id: m.id)?.state == .commissioning)
        let events = try store.events(after: 0, machineID: m.id, limit: 10)
        #expect(events.map(\.state) == [.commissioning])
    }

    @Test func refusedTransitionChangesNothing() throws {
        let m = try enrolled("a", mac: "52:54:00:00:00:01")
        #expect(throws: ControlError.self) { try controller.apply(.deploy, machineID: m.id) }
        #expect(try store.machine(id: m.id)?.state == .enrolled)
        #expect(try store.events(after: 0, machineID: m.id, limit: 10).isEmpty)
    }

    @Test func agentTokenIsBoundToMachineAndStep() throws {
        let a = try controller.apply(.commission, machineID: try enrolled("a", mac: "52:54:00:00:00:01").id)
        let b = try controller.apply(.commission, machineID: try enrolled("b", mac: "52:54:00:00:00:02").id)
        let tokenA = controller.agentToken(for: a)
        #expect(try controller.agentMachine(token: tokenA).id == a.id)
        // Another machine's id with A's MAC does not verify.
        let forged = tokenA.replacingOccurrences(of: a.id, with: b.id)
        #expect(throws: ControlError.self) { try controller.agentMachine(token: forged) }
        #expect(throws: ControlError.self) { try controller.agentMachine(token: "garbage") }
        // The step ends (it fails): the token expires with it.
        try controller.apply(.stepFailed(reason: "test"), machineID: a.id)
        #expect(throws: ControlError.self) { try controller.agentMachine(token: tokenA) }
        // Retry starts a new step, whose token differs.
        let retried = try controller.apply(.retry, machineID: a.id)
        #expect(controller.agentToken(for: retried) != tokenA)
        #expect(throws: ControlError.self) { try controller.agentMachine(token: tokenA) }
    }

    @Test func agentReportsDriveTheStep() throws {
        let m = try controller.apply(.commission, machineID: try enrolled("a", mac: "52:54:00:00:00:01").id)
        let token = controller.agentToken(for: m)
        let task = try controller.agentHello(token: token, hello: AgentHello(agentVersion: "test", inventory: nil))
        #expect(task.kind == .commission)
        #expect(try store.machine(id: m.id)?.phase == .agent)
        try controller.agentProgress(token: token, report: AgentProgress(stage: "inventory", bytesDone: 1, bytesTotal: 2))
        #expect(try store.machine(id: m.id)?.progress?.stage == "inventory")
        // Commissioning without an inventory is refused and changes nothing.
        #expect(throws: ControlError.self) { try controller.agentDone(token: token, result: AgentResult(ok: true)) }
        #expect(try store.machine(id: m.id)?.phase == .agent)
        let inv = Inventory(
            cpuModel: "QEMU", cores: 2, memoryBytes: 1 << 30, disks: [], nics: [], vendor: "QEMU", product: "pc", serial: "",
            firmware: .uefi)
        try controller.agentDone(token: token, result: AgentResult(ok: true, inventory: inv))
        let done = try #require(try store.machine(id: m.id))
        #expect(done.phase == .finish)
        #expect(done.inventory == inv)
        #expect(done.firmware == .uefi)
    }

    @Test func agentFailureFailsTheStepWithItsReason() throws {
        let m = try controller.apply(.commission, machineID: try enrolled("a", mac: "52:54:00:00:00:01").id)
        let token = controller.agentToken(for: m)
        try controller.agentDone(token: token, result: AgentResult(ok: false, error: "disk on fire"))
        let failed = try #require(try store.machine(id: m.id))
        #expect(failed.state == .failed)
        #expect(failed.failedStep == .commissioning)
        #expect(failed.reason.contains("disk on fire"))
    }

    @Test func releaseToReadyClearsTheAllocation() throws {
        var m = try enrolled("a", mac: "52:54:00:00:00:01")
        m = try store.update(machineID: m.id) { x in
            x.state = .deployed
            x.project = "p"
            x.deployment = Deployment(image: "i", imageSHA256: "", sshKeys: [], userData: "", hostname: "a", requestedBy: "t")
            return []
        }
        m = try controller.apply(.release, machineID: m.id)
        #expect(m.project == "p")  // still the project's while it is wiped
        m = try controller.apply(.stepSucceeded, machineID: m.id)
        #expect(m.state == .ready)
        #expect(m.project == nil)
        #expect(m.deployment == nil)
    }
}
