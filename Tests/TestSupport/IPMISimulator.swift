import Foundation

/// An OpenIPMI `ipmi_sim` BMC on 127.0.0.1 (of `namespace`, if given), with a chassis_control
/// program that keeps power and boot device in files, and a serial port (for SOL) that is a
/// small TCP echo service.
public struct IPMISimulator: Sendable {
    public let h: Harness
    public let port: Int
    public let solPort: Int
    public let dir: String
    /// The network namespace it runs in (nil: the test's own).
    public let namespace: String?
    public static let user = "admin"
    public static let password = "s3cret-pw"

    public static var available: Bool {
        Harness.canRun && FileManager.default.isExecutableFile(atPath: "/usr/bin/ipmi_sim")
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/ipmitool")
    }

    public static func freePort(udp: Bool) -> Int {
        // Below Linux's ephemeral range (32768 on), random: collisions are retried by the
        // caller's start check.
        Int.random(in: 20000..<32000) + (udp ? 0 : 1)
    }

    public init(_ h: Harness, name: String = "bmc", namespace: String? = nil) throws {
        self.h = h
        self.namespace = namespace
        port = Self.freePort(udp: true)
        solPort = Self.freePort(udp: false)
        dir = h.directory + "/" + name
        try FileManager.default.createDirectory(atPath: dir + "/state", withIntermediateDirectories: true)
        try write(
            "chassis.sh",
            mode: 0o755,
            """
            #!/bin/sh
            # ipmi_sim chassis_control: <mc> get power|boot, <mc> set power 0|1 reset 1 shutdown 1 boot DEV
            D=\(dir)
            echo "$*" >> $D/chassis.log
            dev=$1; op=$2; shift 2
            case $op in
             get) while [ -n "$1" ]; do case $1 in
                    power) echo "power:$(cat $D/power 2>/dev/null || echo 0)";;
                    boot) echo "boot:$(cat $D/boot 2>/dev/null || echo default)";;
                    *) echo "Invalid parameter: $1"; exit 1;; esac; shift; done;;
             set) while [ -n "$1" ]; do p=$1; v=$2; shift 2; case $p in
                    power) echo "$v" > $D/power;;
                    reset) echo reset >> $D/events;;
                    shutdown) echo 0 > $D/power; echo shutdown >> $D/events;;
                    boot) echo "$v" > $D/boot;;
                    identify) shift;;
                    *) echo "Invalid parameter: $p"; exit 1;; esac; done;;
             check) exit 0;;
             *) exit 1;;
            esac
            exit 0

            """
        )
        try write(
            "bmc.emu",
            mode: 0o644,
            """
            mc_setbmc 0x20
            mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
            mc_enable 0x20

            """
        )
        try write(
            "lan.conf",
            mode: 0o600,
            """
            name "farrier-test"
            set_working_mc 0x20
              startlan 1
                addr 127.0.0.1 \(port)
                priv_limit admin
                allowed_auths_callback none md2 md5 straight
                allowed_auths_user none md2 md5 straight
                allowed_auths_operator none md2 md5 straight
                allowed_auths_admin none md2 md5 straight
                guid a1a2a3a4b1b2c1c2d1d2e1e2e3e4e5e6
              endlan
              chassis_control "\(dir)/chassis.sh 0x20"
              sol "telnet:127.0.0.1:\(solPort)" 115200
              user 2 true "\(Self.user)" "\(Self.password)" admin 10 none md2 md5 straight

            """
        )
        try write("password", mode: 0o600, Self.password)
        // The serial port's far end: says hello, then echoes each line back upper-cased.
        try write(
            "serial.py",
            mode: 0o644,
            """
            import socket, sys
            srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(4)
            while True:
                c, _ = srv.accept()
                c.sendall(b"farrier-serial ready\\r\\n")
                buf = b""
                while True:
                    d = c.recv(1024)
                    if not d: break
                    print("recv", repr(d), flush=True)
                    # ipmi_sim connects with telnet: answer its option negotiation (IAC cmd opt;
                    # DO/WILL agreed, DONT/WONT confirmed) and keep only the data bytes.
                    reply = {0xfd: 0xfb, 0xfb: 0xfd, 0xfe: 0xfc, 0xfc: 0xfe}
                    while b"\\xff" in d:
                        i = d.index(b"\\xff")
                        if i + 2 < len(d) and d[i+1] in reply:
                            c.sendall(bytes([0xff, reply[d[i+1]], d[i+2]]))
                        d = d[:i] + d[i+3:]
                    buf += d
                    while b"\\r" in buf or b"\\n" in buf:
                        i = min(x for x in (buf.find(b"\\r"), buf.find(b"\\n")) if x >= 0)
                        line, buf = buf[:i], buf[i+1:]
                        if line: c.sendall(b"echo:" + line.upper() + b"\\r\\n")
                c.close()

            """
        )
    }

    func write(_ name: String, mode: Int, _ text: String) throws {
        try text.write(toFile: dir + "/" + name, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: dir + "/" + name)
    }

    public var passwordFile: String { dir + "/password" }

    @discardableResult
    public func start(log: String? = nil) throws -> Process {
        let log = log ?? "ipmi_sim-\(port).log"
        let p = try h.start(
            inNamespace + ["ipmi_sim", "-c", dir + "/lan.conf", "-f", dir + "/bmc.emu", "-s", dir + "/state", "-n"],
            log: log
        )
        // Up when ipmitool gets an answer.
        try h.waitUntil("ipmi_sim on port \(port)", timeout: 15, interval: 0.2) {
            guard p.isRunning else { throw Harness.CommandError(description: "ipmi_sim exited: \(h.read(log))") }
            return (try? ipmitool(["mc", "info"], timeout: 5)) != nil
        }
        return p
    }

    public func startSerial() throws {
        try h.start(inNamespace + ["python3", dir + "/serial.py", String(solPort)], log: "serial.log")
    }

    /// The prefix that runs a command in `namespace`.
    var inNamespace: [String] { namespace.map { ["ip", "netns", "exec", $0] } ?? [] }

    /// Runs ipmitool against the simulator with cipher suite 3, the independent check.
    @discardableResult
    public func ipmitool(_ args: [String], timeout: Double = 15) throws -> String {
        try h.run(
            inNamespace + [
                "ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", String(port), "-U", Self.user, "-f",
                passwordFile,
                "-R", "2", "-N", "1",
            ] + args,
            timeout: timeout
        ).stdout
    }

    public var chassisLog: String { (try? String(contentsOfFile: dir + "/chassis.log", encoding: .utf8)) ?? "" }
    public var events: String { (try? String(contentsOfFile: dir + "/events", encoding: .utf8)) ?? "" }
}
