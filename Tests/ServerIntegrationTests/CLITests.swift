import Foundation
import TestSupport
import Testing

/// What a user of the CLI relies on beyond single RPCs: the first admin token, TLS with
/// verification, the config file, completions, and `--wait` with live progress.
@Suite(.serialized, .enabled(if: IPMISimulator.available, "needs root, ipmi_sim and ipmitool"))
struct CLITests {
    @Test func firstStartTokenTLSConfigFileAndCompletions() throws {
        let h = try Harness("cli")
        defer { h.cleanup() }
        // A CA and a server certificate for 127.0.0.1, made with openssl.
        let d = h.directory
        try h.run([
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", d + "/ca.key", "-out", d + "/ca.pem", "-days", "1", "-subj", "/CN=farrier-test-ca",
        ])
        try h.run([
            "openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", d + "/server.key", "-out", d + "/server.csr", "-subj", "/CN=farrier-test",
        ])
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\n".write(
            toFile: d + "/san.ext",
            atomically: true,
            encoding: .utf8
        )
        try h.run([
            "openssl", "x509", "-req", "-in", d + "/server.csr", "-CA", d + "/ca.pem", "-CAkey", d + "/ca.key",
            "-CAcreateserial", "-out", d + "/server.pem", "-days", "1", "-extfile", d + "/san.ext",
        ])
        let cp = ControlPlane(h, flags: ["--api-tls-cert", d + "/server.pem", "--api-tls-key", d + "/server.key"])
        cp.clientFlags = ["--ca-file", d + "/ca.pem"]
        try cp.start()

        // First start: the admin token is printed once and kept in a 0600 file.
        let token = cp.adminToken
        #expect(token.hasPrefix("fa_"))
        #expect(h.read("server.log").contains(token))
        let mode = try FileManager.default.attributesOfItem(atPath: cp.data + "/admin.token")[.posixPermissions] as? Int
        #expect(mode == 0o600)
        cp.stop()
        try cp.start(log: "server2.log")
        #expect(!h.read("server2.log").contains("first start"))
        #expect(cp.adminToken == token)

        // TLS: verified against the CA it works; without the CA, or in plaintext, it does not.
        #expect(try cp.cli(["token", "whoami"]).stdout.contains("admin"))
        let unverified = try h.run(
            [ControlPlane.bin, "token", "whoami", "--server", cp.grpc, "--token", token, "--tls"],
            check: false
        )
        #expect(unverified.status != 0, "a certificate from an unknown CA was accepted")
        let plain = try h.run(
            [ControlPlane.bin, "token", "whoami", "--server", cp.grpc, "--token", token],
            check: false
        )
        #expect(plain.status != 0, "a plaintext client was served by a TLS server")

        // A certificate that does not name this address is refused even from the right CA.
        try "subjectAltName=IP:10.9.9.9\n".write(toFile: d + "/other.ext", atomically: true, encoding: .utf8)
        try h.run([
            "openssl", "x509", "-req", "-in", d + "/server.csr", "-CA", d + "/ca.pem", "-CAkey", d + "/ca.key",
            "-CAcreateserial", "-out", d + "/other.pem", "-days", "1", "-extfile", d + "/other.ext",
        ])
        cp.stop()
        let other = ControlPlane(h, flags: ["--api-tls-cert", d + "/other.pem", "--api-tls-key", d + "/server.key"])
        let otherServer = try h.start(
            [
                ControlPlane.bin, "server", "--data-dir", cp.data, "--grpc-listen", other.grpc, "--http-listen",
                "127.0.0.1:\(other.httpPort)", "--agent-listen", "127.0.0.1:\(other.agentPort)",
                "--tftp-listen", "", "--api-tls-cert", d + "/other.pem", "--api-tls-key", d + "/server.key",
                "--metrics-listen", "",
            ],
            log: "server3.log"
        )
        try h.waitUntil("server 3 up", timeout: 30) { h.read("server3.log").contains("gRPC listening") }
        let wrongName = try h.run(
            [
                ControlPlane.bin, "token", "whoami", "--server", other.grpc, "--token", token, "--ca-file",
                d + "/ca.pem",
            ],
            check: false
        )
        #expect(wrongName.status != 0, "a certificate for 10.9.9.9 was accepted for 127.0.0.1")
        otherServer.terminate()
        otherServer.waitUntilExit()
        try cp.start(log: "server4.log")

