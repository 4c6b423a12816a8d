import Foundation
import IPMIWire
import Logging
import Synchronization

/// Credentials and options for one IPMI BMC.
public struct IPMIEndpoint: Sendable, Hashable {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    /// Force a cipher suite (3 or 17); nil: ask the BMC and prefer 17.
    public var cipherSuite: UInt8?
    public var privilege: IPMIPrivilege
    public var timeouts: BMCTimeouts
    /// Idle time after which the session gets a keep-alive (BMCs drop idle sessions; some after 30 s).
    public var keepAlive: Duration

    public init(
        host: String,
        port: Int = 623,
        user: String,
        password: String,
        cipherSuite: UInt8? = nil,
        privilege: IPMIPrivilege = .administrator,
        timeouts: BMCTimeouts = BMCTimeouts(),
        keepAlive: Duration = .seconds(10)
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.cipherSuite = cipherSuite
        self.privilege = privilege
        self.timeouts = timeouts
        self.keepAlive = keepAlive
    }

    public var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// An IPMI v2.0 over LAN (RMCP+) BMC driver.
///
/// One operation at a time; the main session is made on first use, kept alive while idle, and
/// made again if the BMC stops answering (for example after it restarted). A console takes a
/// second session, so a BMC never sees more than 2 from Farrier.
public final class IPMIClient: BMC, Sendable {
    public let endpointConfiguration: IPMIEndpoint
    let logger: Logger
    let gate = SerialGate()
    let session = Mutex<IPMISession?>(nil)
    let keepAliveTask = Mutex<Task<Void, Never>?>(nil)

    public init(_ endpoint: IPMIEndpoint, logger: Logger = Logger(label: "farrier.ipmi")) {
        self.endpointConfiguration = endpoint
        var l = logger
        l[metadataKey: "bmc"] = "\(endpoint.address)"
        self.logger = l
    }

    public var address: String { endpointConfiguration.address }

    // MARK: Operations

    public func info() async throws -> BMCInfo {
        let r = try await command("Get Device ID") { IPMICommand.getDeviceID(sequence: $0) }
        let id = try decode { try DeviceID(decoding: r.data) }
        var details = [
            "ipmi_version": id.ipmiVersionString, "cipher_suite": "\(session.withLock { $0?.suite.id } ?? 0)",
        ]
        details["asf_presence"] = await presence()
        return BMCInfo(
            driver: "ipmi",
            address: address,
            manufacturer: "IANA \(id.manufacturerID)",
            model: "product \(id.productID) device \(id.deviceID)",
            firmware: id.firmwareString,
            details: details
        )
    }

    /// RMCP/ASF Presence Ping on a socket of its own: "ipmi" if the pong says IPMI is supported,
    /// "no-ipmi" if it does not, "none" if nothing answers (many BMCs ignore ASF).
    public func presence() async -> String {
        guard
            let udp = try? await UDPEndpoint.connect(host: endpointConfiguration.host, port: endpointConfiguration.port)
        else {
            return "none"
        }
        defer { Task { await udp.close() } }
        let tag = UInt8.random(in: 0...254)
        let pong = try? await exchange(udp, ASFPresencePing(tag: tag).encoded(), what: "ASF Presence Ping", retries: 1)
        { bytes in
            guard case .asfPong(let p) = try? IPMIDatagram(decoding: bytes), p.tag == tag else {
                return nil as ASFPresencePong?
            }
            return p
        }
        guard let pong else { return "none" }
        return pong.supportsIPMI ? "ipmi" : "no-ipmi"
    }

    public func powerState() async throws -> PowerState {
        let r = try await command("Get Chassis Status") { IPMICommand.getChassisStatus(sequence: $0) }
        return try decode { try ChassisStatus(decoding: r.data) }.powerOn ? .on : .off
    }

    public func power(_ action: PowerAction) async throws {
        let control: ChassisControl =
            switch action {
            case .on: .powerUp
            case .off: .powerDown
            case .cycle: .powerCycle
            case .reset: .hardReset
            case .softOff: .softShutdown
            }
        _ = try await command("Chassis Control \(action.rawValue)", unsupported: "power \(action.rawValue)") {
            IPMICommand.chassisControl(control, sequence: $0)
        }
    }

    public func setBootOverride(_ override: BootOverride) async throws {
        let flags = IPMIBootFlags(
            device: override.device == .pxe ? .pxe : .disk,
            persistent: override.persistent,
            efi: override.efi
        )
        try await withLiveSession { s in
            // ipmitool's sequence: set-in-progress, clear the boot-info acknowledge, the flags,
            // then done. Only the flags must succeed: some BMCs (ipmi_sim) refuse parameter 0.
            _ = try? await s.send(
                { IPMICommand.setSystemBootOptions(parameter: 0, data: [0x01], sequence: $0) },
                what: "Set System Boot Options"
            )
            _ = try? await s.send(
                { IPMICommand.setSystemBootOptions(parameter: 4, data: [0x01, 0x01], sequence: $0) },
                what: "Set System Boot Options"
            )
            let r = try await s.send(
                { IPMICommand.setSystemBootOptions(parameter: 5, data: flags.encoded(), sequence: $0) },
                what: "Set System Boot Options"
            )
            try self.check(r, operation: "boot device \(override.device.rawValue)")
            _ = try? await s.send(
                { IPMICommand.setSystemBootOptions(parameter: 0, data: [0x00], sequence: $0) },
                what: "Set System Boot Options"
            )
        }
    }

