import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingNode
import DeepRingProtocol
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One placement of the blocks: for each ring position a folder with a fresh random id, fresh Ed25519 and X25519 key
/// pairs (`keys.json`, 0600, with the owner's public key as the block's trust anchor), its parameter file, and a
/// descriptor signed by the owner that names its neighbours' public keys and its hashes. Sealing builds the first
/// placement; every reshuffle and every re-provisioning builds a new one the same way.
package enum Placement {
    /// Where a block's parameter file comes from: hard-linked from the current placement (or copied across file
    /// systems), or written from bytes (sealing, or restored from the checkpoint).
    enum Source { case link(String), bytes([UInt8]) }

    struct Built {
        var ids: [String]
        var keys: [BlockKeys]
        /// The inode of each linked file (nil for written ones): a file restored after the build is linked again.
        var linkedInodes: [UInt64?]
    }

    /// Builds a placement for generation `record.generation` (the caller sets it) into `folder`, which must exist
    /// and be empty or new. Nothing is synced here: the caller syncs the folder before committing it.
    static func build(paths: RingPaths, record: OwnerRecord, ouroboros: PublicKeys, identity: Curve25519.Signing.PrivateKey,
                      into folder: String, sources: [Source]) throws -> Built {
        let n = sources.count
        let ids = (0..<n).map { _ in randomID() }
        let keys = (0..<n).map { _ in BlockKeys() }
        let owner = Array(identity.publicKey.rawRepresentation)
        var inodes: [UInt64?] = []
        for j in 0..<n {
            let dir = folder + "/" + ids[j]
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            switch sources[j] {
            case .link(let src): inodes.append(try linkParams(src, into: dir))
            case .bytes(let b): try writeNewFile(b, to: dir + "/params.safetensors", permissions: 0o644); inodes.append(nil)
            }
            try writeNewFile(KeyFile.serialize(keys[j], owner: owner), to: dir + "/keys.json", permissions: 0o600)
            let d = try descriptor(j, id: ids[j], record: record, keys: keys.map(\.publicKeys), ouroboros: ouroboros, identity: identity)
            try writeNewFile(try encodeJSON(d), to: dir + "/block.json", permissions: 0o644)
        }
        return Built(ids: ids, keys: keys, linkedInodes: inodes)
    }

    /// The owner-signed descriptor of the block at ring position `j + 1` (0-based `j`) of generation
    /// `record.generation`, whose blocks hold `keys` in ring order: its neighbours' keys, its hashes (Eq. 1) and its
    /// parameter file's digest.
    static func descriptor(_ j: Int, id: String, record: OwnerRecord, keys: [PublicKeys], ouroboros: PublicKeys,
                           identity: Curve25519.Signing.PrivateKey) throws -> BlockDescriptor {
        let n = keys.count
        var d = BlockDescriptor(ringID: record.ringID, id: id, generation: record.generation, keys: keys[j],
                                predecessor: j == 0 ? ouroboros : keys[j - 1],
                                successor: j + 1 < n ? keys[j + 1] : ouroboros, ouroboros: ouroboros,
                                secondPredecessor: Placement.secondPredecessor(j, keys.map(\.signing), ouroboros.signing),
                                previousHash: record.hashes[j], hash: record.hashes[j + 1], paramsDigest: record.fileDigests[j + 1],
                                paramsSize: record.fileSizes[j + 1])
        try d.sign(with: identity)
        return d
    }

    /// The signing key two places before ring position `j + 1` (0-based `j` into `blocks`, the blocks' signing keys
    /// in ring order): the ring is closed, so before block 1 come the ouroboros and then the last block.
    package static func secondPredecessor(_ j: Int, _ blocks: [[UInt8]], _ ouroboros: [UInt8]) -> [UInt8] {
        // Positions around the ring: 0 = the ouroboros, 1 … n = the blocks.
        let n = blocks.count
        let p = ((j + 1) - 2 + (n + 1)) % (n + 1)
        return p == 0 ? ouroboros : blocks[p - 1]
    }

    /// Hard-links (or, across file systems, copies) a parameter file into a new block folder; returns its inode.
    static func linkParams(_ src: String, into dir: String) throws -> UInt64 {
        let dst = dir + "/params.safetensors"
        let ino = try inode(src)
        if link(src, dst) != 0 {
            unlink(dst)
            try FileManager.default.copyItem(atPath: src, toPath: dst)
        }
        return ino
    }

    static func inode(_ path: String) throws -> UInt64 {
        var st = stat()
        guard stat(path, &st) == 0 else { throw RingError.restoreFailed("cannot read \(path)") }
        return UInt64(st.st_ino)
    }
}

