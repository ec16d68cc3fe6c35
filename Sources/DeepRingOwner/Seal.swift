import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingLedgerSQLite
import DeepRingNode
import DeepRingProtocol
import Foundation

/// `owner/record.json`: the owner's private record — ring order, original hashes (HASH_O, HASH_1 … HASH_n) and the
/// digests that check the checkpoint and the holders' files — signed by the owner's identity key.
public struct OwnerRecord: Codable, Equatable, Sendable, OwnerSigned {
    public static let currentFormat = "deepring-record-v4"
    public static let domain = "DeepRing owner record v4"

    public internal(set) var format: String
    public internal(set) var ringID: String
    public internal(set) var order: [String]
    public internal(set) var hashes: [String]
    public internal(set) var layerDigests: [String]
    public internal(set) var fileDigests: [String]
    /// The size of each holder's file as sealed (0 = the ouroboros), and of the checkpoint: a file of another size is
    /// tampered with, and no file is read beyond its size.
    public internal(set) var fileSizes: [Int]
    public internal(set) var checkpointSize: Int
    /// The placement generation: 0 at sealing, +1 per reshuffle or re-provisioning.
    public internal(set) var generation: Int
    /// Every block's public keys, in ring order: what the owner's process needs of its members (its neighbours'
    /// keys, the member set) without reading their folders.
    public internal(set) var members: [PublicKeys]
    /// The spare blocks (`seal --spares N`): their ids and public keys, and the generation from which each holds
    /// an evicted block's slot (nil: still waiting).
    public internal(set) var spares: [SpareEntry]
    public var signature: String

    public struct SpareEntry: Codable, Equatable, Sendable {
        public var id: String
        public var keys: PublicKeys
        public var placed: Int?
        /// The signing key (hex) of the block whose slot it took.
        public var replaced: String?
    }

    public func canonicalFields(into w: inout BinaryWriter) {
        w.string(format)
        w.string(ringID)
        for list in [order, hashes, layerDigests, fileDigests] { w.list(list) { w, s in w.string(s) } }
        w.list(fileSizes) { w, n in w.i64(Int64(n)) }
        w.i64(Int64(checkpointSize))
        w.i64(Int64(generation))
        w.list(members) { w, k in k.write(to: &w) }
        w.list(spares) { w, s in
            w.string(s.id)
            s.keys.write(to: &w)
            w.i64(Int64(s.placed ?? -1))
            w.string(s.replaced ?? "")
        }
    }

    public static let maxSpares = 64

    /// Parses and checks the record's form for a ring of `blockCount` blocks (not its signature).
    public static func parse(_ bytes: [UInt8], path: String, blockCount: Int) throws -> OwnerRecord {
        let r = try decodeStrictJSON(OwnerRecord.self, from: bytes, path: path)
        func isHex(_ s: String, _ n: Int) -> Bool { s.utf8.count == 2 * n && unhex(s) != nil }
        guard r.format == currentFormat, r.order.count == blockCount, r.members.count == blockCount, r.hashes.count == blockCount + 1,
              r.layerDigests.count == blockCount + 1, r.fileDigests.count == blockCount + 1, r.generation >= 0,
              r.fileSizes.count == blockCount + 1, r.fileSizes.allSatisfy({ $0 > 0 && $0 <= ModelFile.maxFileSize }),
              r.checkpointSize > 0, r.checkpointSize <= 2 * ModelFile.maxFileSize,
              r.order.allSatisfy({ isHex($0, 16) }), Set(r.order).count == r.order.count,
              r.spares.count <= maxSpares, r.spares.allSatisfy({ isHex($0.id, 16) && ($0.placed ?? 0) >= 0 }),
              Set(r.spares.map(\.id)).count == r.spares.count,
              (r.hashes + r.layerDigests + r.fileDigests).allSatisfy({ isHex($0, 32) }) else {
            throw RingError.malformedFile(path, "not a valid owner record for \(blockCount) blocks")
        }
        return r
    }
}

