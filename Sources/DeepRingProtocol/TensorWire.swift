import Crypto
import DeepRingEngine
import Foundation

/// A tensor as it travels between blocks (inside the AES-GCM ciphertext X, the sealed query and the sealed answer):
///
///     bytes(u32 dims…) ‖ bytes(float32 values, little-endian)
///
/// `SHA256` of exactly these bytes is the H of Eqs. 11 and 13.
public enum TensorWire {
    /// Most values one tensor may carry (256 MiB of float32): a bound on what a decoder allocates.
    public static let maxValues = 1 << 26
    public static let maxRank = 8

    public static func encode(_ t: Tensor) -> [UInt8] {
        var w = BinaryWriter(capacity: 16 + 4 * t.shape.count + 4 * t.count)
        w.raw(header(t))
        t.data.withUnsafeBytes { w.raw($0) }
        return w.bytes
    }

    /// Everything before the values: the dims field and the values field's length.
    public static func header(_ t: Tensor) -> [UInt8] {
        var w = BinaryWriter()
        w.length(4 * t.shape.count)
        for d in t.shape { w.u32(UInt32(truncatingIfNeeded: d)) }
        w.length(4 * t.count)
        return w.bytes
    }

    public static func decode(_ b: [UInt8]) throws -> Tensor { try b.withUnsafeBytes { try decode($0) } }

    /// Decodes from any contiguous bytes (a decrypted `Data`, say), copying the values once, into the tensor.
    public static func decode(_ data: Data) throws -> Tensor { try data.withUnsafeBytes { try decode($0) } }

    public static func decode(_ b: UnsafeRawBufferPointer) throws -> Tensor {
        var r = BinaryReader(b)
        let rankBytes = try r.length(max: 4 * maxRank, "tensor rank")
        guard rankBytes % 4 == 0, rankBytes > 0 else { throw ProtocolError.malformed("bad tensor shape") }
        var shape: [Int] = []
        var count = 1
        for _ in 0..<(rankBytes / 4) {
            let d = Int(try r.u32("tensor dimension"))
            guard d > 0 else { throw ProtocolError.malformed("bad tensor shape") }
            let (p, o) = count.multipliedReportingOverflow(by: d)
            guard !o, p <= maxValues else { throw ProtocolError.malformed("tensor too large") }
            shape.append(d); count = p
        }
        let values = try r.bytesRange(max: 4 * maxValues, "tensor values")
        try r.end()
        guard values.count == count * 4 else { throw ProtocolError.malformed("tensor size does not match its shape") }
        // Little-endian float32 on the wire and on every supported host: a plain copy.
        var t = Tensor(uninitialized: shape)
        t.data.withUnsafeMutableBytes { dst in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: b[values])) }
        return t
    }

    /// SHA-256 of `encode(t)`, without building the encoding.
    public static func hash(_ t: Tensor) -> [UInt8] {
        var h = SHA256()
        h.update(data: header(t))
        t.data.withUnsafeBytes { h.update(bufferPointer: $0) }
        return Array(h.finalize())
    }
}

/// HPKE (RFC 9180: X25519, HKDF-SHA256, AES-256-GCM, base mode) for sealing a message to one public key: the
/// query to the ouroboros (Eq. 3), each next-hop AES key K to the successor (Eq. 8), the answer to the querent
/// (Eq. 12). A sealed message is `bytes(encapsulated key) ‖ bytes(ciphertext)`.
public enum HPKEBox {
    static let suite = HPKE.Ciphersuite(kem: .Curve25519_HKDF_SHA256, kdf: .HKDF_SHA256, aead: .AES_GCM_256)
    static let info = Data("DeepRing v1".utf8)
    /// Largest sealed message a decoder accepts (a tensor plus HPKE's overhead).
    public static let maxSealed = 4 * TensorWire.maxValues + 4096

    public static func seal(_ plaintext: [UInt8], to recipient: [UInt8], aad: [UInt8]) throws -> [UInt8] {
        let key: Curve25519.KeyAgreement.PublicKey
        do { key = try .init(rawRepresentation: recipient) } catch { throw ProtocolError.malformed("recipient key is not an X25519 key") }
        var sender = try HPKE.Sender(recipientKey: key, ciphersuite: suite, info: info)
        let ct = try sender.seal(plaintext, authenticating: aad)
        var w = BinaryWriter(capacity: ct.count + 48)
        w.bytes(Array(sender.encapsulatedKey))
        w.bytes(ct)
        return w.bytes
    }

    /// Opens a sealed message held in (a slice of) a bigger buffer; the plaintext is not copied again.
    public static func open(_ sealed: ArraySlice<UInt8>, with key: Curve25519.KeyAgreement.PrivateKey, aad: [UInt8]) throws -> Data {
        var r = BinaryReader(sealed)
        let enc = try r.bytes(max: 256, "encapsulated key"), ct = sealed[try r.bytesRange(max: maxSealed, "ciphertext")]
        try r.end()
        do {
            var recipient = try HPKE.Recipient(privateKey: key, ciphersuite: suite, info: info, encapsulatedKey: Data(enc))
            return try recipient.open(ct, authenticating: aad)
        } catch {
            throw ProtocolError.decryptionFailed
        }
    }
}
