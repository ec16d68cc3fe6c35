import Crypto
import DeepRingEngine
import DeepRingLedger
import Foundation

/// `DIR/ring.json`: what anyone may know about a ring.
public struct RingManifest: Codable, Equatable, Sendable {
    public var format: String
    public var ringID: String
    public var ouroboros: PublicKeys
    public var algorithms: [String: String]
    public var blockCount: Int
    public var inputShape: [Int]
    public var classes: Int
}

/// `DIR/owner/record.json`: the owner's private record — ring order, original hashes (HASH_O, HASH_1 … HASH_n)
/// and digests used to check the checkpoint and the block files.
struct OwnerRecord: Codable, Equatable {
    var order: [String]
    var hashes: [String]
    var layerDigests: [String]
    var fileDigests: [String]
    /// How many times the placement was reshuffled (absent in a freshly sealed ring).
    var generation: Int?
}

/// Outcome of an authenticity check (§3.3).
public struct AuthenticityReport: Sendable, Equatable {
    /// `origHASH_last == HASH_last` and every block file is as sealed.
    public var authentic: Bool
    /// The first tampered holder in ring order: nil when authentic; "ouroboros" or a block id otherwise.
    public var firstTampered: String?
    /// Its position in ring order (0 = ouroboros, j = block j); only the owner knows it.
    public var position: Int?
}

/// Sealing (paper §3.2) and the owner's authenticity check and tracking (§3.3, §3.4.4) on a ring directory:
///
///     DIR/ring.json                   public manifest
///     DIR/ledger.sqlite               the shared ledger
///     DIR/owner/                      ouroboros secrets, record.json, checkpoint.safetensors, ouroboros.safetensors
///     DIR/blocks/<random-id>/         params.safetensors (own + next layer), keys.json (0600), block.json (public)
public final class SealedRing {
    public let directory: String
    public let manifest: RingManifest
    /// Updated in place by `reshuffle` (the hashes never change; the placement does).
    var record: OwnerRecord
    /// The next placement, being built in the background (`prepareReshuffle`).
    var pendingPlacement: PendingPlacement?

    deinit { pendingPlacement?.wait() }

    /// Block ids in ring order (position 1 … n). Owner-only knowledge: the blocks themselves do not have it.
    public var placement: [String] { record.order }

    var ownerDir: String { directory + "/owner" }
    func blockDir(_ id: String) -> String { directory + "/blocks/" + id }
    func holderPath(_ position: Int) -> String {
        position == 0 ? ownerDir + "/ouroboros.safetensors" : blockDir(record.order[position - 1]) + "/params.safetensors"
    }

    /// The record's hashes as bytes (validated as hex by `open`, produced by `seal`).
    let recordedHashes: [[UInt8]]

    init(directory: String, manifest: RingManifest, record: OwnerRecord) {
        self.directory = directory; self.manifest = manifest; self.record = record
        recordedHashes = record.hashes.map { unhex($0) ?? [] }
    }

    // MARK: seal

