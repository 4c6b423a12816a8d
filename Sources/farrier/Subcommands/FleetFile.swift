import Foundation
import Yams

/// A fleet file for `machine enroll -f`: YAML (or JSON) with the machines listed under
/// `machines:` (or a bare list), or CSV whose header names the same keys. Every problem names
/// its line; the caller enrolls nothing while there is any.
struct FleetFile {
    struct Entry {
        var line: Int
        var name = ""
        var macs: [String] = []
        var bmc = ""
        var bmcPasswordFile: String?
        var bmcCredential: String?
        var bmcInsecureTLS = false
        var zone = ""
        var rack = ""
        var tags: [String: String] = [:]
        var site: String?
    }

    static let keys = [
        "name", "mac", "macs", "bmc", "bmc-password-file", "bmc-credential", "bmc-insecure-tls", "zone", "rack",
        "tags", "site",
    ]

    var entries: [Entry] = []
    var problems: [String] = []

    /// Parses `text`; `path` decides the format (`.csv`: CSV, else YAML) and names the lines.
    static func parse(_ text: String, path: String) -> FleetFile {
        path.lowercased().hasSuffix(".csv") ? parseCSV(text, path: path) : parseYAML(text, path: path)
    }

    // MARK: YAML

    static func parseYAML(_ text: String, path: String) -> FleetFile {
        var out = FleetFile()
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            out.problems.append("\(path): not YAML or JSON: \(error)")
            return out
        }
        var list: Node.Sequence?
        switch root {
        case .sequence(let s)?: list = s
        case .mapping(let m)?:
            for (k, _) in m where k.string != "machines" {
                out.problems.append(
                    "\(path) line \(k.mark?.line ?? 0): unknown key '\(k.string ?? "?")'; expected machines:"
                )
            }
            if case .sequence(let s)? = m["machines"] { list = s }
        default: break
        }
        guard let list else {
            if out.problems.isEmpty { out.problems.append("\(path): expected a list of machines under 'machines:'") }
            return out
        }
        for node in list {
            let line = node.mark?.line ?? 0
            guard case .mapping(let m) = node else {
                out.problems.append("\(path) line \(line): a machine is a mapping (name:, mac:, bmc:, …)")
                continue
            }
            var e = Entry(line: line)
            var bad: [String] = []
            for (k, v) in m {
                let key = k.string ?? ""
                let at = "\(path) line \(k.mark?.line ?? line)"
                func scalar() -> String? {
                    guard case .scalar(let s) = v else {
                        bad.append("\(at): \(key) must be a single value")
                        return nil
                    }
                    return s.string
                }
                switch key {
                case "name": e.name = scalar() ?? ""
                case "mac": if let s = scalar() { e.macs.insert(s, at: 0) }
                case "macs":
                    guard case .sequence(let s) = v else {
                        bad.append("\(at): macs must be a list")
                        continue
                    }
                    e.macs += s.map { $0.string ?? "" }
                case "bmc": e.bmc = scalar() ?? ""
                case "bmc-password-file": e.bmcPasswordFile = scalar()
                case "bmc-credential": e.bmcCredential = scalar()
                case "bmc-insecure-tls":
                    guard let b = v.bool else {
                        bad.append("\(at): bmc-insecure-tls must be true or false")
                        continue
                    }
                    e.bmcInsecureTLS = b
                case "zone": e.zone = scalar() ?? ""
                case "rack": e.rack = scalar() ?? ""
                case "site": e.site = scalar()
                case "tags":
                    guard case .mapping(let t) = v else {
                        bad.append("\(at): tags must be a mapping (key: value)")
                        continue
                    }
                    for (tk, tv) in t {
                        guard let tkey = tk.string, case .scalar(let s) = tv else {
                            bad.append("\(at): a tag is key: value")
                            continue
                        }
                        e.tags[tkey] = s.string
                    }
                default:
                    bad.append("\(at): unknown key '\(key)'; valid: \(keys.joined(separator: ", "))")
                }
            }
            out.problems += bad
            out.entries.append(e)
        }
        return out
    }

    // MARK: CSV

    /// CSV (RFC 4180: quoted fields may hold commas and doubled quotes; no line breaks inside a
    /// field). `macs` is a space-separated list, `tags` `key=value` pairs separated by spaces.
    static func parseCSV(_ text: String, path: String) -> FleetFile {
        var out = FleetFile()
        var header: [String]?
        // ("\r\n" is one Character in Swift: a Windows file splits on it as on "\n".)
        for (n, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = n + 1
            let row = String(raw)
            if row.trimmingCharacters(in: .whitespaces).isEmpty || row.hasPrefix("#") { continue }
            let fields: [String]
            switch splitCSV(row) {
            case .success(let f): fields = f
            case .failure(let p):
                out.problems.append("\(path) line \(line): \(p.description)")
                continue
            }
            guard let columns = header else {
                let names = fields.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
                for c in names where !keys.contains(c) {
                    out.problems.append(
                        "\(path) line \(line): unknown column '\(c)'; valid: \(keys.joined(separator: ", "))"
                    )
                }
                header = names
                continue
            }
            guard fields.count == columns.count else {
                out.problems.append("\(path) line \(line): \(fields.count) fields, the header has \(columns.count)")
                continue
            }
            var e = Entry(line: line)
            for (key, value) in zip(columns, fields) {
                let v = value.trimmingCharacters(in: .whitespaces)
                switch key {
                case "name": e.name = v
                case "mac": if !v.isEmpty { e.macs.insert(v, at: 0) }
                case "macs": e.macs += v.split(whereSeparator: { $0 == " " || $0 == ";" }).map(String.init)
                case "bmc": e.bmc = v
                case "bmc-password-file": e.bmcPasswordFile = v.isEmpty ? nil : v
                case "bmc-credential": e.bmcCredential = v.isEmpty ? nil : v
                case "bmc-insecure-tls":
                    switch v.lowercased() {
                    case "", "false", "no", "0": e.bmcInsecureTLS = false
                    case "true", "yes", "1": e.bmcInsecureTLS = true
                    default: out.problems.append("\(path) line \(line): bmc-insecure-tls must be true or false")
                    }
                case "zone": e.zone = v
                case "rack": e.rack = v
                case "site": e.site = v.isEmpty ? nil : v
                case "tags":
                    for pair in v.split(separator: " ") {
                        guard let eq = pair.firstIndex(of: "=") else {
                            out.problems.append("\(path) line \(line): tag '\(pair)' is not key=value")
                            continue
                        }
                        e.tags[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
                    }
                default: break
                }
            }
            out.entries.append(e)
        }
        if header == nil { out.problems.append("\(path): no header line (e.g. name,mac,bmc,bmc-credential)") }
        return out
    }

    struct CSVProblem: Error, CustomStringConvertible {
        var description: String
    }

    static func splitCSV(_ row: String) -> Result<[String], CSVProblem> {
        var fields: [String] = []
        var field = ""
        var quoted = false
        var wasQuoted = false
        var chars = row.makeIterator()
        var pending: Character? = chars.next()
        while let c = pending {
            pending = chars.next()
            if quoted {
                if c == "\"" {
                    if pending == "\"" {
                        field.append("\"")
                        pending = chars.next()
                    } else {
                        quoted = false
                    }
                } else {
                    field.append(c)
                }
            } else if c == "\"" {
                guard field.trimmingCharacters(in: .whitespaces).isEmpty, !wasQuoted else {
                    return .failure(CSVProblem(description: "a quote inside an unquoted field"))
                }
                field = ""
                quoted = true
                wasQuoted = true
            } else if c == "," {
                fields.append(field)
                field = ""
                wasQuoted = false
            } else {
                field.append(c)
            }
        }
        if quoted { return .failure(CSVProblem(description: "an unclosed quote")) }
        fields.append(field)
        return .success(fields)
    }
}
