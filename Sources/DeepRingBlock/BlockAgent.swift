import Crypto
import DeepRingEngine
import DeepRingLedger
import DeepRingNode
import DeepRingProtocol
import Foundation

/// One block as a party of its own — the decentralised deployment's `deepring block serve`: it holds only its own
/// folder (`BlockBundle`: its layer and its copy of the next one, its key pairs, its owner-signed descriptor, which
/// names its neighbours' and the ouroboros's public keys) and talks only through the ledger. Processing and
/// validation (Eqs. 4–11, 13) are the embedded ring's own (`RingNode`): the same code answers in one process or in
/// many.
public final class BlockAgent {
    public let id: String
    let node: RingNode
    public let ledger: any Ledger
    let directory: String
    private(set) var descriptor: BlockDescriptor
    /// The owner's public key (the anchor in `keys.json`): it signs every descriptor this block takes on.
    let owner: [UInt8]
    /// The key pairs this block made for the next generation, answering a rotation call (also in `keys.next.json`,
    /// 0600, until the owner's placement names them).
    private var pendingKeys: BlockKeys?
    /// The layers as the bundle holds them: their specs and tensor names, to read back what the node computes with.
    let ownLayer: RingLayer, nextLayer: RingLayer
    /// The authenticity rounds: the tail when this process started (older rounds are not answered again), rounds
    /// the ouroboros called, rounds attested.
    private let roundsAfter: Int64
    private var challenged = BoundedSet<String>(capacity: 1 << 10)
    private var attested = BoundedSet<String>(capacity: 1 << 10)
    /// What happened in rounds, for the serving process's log: (round, event, detail).
    public private(set) var events: [(round: String, event: String, detail: String)] = []
    /// Own posts found on the ledger when it started (an earlier process of this block answered them).
    public let resumedPosts: Int
    /// Held for life: one process per block folder.
    private let lock: RingLock

    /// Loads the bundle in `directory` (refusing a descriptor not signed by the owner its key file names, or a
    /// parameter file that is not the one the descriptor names) and checks that `ledger` is its ring's. Then
    /// resumes: inputs among the last `resumeWindow` entries that it has not answered are answered.
    public init(directory: String, ledger: any Ledger, resumeWindow: Int64 = 20_000) throws {
        var b = try BlockBundle.load(directory)
        // One process per block folder: a second one (started twice by mistake) would answer every input again, and
        // its successor would name the block for a second post.
        // (Taken once the folder is known to be a block's: a wrong --dir gets no lock file.)
        guard let l = try RingLock.acquire(directory + "/serve.lock", exclusive: true, create: true, timeout: 0,
                                           what: "another process is already serving the block in \(directory) (it holds \(directory)/serve.lock)") else {
            throw RingError.notARing("\(directory)/serve.lock cannot be made")
        }
        lock = l
        // A rotation this block answered before it stopped: the owner's placement may be on the ledger already.
        if let pending = try BlockBundle.pendingKeys(directory) {
            if try BlockAgent.findPlacement(directory: directory, current: b.descriptor, owner: b.owner, pending: pending, ledger: ledger, window: resumeWindow) != nil {
                b = try BlockBundle.load(directory)
            } else {
                pendingKeys = pending
            }
        }
        owner = b.owner
        let d = b.descriptor
        guard let second = unhex(d.secondPredecessor), second.count == 32 else {
            throw RingError.notAuthentic("\(directory)/block.json names no second predecessor")
        }
        try RingGenesis.check(ledger, ringID: d.ringID, ouroboros: d.ouroboros.signing)
        let node = try RingNode(name: b.id, keys: b.keys, predecessor: d.predecessor, successor: d.successor, secondPredecessor: second,
                                own: b.own, next: b.next, isOuroboros: false, nextIsOuroboros: d.successor == d.ouroboros,
                                ouroborosKey: d.ouroboros.signing, inputShape: b.own.inputShape)
        guard node.nextIsOuroboros || node.next.inputShape == node.own.outputShape else {
            throw RingError.notAuthentic("\(directory): the copy of the next layer takes \(node.next.inputShape), but the layer gives \(node.own.outputShape)")
        }
        // Every post must fit in one ledger entry: this block's input and output bound the batch it takes.
        let widest = max(node.own.inputShape.reduce(1, *), node.own.outputShape.reduce(1, *))
        node.maxBatch = max(1, min(RingNode.maxBatch, (LedgerEntry.maxPayload - (1 << 16)) / (4 * widest)))
        id = b.id
        self.node = node
        self.ledger = ledger
        self.directory = directory
        descriptor = d
        ownLayer = b.own; nextLayer = b.next
        // The ouroboros's placements on the whole ledger, once: a former spare's own (the slot was another block's
        // before it, and so were the posts before it), and an eviction notice this block missed while it was down.
        let history = try BlockAgent.placementHistory(directory: directory, keys: b.keys.publicKeys, ouroboros: d.ouroboros.signing, ledger: ledger)
        evictedReason = history.evicted
        resumedPosts = try node.resume(ledger: ledger, window: resumeWindow, after: history.sparePlacement ?? 0)
        // Rounds start afresh: old challenges are not answered again, old restores not taken again (the owner calls
        // a new round, and restores again, if anything is still off).
        roundsAfter = try ledger.lastSequence()
        node.sideFilters = roundFilters
        node.endsPage = { [unowned self] e in self.changesKeys(e) }
    }

