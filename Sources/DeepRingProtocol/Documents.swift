import DeepRingLedger
import Crypto
import DeepRingEngine
import Foundation

/// A file the owner signs. The signature covers the document's canonical bytes — a domain tag and every field
/// but the signature, written with the `BinaryWriter` codec — never the JSON text, so that no JSON detail
/// (spacing, key order) matters and nothing unsigned can ride along.
public protocol OwnerSigned {
    static var domain: String { get }
    func canonicalFields(into w: inout BinaryWriter)
    /// Ed25519 signature of `canonicalBytes` by the owner's identity key, as 128 hex digits.
    var signature: String { get set }
}

extension OwnerSigned {
    public var canonicalBytes: [UInt8] {
        var w = BinaryWriter(capacity: 512)
        w.string(Self.domain)
        canonicalFields(into: &w)
        return w.bytes
    }

    public mutating func sign(with owner: Curve25519.Signing.PrivateKey) throws {
        signature = hex(try owner.signature(for: canonicalBytes))
    }

    /// True when `signature` is `owner`'s signature of this document.
    public func isSigned(by owner: [UInt8]) -> Bool {
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: owner), let sig = unhex(signature), sig.count == 64 else {
            return false
        }
        return key.isValidSignature(sig, for: canonicalBytes)
    }
}

/// Reads a JSON document as hostile input: the strict parser first (it rejects duplicate keys, deep nesting and
/// trailing garbage, which Foundation's decoder would let through), then the typed decoding.
public func decodeStrictJSON<T: Decodable>(_ type: T.Type, from bytes: [UInt8], path: String) throws -> T {
    do { _ = try StrictJSONParser.parse(bytes) } catch let e as JSONParseError { throw RingError.malformedFile(path, e.description) }
    do { return try JSONDecoder().decode(T.self, from: Data(bytes)) } catch {
        throw RingError.malformedFile(path, "not a valid \(T.self) (\(decodingSummary(error)))")
    }
}

/// A short, path-free account of a decoding error.
func decodingSummary(_ e: Error) -> String {
    switch e {
    case DecodingError.keyNotFound(let k, _): return "missing \"\(k.stringValue)\""
    case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
        return "wrong type at \(c.codingPath.map(\.stringValue).joined(separator: "."))"
    case DecodingError.dataCorrupted(let c):
        return "\(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)"
    default: return "invalid"
    }
}

public func encodeJSON<T: Encodable>(_ v: T) throws -> [UInt8] {
    let enc = JSONEncoder()
    enc.outputFormatting = [.sortedKeys, .prettyPrinted]
    return Array(try enc.encode(v)) + [10]
}

func isHex(_ s: String, bytes: Int) -> Bool { s.utf8.count == 2 * bytes && unhex(s) != nil }

/// `DIR/ring.json`: what anyone may know about a ring, signed by the owner. A querent trusts it only when the
/// owner key it names is the one pinned for the ring (`--owner-key`, or remembered on first use).
public struct RingManifest: Codable, Equatable, Sendable, OwnerSigned {
    public static let currentFormat = "deepring-ring-v2"
    public static let domain = "DeepRing ring manifest v2"
    public static let maxSize = 1 << 16

    public var format: String
    public var ringID: String
    /// The owner's public identity key (hex): it signs this file, the block descriptors and the owner's record.
    public var owner: String
    public var ouroboros: PublicKeys
    public var algorithms: [String: String]
    public var blockCount: Int
    public var inputShape: [Int]
    public var classes: Int
    public var signature: String

    public init(ringID: String, owner: [UInt8], ouroboros: PublicKeys, algorithms: [String: String], blockCount: Int,
                inputShape: [Int], classes: Int) {
        format = RingManifest.currentFormat
        self.ringID = ringID; self.owner = hex(owner); self.ouroboros = ouroboros; self.algorithms = algorithms
        self.blockCount = blockCount; self.inputShape = inputShape; self.classes = classes; signature = ""
    }

