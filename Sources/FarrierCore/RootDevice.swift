import Foundation

/// Which disk a deploy writes the image to, as Ironic's root device hints: every hint given
/// must match. Text form, one hint each: `name=sdb`, `model=…`, `serial=…`, `wwn=…`,
/// `rotational=false`, `size>=100` (GiB; also `=`, `<=`, `>`, `<`).
///
/// Without hints the deploy takes the smallest disk of at least `defaultMinimumBytes` that
/// holds the image (Ironic's default), so a small boot-media or spare disk is never chosen.
public struct RootDeviceHints: Codable, Sendable, Hashable {
    public enum SizeOperator: String, Codable, Sendable, CaseIterable {
        case equal = "="
        case atLeast = ">="
        case atMost = "<="
        case above = ">"
        case below = "<"
    }
    public struct Size: Codable, Sendable, Hashable {
        public var op: SizeOperator
        /// GiB; a disk's size counts in whole GiB, rounded down (Ironic's rule).
        public var gib: Int64
        public init(_ op: SizeOperator, gib: Int64) {
            self.op = op
            self.gib = gib
        }
        func holds(forBytes bytes: Int64) -> Bool {
            let g = bytes >> 30
            switch op {
            case .equal: return g == gib
            case .atLeast: return g >= gib
            case .atMost: return g <= gib
            case .above: return g > gib
            case .below: return g < gib
            }
        }
    }

    /// The kernel's name for the disk, without `/dev/` (names can change between boots: a
    /// serial or WWN is the steadier hint).
    public var name: String?
    public var model: String?
    public var serial: String?
    public var wwn: String?
    public var rotational: Bool?
    public var size: Size?

    public init(
        name: String? = nil,
        model: String? = nil,
        serial: String? = nil,
        wwn: String? = nil,
        rotational: Bool? = nil,
        size: Size? = nil
    ) {
        self.name = name
        self.model = model
        self.serial = serial
        self.wwn = wwn
        self.rotational = rotational
        self.size = size
    }

    /// The default's floor: disks smaller than 4 GiB are chosen only by hints that pin a disk
    /// (`pinsADisk`).
    public static let defaultMinimumBytes: Int64 = 4 << 30
    /// The hints a machine or a deploy may carry.
    public static let keys = ["name", "model", "serial", "wwn", "rotational", "size"]

    public var isEmpty: Bool { self == RootDeviceHints() }