    /// True for the ouroboros's placement addressed to this block's pending keys: the node's page ends there, so that
    /// a post addressed to the new keys after it (a query released at the end of the rotation) is read with them,
    /// not taken by the old keys for a misaddressed post.
    /// (And for its eviction notice: nothing after it is this block's business.)
    /// (Only a signed row: a forged one claiming the ouroboros must not make every page one row long.)
    private func changesKeys(_ e: LedgerEntry) -> Bool {
        guard e.kind == .placement, e.author == descriptor.ouroboros.signing, e.isAuthentic else { return false }
        if let n = try? EvictionNotice.decode(e) { return n.evicted == node.publicKeys.signing }
        guard let pending = pendingKeys, let p = try? PlacementOrder.decode(e) else { return false }
        return p.recipient == pending.publicKeys.signing
    }

    /// Why the owner evicted this block (its keys left the member set), once it did — read at start too, for a
    /// block that was down when its notice was posted: the block stops serving.
    public private(set) var evictedReason: String?

    /// The authenticity round's rows for this block: the ouroboros's challenges and restores, its predecessor's
    /// attestations (read with the node's page).
    private var roundFilters: [EntryFilter] {
        let o = descriptor.ouroboros.signing
        return [EntryFilter(kind: .challenge, author: o), EntryFilter(kind: .attestation, author: node.predecessor.signing),
                EntryFilter(kind: .restore, author: o), EntryFilter(kind: .rotation, author: o), EntryFilter(kind: .placement, author: o)]
    }

    /// Handles what appeared on the ledger since the last call — queries' posts and alarms, then authenticity
    /// rounds and restores; true when it posted or has more to read.
    public func step() throws -> Bool {
        guard evictedReason == nil else { return false }
        let acted = try node.step(ledger: ledger)
        return try rounds() || acted
    }