    public var ownerKey: [UInt8] { unhex(owner) ?? [] }
    public var ownerFingerprint: String { KeyFingerprint.of(ownerKey) }

    public func canonicalFields(into w: inout BinaryWriter) {
        w.string(format)
        w.string(ringID)
        w.raw(ownerKey)
        ouroboros.write(to: &w)
        let names = algorithms.keys.sorted()
        w.list(names) { w, k in w.string(k); w.string(algorithms[k] ?? "") }
        w.i64(Int64(blockCount))
        w.list(inputShape) { w, d in w.i64(Int64(d)) }
        w.i64(Int64(classes))
    }

    /// Parses `ring.json` and checks its form and that it is signed by the owner key it names. Whether that owner is
    /// the right one is the reader's decision (a pinned key, or the owner's own identity).
    public static func parse(_ bytes: [UInt8], path: String) throws -> RingManifest {
        if let v = try? StrictJSONParser.parse(bytes), case .string(let f)? = v["format"], f != currentFormat {
            throw RingError.notARing("\(path) has format \"\(f)\"; this DeepRing reads \(currentFormat) (seal the model again)")
        }
        let m = try decodeStrictJSON(RingManifest.self, from: bytes, path: path)
        guard m.format == currentFormat, !m.ringID.isEmpty, m.ringID.utf8.count <= PayloadLimits.name,
              isHex(m.owner, bytes: 32), (1...4096).contains(m.blockCount),
              (1...4).contains(m.inputShape.count), m.inputShape.allSatisfy({ (1...(1 << 16)).contains($0) }),
              m.inputShape.reduce(1, { $0.multipliedReportingOverflow(by: $1).partialValue }) <= 1 << 24,
              (0...100_000).contains(m.classes), m.algorithms.count <= 16 else {
            throw RingError.malformedFile(path, "not a valid ring manifest")
        }
        guard m.isSigned(by: m.ownerKey) else {
            throw RingError.notAuthentic("\(path) is not signed by the owner key it names (edited after sealing?)")
        }
        return m
    }

    public static func read(_ path: String) throws -> RingManifest {
        try parse(try InputFile.read(path, limit: maxSize), path: path)
    }
}

/// `blocks/<id>/block.json`: what one block knows besides its secrets — its public keys, its neighbours' public
/// keys, the ouroboros's public keys (the ring's one public member: the block's bundle is self-contained), the signing key of its predecessor's predecessor (to check that the H it validates came from there),
/// HASH_{j−1} and HASH_j, the digest of its parameter file — signed by the owner. No layer index: a block does not
/// know its position. A block trusts its descriptor only when it is signed by the owner key in its `keys.json`.
/// `spare.json` in a spare block's folder (`seal --spares N` makes `DIR/spares/<id>/`): the owner-signed statement
/// that the spare `id`, holding `keys`, may be placed in the ring `ringID`. A spare holds no parameters until the
/// owner evicts a block and sends it that block's (`SparePlacement`).
public struct SpareDescriptor: Codable, Equatable, Sendable, OwnerSigned {
    public static let currentFormat = "deepring-spare-v1"
    public static let domain = "DeepRing spare descriptor v1"
    /// Its file name in the spare's folder.
    public static let fileName = "spare.json"

    public var format: String
    public var ringID: String
    public var id: String
    public var keys: PublicKeys
    public var ouroboros: PublicKeys
    public var signature: String

    public init(ringID: String, id: String, keys: PublicKeys, ouroboros: PublicKeys) {
        format = SpareDescriptor.currentFormat
        self.ringID = ringID; self.id = id; self.keys = keys; self.ouroboros = ouroboros
        signature = ""
    }

    public func canonicalFields(into w: inout BinaryWriter) {
        w.string(format)
        w.string(ringID)
        w.string(id)
        keys.write(to: &w)
        ouroboros.write(to: &w)
    }

