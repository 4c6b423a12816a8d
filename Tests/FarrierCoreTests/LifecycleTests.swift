import FarrierCore
import Foundation
import Testing

/// Every state × event pair of the lifecycle, against an explicit table of what is allowed.
@Suite struct LifecycleTests {
    typealias S = MachineState

    /// The allowed transitions: (from, event) → to. Everything else must be refused.
    static let allowed: [S: [String: S]] = [
        .discovered: ["enroll": .enrolled],
        .enrolled: ["enroll": .enrolled, "commission": .commissioning, "adopt": .deployed],
        .commissioning: ["step-succeeded": .ready, "step-failed": .failed],
        .ready: ["commission": .commissioning, "deploy": .deploying],
        .deploying: ["step-succeeded": .deployed, "step-failed": .failed],
        .deployed: ["release": .releasing, "rescue": .rescuing],
        .releasing: ["step-succeeded": .ready, "step-failed": .failed],
        .rescuing: ["step-succeeded": .rescue, "step-failed": .failed],
        .rescue: ["exit-rescue": .exitingRescue, "release": .releasing],
        .exitingRescue: ["step-succeeded": .deployed, "step-failed": .failed],
        .failed: ["retry": .deploying, "abort": .enrolled],  // for a failed deploy; see below
    ]

    @Test func everyStateAndEventPair() {
        var checked = 0
        for state in S.allCases {
            for event in Lifecycle.Event.all {
                let status = Lifecycle.Status(state: state, failedStep: state == .failed ? .deploying : nil)
                let result = Lifecycle.apply(event, to: status)
                let expected = Self.allowed[state]?[event.description]
                switch result {
                case .success(let next):
                    #expect(
                        next.state == expected,
                        "\(state) --\(event)--> \(next.state), expected \(String(describing: expected))"
                    )
                    #expect(!next.reason.isEmpty)
                case .failure(let refusal):
                    #expect(expected == nil, "\(state) --\(event)--> refused: \(refusal)")
                    #expect(
                        refusal.description.contains(state.rawValue) && refusal.description.contains(event.description)
                    )
                }
                checked += 1
            }
        }
        #expect(checked == S.allCases.count * Lifecycle.Event.all.count)
    }

    @Test func adoptionMarksTheDiskDirty() throws {
        let adopted = try Lifecycle.apply(.adopt, to: .init(state: .enrolled)).get()
        #expect(adopted.state == .deployed && adopted.diskDirty)
    }

    @Test func failureRecordsTheStepAndRetryOrAbortLeaveIt() throws {
        for step in Lifecycle.steps {
            let failed = try Lifecycle.apply(.stepFailed(reason: "timeout after 600 s"), to: .init(state: step)).get()
            #expect(failed.state == .failed && failed.failedStep == step)
            #expect(failed.reason == "\(step.rawValue) failed: timeout after 600 s")
            #expect(try Lifecycle.apply(.retry, to: failed).get().state == step)
            let aborted = try Lifecycle.apply(.abort, to: failed).get().state
            #expect(aborted == Lifecycle.abortTarget(of: step))
            // An aborted deploy or wipe never lands on ready: the disk's contents are unknown.
            #expect(aborted != .ready)
        }
    }

    @Test func nextBootIsExplicitAndSafe() {
        // A deployed machine never re-enters the ramdisk; one being deployed never boots its disk.
        #expect(Lifecycle.nextBoot(.deployed) == .disk)
        #expect(Lifecycle.nextBoot(.deploying) == .ramdisk)
        #expect(Lifecycle.nextBoot(.releasing) == .ramdisk)
        #expect(Lifecycle.nextBoot(.rescue) == .rescue)
        // Once the agent finished, a reboot never runs the ramdisk again.
        #expect(Lifecycle.nextBoot(.deploying, phase: .finish) == .disk)
        #expect(Lifecycle.nextBoot(.releasing, phase: .finish) == .wait)
        #expect(Lifecycle.nextBoot(.commissioning, phase: .finish) == .wait)
        #expect(Lifecycle.nextBoot(.deploying, phase: .agent) == .ramdisk)
        for s in S.allCases where Lifecycle.steps.contains(s) && s != .exitingRescue {
            #expect(Lifecycle.nextBoot(s) != .disk, "\(s) would boot a stale disk")
        }
        for s in [S.discovered, .enrolled, .ready, .failed] { #expect(Lifecycle.nextBoot(s) == .wait) }
    }
}

