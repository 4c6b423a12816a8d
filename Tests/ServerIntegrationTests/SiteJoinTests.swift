import Foundation
import TestSupport
import Testing

/// Sites joining a real server through the CLI (issue 16): an admin adds a site and gets a
/// one-time join token; the site joins with it and no API token, its key made and kept at the
/// site, and OpenSSL verifies its certificate against the region's site CA. A token works once
/// and not after it expires; a request naming another site gets nothing and leaves the token
/// usable; members cannot add, list or remove sites.
@Suite(.serialized, .enabled(if: Harness.canRun, "needs root and openssl"))
struct SiteJoinTests {
    @Test func joinOnceWithTheSitesOwnKey() throws {
        let h = try Harness("site-join")
        defer { h.cleanup() }
        let cp = ControlPlane(h)
        try cp.start()

        let added = try cp.json(["site", "add", "site-1"])
        let token = try #require(added["joinToken"] as? String)
        #expect((added["site"] as? [String: Any])?["status"] as? String == "waiting")

        /// `farrier site join` as the site runs it: no API token, none in the environment.
        func join(_ name: String, _ token: String, _ dir: String) throws -> Harness.Result {
            try h.run(
                [
                    "env", "-u", "FARRIER_TOKEN", "FARRIER_CONFIG_FILE=/nonexistent", ControlPlane.bin, "site", "join",
                    "--join-token", token, "--name", name, "--data-dir", dir, "--server", cp.grpc,
                ],
                check: false
            )
        }
        let dir = h.directory + "/site-1"
        let joined = try join("site-1", token, dir)
        #expect(joined.status == 0, "\(joined.stderr)")
        let verify = try h.run(
            ["openssl", "verify", "-CAfile", cp.data + "/site-ca.crt", "-purpose", "sslclient", dir + "/site.crt"],
            check: false
        )
        #expect(verify.stdout.contains("site.crt: OK"), "\(verify.stdout) \(verify.stderr)")
        #expect(
            try String(contentsOfFile: dir + "/region-ca.crt", encoding: .utf8)
                == String(contentsOfFile: cp.data + "/site-ca.crt", encoding: .utf8)
        )
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/site.key")[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let certKey = try h.run(["openssl", "x509", "-in", dir + "/site.crt", "-noout", "-pubkey"]).stdout
        let siteKey = try h.run(["openssl", "pkey", "-in", dir + "/site.key", "-pubout"]).stdout
        #expect(certKey == siteKey && !certKey.isEmpty)
        let subject = try h.run(["openssl", "x509", "-in", dir + "/site.crt", "-noout", "-ext", "subjectAltName"])
            .stdout
        #expect(subject.contains("URI:farrier-site:site-1"), "\(subject)")
        let listed = try cp.cli(["site", "list", "-o", "json"]).stdout
        #expect(listed.contains("\"joined\"") && listed.contains("site-1"), "\(listed)")

        // Once: the same token again, from another directory, gets nothing.
        let again = try join("site-1", token, h.directory + "/again")
        #expect(again.status == 26 && again.stderr.contains("not valid"), "\(again.status) \(again.stderr)")
        #expect(!FileManager.default.fileExists(atPath: h.directory + "/again/site.key"))
        // A made-up token, and an empty one.
        #expect(try join("site-1", "fa_made-up", h.directory + "/x").status == 26)
        #expect(try join("site-1", "", h.directory + "/y").status == 26)

        // A request naming another site: refused, and the token still works for its own site.
        let token2 = try #require(try cp.json(["site", "add", "site-2"])["joinToken"] as? String)
        let wrong = try join("site-1", token2, h.directory + "/wrong")
        #expect(wrong.status == 13 && wrong.stderr.contains("site-2"), "\(wrong.status) \(wrong.stderr)")
        #expect(try join("site-2", token2, h.directory + "/site-2").status == 0)

        // Expired: a token made to last a second, used after that second.
        let token3 = try #require(try cp.json(["site", "add", "site-3", "--join-ttl", "1"])["joinToken"] as? String)
        let expires = Date().addingTimeInterval(1.5)
        try h.waitUntil("the join token to expire", timeout: 5) { Date() > expires }
        let late = try join("site-3", token3, h.directory + "/site-3")
        #expect(late.status == 26 && late.stderr.contains("expired"), "\(late.status) \(late.stderr)")

        // Bad requests and members.
        let badName = try cp.cli(["site", "add", "Site_1"], check: false)
        #expect(badName.status == 13 && badName.stderr.contains("not a site name"), "\(badName.stderr)")
        #expect(try cp.cli(["site", "add", "x", "--join-ttl", "700000"], check: false).status == 13)
        let taken = try cp.cli(["site", "add", "site-1"], check: false)
        #expect(taken.status == 16, "\(taken.status) \(taken.stderr)")
        try cp.cli(["project", "create", "alpha"])
        let member = try cp.cli(["token", "create", "--project", "alpha"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        for args in [["site", "add", "site-9"], ["site", "list"], ["site", "remove", "site-1"]] {
            let r = try cp.cli(args, token: member, check: false)
            #expect(r.status == 17 && r.stderr.contains("admin token"), "\(args): \(r.status) \(r.stderr)")
        }
        // Without any API token, only join is open.
        let anonymous = try h.run(
            ["env", "-u", "FARRIER_TOKEN", "FARRIER_CONFIG_FILE=/nonexistent", ControlPlane.bin, "site", "list"]
                + ["--server", cp.grpc, "--token", "fa_nope"],
            check: false
        )
        #expect(anonymous.status == 26, "\(anonymous.status) \(anonymous.stderr)")

        // Removed: gone from the list, and gone for good.
        #expect(try cp.cli(["site", "remove", "site-1"]).stdout.contains("removed"))
        #expect(!(try cp.cli(["site", "list", "-o", "name"]).stdout.split(separator: "\n").contains("site-1")))
        #expect(try cp.cli(["site", "remove", "site-1"], check: false).status == 15)
    }
}