    /// Parses a spare descriptor and checks its form (not its signature).
    public static func parse(_ bytes: [UInt8], path: String) throws -> SpareDescriptor {
        let d = try decodeStrictJSON(SpareDescriptor.self, from: bytes, path: path)
        guard d.format == currentFormat, !d.ringID.isEmpty, d.ringID.utf8.count <= PayloadLimits.name, isHex(d.id, bytes: 16),
              isHex(d.signature, bytes: 64) else {
            throw RingError.malformedFile(path, "not a valid spare descriptor")
        }
        return d
    }

    public static func read(_ path: String) throws -> SpareDescriptor {
        try parse(try InputFile.read(path, limit: BlockDescriptor.maxSize), path: path)
    }
}

public struct BlockDescriptor: Codable, Equatable, Sendable, OwnerSigned {
    public static let currentFormat = "deepring-block-v3"
    public static let domain = "DeepRing block descriptor v3"
    public static let maxSize = 1 << 16

    public var format: String
    public var ringID: String
    public var id: String
    /// The placement generation (0 at sealing, +1 per reshuffle or re-provisioning).
    public var generation: Int
    public var keys: PublicKeys
    public var predecessor: PublicKeys
    public var successor: PublicKeys
    /// The ouroboros's public keys: the only author whose post may consume a query row, and — when it is the
    /// successor — the member whose layer is the identity (the block's H is then the hash of its own output).
    public var ouroboros: PublicKeys
    /// The signing key of the predecessor's predecessor (hex): the only author whose post the predecessor may have
    /// computed from — and so the only author of the H this block validates the predecessor's output against.
    public var secondPredecessor: String
    public var previousHash: String
    public var hash: String
    /// SHA-256 of the block's `params.safetensors` as sealed, and its size (the file is never read beyond it).
    public var paramsDigest: String
    public var paramsSize: Int
    public var signature: String

    public init(ringID: String, id: String, generation: Int, keys: PublicKeys, predecessor: PublicKeys, successor: PublicKeys,
                ouroboros: PublicKeys, secondPredecessor: [UInt8], previousHash: String, hash: String, paramsDigest: String, paramsSize: Int) {
        format = BlockDescriptor.currentFormat
        self.ringID = ringID; self.id = id; self.generation = generation; self.keys = keys
        self.predecessor = predecessor; self.successor = successor; self.ouroboros = ouroboros; self.secondPredecessor = hex(secondPredecessor)
        self.previousHash = previousHash; self.hash = hash; self.paramsDigest = paramsDigest; self.paramsSize = paramsSize
        signature = ""
    }

    public func canonicalFields(into w: inout BinaryWriter) {
        w.string(format)
        w.string(ringID)
        w.string(id)
        w.i64(Int64(generation))
        keys.write(to: &w)
        predecessor.write(to: &w)
        successor.write(to: &w)
        ouroboros.write(to: &w)
        w.raw(unhex(secondPredecessor) ?? [])
        w.raw(unhex(previousHash) ?? [])
        w.raw(unhex(hash) ?? [])
        w.raw(unhex(paramsDigest) ?? [])
        w.i64(Int64(paramsSize))
    }

    /// Parses a descriptor and checks its form (not its signature: see `isSigned(by:)`).
    public static func parse(_ bytes: [UInt8], path: String) throws -> BlockDescriptor {
        let d = try decodeStrictJSON(BlockDescriptor.self, from: bytes, path: path)
        guard d.format == currentFormat, !d.ringID.isEmpty, d.ringID.utf8.count <= PayloadLimits.name,
              isHex(d.id, bytes: 16), d.generation >= 0, isHex(d.secondPredecessor, bytes: 32),
              isHex(d.previousHash, bytes: 32), isHex(d.hash, bytes: 32), isHex(d.paramsDigest, bytes: 32),
              d.paramsSize > 0, d.paramsSize <= ModelFile.maxFileSize,
              isHex(d.signature, bytes: 64) else {
            throw RingError.malformedFile(path, "not a valid block descriptor")
        }
        return d
    }

    public static func read(_ path: String) throws -> BlockDescriptor {
        try parse(try InputFile.read(path, limit: maxSize), path: path)
    }
}