    /// The hints as text, in `keys` order (what `parse` reads back).
    public var items: [String] {
        var out: [String] = []
        if let name { out.append("name=\(name)") }
        if let model { out.append("model=\(model)") }
        if let serial { out.append("serial=\(serial)") }
        if let wwn { out.append("wwn=\(wwn)") }
        if let rotational { out.append("rotational=\(rotational)") }
        if let size { out.append("size\(size.op.rawValue)\(size.gib)") }
        return out
    }

    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// Reads hints from their text form, one per item; the first problem names its item.
    public static func parse(_ texts: [String]) throws(ParseError) -> RootDeviceHints {
        var h = RootDeviceHints()
        var seen: Set<String> = []
        guard texts.count <= keys.count else {
            throw ParseError(description: "at most \(keys.count) root device hints, one per key")
        }
        for text in texts {
            func fail(_ why: String) -> ParseError { ParseError(description: "root device hint '\(text)': \(why)") }
            let key = String(text.prefix { $0.isASCII && $0.isLetter })
            let rest = text.dropFirst(key.count)
            let opText = String(rest.prefix { "=<>!".contains($0) })
            let value = String(rest.dropFirst(opText.count)).trimmingCharacters(in: .whitespacesAndNewlines)
            guard keys.contains(key) else {
                throw fail("unknown key '\(key)'; valid: \(keys.joined(separator: ", ")) (KEY=VALUE, size>=GIB)")
            }
            guard seen.insert(key).inserted else { throw fail("\(key) is given twice") }
            let op: SizeOperator? = opText == "==" ? .equal : SizeOperator(rawValue: opText)
            guard let op else { throw fail("expected KEY=VALUE (or size>=, <=, >, < GIB)") }
            guard !value.isEmpty else { throw fail("no value") }
            guard value.count <= 256, !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f })
            else { throw fail("values are at most 256 printable characters") }
            guard key == "size" || op == .equal else {
                throw fail("only size compares with \(opText); use \(key)=VALUE")
            }
            switch key {
            case "name":
                let n = value.hasPrefix("/dev/") ? String(value.dropFirst(5)) : value
                guard !n.isEmpty, !n.contains("/") else {
                    throw fail(
                        "name is the kernel's disk name (sda, nvme0n1 or /dev/sda); /dev/disk/by-* links are not hints"
                    )
                }
                h.name = n
            case "model": h.model = value
            case "serial": h.serial = value
            case "wwn": h.wwn = value
            case "rotational":
                switch value.lowercased() {
                case "true", "yes", "1": h.rotational = true
                case "false", "no", "0": h.rotational = false
                default: throw fail("rotational is true or false")
                }
            default:
                let digits = value.hasSuffix("GiB") ? String(value.dropLast(3)) : value
                guard let gib = Int64(digits), gib >= 0, gib < 1 << 33 else {
                    throw fail("size is a whole number of GiB, e.g. size>=100")
                }
                h.size = Size(op, gib: gib)
            }
        }
        return h
    }

    /// Whether a disk matches every hint: names exactly, model and serial without regard to case
    /// or surrounding spaces, a WWN with or without its `0x`, `naa.` or `eui.` prefix.
    public func matches(_ d: Inventory.Disk) -> Bool {
        func same(_ a: String, _ b: String) -> Bool {
            a.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
                == b.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
        }
        func bareWWN(_ s: String) -> String {
            let l = s.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
            for p in ["0x", "naa.", "eui.", "t10."] where l.hasPrefix(p) { return String(l.dropFirst(p.count)) }
            return l
        }
        if let name, name != d.name { return false }
        if let model, !same(model, d.model) { return false }
        if let serial, !same(serial, d.serial) { return false }
        if let wwn {
            guard let w = d.wwn, bareWWN(w) == bareWWN(wwn) else { return false }
        }
        if let rotational, rotational != d.rotational { return false }
        if let size, !size.holds(forBytes: d.sizeBytes) { return false }
        return true
    }

    /// Whether the hints may take a disk under the default's 4 GiB floor: they name one disk
    /// (name, serial, WWN), or bound its size so that only a disk under 4 GiB can match. Others
    /// (rotational, model, a size that a bigger disk meets) only narrow the default's choice.
    public var pinsADisk: Bool {
        if name != nil || serial != nil || wwn != nil { return true }
        guard let size else { return false }
        switch size.op {
        case .below: return size.gib <= 4
        case .atMost, .equal: return size.gib < 4
        case .atLeast, .above: return false
        }
    }

    /// The disk a deploy writes to: among the disks matching the hints (all, without hints)
    /// that hold `imageBytes` (and `defaultMinimumBytes`, unless the hints pin a disk), the
    /// smallest; a tie goes to the first by name. Nil and why when none does.
    public static func choose(
        _ disks: [Inventory.Disk],
        hints: RootDeviceHints?,
        imageBytes: Int64
    ) -> Result<Inventory.Disk, ChoiceError> {
        let hints = hints?.isEmpty == true ? nil : hints
        let pinned = hints?.pinsADisk ?? false
        let minimum = pinned ? imageBytes : max(imageBytes, defaultMinimumBytes)
        let candidates = disks.filter { hints?.matches($0) ?? true }
        let fitting = candidates.filter { $0.sizeBytes >= minimum }
        if let best = fitting.min(by: { ($0.sizeBytes, $0.name) < ($1.sizeBytes, $1.name) }) {
            return .success(best)
        }
        let seen = disks.sorted { $0.name < $1.name }.map(Self.describe).joined(separator: "; ")
        let disksText = disks.isEmpty ? "none seen" : seen
        if let hints, candidates.isEmpty {
            let summary = "no disk matches the root device hints \(hints.items.joined(separator: " "))"
            return .failure(ChoiceError(summary: summary, disks: disksText))
        }
        let which = hints.map { "matching \($0.items.joined(separator: " ")) " } ?? ""
        // The floor is named only when it is what left no disk.
        let floorMattered = !pinned && candidates.contains { $0.sizeBytes >= imageBytes }
        let floor = floorMattered ? " (disks under 4 GiB are taken only by a name, serial, WWN or size hint)" : ""
        return .failure(ChoiceError(summary: "no disk \(which)holds \(minimum) bytes\(floor)", disks: disksText))
    }

    public struct ChoiceError: Error, Sendable, Equatable, CustomStringConvertible {
        /// What is wrong, without the machine's disks (what a member may be told).
        public var summary: String
        /// The disks the choice was made from, as `describe` shows them.
        public var disks: String
        public var description: String { "\(summary) (disks: \(disks))" }
    }

    /// One disk as a choice's error shows it: name, size, model, serial, WWN, rotational.
    public static func describe(_ d: Inventory.Disk) -> String {
        var s = "\(d.name) \(d.sizeBytes) bytes (\(d.sizeBytes >> 30) GiB)"
        if !d.model.isEmpty { s += " model=\(d.model)" }
        if !d.serial.isEmpty { s += " serial=\(d.serial)" }
        if let w = d.wwn, !w.isEmpty { s += " wwn=\(w)" }
        s += d.rotational ? " rotational" : " non-rotational"
        return s
    }
}
