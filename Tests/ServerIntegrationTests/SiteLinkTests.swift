import Foundation
import TestSupport
import Testing

/// The site link (issue 16) between a real server and `farrier site run`, over mutual TLS: a
/// joined site calls in and the region's `site list` shows the link; OpenSSL checks the region's
/// link certificate against the CA the site got, for the address it dials; a removed site is
/// refused at once, and so is a site's old certificate after it joined again, a certificate from
/// another CA, and a client with no certificate.
@Suite(.serialized, .enabled(if: Harness.canRun, "needs root and openssl"))
struct SiteLinkTests {
    @Test func onlyTheSitesCurrentCertificateGetsThrough() throws {
        let h = try Harness("site-link")
        defer { h.cleanup() }
        let linkPort = Int.random(in: 32000..<32700)
        let link = "127.0.0.1:\(linkPort)"
        let cp = ControlPlane(h, flags: ["--site-listen", link])
        try cp.start()
        try h.waitUntil("the site link to listen", timeout: 20, interval: 0.1) {
            h.read("server.log").contains("site link listening")
        }

        func join(_ name: String, _ dir: String) throws { try cp.joinSite(name, dir: dir) }
        func once(_ dir: String) throws -> Harness.Result {
            try h.run(
                [ControlPlane.bin, "site", "run", "--region", link, "--data-dir", dir, "--once"],
                timeout: 30,
                check: false
            )
        }
        func listed(_ name: String) throws -> [String: Any]? {
            let out = try cp.cli(["site", "list", "-o", "json"]).stdout
            let all = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])
            return all.first { $0["name"] as? String == name }
        }

        let dir1 = h.directory + "/site-1"
        try join("site-1", dir1)
        #expect(try listed("site-1")?["link"] as? String == "never")

        // OpenSSL, as a site would: the region's link certificate chains to the CA the site got
        // at join and names the address the site dials; the site's own certificate is accepted.
        let verified = try h.run(
            [
                "bash", "-c",
                "openssl s_client -connect \(link) -CAfile \(dir1)/region-ca.crt -verify_return_error -verify_ip 127.0.0.1 -cert \(dir1)/site.crt -key \(dir1)/site.key -brief < /dev/null 2>&1; echo \"exit=$?\"",
            ],
            timeout: 20,
            check: false
        )
        #expect(
            verified.stdout.contains("Verification: OK"),
            "\(verified.status) \(verified.stdout) \(verified.stderr)"
        )
        // Without a client certificate, the region ends the handshake. (TLS 1.2: in 1.3 the
        // refusal comes after the client's side of the handshake, which s_client does not wait for.)
        let anonymous = try h.run(
            [
                "bash", "-c",
                "openssl s_client -tls1_2 -connect \(link) -CAfile \(dir1)/region-ca.crt -brief < /dev/null 2>&1; echo \"exit=$?\"",
            ],
            timeout: 20,
            check: false
        )
        #expect(
            anonymous.stdout.contains("alert handshake failure") && !anonymous.stdout.contains("exit=0"),
            "\(anonymous.stdout)"
        )

        // The site calls in; the region records it, with what the site says of its cache.
        let digest = String(repeating: "ab", count: 32)
        try FileManager.default.createDirectory(atPath: dir1 + "/cache", withIntermediateDirectories: true)
        try Data(count: 1000).write(to: URL(fileURLWithPath: dir1 + "/cache/" + digest))
        let first = try once(dir1)
        #expect(first.status == 0, "\(first.stdout) \(first.stderr)")
        let seen = try #require(try listed("site-1"))
        #expect(seen["link"] as? String == "up", "\(seen)")
        #expect(seen["lastSeen"] as? String != nil && seen["version"] as? String == "0.1.0", "\(seen)")
        #expect(seen["cachedFiles"] as? Int == 1 && seen["cachedBytes"] as? Int == 1000, "\(seen)")
        #expect((seen["linkAddress"] as? String)?.contains("127.0.0.1") == true, "\(seen)")
        let table = try cp.cli(["site", "list"]).stdout
        #expect(table.contains("LINK") && table.contains(" up "), "\(table)")
        let status = try h.run([ControlPlane.bin, "site", "status", "--data-dir", dir1, "-o", "json"]).stdout
        let view = try #require(try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
        #expect(view["site"] as? String == "site-1" && view["cachedFiles"] as? Int == 1, "\(status)")
        #expect((view["link"] as? [String: Any])?["state"] as? String == "up", "\(status)")
        #expect(((view["cache"] as? [[String: Any]])?.first?["sha256"] as? String) == digest, "\(status)")

        // Each site gets its own machines and what they boot next, never another site's.
        let dirB = h.directory + "/site-b"
        try join("site-b", dirB)
        let password = h.directory + "/bmc.pass"
        try "secret\n".write(toFile: password, atomically: true, encoding: .utf8)
        for (name, mac, site) in [
            ("m1", "52:54:00:5f:00:01", "site-1"), ("m2", "52:54:00:5f:00:02", "site-1"),
            ("m3", "52:54:00:5f:00:03", "site-b"), ("m4", "52:54:00:5f:00:04", ""),
        ] {
            _ = try cp.cli(
                [
                    "machine", "enroll", name, "--mac", mac, "--bmc", "ipmi://a@127.0.0.1", "--bmc-password-file",
                    password,
                ]
                    + (site.isEmpty ? [] : ["--site", site])
            )
        }
        func machines(_ dir: String) throws -> [String] {
            let r = try once(dir)
            #expect(r.status == 0, "\(r.stderr)")
            let out = try h.run([ControlPlane.bin, "site", "status", "--data-dir", dir, "-o", "json"]).stdout
            let view = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
            let list = (view["machines"] as? [String: Any])?["machines"] as? [[String: Any]] ?? []
            #expect(list.allSatisfy { $0["nextBoot"] as? String == "wait" || $0["nextBoot"] as? String == "disk" })
            return list.compactMap { $0["name"] as? String }.sorted()
        }
        #expect(try machines(dir1) == ["m1", "m2"])
        #expect(try machines(dirB) == ["m3"])
        _ = try cp.cli(["machine", "update", "m2", "--site", "site-b"])
        #expect(try machines(dir1) == ["m1"])
        #expect(try machines(dirB) == ["m2", "m3"])
        let page = try h.run([ControlPlane.bin, "site", "status", "--data-dir", dirB]).stdout
        #expect(page.contains("machines:     2") && page.contains("52:54:00:5f:00:03"), "\(page)")
        for name in ["m1", "m2", "m3", "m4"] { _ = try cp.cli(["machine", "delete", name]) }

        // An image kept cached by name: pulled from the region over the link once, checked, and
        // not pulled again; a name the region does not have is said so.
        let raw = h.directory + "/img.raw"
        try h.run(["bash", "-c", "head -c 12582912 /dev/urandom > '\(raw)'"])
        try h.run(["bash", "-c", "printf 'label: gpt\\nstart=2048, type=L\\n' | sfdisk -q '\(raw)'"])
        try cp.cli(["image", "add", "img-1", raw])
        let imageSHA = try #require(
            (try JSONSerialization.jsonObject(with: Data(try cp.cli(["image", "list", "-o", "json"]).stdout.utf8))
                as? [[String: Any]])?.first?["sha256"] as? String
        )
        func sync(_ images: [String]) throws -> Harness.Result {
            try h.run(
                [ControlPlane.bin, "site", "run", "--region", link, "--data-dir", dirB, "--once"]
                    + images.flatMap { ["--sync-image", $0] },
                timeout: 60,
                check: false
            )
        }
        let pulled = try sync(["img-1", "img-9"])
        #expect(pulled.status == 0 && pulled.stderr.contains("cached from the region"), "\(pulled.stderr)")
        #expect(pulled.stderr.contains("--sync-image names no image") && pulled.stderr.contains("img-9"))
        let cachedFile = dirB + "/cache/" + imageSHA
        let cachedSHA = try h.run(["sha256sum", cachedFile]).stdout.prefix(64)
        #expect(String(cachedSHA) == imageSHA)
        let regionSize = try FileManager.default.attributesOfItem(atPath: cachedFile)[.size] as? Int
        #expect(pulled.stderr.contains("bytes=\(regionSize ?? -1)"), "\(pulled.stderr)")
        let again = try sync(["img-1"])
        #expect(
            again.status == 0 && !again.stderr.contains("cached from the region")
                && !again.stderr.contains("caching from the region failed"),
            "\(again.stderr)"
        )
        let withCache = try h.run([ControlPlane.bin, "site", "status", "--data-dir", dirB]).stdout
        #expect(withCache.contains("cache:        1 files") && withCache.contains(imageSHA), "\(withCache)")
        #expect(try listed("site-b")?["cachedFiles"] as? Int == 1)

        // Running: it keeps calling in.
        let agent = try h.start(
            [ControlPlane.bin, "site", "run", "--region", link, "--data-dir", dir1, "--interval", "1"],
            log: "site-1.log"
        )
        let before = seen["lastSeen"] as? String
        try h.waitUntil("a later heartbeat", timeout: 20, interval: 0.3) {
            try listed("site-1")?["lastSeen"] as? String != before
        }
        // The region records the call before the agent logs its answer: wait for the line.
        try h.waitUntil("the agent to log its link up", timeout: 20, interval: 0.1) {
            h.read("site-1.log").contains("link up")
        }

        // Removed: its next call is refused and the agent stops, saying why.
        _ = try cp.cli(["site", "remove", "site-1"])
        try h.waitUntil("the removed site's agent to stop", timeout: 20, interval: 0.2) { !agent.isRunning }
        #expect(agent.terminationStatus == 17, "\(agent.terminationStatus) \(h.read("site-1.log"))")
        #expect(h.read("site-1.log").contains("not its current one"), "\(h.read("site-1.log"))")
        let after = try h.run([ControlPlane.bin, "site", "status", "--data-dir", dir1, "-o", "json"]).stdout
        #expect(after.contains("refused"), "\(after)")

        // Added and joined again with another key: the new certificate works, the old one not.
        let dir2 = h.directory + "/site-1-again"
        try join("site-1", dir2)
        #expect(try once(dir2).status == 0)
        // What `site status` read from a run that stopped answering long ago is stale, not up.
        let lastWeek = ISO8601DateFormatter().string(from: Date().addingTimeInterval(-7 * 86400))
        try
            "{\"site\":\"site-1\",\"region\":\"\(link)\",\"state\":\"up\",\"since\":\"\(lastWeek)\",\"lastContact\":\"\(lastWeek)\"}"
            .write(toFile: dir2 + "/link.json", atomically: true, encoding: .utf8)
        let stale = try h.run([ControlPlane.bin, "site", "status", "--data-dir", dir2]).stdout
        #expect(stale.contains("link:         stale") && stale.contains("is `farrier site run` running?"), "\(stale)")
        let old = try once(dir1)
        #expect(old.status == 17 && old.stderr.contains("not its current one"), "\(old.status) \(old.stderr)")

        // A certificate for site-1 from another CA: the handshake fails, nothing is recorded.
        let dir3 = h.directory + "/forged"
        try FileManager.default.createDirectory(atPath: dir3, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: dir1 + "/region-ca.crt", toPath: dir3 + "/region-ca.crt")
        let ext = dir3 + "/ext.cnf"
        try "subjectAltName=URI:farrier-site:site-1\nextendedKeyUsage=clientAuth,serverAuth\n".write(
            toFile: ext,
            atomically: true,
            encoding: .utf8
        )
        for command in [
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout \(dir3)/ca.key -out \(dir3)/ca.crt -subj '/CN=Farrier site CA' -days 2",
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout \(dir3)/site.key -out \(dir3)/site.csr -subj /CN=site-1",
            "openssl x509 -req -in \(dir3)/site.csr -CA \(dir3)/ca.crt -CAkey \(dir3)/ca.key -CAcreateserial -out \(dir3)/site.crt -days 2 -extfile \(ext)",
        ] {
            _ = try h.run(["bash", "-c", command + " 2>&1"])
        }
        let lastSeen = try listed("site-1")?["lastSeen"] as? String
        let forged = try once(dir3)
        #expect(forged.status == 24, "\(forged.status) \(forged.stdout) \(forged.stderr)")
        let handshake = try h.run(
            [
                "bash", "-c",
                "openssl s_client -tls1_2 -connect \(link) -CAfile \(dir3)/region-ca.crt -cert \(dir3)/site.crt -key \(dir3)/site.key -brief < /dev/null 2>&1; echo \"exit=$?\"",
            ],
            timeout: 20,
            check: false
        )
        #expect(
            // The forged CA has the real one's name: the region finds its own CA by that name, and
            // the signature does not check out.
            handshake.stdout.contains("alert decrypt error") && !handshake.stdout.contains("exit=0"),
            "\(handshake.stdout)"
        )
        #expect(try listed("site-1")?["lastSeen"] as? String == lastSeen)
    }
}
