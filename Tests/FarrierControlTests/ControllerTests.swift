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

    func enrolled(_ name: String, mac: String) async throws -> Machine {
        try await store.enroll(
            name: name,
            mac: MACAddress(mac)!,
            bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9623"),
            sealedPassword: [1],
            at: Date()
        )
    }

    @Test func stepEntryBumpsGenerationAndQueues() async throws {
        let m = try await enrolled("a", mac: "52:54:00:00:00:01")
        let c = try await controller.apply(.commission, machineID: m.id)
        #expect(c.state == .commissioning)
        #expect(c.phase == .queued)
        #expect(c.generation == m.generation + 1)
        // Committed: a fresh read sees it, with its event.
        #expect(try await store.machine(id: m.id)?.state == .commissioning)
        let events = try await store.events(after: 0, machineID: m.id, limit: 10)
        #expect(events.map(\.state) == [.commissioning])
    }

    @Test func refusedTransitionChangesNothing() async throws {
        let m = try await enrolled("a", mac: "52:54:00:00:00:01")
        await #expect(throws: ControlError.self) { try await controller.apply(.deploy, machineID: m.id) }
        #expect(try await store.machine(id: m.id)?.state == .enrolled)
        #expect(try await store.events(after: 0, machineID: m.id, limit: 10).isEmpty)
    }

    func hello(_ nonce: String = String(repeating: "n", count: 32)) -> AgentHello {
        AgentHello(agentVersion: "test", inventory: nil, nonce: nonce)
    }

    @Test func agentTokenIsIssuedOncePerBootToTheLeasedAddress() async throws {
        let a = try await admitted(
            try await controller.apply(.commission, machineID: try await enrolled("a", mac: "52:54:00:00:00:01").id)
        )
        let b = try await admitted(
            try await controller.apply(.commission, machineID: try await enrolled("b", mac: "52:54:00:00:00:02").id)
        )
        // No address, or one that no machine in a step holds: no hello.
        await #expect(throws: ControlError.self) { try await controller.agentHello(peer: nil, hello: hello()) }
        await #expect(throws: ControlError.self) {
            try await controller.agentHello(peer: MACAddress("52:54:00:00:00:09")!, hello: hello())
        }
        let first = try await controller.agentHello(peer: a.mac, hello: hello("first-agent-nonce-0123456789abcdef"))
        let tokenA = first.token
        #expect(!tokenA.isEmpty)
        #expect(try await controller.agentMachine(token: tokenA, peer: a.mac).id == a.id)
        // The token works only from A's address.
        await #expect(throws: ControlError.self) { try await controller.agentMachine(token: tokenA, peer: b.mac) }
        await #expect(throws: ControlError.self) { try await controller.agentMachine(token: tokenA, peer: nil) }
        // Another machine's id in A's token does not verify; nor does garbage.
        let forged = tokenA.replacingOccurrences(of: a.id, with: b.id)
        await #expect(throws: ControlError.self) { try await controller.agentMachine(token: forged, peer: b.mac) }
        await #expect(throws: ControlError.self) { try await controller.agentMachine(token: "garbage", peer: a.mac) }
        // The same agent again (restarted, or its answer lost): the same token. Another agent: refused.
        #expect(
            try await controller.agentHello(peer: a.mac, hello: hello("first-agent-nonce-0123456789abcdef")).token
                == tokenA
        )
        let second = await #expect(throws: ControlError.self) {
            try await controller.agentHello(peer: a.mac, hello: hello("second-agent-nonce-0123456789abcd"))
        }
        #expect(second?.kind == .conflict && second?.description.contains("already said hello") == true)
        await #expect(throws: ControlError.self) { try await controller.agentHello(peer: a.mac, hello: hello("short")) }
        // Farrier powers the machine again: a new boot. The old token dies; a new agent may say hello.
        try await controller.beginBoot(machineID: a.id, generation: a.generation)
        await #expect(throws: ControlError.self) { try await controller.agentMachine(token: tokenA, peer: a.mac) }
        let rebooted = try await controller.agentHello(peer: a.mac, hello: hello("second-agent-nonce-0123456789abcd"))
        #expect(rebooted.token != tokenA)
        // The step ends (it fails): the token expires with it.
        try await controller.apply(.stepFailed(reason: "test"), machineID: a.id)
        await #expect(throws: ControlError.self) {
            try await controller.agentMachine(token: rebooted.token, peer: a.mac)
        }
        // Retry starts a new step: an agent of the old one cannot say hello with its old nonce
        // and get the old token back.
        let retried = try await admitted(try await controller.apply(.retry, machineID: a.id))
        #expect(retried.agentNonce == nil)
        let again = try await controller.agentHello(peer: a.mac, hello: hello("second-agent-nonce-0123456789abcd"))
        #expect(again.token != rebooted.token)
    }

    @Test func imagesOpenToTheDeployingAgentAndAdminsOnly() async throws {
        let sha = String(repeating: "ab", count: 32)
        try await store.addImage(
            ImageInfo(
                name: "img",
                sha256: sha,
                size: 10,
                format: .raw,
                os: "test",
                architecture: .x86_64,
                firmware: .uefi,
                created: Date()
            )
        )
        var m = try await enrolled("a", mac: "52:54:00:00:00:01")
        m = try await store.update(machineID: m.id) { x in
            x.state = .ready
            return []
        }
        m = try await controller.apply(.deploy, machineID: m.id) { x in
            x.deployment = Deployment(
                image: "img",
                imageSHA256: sha,
                sshKeys: [],
                userData: "",
                hostname: "a",
                requestedBy: "t"
            )
        }
        m = try await admitted(m)
        let token = try await controller.agentHello(peer: m.mac, hello: hello()).token
        #expect((await controller.imageAccess(sha256: sha, bearer: token, peer: m.mac)))
        #expect(!(await controller.imageAccess(sha256: String(repeating: "cd", count: 32), bearer: token, peer: m.mac)))
        #expect(!(await controller.imageAccess(sha256: sha, bearer: token, peer: MACAddress("52:54:00:00:00:02"))))
        #expect(!(await controller.imageAccess(sha256: sha, bearer: nil, peer: m.mac)))
        #expect(!(await controller.imageAccess(sha256: sha, bearer: "garbage", peer: m.mac)))
        let admin = "admin-secret"
        let member = "member-secret"
        try await store.createToken(
            APIToken(id: "1", name: "root", role: .admin, project: nil, secretSHA256: sha256Hex(admin), created: Date())
        )
        try await store.createProject(Project(name: "p", created: Date()))
        try await store.createToken(
            APIToken(id: "2", name: "m", role: .member, project: "p", secretSHA256: sha256Hex(member), created: Date())
        )
        #expect((await controller.imageAccess(sha256: sha, bearer: admin, peer: nil)))
        #expect(!(await controller.imageAccess(sha256: sha, bearer: member, peer: nil)))
    }

    func sha256Hex(_ s: String) -> String {
        SHA256.hash(data: Data(s.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// Moves a queued step past its slot, as the reconciler's admission does.
    func admitted(_ m: Machine, phase: StepPhase = .agent) async throws -> Machine {
        try await store.update(machineID: m.id) { x in
            x.phase = phase
            return []
        }
    }

    @Test func aQueuedStepRefusesTheAgentAndItsClockRuns() async throws {
        let before = Date()
        let m = try await controller.apply(.commission, machineID: try await enrolled("a", mac: "52:54:00:00:00:01").id)
        // The clock starts when the step is entered, not when it leaves the queue.
        let started = try #require(m.stepStarted)
        #expect(started >= before.addingTimeInterval(-1) && started <= Date())
        let error = await #expect(throws: ControlError.self) {
            try await controller.agentHello(peer: m.mac, hello: hello())
        }
        #expect(error?.kind == .conflict && error?.description.contains("queued") == true)
        let after = try #require(try await store.machine(id: m.id))
        #expect(after.phase == .queued && after.progress == nil)
        #expect(try await store.events(after: 0, machineID: m.id, limit: 10).count == 1)  // the transition only
        // A queued step boots no ramdisk: the machine waits in iPXE.
        #expect(Lifecycle.nextBoot(after.state, phase: after.phase) == .wait)
    }

    @Test func aStepThatNeverLeavesTheQueueTimesOut() async throws {
        var config = ControlConfiguration()
        config.maxConcurrentWipes = 0  // no slot, ever
        config.timeouts[.releasing] = .seconds(1)
        config.tick = .milliseconds(100)
        let vault = CredentialVault(key: SymmetricKey(size: .bits256))
        let controller = Controller(
            store: store,
            pool: BMCPool(vault: vault),
            agentKey: SymmetricKey(size: .bits256),
            configuration: config
        )
        var m = try await enrolled("a", mac: "52:54:00:00:00:01")
        m = try await store.update(machineID: m.id) { x in
            x.state = .deployed
            x.diskDirty = true
            return []
        }
        m = try await controller.apply(.release, machineID: m.id)
        #expect(m.phase == .queued)
        let reconciler = Reconciler(controller: controller)
        let task = Task { try await reconciler.run() }
        defer { task.cancel() }
        let deadline = Date().addingTimeInterval(30)
        var seen = m
        while Date() < deadline {
            seen = try #require(try await store.machine(id: m.id))
            if seen.state == .failed { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(seen.state == .failed && seen.failedStep == .releasing, "still \(seen.state) \(seen.phase)")
        #expect(seen.reason.contains("timed out") && seen.reason.contains("queued"), "\(seen.reason)")
        #expect(seen.diskDirty)
        // Counted by step and class (just after the commit the poll above saw).
        while Date() < deadline, controller.metrics.failures(.releasing, .timeout) == 0 {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(controller.metrics.failures(.releasing, .timeout) == 1)
    }

    @Test func agentReportsDriveTheStep() async throws {
        let m = try await admitted(
            try await controller.apply(.commission, machineID: try await enrolled("a", mac: "52:54:00:00:00:01").id)
        )
        let task = try await controller.agentHello(peer: m.mac, hello: hello())
        let token = task.token
        #expect(task.kind == .commission)
        #expect(try await store.machine(id: m.id)?.phase == .agent)
        try await controller.agentProgress(
            token: token,
            peer: m.mac,
            report: AgentProgress(stage: "inventory", bytesDone: 1, bytesTotal: 2)
        )
        #expect(try await store.machine(id: m.id)?.progress?.stage == "inventory")
        // Commissioning without an inventory is refused and changes nothing.
        await #expect(throws: ControlError.self) {
            try await controller.agentDone(token: token, peer: m.mac, result: AgentResult(ok: true))
        }
        #expect(try await store.machine(id: m.id)?.phase == .agent)
        let inv = Inventory(
            cpuModel: "QEMU",
            cores: 2,
            memoryBytes: 1 << 30,
            disks: [],
            nics: [],
            vendor: "QEMU",
            product: "pc",
            serial: "",
            firmware: .uefi
        )
        try await controller.agentDone(token: token, peer: m.mac, result: AgentResult(ok: true, inventory: inv))
        let done = try #require(try await store.machine(id: m.id))
        #expect(done.phase == .finish)
        #expect(done.inventory == inv)
        #expect(done.firmware == .uefi)
    }

    @Test func agentFailureFailsTheStepWithItsReason() async throws {
        let m = try await admitted(
            try await controller.apply(.commission, machineID: try await enrolled("a", mac: "52:54:00:00:00:01").id)
        )
        let token = try await controller.agentHello(peer: m.mac, hello: hello()).token
        try await controller.agentDone(token: token, peer: m.mac, result: AgentResult(ok: false, error: "disk on fire"))
        let failed = try #require(try await store.machine(id: m.id))
        #expect(failed.state == .failed)
        #expect(failed.failedStep == .commissioning)
        #expect(failed.reason.contains("disk on fire"))
        #expect(controller.metrics.failures(.commissioning, .agent) == 1)
    }

    /// A wipe whose read-back found a non-zero byte fails the release, and is counted as such
    /// (and logged at warning): the machine does not go back to the pool.
    @Test func aWipeThatFailsItsVerificationIsCountedApart() async throws {
        var m = try await enrolled("a", mac: "52:54:00:00:00:01")
        m = try await store.update(machineID: m.id) { x in
            x.state = .deployed
            x.diskDirty = true
            return []
        }
        m = try await admitted(try await controller.apply(.release, machineID: m.id))
        let token = try await controller.agentHello(peer: m.mac, hello: hello()).token
        let result = AgentResult(
            ok: false,
            error: "verifying /dev/vda: byte 4096 is not zero",
            failure: .wipeNotVerified
        )
        try await controller.agentDone(token: token, peer: m.mac, result: result)
        let failed = try #require(try await store.machine(id: m.id))
        #expect(failed.state == .failed && failed.failedStep == .releasing && failed.diskDirty)
        #expect(controller.metrics.failures(.releasing, .wipeNotVerified) == 1)
        #expect(controller.metrics.failures(.releasing, .agent) == 0)
        // A newer agent's kind this server does not know reads as a plain agent failure.
        let decoded = try JSONDecoder().decode(
            AgentResult.self,
            from: Data(#"{"ok": false, "error": "x", "failure": "disk-melted"}"#.utf8)
        )
        #expect(decoded.failure?.rawValue == "disk-melted" && decoded.failure != .wipeNotVerified)
    }

    @Test func releaseToReadyClearsTheAllocation() async throws {
        var m = try await enrolled("a", mac: "52:54:00:00:00:01")
        try await store.createProject(Project(name: "p", created: Date()))
        m = try await store.update(machineID: m.id) { x in
            x.state = .deployed
            x.project = "p"
            x.deployment = Deployment(
                image: "i",
                imageSHA256: "",
                sshKeys: [],
                userData: "",
                hostname: "a",
                requestedBy: "t"
            )
            return []
        }
        m = try await controller.apply(.release, machineID: m.id)
        #expect(m.project == "p")  // still the project's while it is wiped
        m = try await controller.apply(.stepSucceeded, machineID: m.id)
        #expect(m.state == .ready)
        #expect(m.project == nil)
        #expect(m.deployment == nil)
        #expect(!m.diskDirty)
    }

    /// A quick wipe (a project's policy) leaves the disk dirty and the machine its project's;
    /// commissioning it wipes it fully and clears that.
    @Test func aQuickWipeKeepsTheDiskDirtyForItsProject() async throws {
        var m = try await enrolled("a", mac: "52:54:00:00:00:01")
        try await store.createProject(Project(name: "quick", created: Date()))
        m = try await store.update(machineID: m.id) { x in
            x.state = .deployed
            x.diskDirty = true
            x.project = "quick"
            x.deployment = Deployment(
                image: "i",
                imageSHA256: "",
                sshKeys: [],
                userData: "",
                hostname: "a",
                requestedBy: "t",
                wipe: .quick
            )
            return []
        }
        m = try await controller.apply(.release, machineID: m.id)
        m = try await controller.apply(.stepSucceeded, machineID: m.id)
        #expect(m.state == .ready && m.diskDirty && m.dirtyFor == "quick" && m.project == nil)
        #expect(try await store.machine(id: m.id)?.dirtyFor == "quick")
        try await controller.apply(.commission, machineID: m.id)
        m = try await controller.apply(.stepSucceeded, machineID: m.id)
        #expect(m.state == .releasing, "a dirty machine's commissioning ends in a wipe")
        #expect(try await controller.task(forTesting: m).wipe == .full)
        m = try await controller.apply(.stepSucceeded, machineID: m.id)
        #expect(m.state == .ready && !m.diskDirty && m.dirtyFor == nil)
    }

    @Test func anAbortedDeployIsWipedBeforeItIsReadyAgain() async throws {
        var m = try await enrolled("a", mac: "52:54:00:00:00:01")
        m = try await store.update(machineID: m.id) { x in
            x.state = .ready
            return []
        }
        m = try await controller.apply(.deploy, machineID: m.id)
        #expect(m.diskDirty)
        try await controller.apply(.stepFailed(reason: "agent: write error"), machineID: m.id)
        m = try await controller.apply(.abort, machineID: m.id)
        #expect(m.state == .enrolled && m.diskDirty)
        try await controller.apply(.commission, machineID: m.id)
        m = try await controller.apply(.stepSucceeded, machineID: m.id)
        #expect(m.state == .releasing && m.phase == .queued, "commissioned dirty machine went to \(m.state)")
        // Durable: a fresh read keeps the flag.
        #expect(try await store.machine(id: m.id)?.diskDirty == true)
        m = try await controller.apply(.stepSucceeded, machineID: m.id)
        #expect(m.state == .ready && !m.diskDirty)
    }
}
