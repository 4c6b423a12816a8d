import FarrierControl
import Foundation
import SystemSupport

/// The console's logins: a random session ID (the cookie) for each, held in memory only, with
/// the API token it was opened with (never sent back to the browser), who that is, and the
/// session's CSRF token. A session lasts `lifetime` from its login; a restart ends them all.
actor ConsoleSessions {
    struct Session: Sendable {
        var token: String
        var name: String
        var admin: Bool
        var project: String?
        var csrf: String
        var expires: Date
    }

    let lifetime: TimeInterval
    let limit: Int
    var sessions: [String: Session] = [:]

    init(lifetime: TimeInterval = 8 * 3600, limit: Int = 10_000) {
        self.lifetime = lifetime
        self.limit = limit
    }

    /// A new session for a token the API accepted; the oldest goes when there are `limit`.
    func open(token: String, name: String, admin: Bool, project: String?) -> (id: String, session: Session) {
        let now = Date()
        sessions = sessions.filter { $0.value.expires > now }
        if sessions.count >= limit, let oldest = sessions.min(by: { $0.value.expires < $1.value.expires })?.key {
            sessions.removeValue(forKey: oldest)
        }
        let id = Self.random()
        let s = Session(
            token: token,
            name: name,
            admin: admin,
            project: project,
            csrf: Self.random(),
            expires: now.addingTimeInterval(lifetime)
        )
        sessions[id] = s
        return (id, s)
    }

    func session(_ id: String) -> Session? {
        guard let s = sessions[id] else { return nil }
        guard s.expires > Date() else {
            sessions.removeValue(forKey: id)
            return nil
        }
        return s
    }

    func close(_ id: String) { sessions.removeValue(forKey: id) }

    /// 32 bytes from the system's CSPRNG, base64url.
    static func random() -> String {
        TokenSecret.base64url(SecureRandom.bytes(32))
    }
}
