import Foundation
import TestSupport
import Testing

/// The web console of a real server, spoken to with curl as a browser would (cookies, forms,
/// server-sent events): logging in with a token, the fleet and a machine's page, actions, and
/// what a member may not see or do, in the page or by a crafted request.
@Suite struct ConsoleTests {
    /// A browser: its own cookie jar.
    struct Browser {
        let h: Harness
        let base: String
        let jar: String

        /// Status, headers and body of one request (`form`: fields POSTed url-encoded).
        func go(
            _ path: String,
            form: [(String, String)]? = nil,
            headers: [String] = [],
            maxTime: Int = 20
        ) throws -> (status: Int, headers: String, body: String) {
            var args = ["curl", "-s", "-D", "-", "-b", jar, "-c", jar, "--max-time", "\(maxTime)"]
            for (k, v) in form ?? [] { args += ["--data-urlencode", "\(k)=\(v)"] }
            for header in headers { args += ["-H", header] }
            let out = try h.run(args + [base + path], timeout: Double(maxTime + 10), check: false).stdout
            let split = out.components(separatedBy: "\r\n\r\n")
            let head = split.first ?? ""
            let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
            // Header names in lower case, as HTTP/2 and NIO write them.
            return (status, head.lowercased(), split.dropFirst().joined(separator: "\r\n\r\n"))
        }

        /// The session's CSRF token, from a page's forms.
        func csrf(_ page: String) -> String? {
            guard let r = page.range(of: #"name="csrf" value=""#) else { return nil }
            let rest = page[r.upperBound...]
            return rest.firstIndex(of: "\"").map { String(rest[..<$0]) }
        }
    }

