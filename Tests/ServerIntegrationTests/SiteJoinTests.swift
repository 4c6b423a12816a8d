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

        #expect(!FileManager.default.fileExists(atPath: dir + "/site.key.joining"))

        // A join whose answer was lost (the region committed it; the site kept its key as
        // site.key.joining and nothing else): the same command again gets the same certificate.
        let lost = h.directory + "/lost"
        try FileManager.default.createDirectory(atPath: lost, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: dir + "/site.key", toPath: lost + "/site.key.joining")
        let retried = try join("site-1", token, lost)
        #expect(retried.status == 0, "\(retried.stderr)")
        #expect(
            try String(contentsOfFile: lost + "/site.crt", encoding: .utf8)
                == String(contentsOfFile: dir + "/site.crt", encoding: .utf8)
        )
        #expect(FileManager.default.fileExists(atPath: lost + "/site.key"))
        #expect(!FileManager.default.fileExists(atPath: lost + "/site.key.joining"))

        // Once: the same token again, from another directory (another key), gets nothing.
        let again = try join("site-1", token, h.directory + "/again")
        #expect(again.status == 26 && again.stderr.contains("not valid"), "\(again.status) \(again.stderr)")
        #expect(!FileManager.default.fileExists(atPath: h.directory + "/again/site.key"))
        // A made-up token (with the region's pin, so that the region is asked), and an empty one.
        let pin = try #require(token.split(separator: ".").last.map(String.init))
        #expect(pin.count == 64)
        #expect(try join("site-1", "fa_made-up." + pin, h.directory + "/x").status == 26)
        #expect(try join("site-1", "", h.directory + "/y").status == 13)

        // The token names the region's site CA. Without its pin the site refuses to join (and
        // the region is not asked: the token still works after).
        let token4 = try #require(try cp.json(["site", "add", "site-4"])["joinToken"] as? String)
        let secret4 = String(token4.dropLast(65))
        #expect(token4 == secret4 + "." + pin)
        let unpinned = try join("site-4", secret4, h.directory + "/unpinned")
        #expect(unpinned.status == 13 && unpinned.stderr.contains("no region CA pin"), "\(unpinned.stderr)")
        // Another region answers (as something between the site and its region could): its CA
        // is not the token's, and the site keeps nothing.
        let h2 = try Harness("site-join-other")
        defer { h2.cleanup() }
        let other = ControlPlane(h2)
        try other.start()
        let otherToken = try #require(try other.json(["site", "add", "site-4"])["joinToken"] as? String)
        let misled = try h.run(
            [
                "env", "-u", "FARRIER_TOKEN", "FARRIER_CONFIG_FILE=/nonexistent", ControlPlane.bin, "site", "join",
                "--join-token", String(otherToken.dropLast(65)) + "." + pin, "--name", "site-4",
                "--data-dir", h.directory + "/misled", "--server", other.grpc,
            ],
            check: false
        )
        #expect(
            misled.status == 17 && misled.stderr.contains("is not the one the join token names"),
            "\(misled.status) \(misled.stderr)"
        )
        for file in ["site.key", "site.crt", "region-ca.crt"] {
            #expect(!FileManager.default.fileExists(atPath: h.directory + "/misled/" + file))
        }
        #expect(try join("site-4", token4, h.directory + "/site-4").status == 0)

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

    /// Machines belong to a site (or to none: the region's own boot network). Enroll and update
    /// take only a site that exists; list filters by site and show names it; members cannot move
    /// a machine; a site with machines cannot be removed.
    @Test func machinesBelongToASite() throws {
        let h = try Harness("site-machines")
        defer { h.cleanup() }
        let cp = ControlPlane(h)
        try cp.start()
        let password = h.directory + "/bmc.pass"
        try "secret\n".write(toFile: password, atomically: true, encoding: .utf8)
        for site in ["site-1", "site-2"] { _ = try cp.cli(["site", "add", site]) }
        func enroll(_ name: String, _ mac: String, _ site: String?) throws -> Harness.Result {
            try cp.cli(
                [
                    "machine", "enroll", name, "--mac", mac, "--bmc", "ipmi://a@127.0.0.1", "--bmc-password-file",
                    password,
                ]
                    + (site.map { ["--site", $0] } ?? []),
                check: false
            )
        }
        #expect(try enroll("s1-a", "52:54:00:5e:00:01", "site-1").status == 0)
        #expect(try enroll("s1-b", "52:54:00:5e:00:02", "site-1").status == 0)
        #expect(try enroll("s2-a", "52:54:00:5e:00:03", "site-2").status == 0)
        #expect(try enroll("home", "52:54:00:5e:00:04", nil).status == 0)
        // A site nobody added: refused, and nothing enrolled.
        let unknown = try enroll("lost", "52:54:00:5e:00:05", "site-9")
        #expect(unknown.status == 13 && unknown.stderr.contains("no site named 'site-9'"), "\(unknown.stderr)")
        #expect(try cp.cli(["machine", "show", "lost"], check: false).status == 15)

        func names(_ args: [String]) throws -> [String] {
            try cp.cli(["machine", "list", "-o", "name"] + args).stdout.split(separator: "\n").map(String.init).sorted()
        }
        #expect(try names(["--site", "site-1"]) == ["s1-a", "s1-b"])
        #expect(try names(["--site", "site-2"]) == ["s2-a"])
        #expect(try names(["--site", "site-9"]).isEmpty)
        #expect(try names([]).count == 4)
        #expect((try cp.json(["machine", "show", "s2-a"]))["site"] as? String == "site-2")
        #expect((try cp.json(["machine", "show", "home"]))["site"] == nil)
        let table = try cp.cli(["machine", "list", "--columns", "name,site"]).stdout
        #expect(table.contains("SITE") && table.contains("s1-a  site-1"), "\(table)")

        // A site with machines stays until they move; moving to an unknown site changes nothing.
        let busy = try cp.cli(["site", "remove", "site-2"], check: false)
        #expect(busy.status == 19 && busy.stderr.contains("s2-a"), "\(busy.status) \(busy.stderr)")
        let bad = try cp.cli(["machine", "update", "s2-a", "--site", "site-9"], check: false)
        #expect(bad.status == 13 && bad.stderr.contains("site-9"), "\(bad.stderr)")
        #expect((try cp.json(["machine", "show", "s2-a"]))["site"] as? String == "site-2")
        try cp.cli(["project", "create", "alpha"])
        let member = try cp.cli(["token", "create", "--project", "alpha"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        let moved = try cp.cli(["machine", "update", "s2-a", "--site", "site-1"], token: member, check: false)
        // A pool machine is not a member's to see: NotFound, before the admin check (which
        // ControlPlaneTests' probes cover for member-visible machines).
        #expect(moved.status == 15, "\(moved.status) \(moved.stderr)")
        #expect(try cp.cli(["machine", "update", "s2-a", "--site", ""]).status == 0)
        #expect((try cp.json(["machine", "show", "s2-a"]))["site"] == nil)
        #expect(try cp.cli(["site", "remove", "site-2"]).status == 0)
        #expect(try cp.cli(["machine", "update", "home", "--site", "site-1"]).status == 0)
        #expect(try names(["--site", "site-1"]) == ["home", "s1-a", "s1-b"])
    }
}
