/// The one binary codec of DeepRing: every ledger payload and every signed document is written and read with it.
///
///     u8, u32, u64 / i64     little-endian integers
///     bytes                  u32 length ‖ that many bytes
///     key                    32 raw bytes (public keys, SHA-256 digests; fixed size, no length)
///     string                 bytes holding UTF-8
///     list                   u32 count ‖ count items
///
/// The reader treats its input as hostile: every length and count is checked against what is left and against a
/// caller-given bound before anything is allocated, and every failure is a `ProtocolError`, never a trap.
public struct BinaryWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }

    /// A count or length, as u32. Callers only write what they built themselves (payloads are capped well below 4 GiB).
    public mutating func length(_ n: Int) { u32(UInt32(truncatingIfNeeded: n)) }

    /// Length-prefixed bytes.
    public mutating func bytes<C: Collection>(_ b: C) where C.Element == UInt8 {
        length(b.count)
        bytes.append(contentsOf: b)
    }

    /// Raw bytes without a length (a fixed-size field such as a key; the reader knows the size).
    public mutating func raw<C: Collection>(_ b: C) where C.Element == UInt8 { bytes.append(contentsOf: b) }

    public mutating func string(_ s: String) { bytes(Array(s.utf8)) }

    public mutating func list<T>(_ items: [T], _ each: (inout BinaryWriter, T) -> Void) {
        length(items.count)
        for x in items { each(&self, x) }
    }
}

/// Reads what `BinaryWriter` wrote, from an array, a slice of one or raw memory; byte ranges it returns are
/// indices into the collection it was given.
public struct BinaryReader<Bytes: RandomAccessCollection> where Bytes.Element == UInt8, Bytes.Index == Int {
    public let bytes: Bytes
    public private(set) var offset: Int

    public init(_ b: Bytes) { bytes = b; offset = b.startIndex }

    public var remaining: Int { bytes.endIndex - offset }

    mutating func take(_ n: Int, _ what: String) throws -> Range<Int> {
        guard n >= 0, n <= remaining else { throw ProtocolError.malformed("truncated \(what)") }
        defer { offset += n }
        return offset..<(offset + n)
    }

    public mutating func u8(_ what: String = "byte") throws -> UInt8 { bytes[try take(1, what).lowerBound] }

    public mutating func bool(_ what: String = "flag") throws -> Bool {
        switch try u8(what) {
        case 0: return false
        case 1: return true
        default: throw ProtocolError.malformed("\(what) is neither 0 nor 1")
        }
    }

    public mutating func u32(_ what: String = "integer") throws -> UInt32 {
        let r = try take(4, what)
        var v: UInt32 = 0
        for k in 0..<4 { v |= UInt32(bytes[r.lowerBound + k]) << (8 * UInt32(k)) }
        return v
    }

    public mutating func u64(_ what: String = "integer") throws -> UInt64 {
        let r = try take(8, what)
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(bytes[r.lowerBound + k]) << (8 * UInt64(k)) }
        return v
    }

    public mutating func i64(_ what: String = "integer") throws -> Int64 { Int64(bitPattern: try u64(what)) }

    /// A count or length of at most `max`.
    public mutating func length(max: Int, _ what: String) throws -> Int {
        let n = Int(try u32(what))
        guard n <= max else { throw ProtocolError.malformed("\(what) of \(n) exceeds the limit of \(max)") }
        return n
    }

    /// The range of a length-prefixed field, not copied.
    public mutating func bytesRange(max: Int, _ what: String = "field") throws -> Range<Int> {
        let n = try length(max: max, what)
        return try take(n, what)
    }

    public mutating func bytes(max: Int, _ what: String = "field") throws -> [UInt8] { Array(bytes[try bytesRange(max: max, what)]) }

    /// A fixed-size raw field (a 32-byte key or digest).
    public mutating func raw(_ n: Int, _ what: String = "key") throws -> [UInt8] { Array(bytes[try take(n, what)]) }

    public mutating func key(_ what: String = "key") throws -> [UInt8] { try raw(32, what) }

    public mutating func string(max: Int, _ what: String = "string") throws -> String {
        let b = try bytes(max: max, what)
        guard let s = String(validating: b, as: UTF8.self) else { throw ProtocolError.malformed("\(what) is not UTF-8") }
        return s
    }

    /// A counted list of at most `max` items.
    public mutating func list<T>(max: Int, _ what: String, _ each: (inout BinaryReader) throws -> T) throws -> [T] {
        let n = try length(max: max, "\(what) count")
        // Every item takes at least one byte: a count larger than what is left cannot be honest.
        guard n <= remaining else { throw ProtocolError.malformed("\(what) count \(n) exceeds the payload") }
        var out: [T] = []
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(try each(&self)) }
        return out
    }

    /// Fails unless every byte was read.
    public func end() throws {
        guard remaining == 0 else { throw ProtocolError.malformed("\(remaining) trailing bytes") }
    }
}

public enum ProtocolError: Error, CustomStringConvertible, Equatable {
    /// Bytes that do not decode as what they claim to be.
    case malformed(String)
    /// A version or type tag this build does not know.
    case unsupported(String)
    /// A signature or digest that does not verify.
    case badSignature(String)
    /// A sealed message that cannot be opened (wrong key or altered ciphertext).
    case decryptionFailed

    public var description: String {
        switch self {
        case .malformed(let m): return "malformed data: \(m)"
        case .unsupported(let m): return "unsupported: \(m)"
        case .badSignature(let m): return "signature check failed: \(m)"
        case .decryptionFailed: return "decryption failed (wrong key or altered ciphertext)"
        }
    }
}
