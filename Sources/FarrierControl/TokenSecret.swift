import Crypto
import Foundation
import SystemSupport
import WireSupport

/// Bearer-token secrets: 32 random bytes, base64url, with a `fa_` prefix so they are easy to
/// recognise in logs and secret scanners. Only their SHA-256 is stored.
public enum TokenSecret {
    public static func generate() -> String {
        "fa_" + base64url(SecureRandom.bytes(32))
    }

    /// Base64url without padding (RFC 4648 §5): what tokens and MACs are written in.
    public static func base64url(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    public static func hash(_ secret: String) -> String {
        SHA256.hash(data: Data(secret.utf8)).hexString
    }
}