    /// Seals a trained model into a new ring in `directory` (which must not exist or be empty).
    @discardableResult
    public static func seal(_ model: Model, into directory: String) throws -> SealedRing {
        let fm = FileManager.default
        if let existing = try? fm.contentsOfDirectory(atPath: directory), !existing.isEmpty {
            throw RingError.notARing("\(directory) exists and is not empty")
        }
        let layers = RingLayer.split(model)
        let ouroboros = RingLayer.identity(inputShape: model.inputShape)
        let all = [ouroboros] + layers
        let (ho, hb) = HashChain.holdings(ouroboros: ouroboros, layers: layers)
        let hashes = HashChain.hashes(ouroboros: ho, blocks: hb)
        let ids = layers.map { _ in hex((0..<16).map { _ in UInt8.random(in: 0...255) }) }
        let keys = layers.map { _ in BlockKeys() }
        let ouroKeys = BlockKeys()
        // Write into a temporary folder, then rename: a crash never leaves a half-sealed ring.
        let tmp = directory + ".sealing-\(getpid())"
        try? fm.removeItem(atPath: tmp)
        try fm.createDirectory(atPath: tmp + "/owner", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var fileDigests: [String] = []
        let ouroFile = BlockFile.serialize(layers: [("own", ouroboros), ("next", layers[0])])
        try writeFileAtomically(ouroFile, to: tmp + "/owner/ouroboros.safetensors", permissions: 0o600)
        fileDigests.append(hex(Array(SHA256.hash(data: ouroFile))))
        for (j, l) in layers.enumerated() {
            let dir = tmp + "/blocks/" + ids[j]
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let next = j + 1 < layers.count ? layers[j + 1] : ouroboros
            let file = BlockFile.serialize(layers: [("own", l), ("next", next)])
            try writeFileAtomically(file, to: dir + "/params.safetensors")
            fileDigests.append(hex(Array(SHA256.hash(data: file))))
            try KeyFile.write(keys[j], to: dir + "/keys.json")
            let prev = j == 0 ? ouroKeys.publicKeys : keys[j - 1].publicKeys
            let succ = j + 1 < layers.count ? keys[j + 1].publicKeys : ouroKeys.publicKeys
            let info = BlockInfo(id: ids[j], keys: keys[j].publicKeys, predecessor: prev, successor: succ,
                                 previousHash: hex(hashes[j]), hash: hex(hashes[j + 1]))
            try writeJSON(info, to: dir + "/block.json")
        }
        try KeyFile.write(ouroKeys, to: tmp + "/owner/keys.json")
        let checkpoint = BlockFile.serialize(layers: all.enumerated().map { ("L\($0.offset)", $0.element) })
        try writeFileAtomically(checkpoint, to: tmp + "/owner/checkpoint.safetensors", permissions: 0o600)
        let record = OwnerRecord(order: ids, hashes: hashes.map(hex),
                                 layerDigests: all.map { hex(Array(SHA256.hash(data: ParamsEncoding.encode($0)))) },
                                 fileDigests: fileDigests)
        try writeJSON(record, to: tmp + "/owner/record.json", permissions: 0o600)
        let manifest = RingManifest(format: "deepring-ring-v1", ringID: UUID().uuidString.lowercased(), ouroboros: ouroKeys.publicKeys,
                                    algorithms: ["hash": "SHA-256", "signature": "Ed25519", "seal": "HPKE X25519-HKDF-SHA256 AES-256-GCM",
                                                 "payload": "AES-256-GCM"],
                                    blockCount: layers.count, inputShape: model.inputShape, classes: model.architecture.classes)
        try writeJSON(manifest, to: tmp + "/ring.json")
        let ledger = try SQLiteLedger(path: tmp + "/ledger.sqlite")
        try ledger.append(kind: .seal, queryID: nil,
                          payload: membersPayload(keys.map(\.publicKeys.signing), extra: "\"ring\":\"\(manifest.ringID)\",\"blocks\":\(layers.count)"),
                          signer: LedgerSigner(ouroKeys.signing))
        try? fm.removeItem(atPath: directory)
        guard rename(tmp, directory) == 0 else { throw RingError.restoreFailed("cannot move the sealed ring into \(directory)") }
        return SealedRing(directory: directory, manifest: manifest, record: record)
    }

    /// Opens a sealed ring as its owner.
    public static func open(_ directory: String) throws -> SealedRing {
        func load<T: Decodable>(_ t: T.Type, _ p: String) throws -> T {
            guard FileManager.default.fileExists(atPath: p) else { throw RingError.notARing("\(p) is missing") }
            let d = Data(try readWholeFile(p, limit: 16 << 20))
            do { return try JSONDecoder().decode(T.self, from: d) } catch { throw RingError.malformedFile(p, "invalid JSON") }
        }
        let m = try load(RingManifest.self, directory + "/ring.json")
        if FileManager.default.fileExists(atPath: directory + "/owner/record.json") { try completeReshuffle(directory) }
        let r = try load(OwnerRecord.self, directory + "/owner/record.json")
        func isHex(_ s: String, bytes: Int) -> Bool { s.utf8.count == 2 * bytes && unhex(s) != nil }
        guard m.format == "deepring-ring-v1", r.order.count == m.blockCount, r.hashes.count == m.blockCount + 1,
              r.layerDigests.count == m.blockCount + 1, r.fileDigests.count == m.blockCount + 1,
              r.order.allSatisfy({ isHex($0, bytes: 16) }),
              (r.hashes + r.layerDigests + r.fileDigests).allSatisfy({ isHex($0, bytes: 32) }) else {
            throw RingError.notARing("ring.json and owner/record.json disagree")
        }
        _ = try KeyFile.read(directory + "/owner/keys.json")   // refuses group/world-readable secrets
        return SealedRing(directory: directory, manifest: m, record: r)
    }

    /// Signing keys of every ring member (ouroboros first, then blocks in ring order), from the public block files.
    public func memberSigningKeys() throws -> [[UInt8]] {
        var keys = [manifest.ouroboros.signing]
        for id in record.order { keys.append(try BlockInfo.read(blockDirectory: blockDir(id)).keys.signing) }
        return keys
    }

    public var ledgerPath: String { directory + "/ledger.sqlite" }

    // MARK: authenticity and tracking

    /// What holder `position` currently holds, or nil when its file cannot be read as a block file.
    func currentHolding(_ position: Int, limit holderLimit: Int) -> (own: RingLayer, next: RingLayer, digest: String)? {
        let path = holderPath(position)
        guard let d = try? readWholeFile(path, limit: holderLimit) else { return nil }
        let digest = hex(Array(SHA256.hash(data: d)))
        guard let ls = try? BlockFile.parse(d, prefixes: ["own", "next"], path: path) else { return nil }
        return (ls[0], ls[1], digest)
    }

    /// Recomputes the chain from every holder's current parameters (§3.3) and compares it with the record.
    public func checkAuthenticity() -> AuthenticityReport {
        let n = manifest.blockCount
        // Reading, file digests and parsing are independent per holder: spread over the engine's threads. The
        // chain itself (Eq. 1) is sequential: each hash starts from the previous one.
        let holderLimit = SealedRing.holderFileLimit(directory: directory)
        var loaded = [(own: RingLayer, next: RingLayer, digest: String)?](repeating: nil, count: n + 1)
        loaded.withUnsafeMutableBufferPointer { out in
            let box = UnsafeSendableBox(out.baseAddress!)
            Parallel.forEach(n + 1) { p in box.value[p] = currentHolding(p, limit: holderLimit) }
        }
        let empty = RingLayer(specs: [], inputShape: [], tensors: [], tensorNames: [])
        var firstBadFile: Int?
        for p in 0...n where loaded[p]?.digest != record.fileDigests[p] {
            firstBadFile = p
            break
        }
        let current = HashChain.hashes(holders: loaded.map { ($0?.own ?? empty, $0?.next ?? empty) })
        let chainBad = HashChain.firstMismatch(current, record: recordedHashes)
        let first = [chainBad, firstBadFile].compactMap { $0 }.min()
        guard let f = first else { return AuthenticityReport(authentic: true, firstTampered: nil, position: nil) }
        return AuthenticityReport(authentic: false, firstTampered: f == 0 ? "ouroboros" : record.order[f - 1], position: f)
    }

    /// The checkpoint's layers, each checked against its recorded digest before use.
    func checkpointLayers() throws -> [RingLayer] {
        let path = ownerDir + "/checkpoint.safetensors"
        guard let d = FileManager.default.contents(atPath: path) else { throw RingError.checkpointCorrupted(layer: -1) }
        let layers: [RingLayer]
        do { layers = try BlockFile.parse([UInt8](d), prefixes: (0...manifest.blockCount).map { "L\($0)" }, path: path) } catch {
            throw RingError.checkpointCorrupted(layer: -1)
        }
        for (j, l) in layers.enumerated() where hex(Array(SHA256.hash(data: ParamsEncoding.encode(l)))) != record.layerDigests[j] {
            throw RingError.checkpointCorrupted(layer: j)
        }
        return layers
    }

    /// The plain (unprotected) network rebuilt from the owner's verified checkpoint, as ring layers in order.
    public func plainLayers() throws -> [RingLayer] { Array(try checkpointLayers().dropFirst()) }

    /// Tracking (§3.4.4): while authenticity is off, restore the first tampered holder (both its tensors) from
    /// the checkpoint and check again. Returns the holders restored, in order.
    @discardableResult
    public func restore() throws -> [String] {
        var restored: [String] = []
        var report = checkAuthenticity()
        if report.authentic { return [] }
        let layers = try checkpointLayers()
        let n = manifest.blockCount
        var rounds = 0
        while let p = report.position {
            rounds += 1
            guard rounds <= n + 2 else { throw RingError.restoreFailed("authenticity still off after restoring every holder") }
            let next = p + 1 <= n ? layers[p + 1] : layers[0]
            let file = BlockFile.serialize(layers: [("own", layers[p]), ("next", next)])
            try writeFileAtomically(file, to: holderPath(p), permissions: p == 0 ? 0o600 : 0o644)
            restored.append(report.firstTampered!)
            report = checkAuthenticity()
        }
        return restored
    }
}

/// What one block knows, without its secrets (for `deepring ring inspect`).
public struct BlockSummary: Sendable {
    public var id: String
    public var signingKey: String, agreementKey: String
    public var predecessorSigningKey: String, successorSigningKey: String
    public var previousHash: String, hash: String
    public var ownLayer: String, nextLayer: String
}

extension SealedRing {
    /// Reads every block's public files (block.json and the layer descriptions in params.safetensors), in
    /// directory order — not ring order, which only the owner's record holds.
    public static func inspect(_ directory: String) throws -> (RingManifest, [BlockSummary]) {
        guard let d = readSmallFile(directory + "/ring.json", limit: 1 << 20),
              let manifest = try? JSONDecoder().decode(RingManifest.self, from: d) else {
            throw RingError.notARing("\(directory)/ring.json is missing or invalid")
        }
        var out: [BlockSummary] = []
        for id in try FileManager.default.contentsOfDirectory(atPath: directory + "/blocks").sorted() {
            let b = directory + "/blocks/" + id
            let info = try BlockInfo.read(blockDirectory: b)
            let layers = try BlockFile.parse(try readHolderFile(b + "/params.safetensors", directory: directory),
                                             prefixes: ["own", "next"], path: b + "/params.safetensors")
            func describe(_ l: RingLayer) -> String {
                l.specs.map(\.type.rawValue).joined(separator: "+") + " " + l.tensors.map { "\($0.shape)" }.joined(separator: " ")
            }
            out.append(BlockSummary(id: id, signingKey: hex(info.keys.signing), agreementKey: hex(info.keys.agreement),
                                    predecessorSigningKey: hex(info.predecessor.signing), successorSigningKey: hex(info.successor.signing),
                                    previousHash: info.previousHash, hash: info.hash,
                                    ownLayer: describe(layers[0]), nextLayer: describe(layers[1])))
        }
        return (manifest, out)
    }
}

/// `blocks/<id>/block.json`: what a block knows besides its secrets (no layer index).
struct BlockInfo: Codable {
    var id: String
    var keys: PublicKeys
    var predecessor: PublicKeys
    var successor: PublicKeys
    var previousHash: String
    var hash: String