/// Outcome of an authenticity check (§3.3).
public struct AuthenticityReport: Sendable, Equatable {
    /// `origHASH_last == HASH_last` and every holder's file is as sealed.
    public var authentic: Bool
    /// The first tampered holder in ring order: nil when authentic; "ouroboros" or a block id otherwise.
    public var firstTampered: String?
    /// Its position in ring order (0 = ouroboros, j = block j); only the owner knows it.
    public var position: Int?
}

/// A sealed ring as its owner sees it (paper §3.2–3.4): sealing, the authenticity check and tracking. Opening a ring
/// never changes a file: an interrupted reshuffle is resolved only by a writer holding the runtime lock.
public final class SealedRing {
    public let directory: String
    public let paths: RingPaths
    public let manifest: RingManifest
    /// Updated by reshuffles (the hashes never change; the placement does).
    package var record: OwnerRecord
    /// The owner's identity key: signs the record, the manifest and every block descriptor.
    let identity: Curve25519.Signing.PrivateKey
    /// The next placement, being built in the background (`prepareReshuffle`).
    package var pendingPlacement: PendingPlacement?
    /// The record's hashes as bytes.
    let recordedHashes: [[UInt8]]

    deinit { pendingPlacement?.wait() }

    init(directory: String, manifest: RingManifest, record: OwnerRecord, identity: Curve25519.Signing.PrivateKey) {
        self.directory = directory; paths = RingPaths(directory)
        self.manifest = manifest; self.record = record; self.identity = identity
        recordedHashes = record.hashes.map { unhex($0) ?? [] }
    }

    /// Block ids in ring order (position 1 … n). Owner-only knowledge: the blocks themselves do not have it.
    public var placement: [String] { record.order }
    public var generation: Int { record.generation }
    public var ownerKey: [UInt8] { Array(identity.publicKey.rawRepresentation) }
    public var ledgerPath: String { paths.ledger }

    /// The folder of block `id`: in `blocks/`, or in `blocks.next/` when a committed reshuffle was interrupted before
    /// its folders were swapped (readers see it there; the next writer completes the swap).
    package func blockDirectory(_ id: String) -> String {
        let current = paths.block(id)
        if FileManager.default.fileExists(atPath: current) { return current }
        let next = paths.nextBlocks + "/" + id
        return FileManager.default.fileExists(atPath: next) ? next : current
    }

    package func holderPath(_ position: Int) -> String {
        position == 0 ? paths.ouroborosParams : blockDirectory(record.order[position - 1]) + "/params.safetensors"
    }

    static let algorithms = ["hash": "SHA-256", "signature": "Ed25519", "seal": "HPKE X25519-HKDF-SHA256 AES-256-GCM",
                             "payload": "AES-256-GCM"]

    // MARK: seal

    /// Seals a trained model into a new ring in `directory`. The folder may not exist or must be empty; with `force`
    /// it may be an existing ring, replaced once the new one is complete (never a file or another folder, and never a
    /// folder holding one of `protecting`). The ring is written into a temporary sibling folder and renamed into
    /// place: a crash or a signal never leaves a half-sealed ring, and the temporary folder (which holds private
    /// keys) is removed on every exit path, or by the next `seal` if the process was killed outright.
    @discardableResult
    ///
    /// `ledger`: the ring's ledger is that one (a PostgreSQL database, for blocks on many hosts) instead of
    /// `DIR/ledger.sqlite`. It must be empty: one ring per ledger.
    public static func seal(_ model: Model, into directory: String, force: Bool = false, protecting: [String] = [],
                            ledger: (any Ledger)? = nil, spares: Int = 0) throws -> SealedRing {
        guard (0...OwnerRecord.maxSpares).contains(spares) else {
            throw RingError.refused("--spares must be between 0 and \(OwnerRecord.maxSpares)")
        }
        let replacing = try RingTarget.check(directory, force: force, protected: protecting)
        if let l = ledger {
            let n = try l.lastSequence()
            guard n == 0 else {
                throw RingError.refused("the ledger already holds \(n) entries (another ring's?); seal into a new, empty database (`deepring ledger init`)")
            }
        }
        let fm = FileManager.default
        let url = URL(fileURLWithPath: directory)
        let parent = url.deletingLastPathComponent().path, name = url.lastPathComponent
        try fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
        TemporaryPaths.removeStale(in: parent, prefix: ".\(name).sealing-", separator: "-", suffix: 8)
        let tmp = parent + "/.\(name).sealing-\(getpid())-\(randomID().prefix(8))"
        TemporaryPaths.register(tmp)
        defer { TemporaryPaths.unregister(tmp); removeTree(tmp) }
        let ring = try write(model, into: tmp, ledger: ledger, spares: spares)
        if replacing {
            // Not while a process runs the ring (it writes into the folder by path): wait for it, up to a minute.
            let running = try RingPaths(directory).runtimeLock(timeout: 60)
            defer { _ = running }
            let old = parent + "/.\(name).replaced-\(getpid())-\(randomID().prefix(8))"
            guard rename(directory, old) == 0 else { throw RingError.restoreFailed("cannot move the old ring \(directory) aside") }
            guard rename(tmp, directory) == 0 else {
                _ = rename(old, directory)
                throw RingError.restoreFailed("cannot move the sealed ring into \(directory)")
            }
            removeTree(old)
        } else {
            guard rename(tmp, directory) == 0 else { throw RingError.restoreFailed("cannot move the sealed ring into \(directory)") }
        }
        return SealedRing(directory: directory, manifest: ring.manifest, record: ring.record, identity: ring.identity)
    }

