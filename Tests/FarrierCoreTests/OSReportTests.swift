import FarrierCore
import Foundation
import Testing

/// "Deployed" means the OS reported in (issue 18 point 10): the vendor-data that carries the
/// reporter, which deployments are tracked, and the boot a deploy waits in.
struct OSReportTests {
    static let pin = String(repeating: "ab", count: 32)
    static let url = "https://198.18.0.1:8443"
    static let token = "3f2a0c9e-1b7d-4e55-9a61-0d4c2b8e7f10.i-0123456789abcdef0.AbC_d-9"

    @Test func vendorDataCarriesTheCloudConfigAndTheReporter() throws {
        let v = try OSReportScript.vendorData(
            cloudConfig: "#cloud-config\ndisable_root: false\n",
            url: Self.url,
            certificateSHA256: "sha256:" + Self.pin.uppercased(),
            token: Self.token
        )
        #expect(
            v.hasPrefix("Content-Type: multipart/mixed; boundary=\"==farrier-vendor-data==\"\nMIME-Version: 1.0\n\n")
        )
        let parts = v.components(separatedBy: "--==farrier-vendor-data==")
        // Preamble, the cloud-config, the script, and the closing "--".
        try #require(parts.count == 4, "\(v)")
        #expect(parts[1].hasPrefix("\nContent-Type: text/cloud-config; charset=\"us-ascii\"\n\n#cloud-config\n"))
        #expect(parts[1].contains("disable_root: false"))
        #expect(parts[2].hasPrefix("\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\n\n#!/bin/sh\n"))
        #expect(parts[3] == "--\n")
        // The settings: one JSON line between heredoc markers, the pin lowercased without its prefix.
        let settingsText = try #require(
            parts[2].components(separatedBy: "cat > /etc/farrier/os-report.json <<'FARRIER_EOF'\n").last?
                .components(separatedBy: "\nFARRIER_EOF").first
        )
        let settings = try #require(
            try JSONSerialization.jsonObject(with: Data(settingsText.utf8)) as? [String: String]
        )
        #expect(settings == ["url": Self.url, "sha256": Self.pin, "token": Self.token])
        // Every heredoc is closed, each marker alone on its line; the unit runs on every boot
        // after cloud-final and SSH, started without waiting for cloud-final (which runs it).
        let lines = parts[2].split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.filter { $0.hasSuffix("<<'FARRIER_EOF'") }.count == 3)
        #expect(lines.filter { $0 == "FARRIER_EOF" }.count == 3)
        // Wanted by multi-user.target and ordered after it: Debian's cloud-final is ordered
        // after multi-user.target, so without it the unit would close an ordering cycle.
        #expect(parts[2].contains("\nAfter=multi-user.target cloud-final.service ssh.service network-online.target\n"))
        #expect(parts[2].contains("\nWantedBy=multi-user.target\n"))
        #expect(parts[2].contains("systemctl start --no-block farrier-os-report.service"))
        #expect(parts[2].contains("chmod 0700 /usr/local/lib/farrier/os-report"))
        #expect(parts[2].contains("umask 077\n"))
        // The reporter posts to the report endpoint and checks the certificate's SHA-256.
        #expect(parts[2].contains("\"/os/v1/ready\""))
        #expect(parts[2].contains("hashlib.sha256(c.sock.getpeercert(binary_form=True)).hexdigest()"))
        #expect(AgentAPI.osReady == "/os/v1/ready")
    }

    @Test func valuesThatCouldBreakTheScriptAreRefused() {
        func refusal(url: String = Self.url, pin: String = Self.pin, token: String = Self.token) -> String? {
            do {
                _ = try OSReportScript.vendorData(
                    cloudConfig: "#cloud-config\n",
                    url: url,
                    certificateSHA256: pin,
                    token: token
                )
                return nil
            } catch {
                return error.description
            }
        }
        #expect(refusal() == nil)
        #expect(refusal(pin: "abc") == "the certificate's SHA-256 is not 64 hex digits")
        #expect(refusal(pin: String(repeating: "zz", count: 32)) == "the certificate's SHA-256 is not 64 hex digits")
        #expect(
            refusal(url: "http://198.18.0.1:8443")
                == "the agent channel URL 'http://198.18.0.1:8443' is not https://HOST:PORT"
        )
        #expect(refusal(url: "https://h:1/$(reboot)")?.contains("is not https://HOST:PORT") == true)
        for token in ["", "a b", "a\"b", "a'b", "a\nFARRIER_EOF\nreboot", "a$b", "tök"] {
            #expect(refusal(token: token) == "the OS token has characters outside [A-Za-z0-9._-]", "\(token)")
        }
    }

    @Test func deploymentsAreTrackedUnlessUserDataTurnsVendorDataOff() {
        func deployment(_ userData: String) -> Deployment {
            Deployment(image: "i", imageSHA256: "s", sshKeys: [], userData: userData, hostname: "h", requestedBy: "t")
        }
        #expect(deployment("").os == OSReport(bootID: nil, reported: nil, awaiting: true))
        #expect(deployment("#cloud-config\nruncmd: [ls]\n").os != nil)
        #expect(deployment("#cloud-config\nvendor_data: {enabled: false}\n").os == nil)
        #expect(deployment("#cloud-config\n# no vendor_data here\nruncmd: [ls]\n").os != nil)
    }

    @Test func aDeployWaitingForItsOSBootsTheDisk() {
        #expect(Lifecycle.nextBoot(.deploying, phase: .os) == .disk)
        #expect(Lifecycle.nextBoot(.exitingRescue, phase: .os) == .disk)
        #expect(Lifecycle.nextBoot(.deploying, phase: .agent) == .ramdisk)
    }
}
