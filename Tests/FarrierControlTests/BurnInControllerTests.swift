import Crypto
import FarrierBMC
import FarrierControl
import FarrierCore
import FarrierStore
import Foundation
import Testing

/// A commissioning's test run (issue 18 point 7) through the controller: the agent's task
/// carries the tests while the run is open, the results decide the step, and retry and abort
/// treat the run as an operator expects.
@Suite struct BurnInControllerTests {
    let store: SQLiteStore
    let controller: Controller

    init() throws {
        store = try SQLiteStore()
        let vault = CredentialVault(key: SymmetricKey(size: .bits256))
        controller = Controller(store: store, pool: BMCPool(vault: vault), agentKey: SymmetricKey(size: .bits256))
    }

    static let inventory = Inventory(
        cpuModel: "QEMU",
        cores: 2,
        memoryBytes: 1 << 30,
        disks: [
            .init(name: "vda", sizeBytes: 8 << 30, model: "", serial: "", rotational: false),
            .init(name: "nvme0n1", sizeBytes: 4 << 30, model: "QEMU NVMe Ctrl", serial: "x", rotational: false),
        ],
        nics: [],
        vendor: "QEMU",
        product: "pc",
        serial: "",
        firmware: .bios
    )

    /// Enrolls a machine and commissions it with `tests` (as `CommissionMachine` opens a run),
    /// in its agent phase.
    func commissioned(_ tests: [String], parameters: [String] = []) async throws -> (Machine, BurnIn) {
        let m = try await store.enroll(
            name: "b1",
            mac: MACAddress("52:54:00:00:0c:01")!,
            bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9623"),
            sealedPassword: [1],
            at: Date()
        )
        let request = try TestPlan.parse(tests: tests, parameters: parameters).get()
        let scripts = Dictionary(grouping: try await store.testScripts(), by: \.name)
        let run = BurnIn(
            tests: try TestPlan.resolve(request, scripts: scripts).get(),
            requestedBy: "admin",
            requested: Date()
        )
        let started = try await controller.apply(.commission, machineID: m.id, change: Controller.openTestRun(run))
        let admitted = try await store.update(machineID: started.id) { x in
            x.phase = .agent
            return []
        }
        return (admitted, try #require(admitted.burnIn))
    }

    /// Stores `content` as the script `name` (30 s limit), as `test-script add` does.
    func addScript(_ name: String, _ content: String) async throws -> TestScript {
        try await store.addTestScript(
            TestScript(
                name: name,
                version: 0,
                sha256: SHA256.hash(data: Array(content.utf8)).map { String(format: "%02x", $0) }.joined(),
                size: content.utf8.count,
                limitSeconds: 30,
                description: "",
                createdBy: "admin",
                created: Date()
            ),
            content: Array(content.utf8)
        )
    }

    func hello(_ nonce: String = String(repeating: "n", count: 32)) -> AgentHello {
        AgentHello(agentVersion: "test", inventory: nil, nonce: nonce)
    }

    func result(_ tests: [TestResult]) -> AgentResult {
        var r = AgentResult(ok: true, inventory: Self.inventory)
        r.tests = tests
        return r
    }

    @Test func theTaskCarriesTheTestsAndPassesDecideTheStep() async throws {
        let content = "echo link_mbps=25000 > \"$FARRIER_RESULT\"\n"
        let sha = try await addScript("nic-check", content).sha256
        let (m, run) = try await commissioned(["cpu,nic-check"], parameters: ["cpu-stress.seconds=5"])
        // The step's limit grows by the tests' own: 5 + 120 for cpu-stress, 30 for the script.
        #expect(m.testAllowance == 155)
        let task = try await controller.agentHello(peer: m.mac, hello: hello())
        let tests = try #require(task.tests)
        #expect(tests.map(\.label) == ["cpu-stress", "nic-check@1"])
        #expect(tests[0].parameters["seconds"] == "5")
        // The script's content rides in the task only; the machine keeps its hash.
        #expect(tests[1].script == content && tests[1].sha256 == sha)
        #expect(run.tests[1].script == nil)
        try await controller.agentDone(
            token: task.token,
            peer: m.mac,
            result: result([
                TestResult(
                    name: "cpu-stress",
                    status: .passed,
                    start: 1,
                    end: 6.5,
                    exitCode: 0,
                    metrics: ["bogo_ops_per_s": 4821.5, "Bad Key": 1],
                    summary: "passed",
                    output: "stress-ng: info: successful run",
                    outputBytes: 31
                ),
                TestResult(
                    name: "nic-check",
                    version: 1,
                    status: .passed,
                    start: 7,
                    end: 7.2,
                    metrics: ["link_mbps": 25000]
                ),
                // Not asked for: dropped.
                TestResult(name: "smart", target: "vda", status: .failed, start: 8, end: 9),
            ])
        )
        let done = try #require(try await store.machine(id: m.id))
        #expect(done.state == .commissioning && done.phase == .finish)
        #expect(done.inventory == Self.inventory)
        let kept = try #require(done.burnIn)
        #expect(kept.finished != nil && kept.runID == run.runID)
        #expect(kept.results.map(\.name) == ["cpu-stress", "nic-check"])
        #expect(kept.results[0].metrics == ["bogo_ops_per_s": 4821.5] && kept.results[0].output == nil)
        #expect(
            try await store.testOutputs(machineID: m.id, runID: run.runID)
                == [TestOutput(name: "cpu-stress", target: "", output: "stress-ng: info: successful run")]
        )
        let events = try await store.events(after: 0, machineID: m.id, limit: 100).map(\.message)
        #expect(events.contains("test cpu-stress passed in 5.5 s: passed bogo_ops_per_s=4821.50"), "\(events)")
        #expect(events.contains("test nic-check@1 passed in 0.2 s: link_mbps=25000"), "\(events)")
        // A finished run is not run again: a later task has no tests.
        #expect(try await controller.task(forTesting: done).tests == nil)
    }

