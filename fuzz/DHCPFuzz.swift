// libFuzzer target for the DHCP decoder: decoding must never crash, and whatever decodes must
// re-encode to bytes that decode to the same message.
import DHCPWire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let message = try? DHCPMessage(decoding: bytes) else { return 0 }
    _ = message.options.userClasses
    _ = message.options.clientArchitectures
    _ = message.options.encapsulated(.ipxeEncapsulated)
    _ = message.options.vendorClassIdentifier
    guard let again = try? DHCPMessage(decoding: message.encoded()), again == message else {
        fatalError("re-encoding changed the message")
    }
    return 0
}
