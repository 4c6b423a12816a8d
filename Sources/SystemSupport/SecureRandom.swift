import CSystemSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Random bytes from the kernel's CSPRNG (`getrandom(2)`), a buffer at a time.
///
/// `SystemRandomNumberGenerator` asks the kernel for 8 bytes per `next()`, so drawing bytes
/// one by one through it cost a system call per byte: 69 per BMC in an IPMI sweep (16 for each
/// packet's IV), about 14 000 in a sweep of 200 (bench/bmc). Here a buffer of up to 256 bytes
/// is one call.
public enum SecureRandom {
    /// `count` random bytes.
    public static func bytes(_ count: Int) -> [UInt8] {
        precondition(count >= 0, "a count of bytes is not negative")
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            fill(UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }

    /// Fills `buffer` with random bytes. If getrandom(2) is refused (ENOSYS, or EPERM under a
    /// seccomp profile), the rest comes from the standard library's generator, which falls back
    /// to /dev/urandom, as it would have before.
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress else { return }
        var done = 0
        // Each pass gets at least one byte, or is an EINTR, or ends the loop; getrandom(2)
        // returns up to 256 bytes whole from an initialised pool, so one pass is the rule.
        while done < buffer.count {
            let n = farrier_getrandom(base + done, buffer.count - done, 0)
            if n > 0 {
                done += n
            } else if n < 0, errno == EINTR {
                continue
            } else {
                break
            }
        }
        var rng = SystemRandomNumberGenerator()
        while done < buffer.count {
            withUnsafeBytes(of: rng.next() as UInt64) { word in
                let take = min(word.count, buffer.count - done)
                (base + done).copyMemory(from: word.baseAddress!, byteCount: take)
                done += take
            }
        }
    }
}
