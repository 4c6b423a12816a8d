import Foundation

/// Where a machine's BMC is and how to speak to it: everything but the password.
///
/// Written as a URL: `ipmi://USER@HOST[:PORT]`, `redfish://USER@HOST[:PORT][/SYSTEM]` (HTTPS) or
/// `redfish+http://…`. A password in the URL is refused: it would end up in shell history.
public struct BMCReference: Codable, Sendable, Hashable, CustomStringConvertible {
    public enum Driver: String, Codable, Sendable {
        case ipmi, redfish
    }

    public var driver: Driver
    public var host: String
    public var port: Int
    public var user: String
    /// Redfish: use https (true) or http.
    public var tls: Bool
    /// Redfish: the ComputerSystem id or path, if the BMC manages several.
    public var system: String?
    /// Redfish over https: do not verify the certificate (per BMC, operator's choice).
    public var insecureTLS: Bool

    public init(
        driver: Driver,
        host: String,
        port: Int,
        user: String,
        tls: Bool = true,
        system: String? = nil,
        insecureTLS: Bool = false
    ) {
        self.driver = driver
        self.host = host
        self.port = port
        self.user = user
        self.tls = tls
        self.system = system
        self.insecureTLS = insecureTLS
    }

    public struct ParseError: Error, CustomStringConvertible {
        public var description: String
    }

    public init(url text: String, insecureTLS: Bool = false) throws(ParseError) {
        guard let schemeEnd = text.range(of: "://") else {
            throw ParseError(
                description:
                    "BMC URL '\(text)' has no scheme; use ipmi://USER@HOST, redfish://USER@HOST or redfish+http://USER@HOST"
            )
        }
        let scheme = text[..<schemeEnd.lowerBound].lowercased()
        var rest = String(text[schemeEnd.upperBound...])
        switch scheme {
        case "ipmi":
            driver = .ipmi
            tls = false
        case "redfish", "redfish+https":
            driver = .redfish
            tls = true
        case "redfish+http":
            driver = .redfish
            tls = false
        default:
            throw ParseError(description: "unknown BMC scheme '\(scheme)'; use ipmi, redfish or redfish+http")
        }
        var path: String?
        if let slash = rest.firstIndex(of: "/") {
            path = String(rest[rest.index(after: slash)...])
            rest = String(rest[..<slash])
        }
        guard let at = rest.lastIndex(of: "@") else {
            throw ParseError(description: "BMC URL '\(text)' names no user; write \(scheme)://USER@HOST")
        }
        let userPart = String(rest[..<at])
        guard !userPart.isEmpty else { throw ParseError(description: "BMC URL '\(text)' has an empty user") }
        guard !userPart.contains(":") else {
            throw ParseError(description: "BMC URL must not contain a password; pass it with --bmc-password-file")
        }
        user = userPart.removingPercentEncoding ?? userPart
        let hostPort = String(rest[rest.index(after: at)...])
        let defaultPort = driver == .ipmi ? 623 : (tls ? 443 : 80)
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else {
                throw ParseError(description: "BMC URL '\(text)': unclosed [")
            }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if after.isEmpty {
                port = defaultPort
            } else if after.hasPrefix(":"), let p = Int(after.dropFirst()), (1...65535).contains(p) {
                port = p
            } else {
                throw ParseError(description: "BMC URL '\(text)': bad port")
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = String(hostPort[..<colon])
            guard let p = Int(hostPort[hostPort.index(after: colon)...]), (1...65535).contains(p) else {
                throw ParseError(
                    description: "BMC URL '\(text)': bad port '\(hostPort[hostPort.index(after: colon)...])'"
                )
            }
            port = p
        } else {
            host = hostPort
            port = defaultPort
        }
        guard !host.isEmpty else { throw ParseError(description: "BMC URL '\(text)' has no host") }
        if let path, !path.isEmpty {
            guard driver == .redfish else { throw ParseError(description: "an ipmi:// BMC URL takes no path") }
            system = path.hasPrefix("redfish/") ? "/" + path : path
        } else {
            system = nil
        }
        self.insecureTLS = insecureTLS
        if insecureTLS && !(driver == .redfish && tls) {
            throw ParseError(description: "--bmc-insecure-tls only applies to redfish:// (HTTPS) BMCs")
        }
    }

    var bracketedHost: String { host.contains(":") ? "[\(host)]" : host }

    /// The URL without a password: safe to show and log.
    public var url: String {
        let scheme = driver == .ipmi ? "ipmi" : (tls ? "redfish" : "redfish+http")
        let encodedUser = user.addingPercentEncoding(withAllowedCharacters: .urlUserAllowed) ?? user
        var s = "\(scheme)://\(encodedUser)@\(bracketedHost):\(port)"
        if let system { s += system.hasPrefix("/") ? system : "/" + system }
        return s
    }

    /// `host:port` for IPMI, the base URL for Redfish: how errors name the BMC.
    public var address: String {
        driver == .ipmi ? "\(bracketedHost):\(port)" : "\(tls ? "https" : "http")://\(bracketedHost):\(port)"
    }

    public var description: String { url }
}
