import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingLedgerSQLite
import DeepRingNode
import DeepRingProtocol
import Foundation

/// One problem `verify` found, with what `--restore` can do about it.
public struct RingFinding: Sendable, Equatable, CustomStringConvertible {
    public enum Subject: Sendable, Equatable, CustomStringConvertible {
        case manifest, owner, record, checkpoint, ouroboros, ledger
        /// A block of the record, with its ring position (owner-only knowledge).
        case block(String, position: Int)
        /// Something in `blocks/` that is not a member of the placement.
        case stray(String)
        /// A path of the ring folder (relative to it) that is not what a ring holds there, or has loose permissions.
        case path(String)

        public var description: String {
            switch self {
            case .manifest: return "ring.json"
            case .owner: return "owner"
            case .record: return "owner/record.json"
            case .checkpoint: return "owner/checkpoint.safetensors"
            case .ouroboros: return "ouroboros"
            case .ledger: return "ledger.sqlite"
            case .block(let id, let p): return "block \(id) (ring position \(p))"
            case .stray(let name): return "blocks/\(name)"
            case .path(let p): return p
            }
        }
    }

    public enum Repair: Sendable, Equatable {
        /// Re-issue `ring.json` from the owner's signed copy.
        case reissueManifest
        /// Rebuild the checkpoint from holders whose copies match the recorded layer digests.
        case rebuildCheckpoint
        /// Restore the holder's parameter file from the checkpoint (tracking).
        case restoreParameters
        /// Re-provision the block: a new folder with fresh keys and a re-issued descriptor, neighbours updated.
        case reprovision
        /// Remove the stray entry.
        case remove
        /// Take write (and for secrets, read) permission away from group and others.
        case tightenMode(Int)
        /// Nothing the owner can do; the reason.
        case impossible(String)
    }

    public var subject: Subject
    public var problem: String
    public var repair: Repair

    public var repairable: Bool { if case .impossible = repair { return false } else { return true } }

    public var description: String {
        let what: String
        switch repair {
        case .reissueManifest: what = "--restore re-issues it from the owner's signed copy"
        case .rebuildCheckpoint: what = "--restore rebuilds it from the blocks' verified copies"
        case .restoreParameters: what = "--restore restores it from the checkpoint"
        case .reprovision: what = "--restore re-provisions it with fresh keys and a new descriptor"
        case .remove: what = "--restore removes it"
        case .tightenMode(let m): what = String(format: "--restore sets its mode to %03o", m)
        case .impossible(let why): what = "cannot be repaired: \(why)"
        }
        return "\(subject): \(problem) (\(what))"
    }
}

/// What `verify` found.
public struct RingCheckReport: Sendable {
    public var findings: [RingFinding] = []
    /// The first holder whose hash (Eq. 1) differs from the record, and its position: tracking starts there.
    public var firstTampered: (name: String, position: Int)?
    /// Facts that are not problems (an interrupted reshuffle a writer will complete).
    public var notes: [String] = []

    package init(findings: [RingFinding] = [], firstTampered: (name: String, position: Int)? = nil, notes: [String] = []) {
        self.findings = findings; self.firstTampered = firstTampered; self.notes = notes
    }

    public var authentic: Bool { findings.isEmpty }
    public var repairable: Bool { findings.allSatisfy(\.repairable) }
}

/// `deepring verify`: everything the ring depends on, each problem named (§3.3 and beyond).
///
/// - the owner's identity key (present, 0600), its signed copy of the manifest, and the signed record;
/// - `ring.json`: signed by the owner and equal to the owner's copy;
/// - the ouroboros's keys (0600) against the manifest, and the checkpoint against the recorded layer digests;
/// - every block of the record: its folder, `keys.json` (present, 0600, the owner as its anchor), `block.json`
///   (signed by the owner, its id, generation, keys, neighbours' keys and hashes as the owner recorded them), and
///   its parameter file's digest; anything else in `blocks/`;
/// - the hash chain (Eqs. 1–2), which names the first tampered holder.
///
/// A check is a reader: it changes nothing, and holds the state lock shared so that it sees the ring before or
/// after a writer's change, never during one. What cannot be checked is a finding, never a skip.
public enum RingCheck {
    public static func run(_ directory: String) throws -> RingCheckReport { try examine(directory).report }

