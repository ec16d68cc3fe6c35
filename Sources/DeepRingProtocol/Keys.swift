import DeepRingLedger
import Crypto
import DeepRingEngine
import Foundation

/// A ring member's key pairs (a block's, or the ouroboros's): Ed25519 for signing ledger entries, X25519 for HPKE.
public struct BlockKeys: Sendable {
    public let signing: Curve25519.Signing.PrivateKey
    public let agreement: Curve25519.KeyAgreement.PrivateKey

    public init() {
        signing = .init()
        agreement = .init()
    }

    public init(signing: Curve25519.Signing.PrivateKey, agreement: Curve25519.KeyAgreement.PrivateKey) {
        self.signing = signing; self.agreement = agreement
    }

    public var publicKeys: PublicKeys {
        PublicKeys(signing: Array(signing.publicKey.rawRepresentation), agreement: Array(agreement.publicKey.rawRepresentation))
    }
}

/// The public half of a member's keys, safe to publish. In JSON files: `{"signing": hex, "agreement": hex}`.
public struct PublicKeys: Sendable, Equatable, Hashable, Codable {
    public var signing: [UInt8]
    public var agreement: [UInt8]

    public init(signing: [UInt8], agreement: [UInt8]) { self.signing = signing; self.agreement = agreement }

    enum CodingKeys: String, CodingKey { case signing, agreement }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        signing = try Self.key(c, .signing)
        agreement = try Self.key(c, .agreement)
    }

    static func key(_ c: KeyedDecodingContainer<CodingKeys>, _ k: CodingKeys) throws -> [UInt8] {
        guard let b = unhex(try c.decode(String.self, forKey: k)), b.count == 32 else {
            throw DecodingError.dataCorruptedError(forKey: k, in: c, debugDescription: "not 64 hex digits")
        }
        return b
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(hex(signing), forKey: .signing)
        try c.encode(hex(agreement), forKey: .agreement)
    }

    public func write(to w: inout BinaryWriter) { w.raw(signing); w.raw(agreement) }

    public static func read<B>(from r: inout BinaryReader<B>) throws -> PublicKeys {
        PublicKeys(signing: try r.key("signing key"), agreement: try r.key("agreement key"))
    }
}

/// How a key is shown to people: `SHA256:` and the unpadded base64 of the SHA-256 of the raw public key (as SSH
/// shows host keys). The owner's fingerprint is what a querent pins.
public enum KeyFingerprint {
    public static func of(_ publicKey: [UInt8]) -> String {
        "SHA256:" + Data(SHA256.hash(data: publicKey)).base64EncodedString().replacingOccurrences(of: "=", with: "")
    }

    /// True when `text` names `publicKey`: its fingerprint, or the key itself as 64 hex digits.
    public static func matches(_ text: String, _ publicKey: [UInt8]) -> Bool {
        let t = text.trimmingCharacters(in: .whitespaces)
        if let k = unhex(t), k.count == 32 { return k == publicKey }
        return t == of(publicKey)
    }

    /// True when `text` has the form of a fingerprint or of a hex key (what `--owner-key` accepts).
    public static func isWellFormed(_ text: String) -> Bool {
        let t = text.trimmingCharacters(in: .whitespaces)
        if let k = unhex(t) { return k.count == 32 }
        guard t.hasPrefix("SHA256:") else { return false }
        let b64 = String(t.dropFirst(7))
        let padded = b64 + String(repeating: "=", count: (4 - b64.count % 4) % 4)
        return b64.count == 43 && Data(base64Encoded: padded)?.count == 32
    }
}

public enum KeyFileError: Error, CustomStringConvertible, Equatable {
    case unreadable(String, String)
    case insecurePermissions(String, mode: Int)
    case malformed(String, String)

    public var description: String {
        switch self {
        case .unreadable(let p, let why): return "\(p): cannot be read (\(why))"
        case .insecurePermissions(let p, let m):
            return String(format: "%@: secret key file is readable or writable by group or others (mode %03o); run chmod 600", p, m)
        case .malformed(let p, let r): return "\(p): not a valid key file (\(r))"
        }
    }
}

