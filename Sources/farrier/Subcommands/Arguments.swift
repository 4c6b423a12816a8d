import ArgumentParser
import FarrierBMC
import FarrierCore

// Enumerated arguments: parsed by their raw values, refused with the list of valid ones, and
// offered by shell completion.

extension MachineState: ExpressibleByArgument {}

// `unknown` is what inventory reports when it cannot tell; it is not a value to ask for.
extension Firmware: ExpressibleByArgument {
    public init?(argument: String) {
        guard argument != Firmware.unknown.rawValue else { return nil }
        self.init(rawValue: argument)
    }
    public static var allValueStrings: [String] { allCases.filter { $0 != .unknown }.map(\.rawValue) }
}

extension Architecture: ExpressibleByArgument {
    public init?(argument: String) {
        guard argument != Architecture.unknown.rawValue else { return nil }
        self.init(rawValue: argument)
    }
    public static var allValueStrings: [String] { allCases.filter { $0 != .unknown }.map(\.rawValue) }
}
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
