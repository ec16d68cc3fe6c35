import Crypto
import DeepRingEngine
import DeepRingLedger
import Foundation

/// The result of a query.
public struct QueryResult: Sendable {
    public var queryID: String
    /// The last layer's output (logits), as delivered.
    public var logits: Tensor
    /// Validation alarms raised while answering.
    public var alarms: Int
    /// Ring positions evicted and re-provisioned while answering (policy `.evictAndRetry`).
    public var evicted: [Int] = []
    public var seconds: Double
}

/// Runs a sealed ring on one host: loads every member from its own files, and answers queries through the
/// ledger only (Query phase, Eq. 3; Processing, Eqs. 4–11; Validation, Eq. 13; Delivery, Eq. 12). Before a
/// query (every `verifyEvery` queries) the ouroboros checks authenticity and, if it is off, enters tracking
/// mode: queries wait while tampered blocks are restored, with `alarm` and `restore` entries on the ledger.
public final class RingRuntime {
    public let ring: SealedRing
    public let ledger: SQLiteLedger
    /// The blocks' shared read snapshot of the ledger (one database read per scheduling round, not one per block).
    let view: LedgerView
    var nodes: [RingNode] = []
    var ouroboros: RingNode { nodes[0] }
    public var verifyEvery: Int = 1
    /// Reshuffle the placement and rotate block keys after every `reshuffleEvery` queries (1 = after each, as in
    /// the paper; 0 = never, for measurements).
    public var reshuffleEvery: Int = 1
    var queriesSinceReshuffle = 0
    /// Held for the runtime's life: one runtime per ring at a time (`flock` on `owner/runtime.lock`).
    private let lockFD: Int32
    var queriesSinceCheck = Int.max / 2
    public private(set) var restores: [String] = []
    /// Time spent in tracking mode (restoring tampered blocks) while queries waited.
    public private(set) var trackingSeconds = 0.0
    /// What to do when validation keeps failing for a query (a block computes or perturbs wrongly every time).
    public enum CompromisePolicy: Sendable {
        /// Refuse the query (the paper's behaviour after its retries): never a wrong answer, but no answer.
        case refuse
        /// Evict both suspects of Proposition 1 — the block whose output failed validation and the block holding
        /// the copy of its layer — re-provision them from their (authenticated) files with fresh keys, and answer
        /// the query again from the start. Our addition: a persistent attacker makes a plain retry fail forever.
        case evictAndRetry
    }
    public var onCompromisedBlock: CompromisePolicy = .refuse
    /// Positions evicted so far (policy `.evictAndRetry`).
    public private(set) var evictions: [Int] = []
    /// Per-phase time of all nodes (compute, crypto, ledger).
    public let timing = PhaseTiming()

    public init(directory: String) throws {
        let fd = open(directory + "/owner/runtime.lock", O_RDWR | O_CREAT, 0o600)
        guard fd >= 0 else { throw RingError.notARing("\(directory)/owner is missing or not writable") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw RingError.busy("another deepring process is running this ring (\(directory)); wait for it to finish")
        }
        lockFD = fd
        do {
            ring = try SealedRing.open(directory)
            ledger = try SQLiteLedger(path: ring.ledgerPath)
            view = try LedgerView(ledger)
            do { try loadNodes() } catch {
                // A block file that cannot even be loaded (a tampered header, truncated, oversized) is tampered with:
                // tracking mode restores it before anything runs — unless the chain is intact and the fault is elsewhere.
                guard !ring.checkAuthenticity().authentic else { throw error }
                try track(signer: LedgerSigner(try KeyFile.read(directory + "/owner/keys.json").signing))
                try loadNodes()
            }
        } catch { close(fd); throw error }
    }

    deinit { close(lockFD) }