        // The config file gives server, token and CA: no flags needed.
        let config = d + "/config.yaml"
        try "server: \(cp.grpc)\ntoken: \(token)\nca-file: \(d)/ca.pem\n".write(
            toFile: config,
            atomically: true,
            encoding: .utf8
        )
        let viaConfig = try h.run(
            ["env", "FARRIER_CONFIG_FILE=\(config)", ControlPlane.bin, "token", "whoami"],
            check: false
        )
        #expect(viaConfig.status == 0 && viaConfig.stdout.contains("admin"), "\(viaConfig.stderr)")
        // FARRIER_TOKEN beats the file.
        let bad = try h.run(
            ["env", "FARRIER_CONFIG_FILE=\(config)", "FARRIER_TOKEN=fa_nope", ControlPlane.bin, "token", "whoami"],
            check: false
        )
        #expect(bad.status != 0 && bad.stderr.contains("not valid"))

        // Completions name the commands.
        for shell in ["bash", "zsh", "fish"] {
            let script = try h.run([ControlPlane.bin, "completion", shell]).stdout
            #expect(script.contains("deploy") && script.contains("exit-rescue"), "\(shell)")
        }
    }

    @Test func deployWaitShowsProgressAndEndsDeployed() throws {
        let h = try Harness("cli-wait")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.start()
        // A short deploy step: the last deploy's OS never reports in.
        let cp = ControlPlane(h, flags: ["--lifecycle-step-timeout", "deploying=60"])
        try cp.start()
        let mac = "52:54:00:dd:00:01"
        try cp.cli([
            "machine", "enroll", "w1", "--mac", mac, "--bmc", "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)",
            "--bmc-password-file", sim.passwordFile, "--commission",
        ])
        try cp.runAgent(mac: mac)
        try cp.waitFor("w1", "ready")
        try cp.cli(["project", "create", "p"])
        try cp.addTestImage(byte: 1)
        // `deploy --wait` in the background, the agent in the foreground.
        let waiter = try h.start(
            [
                ControlPlane.bin, "machine", "deploy", "w1", "--image", "img", "--project", "p", "--wait", "--timeout",
                "60",
                "--server", cp.grpc, "--token", cp.adminToken,
            ],
            log: "wait.log"
        )
        // The agent reports its progress, and says done only once --wait has shown it.
        try cp.runAgent(mac: mac, osReports: false) {
            try h.waitUntil("--wait to show the progress", timeout: 20) {
                h.read("wait.log").contains("write 1.0 MiB / 3.0 MiB (33%)")
            }
        }
        // Deployed means usable (issue 18 point 10): with the disk written and booted, --wait
        // still waits, until the installed OS reports in. Shown as waiting meanwhile.
        try h.waitUntil("--wait to show the OS phase", timeout: 30) { h.read("wait.log").contains("deploying/os") }
        #expect(waiter.isRunning, "\(h.read("wait.log"))")
        // --wait follows the machine's event stream (issue 17 point 7): with nothing happening
        // it reads the machine once every 5 s, not twice a second (counted by the server).
        func machineReads() throws -> Int {
            let text = try h.run(["curl", "-sf", cp.metricsURL]).stdout
            return Harness.metric(
                text,
                #"grpc_server_handled_total{grpc_service="farrier.v1.MachineService",grpc_method="GetMachine",grpc_code="OK"}"#
            ) ?? 0
        }
        let readsBefore = try machineReads()
        let quiet = Date()
        try h.waitUntil("eight quiet seconds", timeout: 20, interval: 0.5) { Date().timeIntervalSince(quiet) >= 8 }
        let readsDuring = try machineReads() - readsBefore
        #expect(readsDuring >= 1 && readsDuring <= 3, "--wait read the machine \(readsDuring) times in 8 s")
        // Its one stream is still open (a call is counted when it ends).
        #expect(try h.run(["curl", "-sf", cp.metricsURL]).stdout.contains(#"grpc_method="WatchEvents""#) == false)
        #expect(try cp.cli(["machine", "show", "w1"]).stdout.contains("OS:            waiting for it to report in"))
        #expect(try cp.cli(["machine", "list", "--columns", "name,os"]).stdout.contains("waiting"))
        let token = try #require(cp.osTokens[mac])
        let report = #"{"bootID":"b-1"}"#
        // Only the machine's own address, with the deployment's token, reports in.
        let elsewhere = try cp.agent("/os/v1/ready", mac: mac, token: token, report, from: "127.0.0.1")
        #expect(elsewhere.0 == 403, "\(elsewhere)")
        // (The last character changed to another: a forgery, never the token by chance.)
        let forged = try cp.agent(
            "/os/v1/ready",
            mac: mac,
            token: String(token.dropLast()) + (token.hasSuffix("A") ? "B" : "A"),
            report
        )
        #expect(forged.0 == 403, "\(forged)")
        let none = try cp.agent("/os/v1/ready", mac: mac, token: nil, report)
        #expect(none.0 == 401, "\(none)")
        #expect(try cp.state("w1") == "deploying/os")
        let first = try cp.reportOS(mac: mac, before: { #expect(waiter.isRunning) })
        try h.waitUntil("deploy --wait to end", timeout: 60) { !waiter.isRunning }
        #expect(waiter.terminationStatus == 0, "\(h.read("wait.log"))")
        let out = h.read("wait.log")
        #expect(out.contains("deploying/agent  write"), "\(out)")
        #expect(out.contains("write 1.0 MiB / 3.0 MiB (33%)"), "\(out)")
        #expect(out.contains("machine w1 deployed: deployed"), "\(out)")
        func os() throws -> [String: Any] { try cp.machine("w1")["deployment"] as? [String: Any] ?? [:] }
        let reported = try #require(try os()["osReported"] as? String)
        #expect(try os()["osAwaiting"] as? Bool == false)
        #expect(try cp.cli(["machine", "show", "w1"]).stdout.contains("OS:            up: reported in at"))
        // The same boot again (a reporter whose answer was lost) changes nothing.
        let again = try cp.agent("/os/v1/ready", mac: mac, token: token, #"{"bootID":"\#(first)"}"#)
        let reportedAgain = try os()["osReported"] as? String
        #expect(again.0 == 200 && reportedAgain == reported, "\(again)")

        // restart --wait waits for the restarted OS to report in again (a new boot).
        let restarter = try h.start(
            [
                ControlPlane.bin, "machine", "restart", "w1", "--hard", "--wait", "--timeout", "60",
                "--server", cp.grpc, "--token", cp.adminToken,
            ],
            log: "restart.log"
        )
        try cp.reportOS(
            mac: mac,
            awaited: { ($0["deployment"] as? [String: Any])?["osAwaiting"] as? Bool == true },
            before: { #expect(restarter.isRunning, "\(h.read("restart.log"))") }
        )
        try h.waitUntil("restart --wait to end", timeout: 60) { !restarter.isRunning }
        #expect(restarter.terminationStatus == 0, "\(h.read("restart.log"))")
        let afterRestart = try os()
        #expect(afterRestart["osAwaiting"] as? Bool == false && afterRestart["osReported"] as? String != reported)

        // Released, the deployment's token is worth nothing.
        try cp.cli(["machine", "release", "w1"])
        try cp.runAgent(mac: mac)
        try cp.waitFor("w1", "ready")
        let stale = try cp.agent("/os/v1/ready", mac: mac, token: token, #"{"bootID":"b-2"}"#)
        #expect(stale.0 == 403, "\(stale)")

        // An agent that does not say it gave the OS the reporter (one from before it existed):
        // nothing would report in, so the deploy ends once the disk boots, untracked.
        try cp.cli(["machine", "deploy", "w1", "--image", "img", "--project", "p"])
        try cp.runAgent(mac: mac, reportsOS: false)
        try cp.waitFor("w1", "deployed")
        #expect(try os()["osTracked"] as? Bool == false)
        #expect(try cp.cli(["machine", "show", "w1"]).stdout.contains("OS:            not tracked"))
        try cp.cli(["machine", "release", "w1"])
        try cp.runAgent(mac: mac)
        try cp.waitFor("w1", "ready")

        // An OS that never reports in fails the deploy at the step's timeout, naming the phase.
        try cp.cli(["machine", "deploy", "w1", "--image", "img", "--project", "p"])
        try cp.runAgent(mac: mac, osReports: false)
        try cp.waitFor("w1", "deploying/os")
        try cp.waitFor("w1", "failed", timeout: 90)
        let failed = try cp.machine("w1")
        #expect(failed["failedStep"] as? String == "deploying")
        #expect((failed["reason"] as? String ?? "").contains("in phase os"), "\(failed)")
    }

    /// One output group on every command (-o name, --no-headers, --columns), exit statuses a
    /// script can tell apart (`farrier exit-codes`), enumerated arguments refused with their
    /// valid values, and named contexts.
    /// `farrier network` against the real server (issue 18 point 4): an admin defines and
    /// removes networks, a member lists those open to its project and is refused the rest, and
    /// bad input is refused naming its field, with the exit status of its gRPC code.
    @Test func networksThroughTheCLI() throws {
        let h = try Harness("cli-networks")
        defer { h.cleanup() }
        let cp = ControlPlane(h)
        try cp.start()
        try cp.cli(["project", "create", "alpha"])
        try cp.cli(["project", "create", "beta"])
        let made = try cp.cli([
            "network", "create", "lab-vlan", "--cidr", "198.18.100.0/24", "--cidr", "fd98:18:100::/64",
            "--gateway", "198.18.100.1", "--pool", "198.18.100.10-198.18.100.19", "--pool",
            "fd98:18:100::10-fd98:18:100::1f", "--dns", "198.18.100.1", "--vlan", "100", "--mtu", "1400",
        ])
        #expect(made.stdout.contains("lab-vlan") && made.stdout.contains("198.18.100.0/24"), "\(made.stdout)")
        try cp.cli([
            "network", "create", "beta-only", "--cidr", "198.18.101.0/24", "--pool", "198.18.101.10-198.18.101.20",
            "--vlan", "101", "--project", "beta",
        ])
        let shown = try cp.cli(["network", "show", "lab-vlan"]).stdout
        #expect(
            shown.contains("VLAN:        100") && shown.contains("Subnet:      198.18.100.0/24 via 198.18.100.1"),
            "\(shown)"
        )
        #expect(shown.contains("Pool:      198.18.100.10-198.18.100.19 (0 of 10 held)"), "\(shown)")
        let json = try #require(
            try JSONSerialization.jsonObject(
                with: Data(try cp.cli(["network", "show", "lab-vlan", "-o", "json"]).stdout.utf8)
            )
                as? [String: Any]
        )
        #expect(json["vlan"] as? Int == 100 && json["mtu"] as? Int == 1400, "\(json)")
        #expect(try cp.cli(["network", "list", "-o", "name"]).stdout == "beta-only\nlab-vlan\n")

        // Bad input: the field named, the exit status of InvalidArgument (13), nothing made.
        let badCIDR = try cp.cli(
            ["network", "create", "bad", "--cidr", "10.0.0.5/24", "--pool", "10.0.0.9"],
            check: false
        )
        #expect(
            badCIDR.status == 13 && badCIDR.stderr.contains("cidr: '10.0.0.5/24' has host bits set"),
            "\(badCIDR.stderr)"
        )
        let outside = try cp.cli(
            ["network", "create", "bad", "--cidr", "10.0.0.0/24", "--gateway", "10.1.0.1", "--pool", "10.0.0.9"],
            check: false
        )
        #expect(outside.status == 13 && outside.stderr.contains("gateway: 10.1.0.1 is outside cidr 10.0.0.0/24"))
        #expect(
            try cp.cli(["network", "create", "lab-vlan", "--cidr", "10.0.0.0/24", "--pool", "10.0.0.9"], check: false)
                .status == 16
        )
        // A deploy's network plan is checked before anything is sent.
        let typo = try cp.cli(
            [
                "machine", "deploy", "--image", "img", "--project", "alpha", "--network",
                "lab-vlan,adress=198.18.100.12",
            ],
            check: false
        )
        #expect(
            typo.status == 64 && typo.stderr.contains("unknown key 'adress' (valid: on, address, default-route, mtu)"),
            "\(typo.stderr)"
        )

        // A member of alpha: sees lab-vlan (open to all), not beta's; defines and removes nothing.
        let member = try cp.cli(["token", "create", "--project", "alpha"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        #expect(try cp.cli(["network", "list", "-o", "name"], token: member).stdout == "lab-vlan\n")
        #expect(try cp.cli(["network", "show", "beta-only"], token: member, check: false).status == 15)
        let denied = try cp.cli(
            ["network", "create", "mine", "--cidr", "10.9.0.0/24", "--pool", "10.9.0.9"],
            token: member,
            check: false
        )
        #expect(denied.status == 17 && denied.stderr.contains("needs an admin token"), "\(denied.stderr)")
        #expect(try cp.cli(["network", "delete", "lab-vlan"], token: member, check: false).status == 17)

        #expect(try cp.cli(["network", "delete", "beta-only"]).stdout == "network beta-only removed\n")
        #expect(try cp.cli(["network", "delete", "beta-only"], check: false).status == 15)
        #expect(try cp.cli(["network", "list", "-o", "name"]).stdout == "lab-vlan\n")
    }

    @Test func outputExitStatusesArgumentsAndContexts() throws {
        let h = try Harness("cli-output")
        defer { h.cleanup() }
        let cp = ControlPlane(h)
        try cp.start()
        try cp.cli(["project", "create", "alpha", "--description", "first"])
        try cp.cli(["project", "create", "beta"])
        func words(_ text: String) -> [[String]] {
            text.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        }

        // Output: the names alone; a table without its header, with the columns asked for, in
        // their order; JSON lists stay lists. (The server also has its default project.)
        let listed = try #require(
            try JSONSerialization.jsonObject(with: Data(try cp.cli(["project", "list", "-o", "json"]).stdout.utf8))
                as? [[String: Any]]
        )
        let names = listed.compactMap { $0["name"] as? String }
        #expect(names.contains("alpha") && names.contains("beta"), "\(names)")
        #expect(try cp.cli(["project", "list", "-o", "name"]).stdout == names.map { $0 + "\n" }.joined())
        let rows = words(try cp.cli(["project", "list", "--no-headers", "--columns", "machines,NAME"]).stdout)
        #expect(rows == names.map { ["0", $0] }, "\(rows)")
        #expect(
            words(try cp.cli(["project", "show", "alpha", "--columns", "name,description"]).stdout) == [
                ["NAME", "DESCRIPTION"], ["alpha", "first"],
            ]
        )
        #expect(try cp.cli(["project", "show", "alpha", "-o", "name"]).stdout == "alpha\n")

        // A bad column is refused before anything is done, naming the columns there are.
        let badColumn = try cp.cli(["project", "create", "gamma", "--columns", "name,colour"], check: false)
        #expect(badColumn.status == 64, "\(badColumn.status) \(badColumn.stderr)")
        #expect(badColumn.stderr.contains("no column 'colour'") && badColumn.stderr.contains("required-tags"))
        #expect(!(try cp.cli(["project", "list", "-o", "name"]).stdout.contains("gamma")))
        let jsonColumns = try cp.cli(["project", "list", "-o", "json", "--columns", "name"], check: false)
        #expect(jsonColumns.status == 64 && jsonColumns.stderr.contains("shape table output"))

        // Enumerated arguments: refused with the valid values (and offered by completion).
        let badPower = try cp.cli(["machine", "power", "nosuch", "sideways"], check: false)
        #expect(badPower.status == 64 && badPower.stderr.contains("soft-off"), "\(badPower.stderr)")
        let badState = try cp.cli(["machine", "list", "--state", "asleep"], check: false)
        #expect(badState.status == 64 && badState.stderr.contains("exiting-rescue"), "\(badState.stderr)")
        let badWipe = try cp.cli(["project", "create", "delta", "--wipe-policy", "sloppy"], check: false)
        #expect(badWipe.status == 64 && badWipe.stderr.contains("quick"), "\(badWipe.stderr)")
        let bash = try h.run([ControlPlane.bin, "completion", "bash"]).stdout
        #expect(bash.contains("soft-off") && bash.contains("exiting-rescue"))

        // Exit statuses: 10 + the gRPC status code, as `farrier exit-codes` documents.
        let missing = try cp.cli(["machine", "show", "nosuch"], check: false)
        #expect(missing.status == 15 && missing.stderr.contains("notFound"), "\(missing.status) \(missing.stderr)")
        #expect(try cp.cli(["project", "create", "alpha"], check: false).status == 16)
        #expect(try cp.cli(["token", "whoami"], token: "fa_nope", check: false).status == 26)
        let member = try cp.cli(["token", "create", "--project", "alpha"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        let denied = try cp.cli(["project", "create", "epsilon"], token: member, check: false)
        #expect(denied.status == 17 && denied.stderr.contains("permissionDenied"), "\(denied.status) \(denied.stderr)")
        let down = try h.run(
            [ControlPlane.bin, "token", "whoami", "--server", "127.0.0.1:1", "--token", cp.adminToken],
            check: false
        )
        #expect(down.status == 24 && down.stderr.contains("cannot reach"), "\(down.status) \(down.stderr)")
        let help = try h.run([ControlPlane.bin, "help", "exit-codes"]).stdout
        #expect(help.contains("15") && help.contains("notFound") && help.contains("64"), "\(help)")

        // Contexts: in the config file (owner-only), the token by file; the current one applies,
        // --context and FARRIER_CONTEXT pick another, --server beats it.
        let config = h.directory + "/cfg/config.yaml"
        let tokenFile = h.directory + "/admin.token"
        try (cp.adminToken + "\n").write(toFile: tokenFile, atomically: true, encoding: .utf8)
        func farrier(_ args: [String], env: [String] = []) throws -> Harness.Result {
            try h.run(["env", "FARRIER_CONFIG_FILE=\(config)"] + env + [ControlPlane.bin] + args, check: false)
        }
        #expect(
            try farrier(["context", "add", "here", "--server", cp.grpc, "--token-file", tokenFile, "--use"]).status == 0
        )
        #expect(
            try farrier(["context", "add", "gone", "--server", "127.0.0.1:1", "--token-file", tokenFile]).status == 0
        )
        let mode = try FileManager.default.attributesOfItem(atPath: config)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(!(try String(contentsOfFile: config, encoding: .utf8)).contains(cp.adminToken), "the token was copied")
        #expect(try farrier(["token", "whoami", "-o", "json"]).stdout.contains("\"role\" : \"admin\""))
        #expect(try farrier(["token", "whoami", "--context", "gone"]).status == 24)
        #expect(try farrier(["token", "whoami"], env: ["FARRIER_CONTEXT=gone"]).status == 24)
        #expect(try farrier(["context", "list", "-o", "name"]).stdout == "gone\nhere\n")
        #expect(
            words(try farrier(["context", "list", "--no-headers", "--columns", "current,name"]).stdout) == [
                ["gone"], ["*", "here"],
            ]
        )
        #expect(try farrier(["context", "use", "gone"]).status == 0)
        #expect(try farrier(["token", "whoami"]).status == 24)
        // A server given otherwise sets the current context aside: its token is not sent there.
        #expect(try farrier(["token", "whoami", "--server", cp.grpc]).status == 26)
        #expect(try farrier(["token", "whoami", "--server", cp.grpc, "--token", cp.adminToken]).status == 0)
        #expect(
            try farrier(["token", "whoami"], env: ["FARRIER_SERVER=\(cp.grpc)", "FARRIER_TOKEN=\(cp.adminToken)"])
                .status == 0
        )
        #expect(try farrier(["token", "whoami", "--context", "here", "--server", cp.grpc]).status == 64)
        let unknown = try farrier(["context", "use", "nowhere"])
        #expect(unknown.status == 64 && unknown.stderr.contains("gone, here"), "\(unknown.stderr)")
        #expect(try farrier(["context", "add", "Bad Name", "--server", cp.grpc]).status == 64)
        #expect(try farrier(["context", "add", "x", "--server", cp.grpc, "--token-file", "/nonexistent"]).status == 64)
        #expect(try farrier(["context", "rm", "gone"]).status == 0)
        #expect(try farrier(["context", "show", "here", "-o", "name"]).stdout == "here\n")
        #expect(try farrier(["context", "show"]).status == 1, "no current context after removing it")
    }
}
