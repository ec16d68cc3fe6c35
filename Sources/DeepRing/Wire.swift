import Crypto
import DeepRingEngine
import Foundation

/// Length-prefixed binary fields for ledger payloads (u32 little-endian lengths). The reader treats its
/// input as hostile: every length is bounds-checked.
struct WireWriter {
    var bytes: [UInt8] = []
    init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }
    mutating func field<C: Collection>(_ b: C) where C.Element == UInt8 {
        length(b.count)
        bytes.append(contentsOf: b)
    }
    /// A field's u32 length prefix alone (its bytes follow elsewhere).
    mutating func length(_ count: Int) {
        let n = UInt32(count)
        bytes += [UInt8(n & 255), UInt8((n >> 8) & 255), UInt8((n >> 16) & 255), UInt8(n >> 24)]
    }
    mutating func u64(_ v: Int64) { field((0..<8).map { UInt8(truncatingIfNeeded: UInt64(bitPattern: v) >> (8 * UInt64($0))) }) }
}

/// Reads fields from an array, a slice of one, or raw bytes (a decrypted `Data`); ranges returned are indices
/// of the bytes given to `init`.
struct WireReader<Bytes: RandomAccessCollection> where Bytes.Element == UInt8, Bytes.Index == Int {
    let bytes: Bytes
    var i: Int
    init(_ b: Bytes) { bytes = b; i = b.startIndex }

    mutating func field(max: Int = 1 << 28) throws -> [UInt8] { Array(bytes[try fieldRange(max: max)]) }

    /// The byte range of the next field, without copying it.
    mutating func fieldRange(max: Int = 1 << 28) throws -> Range<Int> {
        let start = i
        try skipField(max: max)
        return (start + 4)..<i
    }

    /// Skips a field without copying it.
    mutating func skipField(max: Int = 1 << 28) throws {
        guard bytes.endIndex - i >= 4 else { throw QueryError.malformedPayload("truncated field length") }
        let n = Int(bytes[i]) | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2]) << 16 | Int(bytes[i + 3]) << 24
        guard n <= max, n <= bytes.endIndex - i - 4 else { throw QueryError.malformedPayload("field of \(n) bytes exceeds the payload") }
        i += 4 + n
    }

    mutating func u64() throws -> Int64 {
        let f = try field(max: 8)
        guard f.count == 8 else { throw QueryError.malformedPayload("bad integer field") }
        return Int64(bitPattern: f.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
    }

    func end() throws { guard i == bytes.endIndex else { throw QueryError.malformedPayload("trailing bytes") } }
}

/// Tensor bytes on the wire: u32 rank, u32 dims, float32 little-endian values. `SHA256` of these bytes is the
/// H of Eq. 13.
enum TensorWire {
    static func encode(_ t: Tensor) -> [UInt8] {
        var w = WireWriter(capacity: 8 + 4 * t.shape.count + 4 * t.count)
        w.bytes += header(t)
        t.data.withUnsafeBytes { w.bytes.append(contentsOf: $0) }
        return w.bytes
    }

    /// Everything before the values: the dims field and the values field's length.
    static func header(_ t: Tensor) -> [UInt8] {
        var w = WireWriter()
        w.field(t.shape.flatMap { d in (0..<4).map { UInt8(truncatingIfNeeded: UInt32(d) >> (8 * UInt32($0))) } })
        w.length(4 * t.count)
        return w.bytes
    }

    static func decode(_ b: [UInt8]) throws -> Tensor { try b.withUnsafeBytes { try decode($0) } }

    /// Decodes from any contiguous bytes (a decrypted `Data`, say), copying the values once, into the tensor.
    static func decode(_ data: Data) throws -> Tensor { try data.withUnsafeBytes { try decode($0) } }

    static func decode(_ b: UnsafeRawBufferPointer) throws -> Tensor {
        var r = WireReader(b)
        let dims = try r.field(max: 32)
        let values = UnsafeRawBufferPointer(rebasing: b[try r.fieldRange()])
        try r.end()
        guard dims.count % 4 == 0, !dims.isEmpty else { throw QueryError.malformedPayload("bad tensor shape") }
        var shape: [Int] = []
        var count = 1
        for k in stride(from: 0, to: dims.count, by: 4) {
            let d = Int(dims[k]) | Int(dims[k + 1]) << 8 | Int(dims[k + 2]) << 16 | Int(dims[k + 3]) << 24
            guard d > 0 else { throw QueryError.malformedPayload("bad tensor shape") }
            let (p, o) = count.multipliedReportingOverflow(by: d)
            guard !o, p <= 1 << 26 else { throw QueryError.malformedPayload("tensor too large") }
            shape.append(d); count = p
        }
        guard values.count == count * 4 else { throw QueryError.malformedPayload("tensor size does not match its shape") }
        // Little-endian float32 on the wire and on every supported host: a plain copy.
        var t = Tensor(uninitialized: shape)
        t.data.withUnsafeMutableBytes { dst in dst.copyMemory(from: values) }
        return t
    }

    /// SHA-256 of `encode(t)`, without building the encoding.
    static func hash(_ t: Tensor) -> [UInt8] {
        var h = SHA256()
        h.update(data: header(t))
        t.data.withUnsafeBytes { h.update(bufferPointer: $0) }
        return Array(h.finalize())
    }
}

/// HPKE (RFC 9180, X25519 + HKDF-SHA256 + AES-256-GCM) for sealing queries, answers and AES keys to a public key.
enum Sealing {
    static let suite = HPKE.Ciphersuite(kem: .Curve25519_HKDF_SHA256, kdf: .HKDF_SHA256, aead: .AES_GCM_256)
    static let info = Data("DeepRing v1".utf8)

    static func seal(_ plaintext: [UInt8], to recipient: [UInt8], aad: [UInt8]) throws -> [UInt8] {
        let key = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: recipient)
        var sender = try HPKE.Sender(recipientKey: key, ciphersuite: suite, info: info)
        let ct = try sender.seal(plaintext, authenticating: aad)
        var w = WireWriter()
        w.field(Array(sender.encapsulatedKey))
        w.field(Array(ct))
        return w.bytes
    }

    static func open(_ sealed: [UInt8], with key: Curve25519.KeyAgreement.PrivateKey, aad: [UInt8]) throws -> [UInt8] {
        Array(try openData(sealed[...], with: key, aad: aad))
    }

    /// Opens a sealed message held in a slice of a bigger buffer; the plaintext is not copied again.
    static func openData(_ sealed: ArraySlice<UInt8>, with key: Curve25519.KeyAgreement.PrivateKey, aad: [UInt8]) throws -> Data {
        var r = WireReader(sealed)
        let enc = try r.field(max: 256), ct = sealed[try r.fieldRange()]
        try r.end()
        do {
            var recipient = try HPKE.Recipient(privateKey: key, ciphersuite: suite, info: info, encapsulatedKey: Data(enc))
            return try recipient.open(ct, authenticating: aad)
        } catch {
            throw QueryError.decryptionFailed
        }
    }
}

public enum QueryError: Error, CustomStringConvertible, Equatable {
    case malformedPayload(String)
    case decryptionFailed
    case badInput(String)
    case failed(String)
    case timeout

    public var description: String {
        switch self {
        case .malformedPayload(let m): return "malformed ledger payload: \(m)"
        case .decryptionFailed: return "decryption failed (wrong key or altered ciphertext)"
        case .badInput(let m): return "bad query input: \(m)"
        case .failed(let m): return "query refused: \(m)"
        case .timeout: return "query timed out"
        }
    }
}
