// libFuzzer target for the TFTP decoder and option negotiation: no input may crash them, and a
// decoded packet re-encodes to one that decodes the same.
import TFTPWire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let packet = try? TFTPPacket(decoding: bytes) else { return 0 }
    if case .readRequest(let request) = packet {
        let n = TFTPNegotiation(request: request, fileSize: size * 1000)
        precondition((8...65464).contains(n.blockSize) && (1...65535).contains(n.windowSize))
    }
    guard let again = try? TFTPPacket(decoding: packet.encoded()), again == packet else {
        fatalError("re-encoding changed the packet")
    }
    return 0
}
