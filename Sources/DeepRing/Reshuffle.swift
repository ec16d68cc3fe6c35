import DeepRingEngine
import DeepRingLedger
import Foundation
#if canImport(Glibc)
import Glibc
#endif

@_silgen_name("syncfs") private func c_syncfs(_ fd: Int32) -> Int32

/// Reshuffle (paper §3.4, after delivery): "the placement of the blocks is reshuffled". After every query each
/// block gets a new random id (its folder is renamed) and fresh signing and HPKE key pairs; its neighbours learn
/// the new public keys. The ouroboros — the one publicly known member — keeps its keys and announces the new
/// member signing keys, in random order, in a signed `reshuffle` entry so that `ledger audit` can still tell ring
/// members from outsiders.
///
/// What this buys: an observer of the ledger sees, within one query, the order in which keys post (that is how
/// the ring works), but a key never appears in two queries, so it cannot follow a block from query to query or
/// aim at "the block that computed layer 3 last time" through the ledger. What it does not hide: the length of
/// each X ciphertext reveals the width of the layer output (900, 600, … floats × batch), and anyone who can read
/// the block folders sees tensor shapes in `params.safetensors`.
///
/// Crash safety: the new placement is built beside the old one in `blocks.next/` (parameter files hard-linked,
/// new keys and descriptions written, then one `syncfs`), announced on the ledger, and committed by atomically
/// replacing `owner/record.json`. `SealedRing.open` finishes or rolls back an interrupted reshuffle: if the
/// record names the folders in `blocks.next/`, the swap is completed; otherwise `blocks.next/` is discarded and the
/// old placement (whose keys are still valid) stays.
///
/// Speed: after a big batch the runtime has the next placement built in `blocks.next/` by a background thread
/// while the next query computes (`prepareReshuffle`); the reshuffle then only announces and commits it (≈ 1 ms
/// instead of 3–5). A parameter file restored in between is a new file: it is linked again before the commit.
extension SealedRing {
    var nextBlocksDir: String { directory + "/blocks.next" }

    /// Starts building the next placement (new ids, fresh key pairs, hard-linked parameter files, synced) in the
    /// background, so that the reshuffle after the next query only has to announce and commit it. Idempotent.
    public func prepareReshuffle() {
        guard pendingPlacement == nil else { return }
        let pending = PendingPlacement(order: record.order)
        pendingPlacement = pending
        let hashes = record.hashes, dir = directory
        // A normal-priority thread: at idle priority it starved whenever the machine was busy, and the reshuffle
        // then waited for it (265 ms instead of 1 ms per query in a run beside a compiler).
        let thread = Thread {
            pending.finish(Result { try SealedRing.buildPlacement(directory: dir, order: pending.order, hashes: hashes) })
        }
        thread.start()
    }

