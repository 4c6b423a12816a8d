// libFuzzer target for the IPMI/RMCP+ decoders: whatever a BMC (or anyone spoofing one) sends,
// no input may crash them. The first byte picks the decoder; the rest is its input.
import IPMIWire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let selector = data[0]
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch selector % 12 {
    case 0:
        // Whole datagrams: RMCP, ASF pong, v1.5 and v2.0 session packets.
        if case .v2(let e) = try? IPMIDatagram(decoding: bytes) {
            precondition(e.payload.count <= bytes.count)
        }
    case 1:
        if let r = try? IPMIResponse(decoding: bytes) {
            precondition(r.data.count + 8 == bytes.count)
        }
    case 2: _ = try? OpenSessionResponse(decoding: bytes)
    case 3: _ = try? RAKPMessage2(decoding: bytes)
    case 4: _ = try? RAKPMessage4(decoding: bytes)
    case 5: _ = try? ChannelAuthCapabilities(decoding: bytes)
    case 6: _ = try? DeviceID(decoding: bytes)
    case 7: _ = try? ChassisStatus(decoding: bytes)
    case 8: _ = try? IPMIBootFlags(decodingResponse: bytes)
    case 9: _ = try? SOLActivation(decoding: bytes)
    case 10:
        if let p = try? SOLPacket(decoding: bytes) {
            precondition(p.sequence < 16 && p.ackSequence < 16)
        }
    default:
        _ = IPMICipherSuiteRecord.parse(bytes)
    }
    return 0
}