    @Test func loginFleetMachineActionsAndTenancy() throws {
        let h = try Harness("console")
        defer { h.cleanup() }
        let port = Int.random(in: 12000..<13000)
        let (cp, _, s2) = try ControlPlaneTests().setUp(h, flags: ["--console-listen", "127.0.0.1:\(port)"])
        try cp.cli(["project", "create", "p"])
        let member = try cp.cli(["token", "create", "--project", "p"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        try cp.addTestImage(byte: 3)
        try cp.cli(["machine", "deploy", "m1", "--image", "img", "--project", "p"])
        try cp.runAgent(mac: ControlPlaneTests.mac1)
        try cp.waitFor("m1", "deployed")
        let base = "http://127.0.0.1:\(port)"
        try h.waitUntil("the console to answer", timeout: 30, interval: 0.2) {
            (try? h.run(["curl", "-sf", base + "/healthz"], timeout: 5)) != nil
        }

        // Not logged in: every page sends to the login; a made-up cookie is no session.
        let admin = Browser(h: h, base: base, jar: h.directory + "/admin.jar")
        #expect(try admin.go("/").status == 303)
        #expect(
            try admin.go("/machines/m1", headers: ["Cookie: farrier_session=made-up"]).headers.contains(
                "location: /login"
            )
        )
        #expect(try admin.go("/events").status == 401)
        // A wrong token is refused; a right one is exchanged for a session cookie.
        let wrong = try admin.go("/login", form: [("token", "fa_not-a-token")])
        #expect(wrong.status == 401 && wrong.body.contains("that token was refused"), "\(wrong)")
        let login = try admin.go("/login", form: [("token", cp.adminToken)])
        #expect(login.status == 303, "\(login)")
        #expect(login.headers.contains("set-cookie: farrier_session="))
        #expect(login.headers.contains("httponly") && login.headers.contains("samesite=strict"), "\(login.headers)")
        #expect(!login.headers.contains(cp.adminToken.lowercased()), "the token went back to the browser")
        #expect(login.headers.contains("content-security-policy: default-src 'none'"))

        // The fleet: both machines, coloured by state, with counts.
        let fleet = try admin.go("/")
        #expect(fleet.status == 200)
        #expect(fleet.body.contains(#"class="cell s-deployed" id="m-m1""#), "\(fleet.body)")
        #expect(fleet.body.contains(#"class="cell s-ready" id="m-m2""#))
        #expect(fleet.body.contains("2 machines"))
        // The filter box takes machine list's filters, and says what it does not know.
        let ready = try admin.go("/?q=state%3Dready")
        #expect(ready.body.contains(#"id="m-m2""#) && !ready.body.contains(#"id="m-m1""#))
        // Two filters, as a browser sends the box (a space is "+"); a word is part of a name.
        let both = try admin.go("/?q=state%3Ddeployed+m1")
        #expect(both.status == 200 && both.body.contains(#"id="m-m1""#) && !both.body.contains(#"id="m-m2""#))
        #expect(!(try admin.go("/?q=state%3Ddeployed+m2").body.contains(#"id="m-m"#)))
        let bad = try admin.go("/?q=color%3Dblue")
        #expect(bad.status == 400 && bad.body.contains("unknown filter &#39;color&#39;"), "\(bad.body)")

        // A machine's page: its facts, its last boot as an SVG waterfall, its actions.
        let m1 = try admin.go("/machines/m1")
        #expect(m1.status == 200)
        #expect(m1.body.contains(#"<svg id="waterfall""#), "\(m1.body)")
        #expect(m1.body.contains("stage-http"))
        #expect(m1.body.contains(#"id="do-release""#) && m1.body.contains(#"data-confirm="Release m1?""#))
        let csrf = try #require(admin.csrf(m1.body))
        // Its events, replayed then followed, as server-sent events.
        let stream = try admin.go("/events?machine=m1", maxTime: 8)
        #expect(stream.headers.contains("content-type: text/event-stream"))
        #expect(stream.body.contains(#""machine":"m1""#) && stream.body.contains(#""state":"deployed""#), "\(stream)")
        // An action: an API call as the admin (a browser's form names the console as its origin).
        let on = try admin.go(
            "/machines/m2/actions",
            form: [("csrf", csrf), ("action", "power-on")],
            headers: ["Origin: \(base)"]
        )
        #expect(on.status == 303 && on.headers.contains("location: /machines/m2?done=power-on"), "\(on)")
        #expect(try s2.ipmitool(["chassis", "power", "status"]).contains("on"))
        // Without the session's CSRF token, or from another origin: refused, nothing done.
        let noCSRF = try admin.go("/machines/m2/actions", form: [("action", "power-off")])
        #expect(noCSRF.status == 403)
        let otherOrigin = try admin.go(
            "/machines/m2/actions",
            form: [("csrf", csrf), ("action", "power-off")],
            headers: ["Origin: http://evil.example"]
        )
        #expect(otherOrigin.status == 403)
        #expect(try s2.ipmitool(["chassis", "power", "status"]).contains("on"))
        // An action the API refuses shows its reason.
        let refused = try admin.go("/machines/m2/actions", form: [("csrf", csrf), ("action", "exit-rescue")])
        #expect(refused.status == 409, "\(refused)")
        #expect(refused.body.contains(#"id="error""#))

        // A member sees their project's machine only, in the page and by a crafted request.
        let other = Browser(h: h, base: base, jar: h.directory + "/member.jar")
        #expect(try other.go("/login", form: [("token", member)]).status == 303)
        let theirs = try other.go("/")
        #expect(theirs.body.contains(#"id="m-m1""#) && !theirs.body.contains("m-m2"), "\(theirs.body)")
        let memberCSRF = try #require(other.csrf(theirs.body))
        let hidden = try other.go("/machines/m2")
        #expect(hidden.status == 404 && !hidden.body.contains(ControlPlaneTests.mac2))
        let crafted = try other.go("/machines/m2/actions", form: [("csrf", memberCSRF), ("action", "power-off")])
        #expect(crafted.status == 404, "\(crafted)")
        #expect(try s2.ipmitool(["chassis", "power", "status"]).contains("on"))
        // Another session's CSRF token is not this one's.
        let swapped = try other.go("/machines/m1/actions", form: [("csrf", csrf), ("action", "power-off")])
        #expect(swapped.status == 403)
        let events = try other.go("/events?machine=m2", maxTime: 8)
        #expect(!events.body.contains(#""machine":"m2""#) && events.body.contains("event: refused"), "\(events)")
        // The failed view, empty here.
        #expect(try other.go("/failed").body.contains("No machine has failed."))

        // Logging out ends the session.
        #expect(try admin.go("/logout", form: [("csrf", csrf)]).status == 303)
        #expect(try admin.go("/").status == 303)
    }

    /// The same in a real browser (headless Chromium through Selenium, `console_browser.py`):
    /// log in, see both machines, watch a deploy's progress arrive live over server-sent events,
    /// open the timeline, act behind a confirm, and as a member not see or act on another
    /// project's machine. The agent waits for the browser at each step (files in the test's
    /// directory), so the page is open before the progress it must show live is reported.
    @Test func aBrowserWatchesADeployLive() throws {
        let h = try Harness("console-browser")
        defer { h.cleanup() }
        for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            try #require(
                FileManager.default.isExecutableFile(atPath: tool),
                "\(tool) is missing: apt-get install chromium chromium-driver python3-selenium (scripts/install-deps.sh)"
            )
        }
        let port = Int.random(in: 13000..<14000)
        let (cp, _, _) = try ControlPlaneTests().setUp(h, flags: ["--console-listen", "127.0.0.1:\(port)"])
        try h.waitUntil("the console to answer", timeout: 30, interval: 0.2) {
            (try? h.run(["curl", "-sf", "http://127.0.0.1:\(port)/healthz"], timeout: 5)) != nil
        }
        try cp.cli(["project", "create", "p"])
        let member = try cp.cli(["token", "create", "--project", "p"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        try cp.addTestImage(byte: 5)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "console_browser.py"
        ).path
        let browser = try h.start(
            ["/usr/bin/python3", script, "http://127.0.0.1:\(port)", cp.adminToken, member, h.directory],
            log: "browser.log"
        )
        defer { if browser.isRunning { browser.terminate() } }
        func file(_ name: String) -> String { h.directory + "/" + name }
        func browserWrote(_ name: String, _ what: String) throws {
            try h.waitUntil(what, timeout: 60, interval: 0.2) {
                guard browser.isRunning || FileManager.default.fileExists(atPath: file(name)) else {
                    throw Harness.CommandError(description: "the browser ended: \(h.read("browser.log"))")
                }
                return FileManager.default.fileExists(atPath: file(name))
            }
        }
        try browserWrote("fleet-seen", "the browser to log in and see the fleet")
        try cp.cli(["machine", "deploy", "m1", "--image", "img", "--project", "p"])
        try Data("1".utf8).write(to: URL(fileURLWithPath: file("deploying")))
        // Progress the commission never reported: what the page shows can only have come live.
        try cp.runAgent(
            mac: ControlPlaneTests.mac1,
            progress: #"{"stage":"write","bytesDone":2097152,"bytesTotal":3145728}"#,
            beforeDone: { try browserWrote("seen-progress", "the browser to show the progress") },
            withTask: { _ in try browserWrote("watching", "the browser to open m1's page") }
        )
        try h.waitUntil("the browser's checks", timeout: 120, interval: 0.5) { !browser.isRunning }
        let passed = browser.terminationStatus == 0 && h.read("browser.log").contains("OK")
        #expect(passed, "\(h.read("browser.log"))")
        // Its screenshots, once every check held (a failed run stops before taking them all).
        for shot in ["console-fleet.png", "console-machine.png"] where passed {
            guard let data = try? Data(contentsOf: URL(fileURLWithPath: file(shot))) else {
                Issue.record("the browser took no \(shot)")
                continue
            }
            #expect(data.starts(with: [0x89, 0x50, 0x4E, 0x47]) && data.count > 10_000, "\(shot)")
            // Kept where asked (the README's screenshots come from here).
            if let keep = ProcessInfo.processInfo.environment["FARRIER_CONSOLE_SCREENSHOTS"] {
                try data.write(to: URL(fileURLWithPath: keep + "/" + shot))
            }
        }
    }
}