    @Test func aFailedTestFailsTheStepAsHardwareAndARetryRunsItAgain() async throws {
        let (m, run) = try await commissioned(["memtester"], parameters: ["memtester.mib=8"])
        let token = try await controller.agentHello(peer: m.mac, hello: hello()).token
        try await controller.agentDone(
            token: token,
            peer: m.mac,
            result: result([
                TestResult(
                    name: "memtester",
                    status: .failed,
                    start: 0,
                    end: 12,
                    exitCode: 4,
                    metrics: ["errors": 3],
                    summary: "3 errors, first at Bit Flip"
                )
            ])
        )
        let failed = try #require(try await store.machine(id: m.id))
        #expect(failed.state == .failed && failed.failedStep == .commissioning)
        #expect(
            failed.reason == "commissioning failed: test memtester failed: 3 errors, first at Bit Flip",
            "\(failed.reason)"
        )
        #expect(failed.inventory == Self.inventory)
        #expect(failed.burnIn?.results.map(\.status) == [.failed] && failed.burnIn?.finished != nil)
        #expect(controller.metrics.failures(.commissioning, .hardwareTest) == 1)
        #expect(controller.metrics.failures(.commissioning, .agent) == 0)

        // Retry: the same tests as a new run, results cleared, the limit grown again.
        let retried = try await controller.apply(.retry, machineID: m.id)
        let again = try #require(retried.burnIn)
        #expect(retried.state == .commissioning && again.open && again.results.isEmpty)
        #expect(again.runID != run.runID && again.tests == run.tests && again.step == retried.generation)
        #expect(retried.testAllowance == 7200)
        #expect(try await controller.task(forTesting: retried).tests?.map(\.name) == ["memtester"])