    /// Reads a block's `block.json` as hostile input: size-capped, every key 32 bytes.
    static func read(blockDirectory b: String) throws -> BlockInfo {
        let p = b + "/block.json"
        guard let d = readSmallFile(p, limit: 1 << 20),
              let info = try? JSONDecoder().decode(BlockInfo.self, from: d),
              [info.keys, info.predecessor, info.successor].allSatisfy({ $0.signing.count == 32 && $0.agreement.count == 32 }) else {
            throw RingError.malformedFile(p, "missing or invalid block description")
        }
        return info
    }
}

func jsonBytes<T: Encodable>(_ v: T) throws -> [UInt8] {
    let enc = JSONEncoder()
    enc.outputFormatting = [.sortedKeys, .prettyPrinted]
    return Array(try enc.encode(v)) + [10]
}

func writeJSON<T: Encodable>(_ v: T, to path: String, permissions: Int = 0o644) throws {
    try writeFileAtomically(try jsonBytes(v), to: path, permissions: permissions)
}

/// Creates a new file (it must not exist) with `bytes`, without fsync: for files inside a folder that is synced and
/// then committed as a whole (a new placement).
func writeNewFile(_ bytes: [UInt8], to path: String, permissions: Int) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode_t(permissions))
    guard fd >= 0 else { throw RingError.restoreFailed("cannot create \(path)") }
    defer { close(fd) }
    guard writeAll(fd, bytes) else { throw RingError.restoreFailed("cannot write \(path)") }
}