    /// Reshuffle (after delivery): new placement and fresh key pairs for every block; the nodes take them on.
    public func reshuffle() throws {
        let t0 = now()
        defer { timing.reshuffle += now() - t0 }
        let oldOrder = ring.record.order
        let placed = try ring.reshuffle(ledger: ledger)
        let byName = Dictionary(uniqueKeysWithValues: nodes.dropFirst().map { ($0.name, $0) })
        let o = ouroboros
        for (j, p) in placed.enumerated() {
            guard let node = byName[oldOrder[j]] else { throw RingError.notARing("block \(oldOrder[j]) is not loaded") }
            node.rekey(name: p.id, keys: p.keys,
                       predecessor: j == 0 ? o.publicKeys : placed[j - 1].keys.publicKeys,
                       successor: j + 1 < placed.count ? placed[j + 1].keys.publicKeys : o.publicKeys)
        }
        o.rekey(name: o.name, keys: o.keys, predecessor: placed.last!.keys.publicKeys, successor: placed[0].keys.publicKeys)
        queriesSinceReshuffle = 0
        // Big batches are throughput-bound: the next placement is built while the next batch computes (on a
        // background thread). Small queries are latency-bound: that background work would slow the answer
        // (measured: batch-1 latency +1.5 ms), so their reshuffle builds the placement after the answer instead.
        if reshuffleEvery > 0 && lastBatch >= RingRuntime.backgroundReshuffleBatch { ring.prepareReshuffle() }
    }

    /// Batch size of the latest query, and the size from which the next placement is prepared in the background.
    var lastBatch = 0
    static let backgroundReshuffleBatch = 32

    /// After each query: reshuffle when due, and let the ledger checkpoint its WAL in the background.
    func reshuffleIfDue() throws {
        defer { ledger.checkpointInBackground() }
        queriesSinceReshuffle += 1
        if reshuffleEvery > 0 && queriesSinceReshuffle >= reshuffleEvery { try reshuffle() }
    }

    /// Queries on the ledger that never ended — no delivery and no final alarm — for example because the process
    /// answering them was killed. They are reported, never resumed: their querents are gone.
    public func incompleteQueries() throws -> [String] {
        let all = try ledger.entries(in: 1...max(1, try ledger.lastSequence()), matching: [
            EntryFilter(kind: .query), EntryFilter(kind: .delivery), EntryFilter(kind: .alarm)])
        var open: [String] = []
        var ended = Set<String>()
        for e in all {
            guard let q = e.queryID else { continue }
            switch e.kind {
            case .query: open.append(q)
            case .delivery: ended.insert(q)
            case .alarm:
                if let v = try? StrictJSONParser.parse(e.payload), case .bool(true)? = v["final"] { ended.insert(q) }
            default: break
            }
        }
        return open.filter { !ended.contains($0) }
    }

    func loadNodes() throws {
        let dir = ring.directory
        let oKeys = try KeyFile.read(dir + "/owner/keys.json")
        let oLayers = try BlockFile.parse(try SealedRing.readHolderFile(dir + "/owner/ouroboros.safetensors", directory: dir),
                                          prefixes: ["own", "next"], path: "ouroboros")
        var blocks: [RingNode] = []
        var firstPublic: PublicKeys?, lastPublic: PublicKeys?
        for id in try FileManager.default.contentsOfDirectory(atPath: dir + "/blocks").sorted() {
            let b = dir + "/blocks/" + id
            let keys = try KeyFile.read(b + "/keys.json")
            let info = try BlockInfo.read(blockDirectory: b)
            let layers = try BlockFile.parse(try SealedRing.readHolderFile(b + "/params.safetensors", directory: dir),
                                             prefixes: ["own", "next"], path: b + "/params.safetensors")
            blocks.append(try RingNode(name: id, keys: keys, predecessor: info.predecessor, successor: info.successor,
                                       own: layers[0], next: layers[1], isOuroboros: false,
                                       nextIsOuroboros: info.successor == oKeys.publicKeys))
            if info.predecessor == oKeys.publicKeys { firstPublic = keys.publicKeys }
            if info.successor == oKeys.publicKeys { lastPublic = keys.publicKeys }
        }
        guard let first = firstPublic, let last = lastPublic else { throw RingError.notARing("the ring is not closed") }
        let o = try RingNode(name: "ouroboros", keys: oKeys, predecessor: last, successor: first, own: oLayers[0], next: oLayers[1],
                             isOuroboros: true, nextIsOuroboros: false)
        let cursor = (try ledger.last()?.sequence) ?? 0
        nodes = [o] + blocks
        for n in nodes { n.cursor = cursor; n.timing = timing }
    }