    /// The authenticity round (§3.3) on this block's side: on the ouroboros's challenge (the first block) or its
    /// predecessor's attestation of a challenged round, it attests — HASH_j over the parameters it holds in memory,
    /// chained on the predecessor's, and whether its file is intact. On a restore addressed to it, it takes the
    /// sealed file (only with the digest its descriptor names), replaces file and memory, and attests again at the
    /// next round.
    private func rounds() throws -> Bool {
        let entries = node.sideEntries
        node.sideEntries.removeAll()
        let o = descriptor.ouroboros.signing
        var acted = false
        for e in entries where e.sequence > roundsAfter {
            guard let round = e.queryID, e.isAuthentic else { continue }
            switch e.kind {
            case .challenge:
                guard let c = try? AuthenticityChallenge.decode(e) else { continue }
                _ = challenged.insert(round)
                if descriptor.predecessor.signing == o { try attest(round, chainedOn: c.ouroborosHash); acted = true }
            case .attestation:
                guard challenged.contains(round), let a = try? Attestation.decode(e) else { continue }
                try attest(round, chainedOn: a.hash)
                acted = true
            case .restore:
                guard let r = try? RestoreOrder.decode(e), r.recipient == node.publicKeys.signing else { continue }
                do {
                    try restore(r, round: round)
                    events.append((round, "restored", "parameters replaced from the owner's checkpoint (file and memory)"))
                } catch {
                    events.append((round, "restore refused", "\(error)"))
                }
                acted = true
            case .rotation:
                guard let c = try? RotationCall.decode(e), c.ringID == descriptor.ringID else { continue }
                // A call beyond the next generation: this block missed the placement of the last one (it was down
                // longer than its resume window). Its pending keys find it anywhere on the ledger.
                if c.generation > UInt64(descriptor.generation + 1), let pending = pendingKeys,
                   let d = try? BlockAgent.findPlacement(directory: directory, current: descriptor, owner: owner, pending: pending,
                                                          ledger: ledger, window: LedgerEntry.maxSequence) {
                    take(d, keys: pending, from: node.cursor)
                    events.append((round, "rotated", "took on the placement of generation \(d.generation), found on the ledger"))
                }
                guard c.generation == UInt64(descriptor.generation + 1) else {
                    events.append((round, "rotation ignored", "the call is for generation \(c.generation); this block holds generation \(descriptor.generation)"))
                    continue
                }
                try rekey(call: round, generation: c.generation)
                acted = true
            case .placement:
                if let n = try? EvictionNotice.decode(e) {
                    guard n.evicted == node.publicKeys.signing, e.author == o else { continue }
                    evictedReason = n.reason
                    events.append((round, "evicted", "the owner evicted this block at generation \(n.generation): \(n.reason)"))
                    return true
                }
                guard let pending = pendingKeys, let p = try? PlacementOrder.decode(e), p.recipient == pending.publicKeys.signing else { continue }
                do {
                    let d = try BlockAgent.adopt(p, entry: e, pending: pending, current: descriptor, owner: owner, directory: directory)
                    take(d, keys: pending, from: e.sequence)
                    events.append((round, "rotated", "new key pairs and neighbours for generation \(d.generation)"))
                } catch {
                    events.append((round, "placement refused", "\(error)"))
                }
                acted = true
            default: continue
            }
        }
        return acted
    }

    // MARK: key rotation (the paper's reshuffle, across hosts)

    /// Answers the owner's rotation call: new key pairs, kept in `keys.next.json` (0600) before anything is posted
    /// (a crash never loses keys the owner may already have), and their public halves sealed to the ouroboros,
    /// signed with the current key. The block computes with its current keys until the owner's placement names the
    /// new ones.
    ///
    /// Keys already pending are posted again, never replaced: a call read twice (a page read again after a lost
    /// connection) must not orphan keys the owner may have committed already; pending keys of an abandoned rotation
    /// never signed anything, so using them for the next call links nothing (the post is sealed afresh).
    private func rekey(call: String, generation: UInt64) throws {
        let keys: BlockKeys
        if let pending = pendingKeys {
            keys = pending
        } else {
            keys = BlockKeys()
            try KeyFile.write(keys, owner: owner, to: directory + "/" + BlockBundle.pendingKeysFile)
            pendingKeys = keys
        }
        var w = BinaryWriter(capacity: 160)
        keys.publicKeys.write(to: &w)
        w.raw(Array(try keys.signing.signature(for: RekeyPost.proof(call: call, author: node.publicKeys.signing))))
        let sealed = try HPKEBox.seal(w.bytes, to: descriptor.ouroboros.agreement,
                                      aad: RekeyPost.aad(call: call, author: node.publicKeys.signing))
        try ledger.append(kind: .rekey, queryID: call, payload: RekeyPost(generation: generation, sealedKeys: sealed).encoded(), signer: node.signer)
        events.append((call, "rekey", "new key pairs for generation \(generation), public keys sealed to the ouroboros"))
    }

    /// Takes on an adopted descriptor: new keys and neighbours in the node.
    private func take(_ d: BlockDescriptor, keys: BlockKeys, from sequence: Int64) {
        guard let second = unhex(d.secondPredecessor) else { return }
        node.adopt(keys: keys, predecessor: d.predecessor, successor: d.successor, secondPredecessor: second, from: sequence)
        descriptor = d
        pendingKeys = nil
        node.sideFilters = roundFilters
    }

