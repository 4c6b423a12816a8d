import Foundation

/// A site's state files (link.json, machines.json, events-mark.json): JSON with ISO 8601 dates,
/// replaced whole and synced, so a reader sees the old file or the new one.
/// `mode` 0600 for what only the site agent may read (agent tokens).
public func writeStateFile(_ path: String, _ value: some Encodable, mode: mode_t = 0o644) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    e.dateEncodingStrategy = .iso8601
    try SecretFile.replace(path, Array(try e.encode(value)) + [0x0a], mode: mode)
}

/// A state file `writeStateFile` wrote; nil when it is missing or unreadable.
public func readStateFile<T: Decodable>(_ path: String) -> T? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    let d = JSONDecoder()
    d.dateDecodingStrategy = .iso8601
    return try? d.decode(T.self, from: data)
}
