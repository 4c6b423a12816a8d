import ArgumentParser
import FarrierLab

struct LabCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab", abstract: "A virtual lab of QEMU VMs with virtual BMCs on this host (root only).")
}
