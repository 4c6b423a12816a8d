import ArgumentParser
import FarrierBMC
import FarrierCore

// Enumerated arguments: parsed by their raw values, refused with the list of valid ones, and
// offered by shell completion.

extension MachineState: ExpressibleByArgument {}
extension Firmware: ExpressibleByArgument {}
extension Architecture: ExpressibleByArgument {}
extension WipeMode: ExpressibleByArgument {}
extension BootDevice: ExpressibleByArgument {}
extension Role: ExpressibleByArgument {}

/// `power`'s argument: a reading, or one of the BMC's actions.
enum PowerVerb: String, ExpressibleByArgument, CaseIterable {
    case status, on, off, cycle, reset
    case softOff = "soft-off"

    /// The BMC action; nil for a reading.
    var action: PowerAction? { self == .status ? nil : PowerAction(rawValue: rawValue) }
}
