/// The vendor-data that makes an installed OS report in (issue 18 point 10): cloud-init's
/// vendor-data as MIME multipart, Farrier's cloud-config as before plus a shell script that
/// cloud-init runs once per instance (scripts-vendor, in cloud-final). The script installs a
/// root-only file with the OS token, the agent channel's URL and its certificate's SHA-256, a
/// small python3 reporter, and a systemd unit ordered after cloud-final and SSH that runs it
/// on every boot (`Type=simple`: nothing waits for it, and the boot is finished while it
/// retries). The reporter waits (at most five minutes) for SSH to answer on port
/// 22, then posts the boot ID to `AgentAPI.osReady` over TLS, pinning the certificate as the
/// agent does (no CA: the channel's certificate is self-issued), retrying with a growing pause
/// (5 s up to 30 s) for at most an hour, the deploy step's default timeout: a region or a site
/// link away for a while delays the report, it does not lose it.
///
/// The unit is also ordered after `multi-user.target`: it is wanted by that target, which
/// would otherwise be ordered after it, while Debian's and Ubuntu's `cloud-final.service` is
/// ordered after `multi-user.target`, a cycle systemd breaks by dropping a job, on every boot
/// after the first.
///
/// cloud-init's own `phone_home` is not used: it runs once per instance, posts fixed fields,
/// and verifies TLS against CAs, which the agent channel's certificate is not signed by.
/// A pure function of its inputs.
public enum OSReportScript {
    public struct Refusal: Error, CustomStringConvertible {
        public let description: String
    }

    static let boundary = "==farrier-vendor-data=="

    /// `cloudConfig` (a `#cloud-config` document) and the reporter, as one multipart document.
    /// `url` is the agent channel (`https://HOST:PORT`), `certificateSHA256` its leaf's SHA-256
    /// in hex (optionally `sha256:`). Values with characters outside a safe set are refused,
    /// as they go into a shell script.
    public static func vendorData(
        cloudConfig: String,
        url: String,
        certificateSHA256: String,
        token: String
    ) throws(Refusal) -> String {
        let pin = certificateSHA256.hasPrefix("sha256:") ? String(certificateSHA256.dropFirst(7)) : certificateSHA256
        guard pin.count == 64, pin.allSatisfy(\.isHexDigit) else {
            throw Refusal(description: "the certificate's SHA-256 is not 64 hex digits")
        }
        guard url.hasPrefix("https://"), safe(url, extra: ":/[].-") else {
            throw Refusal(description: "the agent channel URL '\(url)' is not https://HOST:PORT")
        }
        guard !token.isEmpty, safe(token, extra: ".-_") else {
            throw Refusal(description: "the OS token has characters outside [A-Za-z0-9._-]")
        }
        let settings = "{\"url\": \"\(url)\", \"sha256\": \"\(pin.lowercased())\", \"token\": \"\(token)\"}"
        return """
            Content-Type: multipart/mixed; boundary="\(boundary)"
            MIME-Version: 1.0

            --\(boundary)
            Content-Type: text/cloud-config; charset="us-ascii"

            \(cloudConfig.hasSuffix("\n") ? cloudConfig : cloudConfig + "\n")
            --\(boundary)
            Content-Type: text/x-shellscript; charset="us-ascii"

            \(script(settings: settings))
            --\(boundary)--

            """
    }

    static func safe(_ s: String, extra: String) -> Bool {
        s.unicodeScalars.allSatisfy { c in
            c.isASCII
                && (("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c)
                    || extra.unicodeScalars.contains(c))
        }
    }

    static func script(settings: String) -> String {
        """
        #!/bin/sh
        # Farrier: report to Farrier once this OS is up, on every boot, so that "deployed" (and
        # a restart) means SSH answers. Installed by Farrier's vendor-data; runs once per instance.
        set -e
        umask 077
        mkdir -p /etc/farrier /usr/local/lib/farrier
        cat > /etc/farrier/os-report.json <<'FARRIER_EOF'
        \(settings)
        FARRIER_EOF
        cat > /usr/local/lib/farrier/os-report <<'FARRIER_EOF'
        \(reporter)
        FARRIER_EOF
        chmod 0700 /usr/local/lib/farrier/os-report
        umask 022
        cat > /etc/systemd/system/farrier-os-report.service <<'FARRIER_EOF'
        [Unit]
        Description=Report to Farrier that this OS is up
        After=multi-user.target cloud-final.service ssh.service network-online.target
        Wants=network-online.target

        [Service]
        Type=simple
        ExecStart=/usr/bin/python3 /usr/local/lib/farrier/os-report
        RuntimeMaxSec=4200

        [Install]
        WantedBy=multi-user.target
        FARRIER_EOF
        systemctl daemon-reload
        systemctl enable farrier-os-report.service
        # Not waited for: it is ordered after cloud-final, which runs this script.
        systemctl start --no-block farrier-os-report.service
        """
    }

    /// The reporter (python3, which cloud-init itself needs). Exit 0 once Farrier has the
    /// report; 1 when an hour passes without it.
    static let reporter = """
        import hashlib, http.client, json, socket, ssl, sys, time, urllib.parse
        settings = json.load(open("/etc/farrier/os-report.json"))
        target = urllib.parse.urlsplit(settings["url"])
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        # Reported once SSH answers: that is what "deployed" promises. An SSH server that
        # listens elsewhere only delays the report by the five minutes.
        ssh_deadline = time.monotonic() + 300
        while time.monotonic() < ssh_deadline:
            try:
                socket.create_connection(("127.0.0.1", 22), timeout=2).close()
                break
            except OSError:
                time.sleep(1)
        else:
            print("farrier: nothing answers on 127.0.0.1:22; reporting anyway", file=sys.stderr)
        deadline = time.monotonic() + 3600
        pause = 5
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # pinned below, as the agent pins it
        body = json.dumps({"bootID": boot})
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPSConnection(target.hostname, target.port or 443, context=context, timeout=10)
                c.connect()
                if hashlib.sha256(c.sock.getpeercert(binary_form=True)).hexdigest() != settings["sha256"]:
                    raise OSError("the server's certificate is not the one Farrier handed this OS")
                c.request("POST", "/os/v1/ready", body=body, headers={
                    "Authorization": "Bearer " + settings["token"], "Content-Type": "application/json"})
                r = c.getresponse()
                answer = r.read(4096).decode("utf-8", "replace").strip()
                c.close()
                if r.status == 200:
                    print("farrier: reported in (boot %s)" % boot)
                    sys.exit(0)
                print("farrier: report refused: %d %s" % (r.status, answer), file=sys.stderr)
            except (OSError, http.client.HTTPException) as e:
                print("farrier: report failed: %s" % e, file=sys.stderr)
            time.sleep(pause)
            pause = min(30, pause * 2)
        sys.exit(1)
        """
}
