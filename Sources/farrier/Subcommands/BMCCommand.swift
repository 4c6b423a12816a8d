import ArgumentParser
import FarrierBMC
import FarrierCore
import Foundation

/// Talks to BMCs directly, without a server: for debugging a BMC before enrolling it, and for
/// sweeping many at once.
struct BMCCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bmc",
        abstract: "Talk to a BMC directly (no server): power, boot device, console, info; named credentials.",
        subcommands: [Power.self, Bootdev.self, Console.self, Info.self, Credential.self]
    )

    struct Target: ParsableArguments {
        @Option(
            name: .customLong("address"),
            help:
                "BMC: HOST[:PORT] for IPMI, or a URL (ipmi://, redfish://, redfish+http://). Repeat to act on several."
        )
        var addresses: [String] = []
        @Option(help: "File with one BMC address per line (for sweeps).") var targetsFile: String?
        @Option(help: "BMC user.") var user: String = "admin"
        @Option(help: "File holding the BMC password ('-' for stdin).") var passwordFile: String
        @Option(help: "IPMI cipher suite: 3 or 17 (default: ask the BMC, prefer 17).") var cipherSuite: UInt8?
        @Option(help: "Seconds to wait for one answer before retrying.") var timeout: Double = 0.5
        @Option(help: "Retries per request.") var retries: Int = 7
        @Flag(help: "Redfish over HTTPS: do not verify the certificate.") var insecureTLS = false

        func references() throws -> [BMCReference] {
            var all = addresses
            if let targetsFile {
                guard let text = try? String(contentsOfFile: targetsFile, encoding: .utf8) else {
                    throw CLIError("cannot read targets file \(targetsFile)")
                }
                all += text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter {
                    !$0.isEmpty && !$0.hasPrefix("#")
                }
            }
            guard !all.isEmpty else { throw ValidationError("give --address (or --targets-file)") }
            return try all.map { a in
                let url = a.contains("://") ? a : "ipmi://\(user)@\(a)"
                // A URL with its own user keeps it; one without gets --user.
                let withUser = url.contains("@") ? url : url.replacingOccurrences(of: "://", with: "://\(user)@")
                do { return try BMCReference(url: withUser, insecureTLS: insecureTLS) } catch {
                    throw ValidationError("\(error)")
                }
            }
        }

        func make(_ r: BMCReference, password: String) -> any BMC {
            let timeouts = BMCTimeouts(
                attempt: .milliseconds(Int(timeout * 1000)),
                retries: retries,
                operation: .milliseconds(Int(timeout * 1000) * (retries + 1) * 4 + 2000)
            )
            return BMCPool.make(r, password: password, timeouts: timeouts, cipherSuite: cipherSuite)
        }

        func single() throws -> (any BMC) {
            let refs = try references()
            guard refs.count == 1 else { throw ValidationError("this command takes one BMC") }
            return make(refs[0], password: try readPasswordFile(passwordFile))
        }
    }

    struct Power: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "power",
            abstract: "Power status or action. With several BMCs, runs them in parallel and prints one line each."
        )
        @OptionGroup var target: Target
        @Argument(help: "The power reading (status) or an action.") var action: PowerVerb = .status
        @Option(help: "BMCs handled at once when there are several.") var parallel: Int = 32

        func run() async throws {
            let act = action.action
            let refs = try target.references()
            let password = try readPasswordFile(target.passwordFile)
            let target = self.target
            if refs.count == 1 {
                let bmc = target.make(refs[0], password: password)
                defer { Task { await bmc.close() } }
                if let act { try await bmc.power(act) }
                let state = try await bmc.powerState()
                print(act == nil ? "power \(state.rawValue)" : "\(action.rawValue): ok, power \(state.rawValue)")
                await bmc.close()
                return
            }
            // A sweep: bounded parallelism, one line per BMC, a summary on stderr.
            let width = max(1, parallel)
            var failures = 0
            var latencies: [Double] = []
            try await withThrowingTaskGroup(of: (String, String, Double).self) { group in
                var next = 0
                func launch() {
                    let r = refs[next]
                    next += 1
                    group.addTask {
                        let bmc = target.make(r, password: password)
                        let start = ContinuousClock.now
                        var line: String
                        do {
                            if let act { try await bmc.power(act) }
                            line = try await bmc.powerState().rawValue
                        } catch {
                            line = "error: \(error)"
                        }
                        let elapsed = ContinuousClock.now - start
                        await bmc.close()
                        let ms =
                            Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
                        return (r.address, line, ms)
                    }
                }
                while next < min(width, refs.count) { launch() }
                while let (address, line, ms) = try await group.next() {
                    print("\(address) \(line) \(String(format: "%.1fms", ms))")
                    if line.hasPrefix("error") { failures += 1 }
                    latencies.append(ms)
                    if next < refs.count { launch() }
                }
            }
            latencies.sort()
            let p99 = latencies[min(latencies.count - 1, Int((Double(latencies.count) * 0.99).rounded(.up)) - 1)]
            FileHandle.standardError.write(
                Data("\(refs.count) BMCs, \(failures) failed, p99 \(String(format: "%.1f", p99)) ms\n".utf8)
            )
            if failures > 0 { throw ExitCode(1) }
        }
    }

    struct Bootdev: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bootdev",
            abstract: "Set the boot device override."
        )
        @OptionGroup var target: Target
        @Argument(help: "The device to boot from.") var device: BootDevice
        @Flag(help: "Every boot, not only the next one.") var persistent = false
        @Flag(help: "UEFI boot (default: legacy BIOS).") var efi = false

        func run() async throws {
            let dev = device
            let bmc = try target.single()
            do {
                try await bmc.setBootOverride(BootOverride(device: dev, persistent: persistent, efi: efi))
            } catch {
                await bmc.close()
                throw error
            }
            await bmc.close()
            print(
                "boot device \(device.rawValue)\(persistent ? " (persistent)" : " (next boot)")\(efi ? ", UEFI" : "")"
            )
        }
    }

    struct Info: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "info",
            abstract: "What the BMC says about itself."
        )
        @OptionGroup var target: Target

        func run() async throws {
            let bmc = try target.single()
            let info: BMCInfo
            do { info = try await bmc.info() } catch {
                await bmc.close()
                throw error
            }
            await bmc.close()
            print(try json(info))
        }
    }

    struct Console: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "console",
            abstract: "Attach to the serial console (IPMI SOL). ~. detaches."
        )
        @OptionGroup var target: Target

        func run() async throws {
            let bmc = try target.single()
            let console: any ConsoleSession
            do { console = try await bmc.openConsole() } catch {
                await bmc.close()
                throw error
            }
            let terminal = TerminalConsole()
            terminal.note("[serial console of \(bmc.address); ~. detaches]")
            await withTaskGroup(of: Void.self) { group in
                group.addTask { for await chunk in console.output { terminal.show(chunk) } }
                group.addTask { for await chunk in terminal.input { try? await console.write(chunk) } }
                await group.next()
                group.cancelAll()
            }
            await console.close()
            await bmc.close()
            terminal.restore()
            terminal.note("[detached]")
        }
    }
}