/// The disk-dirty invariant, as a property over random event sequences: a machine that may
/// hold a tenant's data never reaches `ready` without a completed wipe.
///
/// The test keeps its own account of the disk, independent of `Lifecycle`'s flag: the disk
/// becomes the tenant's when a transition enters `deploying` (the agent may write from then
/// on), and is clean again only when a transition leaves `releasing` by `step-succeeded` (the
/// wipe completed). Each seeded walk starts from a clean enrolled machine or a dirty deployed
/// one, and is checked after every accepted event.
@Suite struct DiskDirtyPropertyTests {
    /// SplitMix64: a small seeded generator, so a failure names a walk that can be replayed.
    struct SplitMix64: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test func noDirtyMachineReachesReadyWithoutAWipe() {
        let walks = 20_000
        let length = 60
        var readyAfterDeploy = 0
        var wipesViaCommission = 0
        var abortsOfDirtySteps = 0
        for seed in 0..<UInt64(walks) {
            var rng = SplitMix64(state: seed)
            // Start from a clean enrolled machine or from a dirty deployed one.
            let startDirty = Bool.random(using: &rng)
            var status = Lifecycle.Status(state: startDirty ? .deployed : .enrolled, diskDirty: startDirty)
            var tenantData = startDirty
            var history: [String] = ["\(status.state.rawValue)\(startDirty ? "(dirty)" : "")"]
            for _ in 0..<length {
                let event = Lifecycle.Event.all.randomElement(using: &rng)!
                guard case .success(let next) = Lifecycle.apply(event, to: status) else { continue }
                history.append("\(event)→\(next.state.rawValue)")
                if next.state == .deploying && status.state != .deploying { tenantData = true }
                if status.state == .releasing, event == .stepSucceeded { tenantData = false }
                if status.state == .commissioning, event == .stepSucceeded, next.state == .releasing {
                    wipesViaCommission += 1
                }
                if case .abort = event, status.failedStep == .deploying || status.failedStep == .releasing {
                    abortsOfDirtySteps += 1
                }
                if next.state == .ready {
                    #expect(
                        !tenantData,
                        "seed \(seed): ready with a tenant's data on disk: \(history.joined(separator: " "))"
                    )
                    if !tenantData, history.contains(where: { $0.hasPrefix("deploy→") }) { readyAfterDeploy += 1 }
                    if tenantData { return }
                }
                // The flag the lifecycle keeps never says clean while the test's account says dirty.
                #expect(
                    next.diskDirty || !tenantData,
                    "seed \(seed): flag clean, disk dirty: \(history.joined(separator: " "))"
                )
                status = next
            }
        }
        // The walks reach the interesting paths: not a vacuous pass.
        #expect(readyAfterDeploy > 1000, "only \(readyAfterDeploy) walks reached ready after a deploy")
        #expect(wipesViaCommission > 100, "only \(wipesViaCommission) dirty commissions were routed to a wipe")
        #expect(abortsOfDirtySteps > 100, "only \(abortsOfDirtySteps) aborts of a deploy or wipe")
    }

    /// The path the invariant closes: a release that fails and is aborted, then commissioned.
    @Test func anAbortedWipeIsWipedBeforeReady() throws {
        var s = Lifecycle.Status(state: .deployed, diskDirty: true)
        for event: Lifecycle.Event in [
            .release, .stepFailed(reason: "agent: disk error"), .abort, .commission, .stepSucceeded,
        ] {
            s = try Lifecycle.apply(event, to: s).get()
        }
        #expect(s.state == .releasing && s.diskDirty)
        s = try Lifecycle.apply(.stepSucceeded, to: s).get()
        #expect(s.state == .ready && !s.diskDirty)
    }
}

@Suite struct ConstantTimeTests {
    @Test func equalOnlyForTheSameBytes() {
        #expect(ConstantTime.equal("abc", "abc"))
        #expect(ConstantTime.equal("", ""))
        #expect(!ConstantTime.equal("abc", "abd"))
        #expect(!ConstantTime.equal("abc", "ab"))
        #expect(!ConstantTime.equal("ab", "abc"))
        #expect(!ConstantTime.equal("", "a"))
        // A length that differs by 256 still differs (the count is not only compared mod 256).
        #expect(!ConstantTime.equal(String(repeating: "a", count: 256), ""))
    }
}

/// Placement on the deeper inventory: physical cores, threads and GPUs.
@Suite struct PlacementInventoryTests {
    func ready(cores: Int, threads: Int?, gpus: Int) -> Machine {
        var m = Machine(
            name: "m",
            mac: MACAddress("52:54:00:00:00:01")!,
            architecture: .x86_64,
            firmware: .bios,
            state: .ready,
            firstSeen: Date(),
            lastSeen: Date()
        )
        var inv = Inventory(
            cpuModel: "x",
            cores: cores,
            memoryBytes: 1 << 30,
            disks: [],
            nics: [],
            vendor: "",
            product: "",
            serial: "",
            firmware: .bios
        )
        inv.threads = threads
        inv.pciDevices =
            (0..<gpus).map {
                Inventory.PCIDevice(address: "0000:0\($0):00.0", vendor: "10de", device: "2330", pciClass: "030200")
            } + [Inventory.PCIDevice(address: "0000:00:02.0", vendor: "1234", device: "1111", pciClass: "030000")]
        m.inventory = inv
        return m
    }

    @Test func coresThreadsAndGPUs() {
        let m = ready(cores: 8, threads: 16, gpus: 2)
        #expect(Placement(minCores: 8).matches(m) && !Placement(minCores: 9).matches(m))
        var p = Placement()
        p.minThreads = 16
        #expect(p.matches(m))
        p.minThreads = 17
        #expect(!p.matches(m))
        p = Placement()
        p.minGPUs = 2
        #expect(p.matches(m))
        p.minGPUs = 3
        #expect(!p.matches(m))
        // An emulated VGA is no GPU; an inventory from before threads were counted counts cores.
        #expect(ready(cores: 4, threads: nil, gpus: 0).inventory?.gpus.isEmpty == true)
        p = Placement()
        p.minThreads = 4
        #expect(p.matches(ready(cores: 4, threads: nil, gpus: 0)))
    }
}