    public func bootOverride() async throws -> BootOverride? {
        let r = try await command("Get System Boot Options", unsupported: "reading the boot device") {
            IPMICommand.getSystemBootOptions(parameter: 5, sequence: $0)
        }
        let flags = try decode { try IPMIBootFlags(decodingResponse: r.data) }
        switch flags.device {
        case .pxe: return BootOverride(device: .pxe, persistent: flags.persistent, efi: flags.efi)
        case .disk: return BootOverride(device: .disk, persistent: flags.persistent, efi: flags.efi)
        default: return nil
        }
    }

    public func openConsole() async throws -> any ConsoleSession {
        // A session of its own: SOL traffic must not queue behind power operations.
        let s = try await establish()
        do {
            let r = try await s.send(
                {
                    IPMICommand.activateSOL(
                        encrypted: s.suite.confidentiality != .none,
                        authenticated: true,
                        sequence: $0
                    )
                },
                what: "Activate Payload"
            )
            if r.completionCode.rawValue == 0x80 {
                throw BMCError(.rejected, address: address, "BMC \(address): a serial console is already active on it")
            }
            try check(r, operation: "serial over LAN")
            let activation = try decode {
                try SOLActivation(decoding: r.data, requestPort: UInt16(endpointConfiguration.port))
            }
            return SOLConsole(session: s, activation: activation, logger: logger)
        } catch {
            await s.close()
            throw error
        }
    }

    public func close() async {
        keepAliveTask.withLock { $0?.cancel() }
        let s = session.withLock { s -> IPMISession? in
            defer { s = nil }
            return s
        }
        await s?.close()
    }

    // MARK: Plumbing

    func decode<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            throw BMCError(.protocolError, address: address, "BMC \(address) sent an invalid answer: \(error)")
        }
    }

    func check(_ r: IPMIResponse, operation: String) throws {
        switch r.completionCode.rawValue {
        case 0x00: return
        case 0xC1: throw BMCError.unsupported(address, operation: operation, detail: "\(r.completionCode)")
        case 0xCC where operation.hasPrefix("power"):
            throw BMCError.unsupported(address, operation: operation, detail: "\(r.completionCode)")
        case 0xD4:
            throw BMCError(
                .rejected,
                address: address,
                "BMC \(address) refused \(operation): insufficient privilege for user \(endpointConfiguration.user)"
            )
        default: throw BMCError(.rejected, address: address, "BMC \(address) refused \(operation): \(r.completionCode)")
        }
    }

    /// Runs `body` with the main session, under the per-BMC gate. If the session is dead (the
    /// BMC stopped answering it, say after a restart or a session timeout), it is made again
    /// once and `body` runs again: every operation here is idempotent.
    func withLiveSession<T: Sendable>(_ body: @escaping @Sendable (IPMISession) async throws -> T) async throws -> T {
        try await gate.run {
            let s = try await self.withSession()
            do {
                return try await body(s)
            } catch let e as BMCError where e.kind == .timeout {
                self.logger.info("BMC session stopped answering; making a new one", metadata: ["error": "\(e)"])
                self.drop(s)
                return try await body(try await self.withSession())
            }
        }
    }

    /// Runs one command in the main session (see `withLiveSession`).
    func command(
        _ what: String,
        unsupported: String? = nil,
        _ make: @escaping @Sendable (UInt8) -> IPMIRequest
    ) async throws -> IPMIResponse {
        let r: IPMIResponse = try await withLiveSession { s in try await s.send(make, what: what) }
        if let unsupported { try check(r, operation: unsupported) } else { try check(r, operation: what) }
        return r
    }

    func drop(_ s: IPMISession) {
        session.withLock { if $0 === s { $0 = nil } }
        Task { await s.close() }
    }

    func withSession() async throws -> IPMISession {
        if let s = session.withLock({ $0 }) { return s }
        let s = try await establish()
        session.withLock { $0 = s }
        startKeepAlive()
        return s
    }

    func startKeepAlive() {
        let interval = endpointConfiguration.keepAlive
        keepAliveTask.withLock { task in
            guard task == nil else { return }
            task = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval / 3)
                    guard let self, let s = self.session.withLock({ $0 }) else { return }
                    guard ContinuousClock.now - s.lastUsed.withLock({ $0 }) >= interval else { continue }
                    // Get Device ID, as ipmitool's keep-alive does; errors surface on the next real command.
                    _ = try? await self.gate.run {
                        try await s.send({ IPMICommand.getDeviceID(sequence: $0) }, what: "keep-alive")
                    }
                }
            }
        }
    }
}