/// Reshuffle (paper §3.4, after delivery): "the placement of the blocks is reshuffled". After every query each
/// block gets a new random id (folder) and fresh signing and HPKE key pairs; its neighbours learn the new public keys
/// from their new owner-signed descriptors. The ouroboros — the one publicly known member — keeps its keys and
/// announces the new member signing keys, in random order, in a signed `reshuffle` entry so that `ledger audit` can
/// still tell ring members from outsiders.
///
/// What this buys: an observer of the ledger sees, within one query, the order in which keys post (that is how
/// the ring works), but a key never appears in two queries, so it cannot follow a block from query to query or
/// aim at "the block that computed layer 3 last time" through the ledger. What it does not hide: the length of
/// each X ciphertext reveals the width of the layer output (900, 600, … floats × batch), and anyone who can read
/// the block folders sees tensor shapes in `params.safetensors`.
///
/// Crash safety: the new placement is built beside the old one in `blocks.next/` (parameter files hard-linked,
/// new keys and descriptors written, then one `syncfs`), announced on the ledger, and committed by atomically
/// replacing the signed `owner/record.json`; the folders are then swapped. All of it happens under the runtime lock,
/// and the commit and swap under the state lock, so readers see the old placement or the new one. A writer that
/// opens the ring after a crash finishes the swap if the record names the folders in `blocks.next/`, and discards
/// `blocks.next/` otherwise (the old placement's keys are still valid).
///
/// Speed: after a big batch the runtime has the next placement built in `blocks.next/` by a background thread while
/// the next query computes (`prepareReshuffle`); the reshuffle then only announces and commits it (≈ 1 ms instead of
/// 3–5). A parameter file restored in between is a new file: it is linked again before the commit.
extension SealedRing {
    /// Sources for a new placement: every block's current file, linked.
    func currentSources() -> [Placement.Source] {
        record.order.map { .link(blockDirectory($0) + "/params.safetensors") }
    }

    private func nextRecord() -> OwnerRecord {
        var r = record
        r.generation = record.generation + 1
        return r
    }

    /// Starts building the next placement in the background, so that the reshuffle after the next query only has to
    /// announce and commit it. Idempotent.
    public func prepareReshuffle() {
        guard pendingPlacement == nil else { return }
        let pending = PendingPlacement(order: record.order)
        pendingPlacement = pending
        let paths = self.paths, next = nextRecord(), identity = self.identity, ouroboros = manifest.ouroboros
        let sources = currentSources()
        // A normal-priority thread: at idle priority it starved whenever the machine was busy, and the reshuffle
        // then waited for it (265 ms instead of 1 ms per query in a run beside a compiler).
        let thread = Thread {
            pending.finish(Result { try SealedRing.buildNext(paths: paths, record: next, ouroboros: ouroboros, identity: identity, sources: sources) })
        }
        thread.start()
    }