    /// Checks a placement addressed to this block's pending keys and makes it this block's: the descriptor must be
    /// the owner's, for this block (its id, ring, layer and file: a rotation changes keys, never parameters), for the
    /// next generation, naming exactly the pending keys and the same ouroboros. Then `block.json` is replaced
    /// (atomically) and `keys.next.json` renamed over `keys.json`: a crash in between leaves a descriptor naming the
    /// pending keys, which the next start completes (`BlockBundle.load`).
    static func adopt(_ p: PlacementOrder, entry e: LedgerEntry, pending: BlockKeys, current: BlockDescriptor, owner: [UInt8],
                      directory: String) throws -> BlockDescriptor {
        guard e.isAuthentic, e.author == current.ouroboros.signing, let call = e.queryID else {
            throw RingError.notAuthentic("the placement is not the ouroboros's")
        }
        let bytes = Array(try HPKEBox.open(p.sealedDescriptor[...], with: pending.agreement,
                                           aad: PlacementOrder.aad(call: call, recipient: pending.publicKeys.signing)))
        let d = try BlockDescriptor.parse(bytes, path: "the placement's descriptor")
        guard d.isSigned(by: owner) else { throw RingError.notAuthentic("the placement's descriptor is not signed by the block's owner") }
        guard d.ringID == current.ringID, d.id == current.id, d.keys == pending.publicKeys, d.ouroboros == current.ouroboros,
              d.generation == current.generation + 1, UInt64(d.generation) == p.generation,
              d.previousHash == current.previousHash, d.hash == current.hash,
              d.paramsDigest == current.paramsDigest, d.paramsSize == current.paramsSize else {
            throw RingError.notAuthentic("the placement's descriptor is not this block's next one (ring, id, keys, generation, hashes or parameter file differ)")
        }
        try writeFileAtomically(bytes, to: directory + "/block.json", permissions: 0o644)
        guard rename(directory + "/" + BlockBundle.pendingKeysFile, directory + "/keys.json") == 0 else {
            throw RingError.restoreFailed("cannot install the new keys in \(directory)")
        }
        try? fsyncPath(directory)
        return d
    }

    /// With keys pending: the owner's placement for them among the last `window` entries (headers first, so a wide
    /// window stays cheap), taken on when found; its descriptor, or nil.
    static func findPlacement(directory: String, current: BlockDescriptor, owner: [UInt8], pending: BlockKeys, ledger: any Ledger,
                              window: Int64) throws -> BlockDescriptor? {
        let tail = try ledger.lastSequence()
        guard tail >= 1 else { return nil }
        let headers = try ledger.headers(in: max(1, tail - window + 1)...tail, matching: [EntryFilter(kind: .placement, author: current.ouroboros.signing)])
        for h in headers.reversed() {
            guard let e = try ledger.entry(at: h.sequence), let p = try? PlacementOrder.decode(e), p.recipient == pending.publicKeys.signing else { continue }
            return try adopt(p, entry: e, pending: pending, current: current, owner: owner, directory: directory)
        }
        return nil
    }

    /// What the ouroboros's placements on the ledger say of this block, read a page at a time: for a former spare
    /// (its folder keeps `spare.json`), the sequence number of the placement that gave it its slot (addressed to the
    /// spare's own keys); and the reason of an eviction notice naming its current keys, if one was posted.
    static func placementHistory(directory: String, keys: PublicKeys, ouroboros: [UInt8], ledger: any Ledger) throws
        -> (sparePlacement: Int64?, evicted: String?) {
        let path = directory + "/" + SpareAgent.descriptorFile
        let spare = FileManager.default.fileExists(atPath: path) ? try SpareDescriptor.read(path).keys.signing : nil
        let tail = try ledger.lastSequence()
        var placed: Int64?, evicted: String?
        var from: Int64 = 1
        while from <= tail {
            let page = try ledger.entries(in: from...tail, matching: [EntryFilter(kind: .placement, author: ouroboros)], maxBytes: 16 << 20)
            for e in page.entries where e.isAuthentic {
                if let n = try? EvictionNotice.decode(e), n.evicted == keys.signing { evicted = n.reason }
                if placed == nil, let spare, let p = try? SparePlacement.decode(e), p.recipient == spare { placed = e.sequence }
            }
            guard page.through < tail else { break }
            from = page.through + 1
        }
        if spare != nil && placed == nil {
            throw RingError.notAuthentic("\(directory) was a spare, but the ledger holds no placement of it")
        }
        return (placed, evicted)
    }