    /// The check of a ring whose ledger is `ledger` (a PostgreSQL database: the decentralised deployment) rather than
    /// `DIR/ledger.sqlite`: its form, and that its first entry is this ring's seal by its ouroboros.
    public static func run(_ directory: String, ledger: any Ledger) throws -> RingCheckReport { try examine(directory, ledger: ledger).report }

    /// The check, and the ring as the owner's verified files describe it (nil when they cannot be trusted).
    package static func examine(_ directory: String, ledger shared: (any Ledger)? = nil) throws -> (report: RingCheckReport, ring: SealedRing?) {
        let p = RingPaths(directory)
        guard FileManager.default.fileExists(atPath: p.manifest) || FileManager.default.fileExists(atPath: p.owner) else {
            throw RingError.notARing("\(directory) has neither ring.json nor owner/ (create a ring with `deepring seal`)")
        }
        guard FileManager.default.fileExists(atPath: p.identity) else {
            if FileManager.default.fileExists(atPath: p.record) {
                throw RingError.notARing("\(directory) was sealed by an older DeepRing (no owner identity key); seal the model again")
            }
            throw RingError.notARing("\(p.identity) is missing: verify needs the owner's folder")
        }
        let lock = try p.stateLockShared()
        defer { _ = lock }
        var report = RingCheckReport()
        func add(_ s: RingFinding.Subject, _ problem: String, _ repair: RingFinding.Repair) {
            report.findings.append(RingFinding(subject: s, problem: problem, repair: repair))
        }
        let rootOfTrust = "the owner's identity key is the ring's root of trust; seal the model again"

        // The owner's own files: without them nothing else can be checked.
        let identity: Curve25519.Signing.PrivateKey
        do { identity = try KeyFile.read(p.identity).signing } catch {
            add(.owner, "identity key: \(error)", .impossible(rootOfTrust))
            return (report, nil)
        }
        let owner = Array(identity.publicKey.rawRepresentation)
        var expected: RingManifest?
        if let m = try? RingManifest.read(p.ownerManifest), m.ownerKey == owner { expected = m }
        let publicManifest: RingManifest?
        do {
            let m = try RingManifest.read(p.manifest)
            if m.ownerKey != owner {
                add(.manifest, "signed by owner \(m.ownerFingerprint), not by this ring's owner \(KeyFingerprint.of(owner))", .reissueManifest)
            } else if let e = expected, m != e {
                add(.manifest, "differs from the owner's signed copy", .reissueManifest)
            }
            publicManifest = m.ownerKey == owner ? m : nil
        } catch {
            add(.manifest, "\(error)", .reissueManifest)
            publicManifest = nil
        }
        guard let manifest = expected ?? publicManifest else {
            report.findings.removeAll { $0.subject == .manifest }
            add(.manifest, "neither ring.json nor the owner's copy (owner/manifest.json) is signed by the owner", .impossible(rootOfTrust))
            return (report, nil)
        }
        if expected == nil { add(.owner, "owner/manifest.json is missing or not signed by the owner", .reissueManifest) }
        let record: OwnerRecord
        do {
            record = try OwnerRecord.parse(try InputFile.read(p.record, limit: RingFileLimits.json), path: p.record,
                                           blockCount: manifest.blockCount)
        } catch {
            add(.record, "\(error)", .impossible("the record holds the ring's original hashes; seal the model again"))
            return (report, nil)
        }
        guard record.isSigned(by: owner), record.ringID == manifest.ringID else {
            add(.record, "not signed by the owner, or of another ring", .impossible("the record holds the ring's original hashes; seal the model again"))
            return (report, nil)
        }
        let ring = SealedRing(directory: directory, manifest: manifest, record: record, identity: identity)
        if FileManager.default.fileExists(atPath: p.nextBlocks),
           record.order.contains(where: { !FileManager.default.fileExists(atPath: p.block($0)) }) {
            report.notes.append("a reshuffle was interrupted after its commit; the next query or `verify --restore` completes it")
        }
        do {
            let k = try KeyFile.read(p.ouroborosKeys)
            if k.memberKeys?.publicKeys != manifest.ouroboros {
                add(.ouroboros, "owner/keys.json does not hold the ouroboros keys named in the manifest", .impossible("the ouroboros keys are public and pinned by querents; seal the model again"))
            }
        } catch {
            add(.ouroboros, "owner/keys.json: \(error)", .impossible("the ouroboros keys are public and pinned by querents; seal the model again"))
        }
        var checkpointOK = true
        do { _ = try ring.checkpointLayers() } catch {
            checkpointOK = false
            add(.checkpoint, "\(error)", rebuildable(ring) ? .rebuildCheckpoint : .impossible("no verified copy of every layer is left"))
        }

        // The ledger's form (its files, its schema, its sequence numbers); `ledger audit` checks its whole chain.
        let ledgerRepair = RingFinding.Repair.impossible("the ledger is append-only: restore ledger.sqlite from a copy, or seal the model again")
        do {
            let ledger: any Ledger = try shared ?? SQLiteLedger(path: p.ledger, readOnly: true)
            if let stray = try ledger.sequencesOutOfRange(limit: 1).first {
                add(.ledger, "holds a row with sequence number \(stray), outside 1 … \(LedgerEntry.maxSequence)", ledgerRepair)
            }
            if shared != nil {
                do { try RingGenesis.check(ledger, ringID: manifest.ringID, ouroboros: manifest.ouroboros.signing) } catch {
                    add(.ledger, "\(error)", .impossible("a ring's ledger is the one it was sealed into"))
                }
            }
        } catch {
            add(.ledger, "\(error)", ledgerRepair)
        }

        // The folders and files around the blocks: real folders (not links elsewhere), nobody else may write, the
        // owner's secrets nobody else may read, and nothing that is not a ring's file.
        func mode(_ rel: String, folder: Bool, secret: Bool, subject: RingFinding.Subject? = nil) {
            var st = stat()
            let path = rel.isEmpty ? p.root : p.root + "/" + rel
            guard lstat(path, &st) == 0 else { return }
            let shown = subject ?? .path(rel.isEmpty ? "." : rel)
            let kind = st.st_mode & S_IFMT
            if folder && kind != S_IFDIR {
                add(shown, kind == S_IFLNK ? "\(rel.isEmpty ? "the ring folder" : rel) is a link, not a folder" : "\(rel) is not a folder",
                    subject == nil ? .impossible("replace it by the folder it should be") : .reprovision)
                return
            }
            let m = Int(st.st_mode) & 0o777, loose = secret ? 0o077 : 0o022
            if m & loose != 0 {
                add(shown, String(format: "%@ has mode %03o: %@", rel.isEmpty ? "the ring folder" : rel, m,
                                  secret ? "others may read or write it" : "others may write it"),
                    .tightenMode(m & ~loose))
            }
        }
        mode("", folder: true, secret: false)
        mode("owner", folder: true, secret: true)
        for f in ["record.json", "checkpoint.safetensors", "manifest.json", "ouroboros.safetensors"] { mode("owner/" + f, folder: false, secret: true) }
        if shared == nil { mode("ledger.sqlite", folder: false, secret: false) }
        mode("ring.json", folder: false, secret: false)
        mode("blocks", folder: true, secret: false)
        for n in (RingPaths.realFolder(p.root) ?? []).sorted() {
            let known = RingPaths.topNames.contains(n) || RingPaths.isRetiredPlacement(n) || RingPaths.isTemporary(n, of: RingPaths.topNames)
            if !known { add(.path(n), "not one of the ring's files", .impossible("move it out of the ring folder")) }
        }
        for n in (RingPaths.realFolder(p.owner) ?? []).sorted()
        where !RingPaths.ownerNames.contains(n) && !RingPaths.isTemporary(n, of: RingPaths.ownerNames) {
            add(.path("owner/" + n), "not one of the owner's files", .impossible("move it out of the owner's folder"))
        }
        if FileManager.default.fileExists(atPath: p.nextBlocks), record.order.allSatisfy({ FileManager.default.fileExists(atPath: p.block($0)) }) {
            // A running ring builds its next placement there; a placement the record does not name is never used,
            // and the next writer discards it.
            report.notes.append("blocks.next holds a placement the record does not name (being built, or left over): it is never used")
        }

        // The blocks.
        let members = Set(record.order)
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: p.blocks)) ?? []).sorted() where !members.contains(name) {
            add(.stray(name), "not a block of this placement", .remove)
        }
        var described: [BlockDescriptor?] = []
        for (j, id) in record.order.enumerated() {
            let dir = ring.blockDirectory(id)
            let subject = RingFinding.Subject.block(id, position: j + 1)
            guard FileManager.default.fileExists(atPath: dir) else {
                add(subject, "its folder is missing", .reprovision)
                described.append(nil)
                continue
            }
            var problems: [String] = []
            let rel = dir.hasPrefix(p.root + "/") ? String(dir.dropFirst(p.root.count + 1)) : dir
            mode(rel, folder: true, secret: false, subject: subject)
            for n in (RingPaths.realFolder(dir) ?? []).sorted()
            where !RingPaths.blockNames.contains(n) && !RingPaths.isTemporary(n, of: RingPaths.blockNames) {
                problems.append("\(n) is not one of a block's files")
            }
            var keys: PublicKeys?
            do {
                let k = try KeyFile.read(dir + "/keys.json")
                if k.owner != owner { problems.append("keys.json names another owner as its anchor") }
                if let m = k.memberKeys { keys = m.publicKeys } else { problems.append("keys.json has no agreement key") }
            } catch { problems.append("keys.json: \(error)") }
            var descriptor: BlockDescriptor?
            do {
                let d = try BlockDescriptor.read(dir + "/block.json")
                if !d.isSigned(by: owner) { problems.append("block.json is not signed by the owner") }
                else {
                    descriptor = d
                    if d.id != id { problems.append("block.json describes block \(d.id)") }
                    if d.ringID != record.ringID { problems.append("block.json belongs to ring \(d.ringID)") }
                    if d.generation != record.generation { problems.append("block.json is of placement \(d.generation), not \(record.generation)") }
                    if let k = keys, d.keys != k { problems.append("block.json names other keys than keys.json holds") }
                    if d.keys != record.members[j] { problems.append("block.json names other keys than the owner's record") }
                    if d.ouroboros != manifest.ouroboros { problems.append("block.json names another ouroboros than ring.json") }
                    if d.previousHash != record.hashes[j] || d.hash != record.hashes[j + 1] || d.paramsDigest != record.fileDigests[j + 1] {
                        problems.append("block.json's hashes differ from the owner's record")
                    }
                }
            } catch { problems.append("block.json: \(error)") }
            // Only a descriptor without problems of its own is a reference for its neighbours.
            described.append(problems.isEmpty ? descriptor : nil)
            for problem in problems { add(subject, problem, .reprovision) }
        }
        // Neighbours: each sound descriptor names the keys its sound neighbours' descriptors hold.
        for j in described.indices {
            guard let d = described[j] else { continue }
            let prev = j == 0 ? manifest.ouroboros : described[j - 1]?.keys
            let succ = j + 1 < described.count ? described[j + 1]?.keys : manifest.ouroboros
            // Two places back around the closed ring (0 = the ouroboros, 1 … n = the blocks).
            let n = described.count, p2 = (j + 1 - 2 + n + 1) % (n + 1)
            let second = p2 == 0 ? manifest.ouroboros.signing : described[p2 - 1]?.keys.signing
            if let second, d.secondPredecessor != hex(second) {
                add(.block(record.order[j], position: j + 1), "block.json names another second predecessor than the ring holds", .reprovision)
            }
            if let prev, d.predecessor != prev { add(.block(record.order[j], position: j + 1), "block.json names another predecessor key than its predecessor holds", .reprovision) }
            if let succ, d.successor != succ { add(.block(record.order[j], position: j + 1), "block.json names another successor key than its successor holds", .reprovision) }
        }

        // Parameters: every holder's file digest, and the chain.
        for pos in 0...manifest.blockCount {
            let path = ring.holderPath(pos)
            guard FileManager.default.fileExists(atPath: (path as NSString).deletingLastPathComponent) else { continue }
            var digest: String?, unreadable: String?
            do { digest = hex(SHA256.hash(data: try ring.readHolder(pos))) } catch { unreadable = "\(error)" }
            if digest != record.fileDigests[pos] {
                let subject: RingFinding.Subject = pos == 0 ? .ouroboros : .block(record.order[pos - 1], position: pos)
                add(subject, unreadable ?? "its parameters differ from the sealed ones",
                    checkpointOK || rebuildable(ring) ? .restoreParameters : .impossible("the checkpoint is corrupted too"))
            }
        }
        let chain = ring.checkAuthenticity()
        if let pos = chain.position, let name = chain.firstTampered {
            report.firstTampered = (name, pos)
            if !report.findings.contains(where: { f in
                if case .block(_, let q) = f.subject { return q == pos }
                return pos == 0 && f.subject == .ouroboros
            }) {
                add(pos == 0 ? .ouroboros : .block(name, position: pos), "HASH_\(pos) differs from the record", .restoreParameters)
            }
        }
        return (report, ring)
    }

    /// True when every layer has a verified copy in some holder (own layer of holder k, or the next-layer copy of
    /// holder k − 1), from which the checkpoint can be rebuilt.
    static func rebuildable(_ ring: SealedRing) -> Bool { (try? verifiedLayersFromHolders(ring)) != nil }

    static func verifiedLayersFromHolders(_ ring: SealedRing) throws -> [RingLayer] {
        let n = ring.manifest.blockCount
        let held = (0...n).map { ring.currentHolding($0) }
        func digest(_ l: RingLayer) -> String { hex(SHA256.hash(data: ParamsEncoding.encode(l))) }
        return try (0...n).map { k in
            let want = ring.record.layerDigests[k]
            if let own = held[k]?.own, digest(own) == want { return own }
            let before = k == 0 ? n : k - 1
            if let copy = held[before]?.next, digest(copy) == want { return copy }
            throw RingError.checkpointCorrupted(layer: k)
        }
    }

    /// What a repair did.
    public struct Repairs: Sendable {
        public var restored: [String] = []
        public var reprovisioned: [String] = []
        public var actions: [String] = []
        public init() {}
    }

    /// `verify --restore` (and a runtime before it serves): repairs what the owner can, with `alarm` and `restore`
    /// entries on the ledger. The caller holds the runtime lock. Returns what was done; check again for what is left.
    package static func repair(_ ring: SealedRing, report: RingCheckReport, ledger: any Ledger) throws -> Repairs {
        var done = Repairs()
        guard !report.authentic else { return done }
        let signer = try ring.ouroborosSigner()
        try ledger.append(kind: .alarm, queryID: nil,
                          payload: Alarm(.authenticity(firstTampered: report.firstTampered?.name ?? "\(report.findings[0].subject)")).encoded(),
                          signer: signer)
        let p = ring.paths
        if report.findings.contains(where: { $0.repair == .reissueManifest }) {
            let bytes = try encodeJSON(ring.manifest)
            let lock = try p.stateLockExclusive()
            try writeFileAtomically(bytes, to: p.ownerManifest, permissions: 0o600)
            try writeFileAtomically(bytes, to: p.manifest, permissions: 0o644)
            _ = lock
            done.actions.append("re-issued ring.json from the owner's signed manifest")
        }
        if report.findings.contains(where: { $0.repair == .rebuildCheckpoint }) {
            let layers = try verifiedLayersFromHolders(ring)
            let lock = try p.stateLockExclusive()
            try writeFileAtomically(BlockFile.serialize(layers: layers.enumerated().map { ("L\($0.offset)", $0.element) }),
                                    to: p.checkpoint, permissions: 0o600)
            _ = lock
            done.actions.append("rebuilt the checkpoint from the blocks' verified copies")
        }
        let broken = Set(report.findings.compactMap { f -> String? in
            if case .block(let id, _) = f.subject, f.repair == .reprovision { return id }
            return nil
        })
        if !broken.isEmpty {
            // A new placement for every block (fresh ids and keys, so neighbours learn new keys too); a block's
            // parameter file is linked when it is as sealed and written from the checkpoint otherwise.
            let layers = try ring.checkpointLayers()
            let sources: [Placement.Source] = (1...ring.manifest.blockCount).map { j in
                let path = ring.holderPath(j)
                if let d = try? ring.readHolder(j), hex(SHA256.hash(data: d)) == ring.record.fileDigests[j] { return .link(path) }
                return .bytes(ring.sealedHolderFile(j, layers: layers))
            }
            let old = ring.record.order
            try ring.reshuffle(ledger: ledger, sources: sources)
            for (j, id) in old.enumerated() where broken.contains(id) {
                try ledger.append(kind: .restore, queryID: nil, payload: RestoreRecord(holder: id, action: .reprovisioned).encoded(), signer: signer)
                done.reprovisioned.append(id)
                done.actions.append("re-provisioned block \(id) (ring position \(j + 1)) as \(ring.record.order[j]) with fresh keys")
            }
            done.actions.append("issued new keys and descriptors to every block (placement \(ring.record.generation))")
        }
        let restored = try ring.restoreParameters()
        for h in restored {
            try ledger.append(kind: .restore, queryID: nil, payload: RestoreRecord(holder: h, action: .parameters).encoded(), signer: signer)
            done.actions.append("restored \(h) from the checkpoint")
        }
        done.restored = restored
        for f in report.findings {
            switch (f.subject, f.repair) {
            case (.stray(let name), .remove):
                let lock = try p.stateLockExclusive()
                removeTree(p.block(name))
                _ = lock
                done.actions.append("removed blocks/\(name)")
            case (let s, .tightenMode(let m)):
                let rel: String
                switch s {
                case .path(let r): rel = r == "." ? "" : r
                case .block(let id, _): rel = "blocks/" + id
                default: continue
                }
                let path = rel.isEmpty ? p.root : p.root + "/" + rel
                // Only a real file or folder's mode is changed (never through a link).
                var st = stat()
                guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) != S_IFLNK, chmod(path, mode_t(m)) == 0 else { continue }
                done.actions.append(String(format: "set the mode of %@ to %03o", rel.isEmpty ? "the ring folder" : rel, m))
            default:
                continue
            }
        }
        return done
    }

    /// Checks the ring and repairs what can be repaired, as the one writer (it takes the runtime lock, waiting up to
    /// `lockTimeout` seconds). Returns the report before, what was done, and the report after.
    public static func repair(_ directory: String, lockTimeout: Double = 60, onWait: ((String) -> Void)? = nil) throws
        -> (before: RingCheckReport, repairs: Repairs, after: RingCheckReport) {
        let p = RingPaths(directory)
        let lock = try p.runtimeLock(timeout: lockTimeout, onWait: onWait)
        defer { _ = lock }
        let (before, trusted) = try examine(directory)
        guard let ring = trusted else { return (before, Repairs(), before) }
        if try SealedRing.completeReshuffle(p, record: ring.record) {
            try ring.announceMembers(ledger: try SQLiteLedger(path: p.ledger))   // as RingRuntime does after a rollback
        }
        guard !before.authentic, before.findings.contains(where: \.repairable) else { return (before, Repairs(), before) }
        let ledger = try SQLiteLedger(path: p.ledger)
        let repairs = try repair(ring, report: before, ledger: ledger)
        return (before, repairs, try run(directory))
    }
}
