import ArgumentParser
import FarrierAPI
import FarrierLab
import Foundation
import SwiftProtobuf
import Yams

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json, yaml
}

struct MachineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "machine", abstract: "List, inspect and enroll machines; power, boot device and console through their BMCs.",
        subcommands: [List.self, Show.self, Enroll.self, Power.self, Bootdev.self, Console.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List machines.")
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        @Option(help: "Only machines in this state.") var state: String?

        func run() async throws {
            let state = self.state
            let machines = try await rpc(client) { c in
                var all: [Farrier_V1_Machine] = []
                var token = ""
                for _ in 0..<10_000 {  // bounded: 10 million machines at 1000 a page
                    var req = Farrier_V1_ListMachinesRequest()
                    req.pageSize = 1000
                    req.pageToken = token
                    req.state = state ?? ""
                    let page = try await c.machines.listMachines(req)
                    all += page.machines
                    token = page.nextPageToken
                    if token.isEmpty { break }
                }
                return all
            }
            let views = machines.map(MachineView.init)
            switch output {
            case .json: print(try json(views))
            case .yaml: print(try YAMLEncoder().encode(views), terminator: "")
            case .table:
                print(table(
                    ["NAME", "MAC", "STATE", "ARCH", "FIRMWARE", "LAST SEEN"],
                    views.map { [$0.name, $0.mac, $0.state, $0.architecture, $0.firmware, ago($0.lastSeen)] }))
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a machine and its boot timeline.")
        @OptionGroup var client: ClientOptions
        @Option(name: .shortAndLong, help: "Output format: table, json or yaml.") var output: OutputFormat = .table
        @Argument(help: "Machine name or MAC.") var machine: String

        func run() async throws {
            let key = machine
            let m = try await rpc(client) { c in
                var req = Farrier_V1_GetMachineRequest()
                req.nameOrMac = key
                req.timelineLimit = 200
                return try await c.machines.getMachine(req)
            }
            let view = MachineView(m)
            switch output {
            case .json: print(try json(view))
            case .yaml: print(try YAMLEncoder().encode(view), terminator: "")
            case .table:
                print("""
                    Name:          \(view.name)
                    MAC:           \(view.mac)
                    State:         \(view.state)
                    Architecture:  \(view.architecture)
                    Firmware:      \(view.firmware)
                    First seen:    \(iso(view.firstSeen))
                    Last seen:     \(iso(view.lastSeen)) (\(ago(view.lastSeen)))
                    BMC:           \(view.bmc ?? "-")

                    Boot timeline (+ time since the previous event):
                    """)
                var previous: Date?
                let rows = view.timeline.map { e -> [String] in
                    defer { previous = e.time }
                    let delta = previous.map { String(format: "+%.3fs", e.time.timeIntervalSince($0)) } ?? ""
                    return [iso(e.time), delta, e.stage, e.event, e.detail]
                }
                print(rows.isEmpty ? "  (no events)" : table(["TIME", "DELTA", "STAGE", "EVENT", "DETAIL"], rows))
            }
        }
    }
}

struct MachineView: Codable {
    struct Event: Codable {
        var time: Date
        var stage: String
        var event: String
        var detail: String
    }

    var name: String
    var mac: String
    var state: String
    var architecture: String
    var firmware: String
    var firstSeen: Date
    var lastSeen: Date
    /// The BMC URL (never with a password).
    var bmc: String?
    var timeline: [Event]

    init(_ m: Farrier_V1_Machine) {
        name = m.name
        mac = m.mac
        state = m.state
        architecture = m.architecture
        firmware = m.firmware
        firstSeen = m.firstSeen.date
        lastSeen = m.lastSeen.date
        bmc = m.hasBmc ? m.bmc.url : nil
        timeline = m.timeline.map { Event(time: $0.time.date, stage: $0.stage, event: $0.event, detail: $0.detail) }
    }
}

func json<T: Encodable>(_ v: T) throws -> String {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    // Millisecond precision: the boot timeline's stages are often less than a second apart.
    e.dateEncodingStrategy = .custom { date, encoder in
        var c = encoder.singleValueContainer()
        try c.encode(date.formatted(.iso8601.year().month().day().dateSeparator(.dash).time(includingFractionalSeconds: true).timeSeparator(.colon).timeZone(separator: .omitted)))
    }
    return String(decoding: try e.encode(v), as: UTF8.self)
}

func iso(_ d: Date) -> String {
    d.formatted(.iso8601.year().month().day().dateSeparator(.dash).time(includingFractionalSeconds: true).timeSeparator(.colon))
}

func ago(_ d: Date) -> String {
    let s = Int(Date().timeIntervalSince(d))
    if s < 60 { return "\(max(s, 0))s ago" }
    if s < 3600 { return "\(s / 60)m ago" }
    if s < 86400 { return "\(s / 3600)h ago" }
    return "\(s / 86400)d ago"
}

func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { i in all.map { $0[i].count }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}