    /// Writes a complete ring into the empty folder `dir`.
    private static func write(_ model: Model, into dir: String, ledger shared: (any Ledger)?, spares: Int) throws -> (manifest: RingManifest, record: OwnerRecord, identity: Curve25519.Signing.PrivateKey) {
        let fm = FileManager.default
        let p = RingPaths(dir)
        let layers = RingLayer.split(model)
        let ouroboros = RingLayer.identity(inputShape: model.inputShape)
        let all = [ouroboros] + layers
        let (ho, hb) = HashChain.holdings(ouroboros: ouroboros, layers: layers)
        let hashes = HashChain.hashes(ouroboros: ho, blocks: hb)
        let identity = Curve25519.Signing.PrivateKey()
        let owner = Array(identity.publicKey.rawRepresentation)
        let ouroKeys = BlockKeys()
        let ringID = UUID().uuidString.lowercased()
        try fm.createDirectory(atPath: p.owner, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try fm.createDirectory(atPath: p.blocks, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        try writeNewFile(KeyFile.serialize(KeyFile.Contents(signing: identity)), to: p.identity, permissions: 0o600)
        try writeNewFile(KeyFile.serialize(ouroKeys), to: p.ouroborosKeys, permissions: 0o600)
        for lock in [p.runtimeLock, p.stateLock] { try writeNewFile([], to: lock, permissions: 0o600) }
        let ouroFile = BlockFile.serialize(layers: [("own", ouroboros), ("next", layers[0])])
        try writeNewFile(ouroFile, to: p.ouroborosParams, permissions: 0o600)
        var fileDigests = [hex(SHA256.hash(data: ouroFile))]
        let blockFiles = layers.indices.map { j in
            BlockFile.serialize(layers: [("own", layers[j]), ("next", j + 1 < layers.count ? layers[j + 1] : ouroboros)])
        }
        fileDigests += blockFiles.map { hex(SHA256.hash(data: $0)) }
        // A spare receives an evicted block's file in one ledger entry.
        if spares > 0, let j = blockFiles.firstIndex(where: { $0.count + (1 << 16) > LedgerEntry.maxPayload }) {
            throw RingError.refused("block \(j + 1)'s parameter file is \(blockFiles[j].count >> 20) MiB: a spare could not receive it in one ledger entry (at most \(LedgerEntry.maxPayload >> 20) MiB); seal without --spares")
        }
        let checkpoint = BlockFile.serialize(layers: all.enumerated().map { ("L\($0.offset)", $0.element) })
        var record = OwnerRecord(format: OwnerRecord.currentFormat, ringID: ringID, order: [], hashes: hashes.map { hex($0) },
                                 layerDigests: all.map { hex(SHA256.hash(data: ParamsEncoding.encode($0))) },
                                 fileDigests: fileDigests, fileSizes: [ouroFile.count] + blockFiles.map(\.count),
                                 checkpointSize: checkpoint.count, generation: 0, members: [], spares: [], signature: "")
        // The first placement is built exactly as every later one (fresh ids and keys, signed descriptors).
        let placement = try Placement.build(paths: p, record: record, ouroboros: ouroKeys.publicKeys, identity: identity,
                                            into: p.blocks, sources: blockFiles.map { .bytes($0) })
        record.order = placement.ids
        record.members = placement.keys.map(\.publicKeys)
        record.spares = try (0..<spares).map { _ in try SealedRing.writeSpare(paths: p, ringID: ringID, ouroboros: ouroKeys.publicKeys, identity: identity) }
        try record.sign(with: identity)
        try writeNewFile(try encodeJSON(record), to: p.record, permissions: 0o600)
        try writeNewFile(checkpoint, to: p.checkpoint, permissions: 0o600)
        var manifest = RingManifest(ringID: ringID, owner: owner, ouroboros: ouroKeys.publicKeys, algorithms: algorithms,
                                    blockCount: layers.count, inputShape: model.inputShape, classes: model.architecture.classes)
        try manifest.sign(with: identity)
        let manifestBytes = try encodeJSON(manifest)
        try writeNewFile(manifestBytes, to: p.ownerManifest, permissions: 0o600)
        try writeNewFile(manifestBytes, to: p.manifest, permissions: 0o644)
        do {
            let ledger: any Ledger = try shared ?? SQLiteLedger(path: p.ledger)
            try ledger.append(kind: .seal, queryID: nil,
                              payload: MembersAnnouncement(ringID: ringID, generation: 0, members: placement.keys.map(\.publicKeys.signing).shuffled()).encoded(),
                              signer: LedgerSigner(ouroKeys.signing))
        }
        syncFileSystem(dir)
        return (manifest, record, identity)
    }

    /// A spare's folder, `spares/<id>/`: its key pairs (0600, anchored to the owner's key) and its owner-signed
    /// `spare.json`. Returns its record entry.
    private static func writeSpare(paths p: RingPaths, ringID: String, ouroboros: PublicKeys,
                                   identity: Curve25519.Signing.PrivateKey) throws -> OwnerRecord.SpareEntry {
        let fm = FileManager.default
        if !fm.fileExists(atPath: p.spares) {
            try fm.createDirectory(atPath: p.spares, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        }
        let id = randomID()
        let dir = p.spares + "/" + id
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        let keys = BlockKeys()
        try writeNewFile(KeyFile.serialize(keys, owner: Array(identity.publicKey.rawRepresentation)), to: dir + "/keys.json", permissions: 0o600)
        var d = SpareDescriptor(ringID: ringID, id: id, keys: keys.publicKeys, ouroboros: ouroboros)
        try d.sign(with: identity)
        try writeNewFile(try encodeJSON(d), to: dir + "/" + SpareDescriptor.fileName, permissions: 0o644)
        return OwnerRecord.SpareEntry(id: id, keys: keys.publicKeys, placed: nil, replaced: nil)
    }

    // MARK: open

    /// Opens a ring as its owner, read-only, and checks that what the owner's own files say agrees: the identity key
    /// signs `ring.json` and the record, and the record fits the manifest. (`RingCheck` checks everything else.)
    public static func open(_ directory: String) throws -> SealedRing {
        let p = RingPaths(directory)
        guard FileManager.default.fileExists(atPath: p.manifest) else { throw RingError.notARing("\(p.manifest) is missing") }
        guard FileManager.default.fileExists(atPath: p.identity) else {
            if FileManager.default.fileExists(atPath: p.owner + "/record.json") {
                throw RingError.notARing("\(directory) was sealed by an older DeepRing (no owner identity key); seal the model again")
            }
            throw RingError.notARing("\(p.identity) is missing (not the owner's copy of the ring?)")
        }
        let identity = try KeyFile.read(p.identity).signing
        let owner = Array(identity.publicKey.rawRepresentation)
        let manifest = try RingManifest.read(p.manifest)
        guard manifest.ownerKey == owner else {
            throw RingError.notAuthentic("\(p.manifest) names owner key \(manifest.ownerFingerprint), not this ring's owner \(KeyFingerprint.of(owner))")
        }
        let record = try OwnerRecord.parse(try InputFile.read(p.record, limit: RingFileLimits.json), path: p.record,
                                           blockCount: manifest.blockCount)
        guard record.isSigned(by: owner) else { throw RingError.notAuthentic("\(p.record) is not signed by the owner") }
        guard record.ringID == manifest.ringID else { throw RingError.notAuthentic("\(p.record) belongs to ring \(record.ringID)") }
        return SealedRing(directory: directory, manifest: manifest, record: record, identity: identity)
    }

    // MARK: authenticity and tracking

    /// What holder `position` currently holds, or nil when its file cannot be read as a block file.
    func currentHolding(_ position: Int) -> (own: RingLayer, next: RingLayer, digest: String)? {
        let path = holderPath(position)
        guard let d = try? readHolder(position) else { return nil }
        let digest = hex(SHA256.hash(data: d))
        guard let ls = try? BlockFile.parse(d, prefixes: ["own", "next"], path: path) else { return nil }
        return (ls[0], ls[1], digest)
    }

    /// Recomputes the chain from every holder's current parameters (§3.3) and compares it with the record; a holder
    /// whose file's digest differs from the record is tampered too.
    public func checkAuthenticity() -> AuthenticityReport {
        let n = manifest.blockCount
        // Reading, file digests and parsing are independent per holder: spread over the engine's threads. The
        // chain itself (Eq. 1) is sequential: each hash starts from the previous one.
        var loaded = [(own: RingLayer, next: RingLayer, digest: String)?](repeating: nil, count: n + 1)
        loaded.withUnsafeMutableBufferPointer { out in
            guard let base = out.baseAddress else { return }
            let box = UnsafeSendableBox(base)
            Parallel.forEach(n + 1) { p in box.value[p] = currentHolding(p) }
        }
        let empty = RingLayer(specs: [], inputShape: [], tensors: [], tensorNames: [])
        let firstBadFile = (0...n).first { loaded[$0]?.digest != record.fileDigests[$0] }
        let current = HashChain.hashes(holders: loaded.map { ($0?.own ?? empty, $0?.next ?? empty) })
        let chainBad = HashChain.firstMismatch(current, record: recordedHashes)
        guard let f = [chainBad, firstBadFile].compactMap({ $0 }).min() else {
            return AuthenticityReport(authentic: true, firstTampered: nil, position: nil)
        }
        return AuthenticityReport(authentic: false, firstTampered: holderName(f), position: f)
    }

    /// The ouroboros's key pairs (those the manifest names) and its two layers (the identity and its copy of layer
    /// 1), from a file with the sealed digest.
    package func ouroborosHolding() throws -> (keys: BlockKeys, layers: [RingLayer]) {
        guard let keys = try KeyFile.read(paths.ouroborosKeys).memberKeys, keys.publicKeys == manifest.ouroboros else {
            throw RingError.notAuthentic("owner/keys.json does not hold the ouroboros keys named in the manifest")
        }
        let bytes = try readHolder(0)
        guard hex(SHA256.hash(data: bytes)) == record.fileDigests[0] else {
            throw RingError.notAuthentic("owner/ouroboros.safetensors differs from the sealed file")
        }
        return (keys, try BlockFile.parse(bytes, prefixes: ["own", "next"], path: paths.ouroborosParams))
    }

    func holderName(_ position: Int) -> String { position == 0 ? "ouroboros" : record.order[position - 1] }

    /// Holder `position`'s file, read only up to its sealed size (a larger file is refused before it is read).
    package func readHolder(_ position: Int) throws -> [UInt8] {
        try InputFile.read(holderPath(position), limit: record.fileSizes[position])
    }

    /// The checkpoint's layers, each checked against its recorded digest before use.
    func checkpointLayers() throws -> [RingLayer] {
        let layers: [RingLayer]
        do {
            layers = try BlockFile.parse(try InputFile.read(paths.checkpoint, limit: record.checkpointSize),
                                         prefixes: (0...manifest.blockCount).map { "L\($0)" }, path: paths.checkpoint)
        } catch {
            throw RingError.checkpointCorrupted(layer: nil)
        }
        for (j, l) in layers.enumerated() where hex(SHA256.hash(data: ParamsEncoding.encode(l))) != record.layerDigests[j] {
            throw RingError.checkpointCorrupted(layer: j)
        }
        return layers
    }

    /// The plain (unprotected) network rebuilt from the owner's verified checkpoint, as ring layers in order.
    public func plainLayers() throws -> [RingLayer] { Array(try checkpointLayers().dropFirst()) }

    /// The bytes holder `position` holds when untampered (its file as sealed), from the verified checkpoint.
    func sealedHolderFile(_ position: Int, layers: [RingLayer]) -> [UInt8] {
        let n = manifest.blockCount
        let next = position + 1 <= n ? layers[position + 1] : layers[0]
        return BlockFile.serialize(layers: [("own", layers[position]), ("next", next)])
    }

    /// Tracking (§3.4.4): while authenticity is off, restore the first tampered holder (both its tensors) from the
    /// checkpoint and check again. Returns the holders restored, in order. The caller holds the runtime lock.
    @discardableResult
    func restoreParameters() throws -> [String] {
        var restored: [String] = []
        var report = checkAuthenticity()
        if report.authentic { return [] }
        let layers = try checkpointLayers()
        var rounds = 0
        while let p = report.position {
            rounds += 1
            guard rounds <= manifest.blockCount + 2 else { throw RingError.restoreFailed("authenticity still off after restoring every holder") }
            let file = sealedHolderFile(p, layers: layers)
            do {
                let lock = try paths.stateLockExclusive()
                try writeFileAtomically(file, to: holderPath(p), permissions: p == 0 ? 0o600 : 0o644)
                _ = lock
            }
            restored.append(holderName(p))
            report = checkAuthenticity()
        }
        return restored
    }

    /// Signs and writes the record (the commit point of a new placement).
    func commit(_ newRecord: OwnerRecord) throws {
        var r = newRecord
        try r.sign(with: identity)
        try writeFileAtomically(try encodeJSON(r), to: paths.record, permissions: 0o600)
        record = r
    }
}

/// What one block knows, without its secrets (for `deepring ring inspect`).
public struct BlockSummary: Sendable {
    public var id: String
    public var signingKey: String, agreementKey: String
    public var predecessorSigningKey: String, successorSigningKey: String
    public var previousHash: String, hash: String
    public var ownLayer: String, nextLayer: String
    /// Whether the descriptor carries the signature of the owner named in `ring.json`.
    public var signedByOwner: Bool
}

extension SealedRing {
    /// Reads every block's public files (block.json and the layer descriptions in params.safetensors), in folder
    /// order — not ring order, which only the owner's record holds. A reader: changes nothing.
    public static func inspect(_ directory: String) throws -> (RingManifest, [BlockSummary]) {
        let p = RingPaths(directory)
        let manifest = try RingManifest.read(p.manifest)
        let lock = try p.stateLockShared()
        defer { _ = lock }
        var out: [BlockSummary] = []
        for id in try FileManager.default.contentsOfDirectory(atPath: p.blocks).sorted() {
            let b = p.block(id)
            let d = try BlockDescriptor.read(b + "/block.json")
            let signed = d.isSigned(by: manifest.ownerKey)
            func describe(_ l: RingLayer) -> String {
                l.specs.map(\.type.rawValue).joined(separator: "+") + " " + l.tensors.map { "\($0.shape)" }.joined(separator: " ")
            }
            // The parameter file is read (up to the size the descriptor names) only when the owner signed that size.
            var own = "not read (the descriptor is not the owner's)", next = own
            if signed {
                let layers = try BlockFile.parse(try InputFile.read(b + "/params.safetensors", limit: d.paramsSize),
                                                 prefixes: ["own", "next"], path: b + "/params.safetensors")
                own = describe(layers[0]); next = describe(layers[1])
            }
            out.append(BlockSummary(id: id, signingKey: hex(d.keys.signing), agreementKey: hex(d.keys.agreement),
                                    predecessorSigningKey: hex(d.predecessor.signing), successorSigningKey: hex(d.successor.signing),
                                    previousHash: d.previousHash, hash: d.hash, ownLayer: own, nextLayer: next, signedByOwner: signed))
        }
        return (manifest, out)
    }
}
