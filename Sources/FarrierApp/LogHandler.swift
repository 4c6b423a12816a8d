import Foundation
import Logging
import Synchronization

/// One line per event on stderr: logfmt (`time=… level=info msg="…" key=value`) or JSON.
public struct LineLogHandler: LogHandler {
    public enum Format: String, Sendable, CaseIterable {
        case logfmt
        case json
    }

    public var metadata: Logger.Metadata = [:]
    /// Metadata of the moment (the current span's IDs), between the handler's and the event's.
    public var metadataProvider: Logger.MetadataProvider?
    public var logLevel: Logger.Level
    let label: String
    let format: Format
    static let lock = Mutex(())

    public init(label: String, level: Logger.Level, format: Format) {
        self.label = label
        self.logLevel = level
        self.format = format
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let p = metadataProvider?.get(), !p.isEmpty { all.merge(p) { $1 } }
        if let m = event.metadata { all.merge(m) { $1 } }
        let data = Array((line(level: event.level, message: "\(event.message)", metadata: all) + "\n").utf8)
        Self.lock.withLock { _ in
            data.withUnsafeBufferPointer { buf in
                var done = 0
                while done < buf.count {
                    let n = write(2, buf.baseAddress! + done, buf.count - done)
                    if n <= 0 { break }
                    done += n
                }
            }
        }
    }

    /// One event's line, without its newline: time, level, logger and msg, then the metadata
    /// in key order (what deploy/mtail's program and a log shipper read).
    public func line(level: Logger.Level, message: String, metadata: Logger.Metadata) -> String {
        var fields: [(String, String)] = [
            ("time", Self.timestamp()), ("level", level.rawValue), ("logger", label), ("msg", message),
        ]
        for key in metadata.keys.sorted() { fields.append((key, "\(metadata[key]!)")) }
        switch format {
        case .logfmt:
            return fields.map { "\($0.0)=\(Self.logfmtValue($0.1))" }.joined(separator: " ")
        case .json:
            return "{" + fields.map { "\(Self.jsonString($0.0)):\(Self.jsonString($0.1))" }.joined(separator: ",") + "}"
        }
    }

    static func timestamp() -> String {
        Date().formatted(
            .iso8601.year().month().day().dateSeparator(.dash).time(includingFractionalSeconds: true).timeSeparator(
                .colon
            )
        )
    }

    static func logfmtValue(_ v: String) -> String {
        if !v.isEmpty, !v.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" || $0 == "\\" || $0.isNewline }) {
            return v
        }
        return jsonString(v)
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}