/// A whole file's bytes, read straight into an array (no intermediate `Data`). Files over `limit` bytes are
/// refused before anything is allocated.
func readWholeFile(_ path: String, limit: Int) throws -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw RingError.malformedFile(path, "cannot be opened") }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0, st.st_size >= 0 else { throw RingError.malformedFile(path, "cannot be read") }
    guard st.st_size <= limit else {
        throw RingError.malformedFile(path, "is \(st.st_size) bytes; no file of this ring can be larger than \(limit) bytes")
    }
    let size = Int(st.st_size)
    var failed = false
    let bytes = [UInt8](unsafeUninitializedCapacity: size) { buf, count in
        var off = 0
        while off < size {
            let r = read(fd, buf.baseAddress! + off, size - off)
            if r <= 0 { failed = r < 0; break }
            off += r
        }
        count = off
    }
    guard !failed, bytes.count == size else { throw RingError.malformedFile(path, "cannot be read (changed while reading?)") }
    return bytes
}

/// A small file (JSON) as `Data`; nil when it is missing, unreadable or over `limit` bytes.
func readSmallFile(_ path: String, limit: Int) -> Data? { (try? readWholeFile(path, limit: limit)).map { Data($0) } }

extension SealedRing {
    /// The most bytes a block's parameter file (or the ouroboros's) can have in the ring at `directory`: the
    /// owner's checkpoint holds every layer and a holder's file two of them, so nothing legitimate is larger
    /// than the checkpoint (64 KiB of slack for the header's longer tensor names). Without the owner's folder
    /// (a public copy of the ring): 2 GiB. A hostile file is refused by its size before it is read.
    static func holderFileLimit(directory: String) -> Int {
        var st = stat()
        guard stat(directory + "/owner/checkpoint.safetensors", &st) == 0, st.st_size > 0 else { return 1 << 31 }
        return Int(st.st_size) + (1 << 16)
    }

    /// A holder's parameter file, read only when its size is plausible (see `holderFileLimit`).
    static func readHolderFile(_ path: String, directory: String) throws -> [UInt8] {
        try readWholeFile(path, limit: holderFileLimit(directory: directory))
    }
}