    /// HASH_j (Eq. 1) over what this block computes with now.
    public func currentHash(chainedOn previous: [UInt8]) -> [UInt8] {
        var sha = SHA256()
        sha.update(data: previous)
        ParamsEncoding.hash(ownLayer.current(in: node.own), into: &sha)
        ParamsEncoding.hash(nextLayer.current(in: node.next), into: &sha)
        return Array(sha.finalize())
    }

    /// True when the parameter file has the digest the descriptor names (read up to the sealed size only).
    func fileIntact() -> Bool {
        guard let bytes = try? InputFile.read(directory + "/params.safetensors", limit: descriptor.paramsSize) else { return false }
        return hex(SHA256.hash(data: bytes)) == descriptor.paramsDigest
    }

    private func attest(_ round: String, chainedOn previous: [UInt8]) throws {
        guard attested.insert(round) else { return }
        let a = Attestation(previousHash: previous, hash: currentHash(chainedOn: previous), fileIntact: fileIntact())
        try ledger.append(kind: .attestation, queryID: round, payload: a.encoded(), signer: node.signer)
        events.append((round, "attested", a.fileIntact ? "" : "the parameter file differs from the sealed one"))
    }

    /// Tracking (§3.4.4) on the block's side: the restored file must be exactly the sealed one (its descriptor's
    /// digest and size); it replaces the file atomically, then the layers in memory.
    private func restore(_ r: RestoreOrder, round: String) throws {
        let bytes = Array(try HPKEBox.open(r.sealedFile[...], with: node.keys.agreement,
                                     aad: RestoreOrder.aad(round: round, recipient: node.publicKeys.signing)))
        guard bytes.count == descriptor.paramsSize, hex(SHA256.hash(data: bytes)) == descriptor.paramsDigest else {
            throw RingError.notAuthentic("the restored parameters are not the ones the descriptor names")
        }
        let layers = try BlockFile.parse(bytes, prefixes: ["own", "next"], path: "the restored parameter file")
        let own = try layers[0].model(), next = try layers[1].model()
        try writeFileAtomically(bytes, to: directory + "/params.safetensors", permissions: 0o644)
        node.replaceLayers(own: own, next: next)
    }

    /// Takes the round events since the last call.
    public func takeEvents() -> [(round: String, event: String, detail: String)] {
        defer { events.removeAll() }
        return events
    }

    /// TEST HOOK (`block serve --test-hooks`, then SIGUSR1): flips one bit of the first parameter this block
    /// computes with, in memory only — a fault the next authenticity round must find and restore.
    public func flipBitInMemory() {
        node.own.parameters.withValues { $0[0] = Float(bitPattern: $0[0].bitPattern ^ (1 << 22)) }
    }

    /// The rows that may be work for this block: its predecessor's posts, and its successor's alarms (a retry).
    public var wakeFilters: [EntryFilter] {
        // (Read at every wait: a rotation changes the neighbours' keys.)
        [EntryFilter(kind: .layer, author: node.predecessor.signing), EntryFilter(kind: .alarm, author: node.successor.signing)]
            + roundFilters
    }

    /// The last ledger entry this block has read.
    public var cursor: Int64 { node.cursor }

    /// Errors met while handling entries (by query), taken: a serving process logs them.
    public func takeFailures() -> [(queryID: String, error: Error)] {
        defer { node.failures.removeAll() }
        return node.failures
    }

    /// The block's current signing key (public), for logs.
    public var signingKey: [UInt8] { node.publicKeys.signing }
    /// Time spent per phase while answering queries.
    public var timing: PhaseTiming { node.timing }

    /// Attack hook (`block serve --attack-perturb`): this block adds `epsilon` to every input it computes on — the
    /// paper's compromised block (Algorithm 1's perturbation, applied by the block itself).
    public func perturbInputs(by epsilon: Float) {
        node.perturbInput = { x in Tensor(shape: x.shape, data: x.data.map { $0 + epsilon }) }
    }
}
