import Foundation
import TestSupport
import Testing

/// One deploy is one trace (issue 17 points 3 and 8): a real server exporting over OTLP/HTTP to
/// a receiver run by the test, an ipmi_sim BMC, and the real agent deploying onto a file. The
/// trace runs from the API call through the reconciler's phases and each BMC call, the
/// agent's hello, download, write and verify (the agent carries the context back), to the disk
/// boot and the OS reporting in; the server's log lines carry its ID.
@Suite(.serialized, .enabled(if: IPMISimulator.available, "needs root, ipmi_sim and ipmitool"))
struct TracingTests {
    let agentTests = AgentTests()

    /// The spans of the trace that holds a span named `name` (the last such trace), once the
    /// receiver has it, and has had the time to get the rest of it: each process exports its
    /// spans in batches of its own, so a span can come before its parent from another
    /// replica. The trace is taken once it has a root and every span's parent, or after 30 s
    /// as it is then (the callers' checks say what is missing).
    func trace(
        _ h: Harness,
        _ receiver: OTLPReceiver,
        holding name: String,
        after known: Set<String> = []
    )
        throws -> [OTLPReceiver.Span]
    {
        var id: String?
        try h.waitUntil("a span \(name) at the receiver", timeout: 30, interval: 0.2) {
            id = receiver.spans.last { $0.name == name && !known.contains($0.traceID) }?.traceID
            return id != nil
        }
        var spans: [OTLPReceiver.Span] = []
        try? h.waitUntil("the whole trace \(id ?? "")", timeout: 30, interval: 0.2) {
            spans = receiver.spans.filter { $0.traceID == id }
            let ids = Set(spans.map(\.spanID))
            return spans.contains { $0.parentSpanID.isEmpty }
                && spans.allSatisfy { $0.parentSpanID.isEmpty || ids.contains($0.parentSpanID) }
        }
        return spans
    }