        // It fails again; abort keeps the results and closes the run.
        let admitted = try await store.update(machineID: m.id) { x in
            x.phase = .agent
            return []
        }
        let token2 = try await controller.agentHello(peer: admitted.mac, hello: hello()).token
        try await controller.agentDone(
            token: token2,
            peer: m.mac,
            result: result([TestResult(name: "memtester", status: .timedOut, start: 0, end: 7200)])
        )
        let aborted = try await controller.apply(.abort, machineID: m.id)
        #expect(aborted.state == .enrolled && aborted.burnIn?.results.map(\.status) == [.timedOut])
        #expect(aborted.burnIn?.finished != nil && aborted.testAllowance == nil)
        // A plain commission runs no tests, and keeps the last run as it was.
        let plain = try await controller.apply(.commission, machineID: m.id)
        #expect(try await controller.task(forTesting: plain).tests == nil)
        #expect(plain.burnIn?.results.map(\.status) == [.timedOut] && plain.testAllowance == nil)
    }

    @Test func noResultOrAnErrorIsTheAgentsFailureNotAPass() async throws {
        let (m, _) = try await commissioned(["disk"])
        let token = try await controller.agentHello(peer: m.mac, hello: hello()).token
        // An agent from before burn-in reports only the inventory.
        try await controller.agentDone(
            token: token,
            peer: m.mac,
            result: AgentResult(ok: true, inventory: Self.inventory)
        )
        let failed = try #require(try await store.machine(id: m.id))
        #expect(failed.state == .failed && failed.reason.contains("no result for test smart"), "\(failed.reason)")
        #expect(controller.metrics.failures(.commissioning, .agent) == 1)

        let retried = try await store.update(machineID: try await controller.apply(.retry, machineID: m.id).id) { x in
            x.phase = .agent
            return []
        }
        let token2 = try await controller.agentHello(peer: retried.mac, hello: hello()).token
        try await controller.agentDone(
            token: token2,
            peer: m.mac,
            result: result([
                TestResult(name: "smart", target: "vda", status: .skipped, start: 0, end: 0.1, summary: "no SMART"),
                TestResult(
                    name: "disk-read",
                    target: "vda",
                    status: .error,
                    start: 0,
                    end: 0.1,
                    summary: "cannot open"
                ),
            ])
        )
        let again = try #require(try await store.machine(id: m.id))
        #expect(again.state == .failed && again.reason.contains("disk-read vda error: cannot open"), "\(again.reason)")
        #expect(controller.metrics.failures(.commissioning, .agent) == 2)
        #expect(controller.metrics.failures(.commissioning, .hardwareTest) == 0)
    }

    @Test func scriptsAreRefusedOnAMachineThatMayHoldATenantsData() async throws {
        let peek = try await addScript("peek", "exit 0\n")
        let m = try await store.enroll(
            name: "d1",
            mac: MACAddress("52:54:00:00:0c:02")!,
            bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9623"),
            sealedPassword: [1],
            at: Date()
        )
        let dirty = try await store.update(machineID: m.id) { x in
            x.state = .ready
            x.diskDirty = true
            x.dirtyFor = "p"
            return []
        }
        func run(_ tests: String) throws -> BurnIn {
            let scripts = ["peek": [peek]]
            let specs = try TestPlan.resolve(TestPlan.parse(tests: [tests], parameters: []).get(), scripts: scripts)
                .get()
            return BurnIn(tests: specs, requestedBy: "admin", requested: Date())
        }
        let refused = await #expect(throws: ControlError.self) {
            try await controller.apply(
                .commission,
                machineID: m.id,
                change: Controller.openTestRun(try run("disk,peek"))
            )
        }
        #expect(refused?.kind == .conflict && refused?.description.contains("without scripts first") == true)
        // Nothing changed: still ready, the same step, no run.
        let after = try #require(try await store.machine(id: m.id))
        #expect(after.state == .ready && after.generation == dirty.generation && after.burnIn == nil)
        // Built-ins only read: allowed (the commissioning then wipes it).
        let started = try await controller.apply(
            .commission,
            machineID: m.id,
            change: Controller.openTestRun(try run("disk"))
        )
        #expect(started.state == .commissioning && started.burnIn?.tests.map(\.name) == ["smart", "disk-read"])
        #expect(started.burnIn?.step == started.generation && started.testAllowance == (600 + 120) * 8)
    }
}
