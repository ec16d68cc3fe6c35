import Crypto
import DeepRingEngine
import Foundation

/// A block's (or the ouroboros's) key pairs: Ed25519 for signing ledger entries, X25519 for HPKE sealing.
public struct BlockKeys: Sendable {
    public let signing: Curve25519.Signing.PrivateKey
    public let agreement: Curve25519.KeyAgreement.PrivateKey

    public init() {
        signing = .init()
        agreement = .init()
    }

    init(signing: Curve25519.Signing.PrivateKey, agreement: Curve25519.KeyAgreement.PrivateKey) {
        self.signing = signing; self.agreement = agreement
    }

    public var publicKeys: PublicKeys {
        PublicKeys(signing: Array(signing.publicKey.rawRepresentation), agreement: Array(agreement.publicKey.rawRepresentation))
    }
}

/// The public half, safe to publish.
public struct PublicKeys: Sendable, Equatable, Codable {
    public var signing: [UInt8]
    public var agreement: [UInt8]

    public init(signing: [UInt8], agreement: [UInt8]) { self.signing = signing; self.agreement = agreement }
}

public enum KeyFileError: Error, CustomStringConvertible, Equatable {
    case unreadable(String)
    case insecurePermissions(String, mode: Int)
    case malformed(String, String)

    public var description: String {
        switch self {
        case .unreadable(let p): return "\(p): cannot be read"
        case .insecurePermissions(let p, let m):
            return String(format: "%@: secret key file is readable by group or others (mode %03o); run chmod 600", p, m)
        case .malformed(let p, let r): return "\(p): not a valid key file (\(r))"
        }
    }
}

/// Secret key files: `{"signing": "<hex>", "agreement": "<hex>"}`, mode 0600, written atomically.
/// Reading refuses group/world-readable files and checks sizes; key bytes never appear in errors or logs.
public enum KeyFile {
    public static let maxSize = 4096

    static func serialize(_ keys: BlockKeys) -> [UInt8] {
        Array("{\"signing\":\"\(hex(Array(keys.signing.rawRepresentation)))\",\"agreement\":\"\(hex(Array(keys.agreement.rawRepresentation)))\"}\n".utf8)
    }

    public static func write(_ keys: BlockKeys, to path: String) throws {
        try writeFileAtomically(serialize(keys), to: path, permissions: 0o600)
        chmod(path, 0o600)
    }

    public static func read(_ path: String) throws -> BlockKeys {
        var st = stat()
        guard stat(path, &st) == 0 else { throw KeyFileError.unreadable(path) }
        let mode = Int(st.st_mode) & 0o777
        guard mode & 0o077 == 0 else { throw KeyFileError.insecurePermissions(path, mode: mode) }
        guard Int(st.st_size) <= maxSize else { throw KeyFileError.malformed(path, "larger than \(maxSize) bytes") }
        guard let d = FileManager.default.contents(atPath: path) else { throw KeyFileError.unreadable(path) }
        guard d.count <= maxSize, let v = try? StrictJSONParser.parse([UInt8](d)),
              case .string(let s)? = v["signing"], case .string(let a)? = v["agreement"],
              let sb = unhex(s), let ab = unhex(a), sb.count == 32, ab.count == 32 else {
            throw KeyFileError.malformed(path, "expected {\"signing\": 64 hex digits, \"agreement\": 64 hex digits}")
        }
        do {
            return BlockKeys(signing: try .init(rawRepresentation: sb), agreement: try .init(rawRepresentation: ab))
        } catch {
            throw KeyFileError.malformed(path, "invalid key bytes")
        }
    }
}

/// Lower-case hexadecimal of bytes (keys, hashes and ids in files and messages).
public func hex<S: Sequence>(_ b: S) -> String where S.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(b.underestimatedCount * 2)
    for x in b { out.append(digits[Int(x >> 4)]); out.append(digits[Int(x & 15)]) }
    return String(decoding: out, as: UTF8.self)
}

func unhex(_ s: String) -> [UInt8]? {
    let u = Array(s.utf8)
    guard u.count % 2 == 0 else { return nil }
    var out = [UInt8]()
    out.reserveCapacity(u.count / 2)
    func nib(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 97...102: return c - 87
        case 65...70: return c - 55
        default: return nil
        }
    }
    var i = 0
    while i < u.count {
        guard let h = nib(u[i]), let l = nib(u[i + 1]) else { return nil }
        out.append(h << 4 | l)
        i += 2
    }
    return out
}
