import ArgumentParser
import Foundation
import GRPCCore

/// The CLI's exit statuses: 0 done; 1 failed (a machine ended failed, part of a batch failed, a
/// local error); 2 a --wait timed out; 64 a usage error (from the argument parser); and 10 plus
/// the gRPC status code when the server refused the call or none could be reached, so a
/// script can tell "no such machine" (15) from "not allowed" (17) from "server down" (24).
enum ExitStatus {
    static let failed: Int32 = 1
    static let waitTimedOut: Int32 = 2
    static let usage: Int32 = 64

    static func of(_ code: RPCError.Code) -> Int32 { 10 + Int32(code.rawValue) }

    /// Every gRPC code the server sends, its name, and what it means here. The names are
    /// written out: `RPCError.Code`'s `description` reflects on an enum, and this table is built
    /// whenever the command tree is, on every invocation (about 3 ms of each start-up, by perf).
    static let meanings: [(code: RPCError.Code, name: String, meaning: String)] = [
        (.cancelled, "cancelled", "the call was cancelled"),
        (.unknown, "unknown", "the server failed in a way it could not name"),
        (
            .invalidArgument, "invalidArgument",
            "bad input: a name, a value or a file the server refused (nothing was changed)"
        ),
        (.deadlineExceeded, "deadlineExceeded", "the call took too long (a BMC that does not answer)"),
        (.notFound, "notFound", "no such machine, image, project or token (or not one your token may see)"),
        (.alreadyExists, "alreadyExists", "the name is taken"),
        (
            .permissionDenied, "permissionDenied",
            "your token may not do this (a member token outside its project, or an admin verb)"
        ),
        (.resourceExhausted, "resourceExhausted", "no machine fits, or a limit was reached"),
        (
            .failedPrecondition, "failedPrecondition",
            "not in this state: the machine's state (or the image's use) does not allow it"
        ),
        (.aborted, "aborted", "a conflicting change won; try again"),
        (.outOfRange, "outOfRange", "a value out of range"),
        (.unimplemented, "unimplemented", "the server does not have this call (an older server)"),
        (.internalError, "internalError", "the server failed (see its log)"),
        (.unavailable, "unavailable", "the server (or a BMC or the database behind it) could not be reached"),
        (.dataLoss, "dataLoss", "stored data is damaged"),
        (.unauthenticated, "unauthenticated", "no token, or a token that is not valid (revoked, mistyped)"),
    ]

    static var table: String {
        var rows = [
            ["0", "done"],
            ["1", "failed: a machine ended failed, part of a batch failed, or a local error (a file not readable)"],
            ["2", "--wait gave up after --timeout seconds"],
        ]
        rows += meanings.map { ["\(of($0.code))", "\($0.name): \($0.meaning)"] }
        rows.append(["\(usage)", "usage: an unknown option, a missing or malformed argument"])
        return farrier.table(["STATUS", "MEANING"], rows)
    }
}

/// `farrier exit-codes` (and `farrier help exit-codes`): the table above.
struct ExitCodesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exit-codes",
        abstract: "What farrier's exit statuses mean.",
        discussion: """
            Scripts can tell failures apart by status: 10 plus the gRPC status code when the server \
            refused a call or could not be reached.

            \(ExitStatus.table)
            """
    )

    func run() throws { print(ExitStatus.table) }
}