    /// Builds a new placement in `blocks.next/` and syncs it (the work before the commit point).
    private static func buildPlacement(directory: String, order: [String], hashes: [String]) throws -> PendingPlacement.Built {
        let fm = FileManager.default
        let nextBlocksDir = directory + "/blocks.next"
        let n = order.count
        let ouroboros = try KeyFile.read(directory + "/owner/keys.json").publicKeys
        let ids = (0..<n).map { _ in hex((0..<16).map { _ in UInt8.random(in: 0...255) }) }
        let keys = (0..<n).map { _ in BlockKeys() }
        var inodes: [UInt64] = []
        SealedRing.removeTree(nextBlocksDir)
        try fm.createDirectory(atPath: nextBlocksDir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        for j in 0..<n {
            let dir = nextBlocksDir + "/" + ids[j]
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            inodes.append(try linkParams(from: directory + "/blocks/" + order[j], to: dir))
            try writeNewFile(KeyFile.serialize(keys[j]), to: dir + "/keys.json", permissions: 0o600)
            let prev = j == 0 ? ouroboros : keys[j - 1].publicKeys
            let succ = j + 1 < n ? keys[j + 1].publicKeys : ouroboros
            try writeNewFile(try jsonBytes(BlockInfo(id: ids[j], keys: keys[j].publicKeys, predecessor: prev, successor: succ,
                                                     previousHash: hashes[j], hash: hashes[j + 1])),
                             to: dir + "/block.json", permissions: 0o644)
        }
        let fd = Glibc.open(nextBlocksDir, O_RDONLY)
        if fd >= 0 { _ = c_syncfs(fd); close(fd) }
        return .init(ids: ids, keys: keys, linkedInodes: inodes)
    }

    /// Hard-links (or, across file systems, copies) a block's parameter file into a new block folder; returns the
    /// inode of the file linked.
    private static func linkParams(from oldDir: String, to newDir: String) throws -> UInt64 {
        let src = oldDir + "/params.safetensors", dst = newDir + "/params.safetensors"
        let ino = try inode(src)
        if link(src, dst) != 0 {
            unlink(dst)
            try FileManager.default.copyItem(atPath: src, toPath: dst)
        }
        return ino
    }

    private static func inode(_ path: String) throws -> UInt64 {
        var st = stat()
        guard stat(path, &st) == 0 else { throw RingError.restoreFailed("cannot read \(path)") }
        return UInt64(st.st_ino)
    }

    /// Reshuffles the ring's placement and rotates every block's key pairs. Returns the new ids and key pairs in
    /// ring order (for a runtime that hosts the blocks in memory). Uses the placement `prepareReshuffle` built when
    /// it is still current; a parameter file replaced since (a restore) is linked again before the commit.
    @discardableResult
    public func reshuffle(ledger: any Ledger) throws -> [(id: String, keys: BlockKeys)] {
        let generation = record.generation ?? 0
        var built: PendingPlacement.Built?
        if let p = pendingPlacement {
            p.wait()
            pendingPlacement = nil
            if p.order == record.order, case .success(let b) = p.result { built = b }
        }
        let placement = try built ?? SealedRing.buildPlacement(directory: directory, order: record.order, hashes: record.hashes)
        // Restored since the placement was built? Then the link points at the old file: link the current one.
        for j in 0..<placement.ids.count {
            if try SealedRing.inode(blockDir(record.order[j]) + "/params.safetensors") != placement.linkedInodes[j] {
                let dir = nextBlocksDir + "/" + placement.ids[j]
                unlink(dir + "/params.safetensors")
                _ = try SealedRing.linkParams(from: blockDir(record.order[j]), to: dir)
                try fsyncPath(dir + "/params.safetensors")
                try fsyncPath(dir)
            }
        }
        let ouroboros = try KeyFile.read(ownerDir + "/keys.json")
        // Announce before committing: the new keys must be known members before they sign anything.
        try ledger.append(kind: .reshuffle, queryID: nil,
                          payload: SealedRing.membersPayload(placement.keys.map(\.publicKeys.signing),
                                                             extra: "\"generation\":\(generation + 1)"),
                          signer: LedgerSigner(ouroboros.signing))
        var newRecord = record
        newRecord.order = placement.ids
        newRecord.generation = generation + 1
        try writeJSON(newRecord, to: ownerDir + "/record.json", permissions: 0o600)   // the commit point
        record = newRecord
        try SealedRing.completeReshuffle(directory, background: true)
        return Array(zip(placement.ids, placement.keys)).map { (id: $0.0, keys: $0.1) }
    }

    /// A ledger payload announcing ring members' signing keys, in random order (the order is a secret).
    static func membersPayload(_ signingKeys: [[UInt8]], extra: String) -> [UInt8] {
        Array("{\(extra),\"members\":[\(signingKeys.shuffled().map { "\"\(hex($0))\"" }.joined(separator: ","))]}".utf8)
    }

    /// Finishes or rolls back a reshuffle interrupted by a crash (see the type's documentation). Idempotent.
    /// Retired placements (`blocks.old-*`) are deleted — in the background when `background` is set.
    static func completeReshuffle(_ directory: String, background: Bool = false) throws {
        let fm = FileManager.default
        let blocks = directory + "/blocks", next = directory + "/blocks.next"
        if fm.fileExists(atPath: next) {
            var committed = false
            if let d = readSmallFile(directory + "/owner/record.json", limit: 16 << 20),
               let r = try? JSONDecoder().decode(OwnerRecord.self, from: d) {
                committed = r.order.allSatisfy { fm.fileExists(atPath: next + "/" + $0 + "/block.json") }
            }
            if committed {
                if fm.fileExists(atPath: blocks) {
                    let retired = directory + "/blocks.old-" + hex((0..<8).map { _ in UInt8.random(in: 0...255) })
                    guard rename(blocks, retired) == 0 else { throw RingError.restoreFailed("cannot retire the old block placement") }
                }
                guard rename(next, blocks) == 0 else { throw RingError.restoreFailed("cannot install the new block placement") }
            } else {
                removeTree(next)
            }
        }
        guard fm.fileExists(atPath: blocks) else { return }
        let retired = ((try? fm.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix("blocks.old") }.map { directory + "/" + $0 }
        if retired.isEmpty { return }
        if background {
            DispatchQueue.global(qos: .utility).async { for r in retired { removeTree(r) } }
        } else {
            for r in retired { removeTree(r) }
        }
    }

    /// Removes a placement folder (two levels: block folders holding files) with plain unlink/rmdir calls.
    static func removeTree(_ path: String) {
        if let subs = try? FileManager.default.contentsOfDirectory(atPath: path) {
            for sub in subs {
                let p = path + "/" + sub
                if let files = try? FileManager.default.contentsOfDirectory(atPath: p) {
                    for f in files { unlink(p + "/" + f) }
                    rmdir(p)
                } else {
                    unlink(p)
                }
            }
        }
        rmdir(path)
        if FileManager.default.fileExists(atPath: path) { try? FileManager.default.removeItem(atPath: path) }
    }

    /// Every key the ouroboros has announced as a ring member (seal and reshuffle entries it signed), plus its own
    /// and the current members' keys: the authors `ledger audit` accepts.
    public func ledgerAuthors(_ ledger: any Ledger) throws -> Set<[UInt8]> {
        var keys = Set(try memberSigningKeys())
        let owner = manifest.ouroboros.signing
        let tail = try ledger.lastSequence()
        guard tail > 0 else { return keys }
        let announcements = try ledger.entries(in: 1...tail, matching: [EntryFilter(kind: .seal, author: owner),
                                                                        EntryFilter(kind: .reshuffle, author: owner)])
        for e in announcements where e.isAuthentic {
            guard let v = try? StrictJSONParser.parse(e.payload), case .array(let members)? = v["members"] else { continue }
            for m in members {
                if case .string(let s) = m, let k = unhex(s), k.count == 32 { keys.insert(k) }
            }
        }
        return keys
    }

    /// Audits the ring's ledger: chain, hashes, signatures, replays, and that every non-query entry was signed by a
    /// key the ouroboros announced. Reads the ledger a few entries at a time.
    public func auditLedger() throws -> AuditReport {
        let ledger = try SQLiteLedger(path: ledgerPath)
        let authors: Set<[UInt8]>
        do { authors = try ledgerAuthors(ledger) } catch { return LedgerAudit.audit(ledger) }
        return LedgerAudit.audit(ledger, ringKeys: authors)
    }
}

/// fsync of one file or folder.
func fsyncPath(_ path: String) throws {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw RingError.restoreFailed("cannot open \(path)") }
    defer { close(fd) }
    guard fsync(fd) == 0 else { throw RingError.restoreFailed("cannot sync \(path)") }
}

/// A placement being built in `blocks.next/` by a background thread, for the placement `order` it replaces (the
/// ids are random, so an unchanged order means no reshuffle happened since).
final class PendingPlacement: @unchecked Sendable {
    struct Built { var ids: [String]; var keys: [BlockKeys]; var linkedInodes: [UInt64] }
    let order: [String]
    private let done = DispatchSemaphore(value: 0)
    private var waited = false
    var result: Result<Built, Error> = .failure(RingError.restoreFailed("placement not built"))
    init(order: [String]) { self.order = order }
    func finish(_ r: Result<Built, Error>) { result = r; done.signal() }
    func wait() { if !waited { done.wait(); waited = true } }
}
