import Crypto
import FarrierControl
import FarrierCore
import Foundation
import GRPCCore
import SwiftProtobuf
import WireSupport

/// `farrier.v1.TestScriptService` (issue 18 point 7): admins add and remove commissioning test
/// scripts, every version kept; every token may list them and read their fields (a member sees
/// which tests its machines passed), and only admins read their content.
public struct TestScriptAPI: Farrier_V1_TestScriptService.SimpleServiceProtocol {
    let store: any StateStore

    public init(store: any StateStore) { self.store = store }

    static let maxContent = 65_536
    static let maxDescription = 256

    public func addTestScript(
        request: Farrier_V1_AddTestScriptRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_TestScript {
        let caller = try Caller.admin("adding a test script")
        if let problem = TestPlan.nameProblem(request.name) {
            throw RPCError(code: .invalidArgument, message: "name: \(problem)")
        }
        let bytes = Array(request.content)
        guard !bytes.isEmpty, bytes.count <= Self.maxContent else {
            throw RPCError(
                code: .invalidArgument,
                message: "content: \(bytes.count) bytes; a script is 1 byte to \(Self.maxContent / 1024) KiB"
            )
        }
        guard !bytes.contains(0), String(validating: bytes, as: UTF8.self) != nil else {
            throw RPCError(code: .invalidArgument, message: "content: a script is UTF-8 text without NUL bytes")
        }
        guard (1...86_400).contains(request.timeoutSeconds) else {
            throw RPCError(code: .invalidArgument, message: "timeout: must be 1-86400 seconds")
        }
        guard request.description_p.count <= Self.maxDescription, !request.description_p.contains("\n") else {
            throw RPCError(
                code: .invalidArgument,
                message: "description: one line of at most \(Self.maxDescription) characters"
            )
        }
        let script = TestScript(
            name: request.name,
            version: 0,
            sha256: SHA256.hash(data: bytes).hexString,
            size: bytes.count,
            limitSeconds: Int(request.timeoutSeconds),
            description: request.description_p,
            createdBy: caller.tokenName,
            created: Date()
        )
        return Self.view(try await store.addTestScript(script, content: bytes))
    }

    public func listTestScripts(
        request: Farrier_V1_ListTestScriptsRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_ListTestScriptsResponse {
        _ = try Caller.current()
        var scripts = try await store.testScripts()
        if !request.allVersions {
            var newest: [String: TestScript] = [:]
            for s in scripts where (newest[s.name]?.version ?? 0) < s.version { newest[s.name] = s }
            scripts = newest.values.sorted { $0.name < $1.name }
        }
        var response = Farrier_V1_ListTestScriptsResponse()
        response.scripts = TestPlan.builtins.map(Self.view) + scripts.map { Self.view($0) }
        return response
    }

    public func getTestScript(
        request: Farrier_V1_GetTestScriptRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_TestScript {
        let caller = try Caller.current()
        if request.content, !caller.isAdmin { _ = try Caller.admin("reading a test script's content") }
        if let b = TestPlan.builtin(request.name) { return Self.view(b) }
        let versions = try await store.testScripts().filter { $0.name == request.name }
        guard let newest = versions.last else {
            throw RPCError(code: .notFound, message: "no test script named '\(request.name)'")
        }
        let chosen = request.version == 0 ? newest : versions.first { $0.version == Int(request.version) }
        guard let chosen else {
            throw RPCError(
                code: .notFound,
                message: "test script '\(request.name)' has versions \(versions[0].version)-\(newest.version)"
            )
        }
        var v = Self.view(chosen)
        if request.content {
            guard let content = try await store.testScriptContent(sha256: chosen.sha256) else {
                throw RPCError(code: .notFound, message: "test script '\(request.name)': its content is gone")
            }
            v.content = Data(content)
        }
        return v
    }

    public func removeTestScript(
        request: Farrier_V1_RemoveTestScriptRequest,
        context: ServerContext
    ) async throws -> Farrier_V1_RemoveTestScriptResponse {
        _ = try Caller.admin("removing a test script")
        var response = Farrier_V1_RemoveTestScriptResponse()
        response.versionsRemoved = Int32(clamping: try await store.removeTestScript(name: request.name))
        return response
    }

    static func view(_ s: TestScript) -> Farrier_V1_TestScript {
        var v = Farrier_V1_TestScript()
        v.name = s.name
        v.version = Int32(clamping: s.version)
        v.sha256 = s.sha256
        v.size = Int64(s.size)
        v.timeoutSeconds = Int32(clamping: s.limitSeconds)
        v.description_p = s.description
        v.created = Google_Protobuf_Timestamp(date: s.created)
        v.createdBy = s.createdBy
        return v
    }

    static func view(_ b: TestPlan.Builtin) -> Farrier_V1_TestScript {
        var v = Farrier_V1_TestScript()
        v.name = b.name
        v.builtin = true
        v.description_p = Self.builtinDescriptions[b.name] ?? ""
        var defaults: [String: String] = [:]
        for p in b.parameters { defaults[p.key] = p.defaultValue }
        v.timeoutSeconds = Int32(clamping: b.limit(defaults))
        v.parameters = b.parameters.map { p in
            let bounds = p.range.map { "\($0.lowerBound)-\($0.upperBound)" } ?? p.choices?.joined(separator: "|") ?? ""
            return "\(p.key)=\(p.defaultValue ?? "") (\(bounds))"
        }
        return v
    }

    static let builtinDescriptions: [String: String] = [
        "cpu-stress": "stress-ng on every CPU, every method, results verified",
        "memory-stress": "stress-ng's vm stressors over a share of the memory, results verified",
        "memtester": "memtester over what the ramdisk leaves free, in parallel processes",
        "smart": "each disk's SMART health and a self-test (NVMe: health only)",
        "disk-read": "each disk's sequential and random read speed (read only)",
    ]
}

extension MachineAPI {
    /// The test run a commissioning asks for, resolved against the stored scripts, or nil for
    /// none. Refusals are `invalidArgument`, and nothing is written.
    func testRun(tests: [String], parameters: [String]) async throws -> BurnIn? {
        let request: TestRequest
        switch TestPlan.parse(tests: tests, parameters: parameters) {
        case .success(let r): request = r
        case .failure(let problem): throw RPCError(code: .invalidArgument, message: problem.description)
        }
        guard !request.tests.isEmpty else { return nil }
        let scripts = Dictionary(grouping: try await store.testScripts(), by: \.name)
        switch TestPlan.resolve(request, scripts: scripts) {
        case .success(let specs):
            return BurnIn(tests: specs, requestedBy: try Caller.current().tokenName, requested: Date())
        case .failure(let problem): throw RPCError(code: .invalidArgument, message: problem.description)
        }
    }

    /// What the commission's commit adds for its run (`Controller.openTestRun`).
    static func opening(_ run: BurnIn?) -> @Sendable (inout Machine) throws -> Void { Controller.openTestRun(run) }

    /// `commission_tests` and `commission_parameters` need `commission`.
    static func checkCommissionTests(commission: Bool, tests: [String], parameters: [String]) throws {
        if !commission, !tests.isEmpty || !parameters.isEmpty {
            throw RPCError(
                code: .invalidArgument,
                message: "commission_tests and commission_parameters need commission"
            )
        }
    }
}