    /// Attack hook: the named block perturbs its input before computing (off unless set).
    public func setPerturbation(block: String, _ f: ((Tensor) -> Tensor)?) {
        nodes.first { $0.name == block }?.perturbInput = f
    }

    /// Attack hook by ring position (1 = the block computing the first layer; only the owner knows positions).
    /// The perturbation follows the block through reshuffles.
    public func setPerturbation(position: Int, _ f: ((Tensor) -> Tensor)?) {
        precondition(position >= 1 && position <= ring.placement.count, "no block at position \(position)")
        setPerturbation(block: ring.placement[position - 1], f)
    }

    public var blockNames: [String] { nodes.dropFirst().map(\.name) }

    /// Authenticity check and, when it is off, tracking and restore (§3.3, §3.4.4).
    public func ensureAuthentic() throws {
        if ring.checkAuthenticity().authentic { return }
        try track(signer: ouroboros.signer)
        try reloadBlocks()
    }

    /// Tracking mode (authenticity is off): an alarm entry, then the tampered holders restored one by one from the
    /// checkpoint, each with a restore entry signed by the ouroboros.
    func track(signer: LedgerSigner) throws {
        let report = ring.checkAuthenticity()
        if report.authentic { return }
        try ledger.append(kind: .alarm, queryID: nil,
                          payload: Array("{\"authenticity\":false,\"first_tampered\":\"\(report.firstTampered ?? "")\"}".utf8), signer: signer)
        let t0 = now()
        defer { trackingSeconds += now() - t0 }
        let restored = try ring.restore()
        for b in restored {
            try ledger.append(kind: .restore, queryID: nil, payload: Array("{\"restored\":\"\(b)\"}".utf8), signer: signer)
        }
        restores += restored
    }

    /// Re-reads every block's files, as running blocks would see them (a compromised block keeps its perturbation:
    /// it is the block's behaviour, not its files).
    public func reloadBlocks() throws { try reloadBlocks(dropping: []) }

    /// Reloads every node from its files; perturbations stay with their blocks except those of `dropping`.
    func reloadBlocks(dropping: Set<String>) throws {
        let perturb = nodes.compactMap { n in n.perturbInput.map { (n.name, $0) } }
        try loadNodes()
        for (k, f) in perturb where !dropping.contains(k) { setPerturbation(block: k, f) }
    }

    /// Evicts the blocks at `positions` and re-provisions them: tampered files are restored, every key rotates
    /// (reshuffle), and fresh nodes are loaded from the files (whatever the evicted blocks did is gone).
    func evict(positions: [Int]) throws {
        try ensureAuthentic()
        try reshuffle()
        try reloadBlocks(dropping: Set(positions.map { ring.placement[$0 - 1] }))
        evictions += positions
    }

    /// Answers one (batched) query. Throws `QueryError.failed` — never a wrong answer — when validation keeps failing.
    public func query(_ x: Tensor) throws -> QueryResult { try query(x, attempt: 1) }