    /// Builds a new placement in `blocks.next/` and syncs it (the work before the commit point).
    private static func buildNext(paths: RingPaths, record: OwnerRecord, ouroboros: PublicKeys, identity: Curve25519.Signing.PrivateKey,
                                  sources: [Placement.Source]) throws -> Placement.Built {
        removeTree(paths.nextBlocks)
        try FileManager.default.createDirectory(atPath: paths.nextBlocks, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o755])
        let built = try Placement.build(paths: paths, record: record, ouroboros: ouroboros, identity: identity,
                                        into: paths.nextBlocks, sources: sources)
        syncFileSystem(paths.nextBlocks)
        return built
    }

    /// Reshuffles the placement and rotates every block's key pairs; `sources` replaces parameter files (a block
    /// re-provisioned from the checkpoint). Returns the new ids and key pairs in ring order. The caller holds the
    /// runtime lock.
    @discardableResult
    public func reshuffle(ledger: any Ledger) throws -> [(id: String, keys: BlockKeys)] { try reshuffle(ledger: ledger, sources: nil) }

    @discardableResult
    func reshuffle(ledger: any Ledger, sources explicit: [Placement.Source]?) throws -> [(id: String, keys: BlockKeys)] {
        var built: Placement.Built?
        if let p = pendingPlacement {
            p.wait()
            pendingPlacement = nil
            if explicit == nil, p.order == record.order, case .success(let b) = p.result { built = b }
        }
        let next = nextRecord()
        let sources = explicit ?? currentSources()
        let placement = try built ?? SealedRing.buildNext(paths: paths, record: next, ouroboros: manifest.ouroboros,
                                                          identity: identity, sources: sources)
        // Restored since the placement was built? Then the link points at the old file: link the current one.
        for j in 0..<placement.ids.count {
            guard let linked = placement.linkedInodes[j], case .link(let src) = sources[j], try Placement.inode(src) != linked else { continue }
            let dir = paths.nextBlocks + "/" + placement.ids[j]
            unlink(dir + "/params.safetensors")
            _ = try Placement.linkParams(src, into: dir)
            try fsyncPath(dir + "/params.safetensors")
            try fsyncPath(dir)
        }
        let ouroboros = try ouroborosSigner()
        // Announce before committing: the new keys must be known members before they sign anything.
        try ledger.append(kind: .reshuffle, queryID: nil,
                          payload: MembersAnnouncement(ringID: manifest.ringID, generation: UInt64(next.generation),
                                                       members: placement.keys.map(\.publicKeys.signing).shuffled()).encoded(),
                          signer: ouroboros)
        var newRecord = next
        newRecord.order = placement.ids
        newRecord.members = placement.keys.map(\.publicKeys)
        do {
            let lock = try paths.stateLockExclusive()
            try commit(newRecord)   // the commit point
            try SealedRing.swapPlacement(paths, record: record)
            _ = lock
        }
        SealedRing.removeRetired(paths, background: true)
        return Array(zip(placement.ids, placement.keys)).map { (id: $0.0, keys: $0.1) }
    }

    /// Announces the members of the committed placement (in random order) again.
    package func announceMembers(ledger: any Ledger) throws {
        try ledger.append(kind: .reshuffle, queryID: nil,
                          payload: MembersAnnouncement(ringID: manifest.ringID, generation: UInt64(record.generation),
                                                       members: record.members.map(\.signing).shuffled()).encoded(),
                          signer: try ouroborosSigner())
    }

    func ouroborosSigner() throws -> LedgerSigner { LedgerSigner(try KeyFile.read(paths.ouroborosKeys).signing) }

    /// Finishes or rolls back a reshuffle interrupted by a crash (see the type's documentation). Writers only: the
    /// caller holds the runtime lock; the swap itself happens under the state lock. Idempotent.
    /// Returns true when it rolled a placement back: the ledger may then already announce that placement's keys,
    /// and the caller announces the keys still in use again.
    @discardableResult
    package static func completeReshuffle(_ paths: RingPaths, record: OwnerRecord) throws -> Bool {
        let fm = FileManager.default
        var rolledBack = false
        if fm.fileExists(atPath: paths.nextBlocks) {
            let lock = try paths.stateLockExclusive()
            // Committed: the signed record names folders that are in blocks.next and not (any more) in blocks.
            let committed = record.order.allSatisfy {
                fm.fileExists(atPath: paths.nextBlocks + "/" + $0 + "/block.json") && !fm.fileExists(atPath: paths.block($0))
            }
            if committed { try swapPlacement(paths, record: record) } else { removeTree(paths.nextBlocks); rolledBack = true }
            _ = lock
        }
        removeRetired(paths, background: false)
        return rolledBack
    }

    /// Puts the committed placement in `blocks.next/` in place of `blocks/` (two renames, under the state lock).
    private static func swapPlacement(_ paths: RingPaths, record: OwnerRecord) throws {
        let fm = FileManager.default
        if fm.fileExists(atPath: paths.blocks) {
            let retired = paths.root + "/blocks.old-" + randomID().prefix(16)
            guard rename(paths.blocks, retired) == 0 else { throw RingError.restoreFailed("cannot retire the old block placement") }
        }
        guard rename(paths.nextBlocks, paths.blocks) == 0 else { throw RingError.restoreFailed("cannot install the new block placement") }
    }

    /// Deletes retired placements (`blocks.old-*`).
    static func removeRetired(_ paths: RingPaths, background: Bool) {
        let retired = ((try? FileManager.default.contentsOfDirectory(atPath: paths.root)) ?? [])
            .filter(RingPaths.isRetiredPlacement).map { paths.root + "/" + $0 }
        if retired.isEmpty { return }
        if background {
            DispatchQueue.global(qos: .utility).async { for r in retired { removeTree(r) } }
        } else {
            for r in retired { removeTree(r) }
        }
    }
}

/// A placement being built in `blocks.next/` by a background thread, for the placement `order` it replaces (the
/// ids are random, so an unchanged order means no reshuffle happened since).
package final class PendingPlacement: @unchecked Sendable {
    let order: [String]
    private let done = DispatchSemaphore(value: 0)
    private var waited = false
    var result: Result<Placement.Built, Error> = .failure(RingError.restoreFailed("placement not built"))
    init(order: [String]) { self.order = order }
    func finish(_ r: Result<Placement.Built, Error>) { result = r; done.signal() }
    package func wait() { if !waited { done.wait(); waited = true } }
}
