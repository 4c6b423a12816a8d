import ArgumentParser
import Foundation
import Yams

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json, yaml, name
}

/// A table column: its header and the cell it shows for one item. Columns that are not shown
/// by default are there for `--columns` to ask for.
struct Column<Item>: Sendable {
    let header: String
    let byDefault: Bool
    let cell: @Sendable (Item) -> String
    init(_ header: String, byDefault: Bool = true, _ cell: @escaping @Sendable (Item) -> String) {
        self.header = header
        self.byDefault = byDefault
        self.cell = cell
    }
}

/// `-o table|json|yaml|name`, `--no-headers`, `--columns`: the one way every command that prints
/// something is told how. A command first makes its `Printer` (which checks `--columns` against
/// its table, so a bad column is refused before anything is changed), then prints through it.
struct OutputOptions: ParsableArguments {
    @Option(
        name: .shortAndLong,
        help: "Output format: table, json, yaml, or name (the names alone, one a line, for scripts)."
    )
    var output: OutputFormat = .table

    @Flag(help: "Table output without its header line.")
    var noHeaders = false

    @Option(
        help: ArgumentHelp(
            "Table output with these columns only, in this order: header names, comma-separated, in any case ('-' or '_' for a space).",
            valueName: "names"
        )
    )
    var columns: String?

    func validate() throws {
        if output != .table, noHeaders || columns != nil {
            throw ValidationError(
                "--no-headers and --columns shape table output; -o \(output.rawValue) prints every field"
            )
        }
        if let columns, Self.names(columns).isEmpty { throw ValidationError("--columns needs at least one column") }
    }

    static func names(_ list: String) -> [String] {
        list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    static func key(_ header: String) -> String {
        header.lowercased().replacingOccurrences(of: " ", with: "-").replacingOccurrences(of: "_", with: "-")
    }

    /// A printer for items of one kind, with `columns` (the command's table, all of them shown
    /// by default) and `name` (what `-o name` prints). Throws a `ValidationError` naming the
    /// columns there are when `--columns` names one that is not.
    func printer<Item: Encodable>(
        _ columns: [Column<Item>],
        name: @escaping @Sendable (Item) -> String
    ) throws -> Printer<Item> {
        var shown = columns.filter(\.byDefault)
        if let wanted = self.columns {
            let byKey = Dictionary(columns.map { (Self.key($0.header), $0) }, uniquingKeysWith: { a, _ in a })
            shown = try Self.names(wanted).map { n in
                guard let c = byKey[Self.key(n)] else {
                    throw ValidationError(
                        "no column '\(n)'; the columns are: \(columns.map { Self.key($0.header) }.joined(separator: ", "))"
                    )
                }
                return c
            }
        }
        return Printer(
            format: output,
            headers: !noHeaders,
            columns: shown,
            shaped: self.columns != nil || noHeaders,
            name: name
        )
    }
}

/// Prints items of one kind as `OutputOptions` asked.
struct Printer<Item: Encodable>: Sendable {
    let format: OutputFormat
    let headers: Bool
    let columns: [Column<Item>]
    /// `--columns` or `--no-headers` given: a single item prints as a table row too, not as
    /// its sentence.
    let shaped: Bool
    let name: @Sendable (Item) -> String

    /// A list: a table, a JSON array, a YAML sequence, or the names.
    func list(_ items: [Item]) throws {
        switch format {
        case .json: print(try json(items))
        case .yaml: print(try YAMLEncoder().encode(items), terminator: "")
        case .name: for i in items { print(name(i)) }
        case .table: if let t = rendered(items) { print(t) }
        }
    }

    /// One item: `text` (a sentence or a page, for people) unless the table was shaped with
    /// `--columns` or `--no-headers`; a JSON object; a YAML mapping; its name.
    func one(_ item: Item, text: () -> String) throws {
        switch format {
        case .json: print(try json(item))
        case .yaml: print(try YAMLEncoder().encode(item), terminator: "")
        case .name: print(name(item))
        case .table: if shaped, let t = rendered([item]) { print(t) } else { print(text()) }
        }
    }

    /// One item that people read as a one-row table too (an image, a project, a context).
    func row(_ item: Item) throws {
        try one(item) { rendered([item]) ?? "" }
    }

    /// One item of a stream (watch): `text` (a line for people) unless the table was shaped,
    /// then a row of tab-separated cells (the widths are not known ahead) under a header line;
    /// one JSON object a line; one YAML document; its name.
    func streamed(_ item: Item, first: Bool, text: () -> String) throws {
        switch format {
        case .json: print(try json(item, pretty: false))
        case .yaml: print("---\n" + (try YAMLEncoder().encode(item)), terminator: "")
        case .name: print(name(item))
        case .table:
            guard shaped else {
                print(text())
                break
            }
            if first, headers { print(columns.map(\.header).joined(separator: "\t")) }
            print(columns.map { $0.cell(item) }.joined(separator: "\t"))
        }
        fflush(nil)
    }

    func rendered(_ items: [Item]) -> String? {
        let rows = items.map { i in columns.map { $0.cell(i) } }
        if headers { return table(columns.map(\.header), rows) }
        return rows.isEmpty ? nil : table(nil, rows)
    }
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
func table(_ header: [String]?, _ rows: [[String]]) -> String {
    let all = (header.map { [$0] } ?? []) + rows
    let count = all.map(\.count).max() ?? 0
    let widths = (0..<count).map { i in all.map { i < $0.count ? $0[i].count : 0 }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { i, cell in
            i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
        }
        .joined(separator: "  ")
    }.joined(separator: "\n")
}

/// JSON with sorted keys and millisecond dates (the boot timeline's stages are often less than a
/// second apart); `pretty` false gives one line (a stream's item).
func json<T: Encodable>(_ v: T, pretty: Bool = true) throws -> String {
    let e = JSONEncoder()
    e.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
    e.dateEncodingStrategy = .custom { date, encoder in
        var c = encoder.singleValueContainer()
        try c.encode(
            date.formatted(
                .iso8601.year().month().day().dateSeparator(.dash).time(includingFractionalSeconds: true).timeSeparator(
                    .colon
                ).timeZone(separator: .omitted)
            )
        )
    }
    return String(decoding: try e.encode(v), as: UTF8.self)
}