    @Test func oneDeployIsOneTrace() throws {
        let receiver = try OTLPReceiver()
        defer { receiver.stop() }
        let h = try Harness("tracing")
        defer { h.cleanup() }
        let disk = h.directory + "/disk.img"
        try h.run(["truncate", "-s", "\(96 << 20)", disk])
        let cp = try agentTests.commissioned(
            h,
            disk: disk,
            flags: ["--otel-endpoint", receiver.endpoint],
            environment: ["OTEL_BSP_SCHEDULE_DELAY=200"]
        )
        // The commission is a trace of its own, begun by its enrollment's API call.
        let commission = try trace(h, receiver, holding: "step.commissioning")
        #expect(commission.contains { $0.name == "farrier.v1.MachineService/EnrollMachine" && $0.parentSpanID.isEmpty })

        let raw = h.directory + "/img.raw"
        try h.run(["bash", "-c", "head -c 8388608 /dev/urandom > '\(raw)'"])
        try agentTests.partition(h, raw)
        try cp.cli(["project", "create", "p"])
        try cp.cli(["image", "add", "img", raw])
        try h.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", h.directory + "/id"])
        try cp.cli([
            "machine", "deploy", "a1", "--image", "img", "--project", "p", "--ssh-key", h.directory + "/id.pub",
        ])
        let run = try agentTests.agent(cp, disk: disk, log: "agent-deploy.log")
        #expect(run.status == 0, "\(run.stderr)")
        try cp.waitFor("a1", "deploying/os")
        let task =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: h.directory + "/task.json")))
            as? [String: Any]
        let osToken = try #require(task?["osToken"] as? String)
        let (status, answer) = try cp.agent("/os/v1/ready", mac: AgentTests.mac, token: osToken, #"{"bootID":"b1"}"#)
        #expect(status == 200, "\(answer)")
        try cp.waitFor("a1", "deployed")

        let spans = try trace(h, receiver, holding: "step.deploying")
        let summary = spans.map(\.description).joined(separator: "\n")
        #expect(!Set(spans.map(\.traceID)).contains(commission.first?.traceID ?? ""))
        // One root: the API call, a server span that ended OK.
        let roots = spans.filter { $0.parentSpanID.isEmpty }
        #expect(roots.count == 1, "\(summary)")
        let root = try #require(roots.first)
        #expect(root.name == "farrier.v1.MachineService/DeployMachine", "\(summary)")
        #expect(root.kind == 2 && root.attributes["rpc.grpc.status_code"] == "0", "\(root)")
        #expect(root.resource["service.name"] == "farrier", "\(root.resource)")
        #expect(!(root.resource["service.instance.id"] ?? "").isEmpty, "\(root.resource)")
        // Every parent is in the trace, and nothing began before the call.
        let byID = Dictionary(spans.map { ($0.spanID, $0) }, uniquingKeysWith: { a, _ in a })
        for s in spans where !s.parentSpanID.isEmpty {
            #expect(byID[s.parentSpanID] != nil, "\(s.name)'s parent is not in the trace:\n\(summary)")
            #expect(s.start >= root.start, "\(s.name) began before the API call")
        }
        func parent(_ name: String) -> String? {
            spans.first { $0.name == name }.flatMap { byID[$0.parentSpanID]?.name }
        }
        // The tree: each part under what caused it.
        let expected: [(String, String)] = [
            ("reconciler.boot", root.name), ("bmc.action", "reconciler.boot"), ("bmc.set-boot", "bmc.action"),
            ("bmc.power", "bmc.action"), ("boot.ramdisk", root.name), ("agent.hello", root.name),
            ("agent.task", "agent.hello"), ("agent.download", "agent.task"), ("agent.write", "agent.task"),
            ("agent.verify", "agent.task"), ("agent.configure", "agent.task"), ("GET /images/:name", "agent.hello"),
            ("reconciler.finish", root.name), ("boot.disk", root.name), ("os.ready", root.name),
            ("step.deploying", root.name),
        ]
        for (name, under) in expected {
            #expect(parent(name) == under, "\(name) should be under \(under):\n\(summary)")
        }
        // The agent echoed the hello's context; its phases lie within the hello and the end.
        let agentTask = try #require(spans.first { $0.name == "agent.task" })
        #expect(agentTask.attributes["farrier.trace.from_agent"] == "true", "\(agentTask)")
        let hello = try #require(spans.first { $0.name == "agent.hello" })
        let step = try #require(spans.first { $0.name == "step.deploying" })
        let second: UInt64 = 1_000_000_000
        for s in spans where s.name.hasPrefix("agent.") && s.name != "agent.hello" {
            #expect(s.start + second >= hello.start && s.end <= step.end + second, "\(s.name) outside the agent's time")
        }
        // The agent's phases are rows of the boot's waterfall too (the console's and `machine show`'s).
        let shown = try cp.cli(["machine", "show", "a1"]).stdout
        for row in ["agent download", "agent write", "agent verify", "agent configure", "agent done"] {
            #expect(shown.contains(row), "\(row) missing from the waterfall:\n\(shown)")
        }
        let download = try #require(spans.first { $0.name == "agent.download" })
        #expect(download.attributes["farrier.agent.bytes"] == "8388608", "\(download)")
        #expect(step.statusCode != 2, "\(step)")
        // The server's log lines for the deploy carry its trace ID.
        let log = h.read("server.log")
        #expect(log.contains("trace_id=\(root.traceID)"), "no log line carries the deploy's trace ID")
        // A line logged in the step's context (not given its trace_id by hand) carries both IDs:
        // the OS's report, taken by whichever replica it reached.
        let osLine = log.split(separator: "\n").first { $0.contains(#"msg="the OS reported in""#) }.map(String.init)
        #expect(
            osLine?.contains("trace_id=\(root.traceID)") == true && osLine?.contains("span_id=") == true,
            "\(osLine ?? "no line for the OS's report")"
        )
        #expect(receiver.problems.isEmpty, "\(receiver.problems)")

        // A failed deploy (a stored image whose bytes changed): one warning line names the
        // machine, step, reason and the step's trace, and its step span is an error.
        try cp.cli(["machine", "release", "a1"])
        let wipe = try agentTests.agent(cp, disk: disk, log: "agent-wipe.log")
        #expect(wipe.status == 0, "\(wipe.stderr)")
        try cp.waitFor("a1", "ready")
        let info = try cp.json(["image", "show", "img"])
        let blob = cp.data + "/images/sha256/" + (info["sha256"] as? String ?? "")
        try h.run(["bash", "-c", "printf 'X' | dd of='\(blob)' bs=1 seek=4096 conv=notrunc status=none"])
        try cp.cli([
            "machine", "deploy", "a1", "--image", "img", "--project", "p", "--ssh-key", h.directory + "/id.pub",
        ])
        let bad = try agentTests.agent(cp, disk: disk, log: "agent-bad.log")
        #expect(bad.status != 0)
        try cp.waitFor("a1", "failed")
        let failed = try trace(h, receiver, holding: "step.deploying", after: [root.traceID])
        let failedStep = try #require(failed.first { $0.name == "step.deploying" })
        #expect(failedStep.statusCode == 2 && failedStep.statusMessage.contains("does not match"), "\(failedStep)")
        let lines = h.read("server.log").split(separator: "\n").filter { $0.contains("lifecycle step failed") }
        #expect(lines.count == 1, "\(lines)")
        let line = String(lines.first ?? "")
        for field in ["machine=a1", "step=deploying", "failure=agent", "trace_id=\(failedStep.traceID)"] {
            #expect(line.contains(field), "\(field) missing from: \(line)")
        }
        #expect(line.contains("reason=") && line.contains("does not match"), "\(line)")
        #expect(receiver.problems.isEmpty, "\(receiver.problems)")

        // The log-based SLO's program (deploy/mtail) counts this server's own lines: each
        // step's end once, and the failure.
        let program = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("deploy/mtail").path
        let counted = try h.run([
            "mtail", "--progs", program, "--logs", h.directory + "/server.log", "--one_shot", "--one_shot_format",
            "prometheus", "--address", "127.0.0.1", "--port", "0",
        ]).stdout
        for series in [
            #"farrier_log_lifecycle_steps_ended_total{outcome="succeeded",prog="farrier.mtail",step="commissioning"} 1"#,
            #"farrier_log_lifecycle_steps_ended_total{outcome="succeeded",prog="farrier.mtail",step="deploying"} 1"#,
            #"farrier_log_lifecycle_steps_ended_total{outcome="succeeded",prog="farrier.mtail",step="releasing"} 1"#,
            #"farrier_log_lifecycle_steps_ended_total{outcome="failed",prog="farrier.mtail",step="deploying"} 1"#,
            #"farrier_log_lifecycle_step_failures_total{failure="agent",prog="farrier.mtail",step="deploying"} 1"#,
            #"farrier_log_deploys_succeeded_total{prog="farrier.mtail"} 1"#,
            #"farrier_log_deploys_failed_total{prog="farrier.mtail"} 1"#,
        ] {
            #expect(counted.contains(series + "\n"), "mtail: \(series) missing from\n\(counted)")
        }
    }

    /// A deploy crosses replicas: the API call to replica A, the agent's hello and result to
    /// B, on one PostgreSQL. Its trace is still one, and shows which replica did what.
    @Test func aDeployCrossesReplicas() throws {
        let receiver = try OTLPReceiver()
        defer { receiver.stop() }
        let h = try Harness("tracing-replicas")
        let pg = try PostgresServer(h)
        defer {
            pg.stop()
            h.cleanup()
        }
        let flags = ["--database", try pg.createDatabase("farrier"), "--otel-endpoint", receiver.endpoint]
        let (a, _, _) = try ControlPlaneTests().setUp(h, flags: flags)
        let b = ControlPlane(h, flags: flags)
        try b.start(log: "server-b.log")
        try a.addTestImage(byte: 7)
        try a.cli(["project", "create", "p"])
        try a.cli(["machine", "deploy", "m1", "--image", "img", "--project", "p"])
        try b.runAgent(mac: ControlPlaneTests.mac1)
        try a.waitFor("m1", "deployed")
        let spans = try trace(h, receiver, holding: "step.deploying")
        let summary = spans.map(\.description).joined(separator: "\n")
        let root = try #require(spans.first { $0.parentSpanID.isEmpty }, "\(summary)")
        #expect(
            root.name == "farrier.v1.MachineService/DeployMachine" && spans.filter(\.parentSpanID.isEmpty).count == 1
        )
        let hello = try #require(spans.first { $0.name == "agent.hello" }, "\(summary)")
        let agentTask = try #require(spans.first { $0.name == "agent.task" }, "\(summary)")
        let replicaA = root.resource["service.instance.id"] ?? ""
        let replicaB = hello.resource["service.instance.id"] ?? ""
        #expect(!replicaA.isEmpty && !replicaB.isEmpty && replicaA != replicaB, "\(replicaA) \(replicaB)")
        #expect(agentTask.resource["service.instance.id"] == replicaB)
        // The stand-in agent echoes nothing: its task hangs under the stored step's context.
        #expect(agentTask.attributes["farrier.trace.from_agent"] == "false", "\(agentTask)")
        let byID = Set(spans.map(\.spanID))
        #expect(spans.allSatisfy { $0.parentSpanID.isEmpty || byID.contains($0.parentSpanID) }, "\(summary)")
        #expect(receiver.problems.isEmpty, "\(receiver.problems)")
    }
}