/// Secret key files, mode 0600, written atomically: `{"signing": hex, "agreement": hex, "owner": hex}`.
///
/// - a block's `keys.json` has all three: its key pairs and the owner's public key, the block's trust anchor (its
///   descriptor must carry the owner's signature);
/// - the ouroboros's `owner/keys.json` has its two key pairs;
/// - the owner's identity `owner/identity.json` has only `signing`: the key that signs `ring.json`, the block
///   descriptors and the owner's record.
///
/// Reading refuses anything but a regular file of mode 0600 or stricter and checks every size; key bytes never
/// appear in errors or logs.
public enum KeyFile {
    public static let maxSize = 4096

    public struct Contents: Sendable {
        public var signing: Curve25519.Signing.PrivateKey
        public var agreement: Curve25519.KeyAgreement.PrivateKey?
        /// The owner's public signing key (a block's anchor).
        public var owner: [UInt8]?

        public init(signing: Curve25519.Signing.PrivateKey, agreement: Curve25519.KeyAgreement.PrivateKey? = nil, owner: [UInt8]? = nil) {
            self.signing = signing; self.agreement = agreement; self.owner = owner
        }

        /// The member key pairs; nil when the file holds no agreement key.
        public var memberKeys: BlockKeys? { agreement.map { BlockKeys(signing: signing, agreement: $0) } }
    }

    public static func serialize(_ c: Contents) -> [UInt8] {
        var fields = ["\"signing\":\"\(hex(c.signing.rawRepresentation))\""]
        if let a = c.agreement { fields.append("\"agreement\":\"\(hex(a.rawRepresentation))\"") }
        if let o = c.owner { fields.append("\"owner\":\"\(hex(o))\"") }
        return Array(("{" + fields.joined(separator: ",") + "}\n").utf8)
    }

    public static func serialize(_ keys: BlockKeys, owner: [UInt8]? = nil) -> [UInt8] {
        serialize(Contents(signing: keys.signing, agreement: keys.agreement, owner: owner))
    }

    public static func write(_ c: Contents, to path: String) throws {
        try writeFileAtomically(serialize(c), to: path, permissions: 0o600)
    }

    public static func write(_ keys: BlockKeys, owner: [UInt8]? = nil, to path: String) throws {
        try write(Contents(signing: keys.signing, agreement: keys.agreement, owner: owner), to: path)
    }

    /// Reads a key file: a regular file, mode 0600 or stricter, at most `maxSize` bytes.
    public static func read(_ path: String) throws -> Contents {
        let f: InputFile.Handle
        do { f = try InputFile.open(path, limit: maxSize) } catch let e as InputFile.Error {
            switch e {
            case .tooLarge: throw KeyFileError.malformed(path, "larger than \(maxSize) bytes")
            default: throw KeyFileError.unreadable(path, e.description)
            }
        }
        guard f.mode & 0o077 == 0 else { throw KeyFileError.insecurePermissions(path, mode: f.mode & 0o777) }
        let bytes: [UInt8]
        do { bytes = try f.readAll() } catch { throw KeyFileError.unreadable(path, "\(error)") }
        return try parse(bytes, path: path)
    }

    /// Parses a key file's bytes (hostile input: strict JSON, every key 32 bytes, no other fields).
    public static func parse(_ bytes: [UInt8], path: String) throws -> Contents {
        let expected = "expected {\"signing\": 64 hex digits[, \"agreement\": 64 hex digits][, \"owner\": 64 hex digits]}"
        guard bytes.count <= maxSize, let v = try? StrictJSONParser.parse(bytes), case .object(let fields) = v,
              fields.allSatisfy({ ["signing", "agreement", "owner"].contains($0.0) }) else {
            throw KeyFileError.malformed(path, expected)
        }
        func key(_ name: String) throws -> [UInt8]? {
            guard let f = v[name] else { return nil }
            guard case .string(let s) = f, let b = unhex(s), b.count == 32 else { throw KeyFileError.malformed(path, expected) }
            return b
        }
        guard let s = try key("signing") else { throw KeyFileError.malformed(path, expected) }
        let a = try key("agreement"), o = try key("owner")
        do {
            return Contents(signing: try .init(rawRepresentation: s), agreement: try a.map { try .init(rawRepresentation: $0) }, owner: o)
        } catch {
            throw KeyFileError.malformed(path, "invalid key bytes")
        }
    }
}


/// A fresh random id: 16 bytes as 32 hex digits (block folders, query ids).
public func randomID() -> String { hex((0..<16).map { _ in UInt8.random(in: 0...255) }) }
