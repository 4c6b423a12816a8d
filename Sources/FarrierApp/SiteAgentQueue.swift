import Crypto
import FarrierCore
import Foundation
import Logging
import Synchronization
import SystemSupport
import WireSupport

/// Agent reports (progress, done) a site holds while its region cannot be reached, so that an
/// agent that finished its work during an outage does not fail its step: each is kept in a file
/// of its own (written whole and synced before the agent hears "ok"), and delivered to the
/// region in the order received when the link is back.
///
/// Only a report the site can vouch for waits: from the address the site leased to the MAC,
/// carrying the token the region gave that machine's agent in this boot (the site saw it in
/// the hello it relayed, and keeps its SHA-256 only). Anything else gets the region's absence
/// (503), as before. The region still decides on delivery: a report it refuses then (the step
/// timed out meanwhile) is dropped and logged.
public final class AgentReportQueue: Sendable {
    public struct Report: Codable, Sendable, Equatable {
        public var seq: Int64
        public var mac: String
        /// "progress" or "done".
        public var call: String
        public var token: String
        public var body: Data
        public var received: Date
    }

    let directory: String
    let tokensFile: String
    struct State {
        var next: Int64
        /// Reports waiting, by MAC.
        var waiting: [String: Int]
        /// SHA-256 (hex) of the token the region last gave each machine's agent.
        var tokens: [String: String]
    }
    let state: Mutex<State>
    /// Bounds: a machine's agent reports a few times a minute, and an outage of hours fits.
    public static let maxPerMachine = 2000
    public static let maxTotal = 100_000

    /// Opens the queue in `directory` (made if missing), with the token hashes in `tokensFile`.
    public init(directory: String, tokensFile: String) throws {
        self.directory = directory
        self.tokensFile = tokensFile
        try FileManager.default.createDirectory(
            atPath: directory,
            withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700]
        )
        var waiting: [String: Int] = [:]
        var next: Int64 = 1
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
            if name.contains(".tmp-") {
                unlink(directory + "/" + name)
                continue
            }
            guard name.hasSuffix(".json"), let seq = Int64(name.dropLast(5)),
                let r: Report = readStateFile(directory + "/" + name)
            else { continue }
            waiting[r.mac, default: 0] += 1
            next = max(next, seq + 1)
        }
        let tokens: [String: String] = readStateFile(tokensFile) ?? [:]
        state = Mutex(State(next: next, waiting: waiting, tokens: tokens))
    }

    static func hash(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).hexString
    }

    /// The token the region gave `mac`'s agent in a hello the site relayed.
    public func remember(mac: MACAddress, token: String) throws {
        let tokens = state.withLock { s -> [String: String]? in
            let h = Self.hash(token)
            guard s.tokens[mac.description] != h else { return nil }
            s.tokens[mac.description] = h
            return s.tokens
        }
        if let tokens { try writeStateFile(tokensFile, tokens, mode: 0o600) }
    }

    /// Whether `token` is the one the region last gave `mac`'s agent.
    public func vouches(mac: MACAddress, token: String) -> Bool {
        guard let known = state.withLock({ $0.tokens[mac.description] }) else { return false }
        return ConstantTime.equal(known, Self.hash(token))
    }

    /// Whether reports of `mac` wait (its next ones wait behind them, in order).
    public func waiting(mac: MACAddress) -> Bool { state.withLock { ($0.waiting[mac.description] ?? 0) > 0 } }

    public var depth: Int { state.withLock { $0.waiting.values.reduce(0, +) } }

    public enum Refusal: Error, CustomStringConvertible {
        case full(String)
        public var description: String {
            switch self {
            case .full(let m): m
            }
        }
    }

    /// Keeps a report, durably, behind those already waiting.
    public func enqueue(mac: MACAddress, call: String, token: String, body: Data, at: Date = Date()) throws {
        let seq = try state.withLock { s -> Int64 in
            guard (s.waiting[mac.description] ?? 0) < Self.maxPerMachine else {
                throw Refusal.full("\(Self.maxPerMachine) reports of \(mac) wait for the region already")
            }
            guard s.waiting.values.reduce(0, +) < Self.maxTotal else {
                throw Refusal.full("\(Self.maxTotal) agent reports wait for the region already")
            }
            defer { s.next += 1 }
            s.waiting[mac.description, default: 0] += 1
            return s.next
        }
        let report = Report(seq: seq, mac: mac.description, call: call, token: token, body: body, received: at)
        // 0600: a report carries its agent's bearer token.
        do { try writeStateFile(directory + "/\(String(format: "%020lld", seq)).json", report, mode: 0o600) } catch {
            state.withLock { $0.waiting[mac.description, default: 1] -= 1 }
            throw error
        }
    }

    /// The reports waiting, oldest first (at most `limit`).
    public func pending(limit: Int = 1000) -> [Report] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasSuffix(".json") }.sorted().prefix(limit)
        return names.compactMap { readStateFile(directory + "/" + $0) }
    }

    /// Forgets a report: delivered, or refused by the region.
    public func remove(_ r: Report) {
        guard unlink(directory + "/\(String(format: "%020lld", r.seq)).json") == 0 else { return }
        state.withLock { s in
            s.waiting[r.mac, default: 1] -= 1
            if s.waiting[r.mac] == 0 { s.waiting[r.mac] = nil }
        }
    }
}
