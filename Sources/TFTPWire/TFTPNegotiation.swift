/// What the server is willing to grant, and the result of negotiating a request against it.
///
/// Option negotiation (RFC 2347 §3): the OACK names only options the client asked for, each with
/// a value the server accepts. Unknown options and out-of-range values are left out, which tells
/// the client they were refused.
public struct TFTPNegotiation: Hashable, Sendable {
    public var blockSize: Int = 512
    public var timeoutSeconds: Int?
    public var windowSize: Int = 1
    public var transferSize: Int?
    /// The options to put in the OACK, in the client's order. Empty: send DATA 1 directly.
    public var acknowledged: [TFTPOption] = []

    public struct Limits: Hashable, Sendable {
        /// RFC 2348: 8–65464.
        public var maxBlockSize: Int = 65464
        /// RFC 7440: 1–65535.
        public var maxWindowSize: Int = 64
        /// RFC 2349 allows 1–255 s, but a transfer holds a slot for up to its retries × the
        /// timeout: a client asking for more than this is refused the option (and gets the
        /// server's default), so a few packets cannot hold slots for many minutes.
        public var maxTimeoutSeconds: Int = 10
        public init(maxBlockSize: Int = 65464, maxWindowSize: Int = 64, maxTimeoutSeconds: Int = 10) {
            self.maxBlockSize = maxBlockSize
            self.maxWindowSize = maxWindowSize
            self.maxTimeoutSeconds = maxTimeoutSeconds
        }
    }

    public init() {}

    /// Negotiates `request`'s options for a file of `fileSize` bytes.
    public init(request: TFTPRequest, fileSize: Int, limits: Limits = Limits()) {
        for option in request.options {
            guard let n = Int(option.value) else { continue }
            switch option.name {
            case "blksize":  // RFC 2348: the server may answer with a smaller size.
                guard n >= 8 else { continue }
                blockSize = min(n, min(limits.maxBlockSize, 65464))
                acknowledged.append(TFTPOption("blksize", String(blockSize)))
            case "timeout":  // RFC 2349 §2: 1–255 seconds, accepted as is or refused (left out).
                guard (1...min(255, max(1, limits.maxTimeoutSeconds))).contains(n) else { continue }
                timeoutSeconds = n
                acknowledged.append(TFTPOption("timeout", String(n)))
            case "tsize":  // RFC 2349 §4: the client sends 0 in an RRQ; the server returns the size.
                guard n == 0 else { continue }
                transferSize = fileSize
                acknowledged.append(TFTPOption("tsize", String(fileSize)))
            case "windowsize":  // RFC 7440: 1–65535; the server may answer with a smaller one.
                guard (1...65535).contains(n) else { continue }
                windowSize = min(n, max(1, limits.maxWindowSize))
                acknowledged.append(TFTPOption("windowsize", String(windowSize)))
            default:
                continue
            }
        }
    }
}