    func query(_ x: Tensor, attempt: Int) throws -> QueryResult {
        let t0 = now()
        guard Array(x.shape.dropFirst()) == ring.manifest.inputShape || x.itemSize == ring.manifest.inputShape.reduce(1, *),
              x.batch > 0 else {
            throw QueryError.badInput("expected inputs of shape \(ring.manifest.inputShape), got \(Array(x.shape.dropFirst()))")
        }
        guard x.data.allSatisfy({ $0.isFinite }) else { throw QueryError.badInput("the input contains NaN or infinite values") }
        lastBatch = x.batch
        queriesSinceCheck += 1
        if queriesSinceCheck >= verifyEvery { try ensureAuthentic(); queriesSinceCheck = 0 }
        // Query phase (Eq. 3): a fresh querent key pair; the input sealed to the ouroboros's public key.
        let querent = BlockKeys()
        let queryID = hex((0..<16).map { _ in UInt8.random(in: 0...255) })
        let input = x.reshaped([x.batch] + ring.manifest.inputShape)
        let sealed = try timing.time(\.crypto) {
            try Sealing.seal(TensorWire.encode(input), to: ring.manifest.ouroboros.agreement,
                             aad: Array(queryID.utf8) + querent.publicKeys.agreement)
        }
        var w = WireWriter(capacity: 8 + 32 + sealed.count)
        w.field(querent.publicKeys.agreement); w.field(sealed)
        let posted = try timing.time(\.ledger) {
            try view.append(kind: .query, queryID: queryID, payload: w.bytes, signer: LedgerSigner(querent.signing))
        }
        var alarms = 0
        var idle = 0
        var cursor = posted.sequence
        while true {
            var acted = false
            // Entries appended here reach the view at once; the database is read (one query) only when a round
            // found nothing to do, for what other processes may have appended.
            if idle > 0 { try timing.time(\.ledger) { try view.refresh() } }
            for n in nodes.shuffled() { if try n.step(ledger: view) { acted = true } }
            let tail = try view.lastSequence()
            let mine = tail > cursor ? try view.entries(in: (cursor + 1)...tail, matching: [
                EntryFilter(kind: .alarm, queryID: queryID), EntryFilter(kind: .delivery, queryID: queryID)]) : []
            cursor = tail
            // Only ring members' entries count: anyone may append, and a forged alarm must not end a query.
            for e in mine where nodes.contains(where: { $0.publicKeys.signing == e.author }) && e.isAuthentic {
                if e.kind == .alarm {
                    alarms += 1
                    if let v = try? StrictJSONParser.parse(e.payload), case .bool(true)? = v["final"] {
                        var suspect = "?"
                        func position(_ key: JSONValue?) -> Int? {
                            guard case .string(let s)? = key, let name = nodes.dropFirst().first(where: { hex($0.publicKeys.signing) == s })?.name,
                                  let i = ring.placement.firstIndex(of: name) else { return nil }
                            return i + 1
                        }
                        if let p = position(v["suspect"]) { suspect = "\(ring.placement[p - 1]) (ring position \(p))" }
                        if onCompromisedBlock == .evictAndRetry && attempt == 1 {
                            let suspects = [position(v["suspect"]), position(v["hash_from"])].compactMap { $0 }
                            try evict(positions: suspects)
                            var again = try query(x, attempt: 2)
                            again.alarms += alarms
                            again.evicted = suspects + again.evicted
                            again.seconds = now() - t0
                            return again
                        }
                        try reshuffleIfDue()
                        throw QueryError.failed("validation failed \(alarms) times; block \(suspect), or the block holding the copy of its layer, is compromised")
                    }
                }
                if e.kind == .delivery && e.author == ring.manifest.ouroboros.signing {
                    let out = try TensorWire.decode(try Sealing.openData(e.payload[...], with: querent.agreement,
                                                                      aad: Array(queryID.utf8) + querent.publicKeys.agreement))
                    let answered = now() - t0
                    try reshuffleIfDue()
                    return QueryResult(queryID: queryID, logits: out, alarms: alarms, seconds: answered)
                }
            }
            idle = acted ? 0 : idle + 1
            if idle > 3 { throw QueryError.timeout }
        }
    }
}
